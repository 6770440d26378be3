package e2etest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"chainmail/internal/testutil"
)

// holdServer greets every connection and keeps it open until the client
// closes it.
func holdServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "220 hold.test ready\r\n")
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestOutOfFileDescriptors: a balancer that runs out of file descriptors
// under held sessions says so in its log, stays up, and serves again once
// clients leave, without a restart.
func TestOutOfFileDescriptors(t *testing.T) {
	t.Parallel()
	front := testutil.FreeAddr(t, "127.0.0.1")
	admin := testutil.FreeAddr(t, "127.0.0.1")
	// max_fails 0: a connect that fails for want of a descriptor is not the
	// server's fault.
	out := startBalanceLimited(t, fmt.Sprintf(`balancer:
  admin: %q
  log: {level: info, format: json}
  frontends:
    - {name: smtp, address: %q, pool: p}
  pools:
    - name: p
      servers: [{name: h, address: %q, max_fails: 0}]
`, admin, front, holdServer(t)), admin, 48)

	greet := func(c net.Conn) (string, error) {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		return bufio.NewReader(c).ReadString('\n')
	}
	// A session costs the balancer two descriptors: with 40 clients it runs
	// out before all are served.
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 40 {
		c, err := net.DialTimeout("tcp", front, 5*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err) // the kernel's backlog takes them all
		}
		held = append(held, c)
	}
	testutil.WaitFor(t, 10*time.Second, "the balancer to report the shortage", func() bool {
		return strings.Contains(out.String(), "too many open files")
	})

	for _, c := range held {
		c.Close()
	}
	held = nil
	// Once the held sessions are gone, new clients are greeted by the
	// server again: the balancer recovered by itself.
	testutil.WaitFor(t, 15*time.Second, "a new session to be served", func() bool {
		c, err := net.DialTimeout("tcp", front, 2*time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		g, err := greet(c)
		return err == nil && strings.HasPrefix(g, "220 hold.test")
	})
	if !strings.Contains(out.String(), `"accept failed"`) && !strings.Contains(out.String(), `"server try failed"`) {
		t.Fatalf("no log line explains the shortage:\n%s", out.String())
	}
}
