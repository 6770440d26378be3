package balancer

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// splicedBytes reads the engines' splice counters on their loops.
func (b *Balancer) splicedBytes(t *testing.T) int64 {
	t.Helper()
	var engines []*engine
	waitFor(t, "the engines", func() bool { // Run starts them
		b.mu.RLock()
		defer b.mu.RUnlock()
		engines = b.engines
		return len(engines) > 0
	})
	var sum int64
	for _, e := range engines {
		got := make(chan int64, 1)
		if !e.do(func() { got <- e.spliced }) {
			t.Fatal("engine stopped")
		}
		sum += <-got
	}
	return sum
}

// Established sessions live on the event loop: holding many of them must
// not start a goroutine per session, as the goroutine path does (two each).
func TestEngineHoldsSessionsWithoutGoroutines(t *testing.T) {
	for _, loops := range []int{1, 3} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) { testEngineHolds(t, loops) })
	}
}

func testEngineHolds(t *testing.T, loops int) {
	sk := startSink(t, "127.0.0.1") // another process: its sessions cost this one nothing
	bal := startBalancer(t, poolYAML("", []string{fmt.Sprintf("{name: s, address: %q}", sk.addr)}, ""), Options{Loops: loops})
	addr := bal.frontend(t, "smtp")
	hold(t, addr, "") // one session first, so lazily started runtime goroutines exist
	before := runtime.NumGoroutine()
	const n = 40
	for range n {
		hold(t, addr, "")
	}
	after := runtime.NumGoroutine()
	if after-before >= n/2 {
		t.Fatalf("%d established sessions added %d goroutines (%d → %d)", n, after-before, before, after)
	}
	if got := bal.Frontends()[0].ActiveSessions; got != n+1 {
		t.Fatalf("frontend counts %d active sessions, want %d", got, n+1)
	}
}

// hashServer greets, reads until the client's end of input, answers the
// SHA-256 of what it read and closes.
func hashServer(t *testing.T) string {
	t.Helper()
	return startFake(t, func(c *net.TCPConn) {
		io.WriteString(c, "220 hash.test ready\r\n")
		h := sha256.New()
		io.Copy(h, c)
		fmt.Fprintf(c, "250 %x\r\n", h.Sum(nil))
	}).addr
}

// A large message goes by splice(2), byte-exact; short commands do not.
func TestEngineSplicesBulk(t *testing.T) {
	for _, loops := range []int{1, 3} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) { testEngineSplices(t, loops) })
	}
}

func testEngineSplices(t *testing.T, loops int) {
	bal := startBalancer(t, poolYAML("", []string{fmt.Sprintf("{name: h, address: %q}", hashServer(t))}, ""), Options{Loops: loops})
	addr := bal.frontend(t, "smtp")

	send := func(payload []byte) string {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		br := bufio.NewReader(c)
		if g, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(g, "220 hash.test") {
			t.Fatalf("greeting %q, %v", g, err)
		}
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		reply, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reply: %v", err)
		}
		sum := sha256.Sum256(payload)
		if want := "250 " + hex.EncodeToString(sum[:]) + "\r\n"; reply != want {
			t.Fatalf("server got other bytes: %q, want %q", reply, want)
		}
		return reply
	}

	base := bal.splicedBytes(t)
	send([]byte("EHLO small.test\r\nMAIL FROM:<a@b.test>\r\n"))
	if d := bal.splicedBytes(t) - base; d != 0 {
		t.Fatalf("a short command was spliced (%d bytes)", d)
	}

	big := make([]byte, 8<<20)
	rand.Read(big)
	base = bal.splicedBytes(t)
	send(big)
	if d := bal.splicedBytes(t) - base; d < int64(len(big))*9/10 {
		t.Fatalf("only %d of %d bytes were spliced", d, len(big))
	}
}

// FuzzGreetingParser: the loop's incremental greeting parser, fed the
// input in pieces of any size, agrees with readReply on the whole: the
// same reply (code and bytes) or no reply.
func FuzzGreetingParser(f *testing.F) {
	for _, s := range []string{"220 ok\r\n", "220-a\r\n220 b\r\nEHLO", "250-x\n250 y\n", "421 4.3.2 busy\r\n", "2", "220-\r\n220\r\n", "220-a\r\n250 b\r\n"} {
		f.Add([]byte(s), []byte{0, 3, 1})
	}
	f.Fuzz(func(t *testing.T, in, cuts []byte) {
		s := &esess{}
		var done bool
		var perr error
		rest := in
		for i := 0; len(rest) > 0 && !done && perr == nil; i++ {
			n := len(rest)
			if i < len(cuts) {
				n = min(n, int(cuts[i])+1)
			}
			s.greet = append(s.greet, rest[:n]...)
			rest = rest[n:]
			done, perr = s.parseGreeting()
		}
		rep, err := readReply(bufio.NewReaderSize(bytes.NewReader(in), replyBufSize))
		switch {
		case err == nil && (!done || perr != nil || s.code != rep.code || !bytes.Equal(s.greet[:s.parsed], rep.raw)):
			t.Fatalf("readReply: %d %q; loop: done %v, %v, %d %q", rep.code, rep.raw, done, perr, s.code, s.greet[:s.parsed])
		case err != nil && done && perr == nil:
			t.Fatalf("readReply: %v; loop found a reply %d %q", err, s.code, s.greet[:s.parsed])
		}
	})
}
