package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"chainmail/internal/testutil"
)

const balWait = 30 * time.Second

// TestBalanceHelperProcess is not a test: the balance tests run the real
// CLI (run, as main does) in a child process of the test binary, so they
// can signal it by PID.
func TestBalanceHelperProcess(t *testing.T) {
	if os.Getenv("CHAINMAIL_BALANCE_HELPER") != "1" {
		t.Skip("helper process for the chainmail balance tests")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, []string{"chainmail", "balance", "-c", os.Getenv("CHAINMAIL_BALANCE_CONFIG")}, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func balWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(balWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func balFreeAddr(t *testing.T) string {
	t.Helper()
	return testutil.FreeAddr(t, "127.0.0.1")
}

// balSink runs Postfix's smtp-sink on a free loopback port, killed by PID
// at cleanup.
func balSink(t *testing.T) string {
	t.Helper()
	const path = "/usr/sbin/smtp-sink"
	if _, err := os.Stat(path); err != nil {
		t.Skipf("smtp-sink not installed (apt-get install postfix): %v", err)
	}
	addr := balFreeAddr(t)
	args := []string{addr, "128"}
	if os.Geteuid() == 0 {
		args = append([]string{"-u", "nobody"}, args...)
	}
	cmd := exec.Command(path, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // even if the test binary dies
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	balWaitFor(t, "smtp-sink", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}

type balSMTP struct {
	conn net.Conn
	tp   *textproto.Conn
}

func balDial(addr string) (*balSMTP, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(balWait))
	c := &balSMTP{conn: conn, tp: textproto.NewConn(conn)}
	if _, _, err := c.tp.ReadResponse(220); err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	return c, nil
}

func (c *balSMTP) cmd(want int, line string) error {
	if err := c.tp.PrintfLine("%s", line); err != nil {
		return err
	}
	_, _, err := c.tp.ReadResponse(want)
	return err
}

func (c *balSMTP) mail() error {
	for _, s := range []struct {
		code int
		line string
	}{{250, "MAIL FROM:<j@example.org>"}, {250, "RCPT TO:<a@example.org>"}, {354, "DATA"}, {250, "Subject: t\r\n\r\nhi\r\n."}} {
		if err := c.cmd(s.code, s.line); err != nil {
			return fmt.Errorf("%s: %w", s.line, err)
		}
	}
	return nil
}

func balSession(addr string) error {
	c, err := balDial(addr)
	if err != nil {
		return err
	}
	defer c.conn.Close()
	if err := c.cmd(250, "EHLO client.test"); err != nil {
		return err
	}
	if err := c.mail(); err != nil {
		return err
	}
	return c.cmd(221, "QUIT")
}

const balToken = "cmd-test-token-0123456789"

func balConfig(front, admin string, servers ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "balancer:\n  admin: %q\n  api_tokens: [%q]\n  shutdown_timeout: 30s\n  log: {level: info, format: json}\n", admin, balToken)
	fmt.Fprintf(&b, "  frontends:\n    - {name: smtp, address: %q, pool: p}\n  pools:\n    - name: p\n      servers:\n", front)
	for _, s := range servers {
		fmt.Fprintf(&b, "        - %s\n", s)
	}
	return b.String()
}

func balServers(t *testing.T, admin string) map[string]int64 {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+admin+"/api/v1/pools", nil)
	req.Header.Set("Authorization", "Bearer "+balToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var body struct {
		Pools []struct {
			Servers []struct {
				Name          string `json:"name"`
				TotalSessions int64  `json:"total_sessions"`
			} `json:"servers"`
		} `json:"pools"`
	}
	if json.NewDecoder(resp.Body).Decode(&body) != nil || len(body.Pools) == 0 {
		return nil
	}
	out := map[string]int64{}
	for _, s := range body.Pools[0].Servers {
		out[s.Name] = s.TotalSessions
	}
	return out
}

// TestBalanceCommand runs `chainmail balance` as a process: SIGHUP reloads
// under load with no failed session, a bad file on SIGHUP keeps the running
// configuration, and SIGTERM lets an established session finish.
func TestBalanceCommand(t *testing.T) {
	t.Parallel()
	a, b := balSink(t), balSink(t)
	front, admin := balFreeAddr(t), balFreeAddr(t)
	file := filepath.Join(t.TempDir(), "balancer.yaml")
	write := func(s string) {
		if err := os.WriteFile(file+".tmp", []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Rename(file+".tmp", file)
	}
	write(balConfig(front, admin, fmt.Sprintf("{name: a, address: %q}", a)))

	var stderr testutil.SyncBuffer
	child := exec.Command(os.Args[0], "-test.run=^TestBalanceHelperProcess$")
	child.Env = append(os.Environ(), "CHAINMAIL_BALANCE_HELPER=1", "CHAINMAIL_BALANCE_CONFIG="+file)
	child.Stdout, child.Stderr = io.Discard, &stderr
	child.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var exitErr error
	go func() {
		exitErr = child.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			syscall.Kill(child.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})
	balWaitFor(t, "the admin API", func() bool { return balServers(t, admin) != nil })

	var stop atomic.Bool
	var sessions atomic.Int64
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000 && !stop.Load(); i++ {
				err := balSession(front)
				sessions.Add(1)
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	balWaitFor(t, "load", func() bool { return sessions.Load() >= 100 })

	write(balConfig(front, admin, fmt.Sprintf("{name: a, address: %q, weight: 2}", a), fmt.Sprintf("{name: b, address: %q}", b)))
	syscall.Kill(child.Process.Pid, syscall.SIGHUP)
	balWaitFor(t, "b to take sessions after SIGHUP", func() bool { return balServers(t, admin)["b"] > 50 })

	write("balancer:\n  frontends: []\n")
	syscall.Kill(child.Process.Pid, syscall.SIGHUP)
	balWaitFor(t, "the failed reload to be logged", func() bool {
		return strings.Contains(stderr.String(), "reload failed: keeping the running configuration")
	})
	n := sessions.Load()
	balWaitFor(t, "load after the failed reload", func() bool { return sessions.Load() >= n+100 })
	stop.Store(true)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d of %d sessions failed across SIGHUP reloads; first: %v", len(errs), sessions.Load(), errs[0])
	}
	if _, ok := balServers(t, admin)["b"]; !ok {
		t.Fatal("the bad reload changed the running configuration")
	}

	// SIGTERM: no new sessions, the established one finishes.
	held, err := balDial(front)
	if err != nil {
		t.Fatal(err)
	}
	defer held.conn.Close()
	if err := held.cmd(250, "EHLO held.test"); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(child.Process.Pid, syscall.SIGTERM)
	balWaitFor(t, "the frontend to close", func() bool {
		c, err := net.DialTimeout("tcp", front, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if err := held.mail(); err != nil {
		t.Fatalf("established session after SIGTERM: %v", err)
	}
	if err := held.cmd(221, "QUIT"); err != nil {
		t.Fatal(err)
	}
	held.conn.Close()
	select {
	case <-exited:
		if exitErr != nil {
			t.Fatalf("chainmail balance exited with %v\n%s", exitErr, stderr.String())
		}
	case <-time.After(balWait):
		t.Fatal("chainmail balance did not exit after SIGTERM and the last session")
	}
	log := stderr.String()
	for _, want := range []string{`"message":"configuration reloaded"`, `"message":"balancer stopped"`, `"component":"balancer"`, `"result":"ok"`} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s", want)
		}
	}
}

func TestBalanceCommandUsageAndBadConfig(t *testing.T) {
	t.Parallel()
	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"chainmail", "balance"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "usage: chainmail balance -c") {
		t.Fatalf("no -c: %d %s", code, errb.String())
	}
	file := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(file, []byte("balancer:\n  frontends:\n    - {name: smtp, address: \":25\", pool: nope}\n  pools: []\n"), 0o600)
	errb.Reset()
	if code := run(t.Context(), []string{"chainmail", "balance", "-c", file}, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), "bad.yaml:3: balancer.frontends[0].pool: no pool named \"nope\"") {
		t.Fatalf("bad file: %d %s", code, errb.String())
	}
}
