package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"chainmail/internal/testutil"
)

// exitBound bounds the wait for a process that must exit on its own. It is
// the deadline for a failure message, not a measurement.
const exitBound = 45 * time.Second

// TestLifecycleSIGTERMMidDATA: SIGTERM while a session is in DATA. The
// node refuses new sessions with 421 4.3.2 at the greeting, lets the
// message in flight finish with its 250, and exits 0; the message is
// archived.
func TestLifecycleSIGTERMMidDATA(t *testing.T) {
	t.Parallel()
	cfg, addr := nodeConfig(t, "")
	n := testutil.StartNode(t, cfg+"store: {spool_threshold: 4KiB}\n")

	msg := textMessage("in flight at SIGTERM", "inflight@example.com", 1500) // ~100 KiB
	stuffed := testutil.DotStuff(msg)
	half := len(stuffed) / 2

	c := dial(t, addr, "")
	ehlo(t, c)
	cmd(t, c, "250 2.0.0 Roger, accepting mail from <s@example.com>", "MAIL FROM:<s@example.com>")
	cmd(t, c, "250 2.0.0 I'll make sure <r@example.org> gets this", "RCPT TO:<r@example.org>")
	cmd(t, c, "354 Go ahead. End your data with <CR><LF>.<CR><LF>", "DATA")
	if err := c.Raw(stuffed[:half]); err != nil {
		t.Fatal(err)
	}
	// The spool file shows that the node is reading this DATA.
	testutil.WaitFor(t, closeBound, "the in-flight message to reach the spool", func() bool { return len(spoolFiles(t, n)) > 0 })

	if err := n.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	logHas(t, n, `"message":"listener stopping: new sessions get 421"`)
	late, r, err := testutil.Dial(addr, "")
	if err != nil {
		t.Fatalf("a new connection during shutdown: %v", err)
	}
	expect(t, r, err, "421 4.3.2 Service shutting down, try again later")
	expectClosed(t, late)
	late.Close()

	if err := c.Raw(append(stuffed[half:], ".\r\n"...)); err != nil {
		t.Fatal(err)
	}
	r, err = c.Read()
	expect(t, r, err, archived(msg))

	if err := n.WaitExit(exitBound); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	logHas(t, n, `"message":"node stopped cleanly"`)
	testutil.CheckBolt(t, filepath.Join(n.Dir, "data", "chainmail.db"))

	n.Restart()
	if got := n.Raw(testutil.HashOf(msg)); !bytes.Equal(got, msg) {
		t.Fatalf("the message that got 250 during shutdown: %d bytes archived, want %d", len(got), len(msg))
	}
	if err := n.Stop(); err != nil {
		t.Fatalf("clean stop: %v", err)
	}
}

// TestLifecycleSecondServeIsLocked: a second node on the same data
// directory fails at once with a message that says why, and the first node
// is unharmed.
func TestLifecycleSecondServeIsLocked(t *testing.T) {
	t.Parallel()
	cfg, addr := nodeConfig(t, "")
	n := testutil.StartNode(t, cfg)

	second, _ := nodeConfig(t, "") // fresh ports, same data directory
	second = strings.ReplaceAll(second, "{{dir}}", n.Dir)
	file := filepath.Join(t.TempDir(), "second.yaml")
	if err := os.WriteFile(file, []byte(second), 0o600); err != nil {
		t.Fatal(err)
	}
	// "At once": the store's lock_timeout is 1s; 15s is the bound for
	// calling it a hang.
	code, stdout, stderr := runCLI(t, t.TempDir(), 15*time.Second, "serve", "-c", file)
	if out := stdout + stderr; code == 0 || !strings.Contains(out, "store is locked by another process") {
		t.Fatalf("second serve on %s: exit %d, want non-zero with \"store is locked\":\n%s", n.Dir, code, out)
	}
	msg := textMessage("first node still works", "still@example.com", 2)
	r, err := testutil.Send(addr, "s@example.com", []string{"r@example.org"}, msg)
	expect(t, r, err, archived(msg))
}

// TestLifecycleCheck: chainmail check prints every problem of a file as
// FILE:LINE: key: message and exits 1, and exits 0 on a good file.
func TestLifecycleCheck(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	lineRE := regexp.MustCompile(`^(.+):([0-9]+): ([a-z_.\[\]0-9]+): (.+)$`)
	cases := []struct {
		name, body string
		want       []string // every line of stderr, FILE: stripped
	}{
		{"validation.yaml", `node: a
data_dir: ./d
listeners:
  - name: journal
    address: 127.0.0.1:99999
    max_recipients: 0
  - name: journal
    address: nohost
routes:
  - {name: r, from: [journal, nope], actions: [archive, forward:peer]}
web: {address: 127.0.0.1:8090}
`, []string{
			`5: listeners[0].address: invalid port "99999" in "127.0.0.1:99999"`,
			`6: listeners[0].max_recipients: must be > 0 (got 0)`,
			`7: listeners[1].name: duplicate listener name "journal"`,
			`8: listeners[1].address: invalid address "nohost" (want host:port)`,
			`10: routes[0].from[1]: no listener named "nope"`,
			`10: routes[0].actions[1]: no connection named "peer"`,
		}},
		{"decode.yaml", `node: a
colour: blue
listeners:
  - name: journal
    address: 127.0.0.1:2525
    read_timeout: soon
    max_message_size: lots
routes:
  - {name: r, from: [journal, ghost], actions: [archive]}
`, []string{
			`2: colour: unknown key (known: connections, data_dir, listeners, log, max_hops, node, routes, store, web)`,
			`6: listeners[0].read_timeout: invalid duration "soon" (want a Go duration such as 30s, 5m, 1h)`,
			`7: listeners[0].max_message_size: invalid size "lots" (want a number with an optional unit KiB, MiB, GiB, KB, MB, GB)`,
			`9: routes[0].from[1]: no listener named "ghost"`,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			file := write(tc.name, tc.body)
			code, stdout, stderr := runCLI(t, dir, exitBound, "check", "-c", file)
			if code != 1 || stdout != "" {
				t.Fatalf("exit %d, want 1; stdout %q", code, stdout)
			}
			lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
			for _, l := range lines {
				m := lineRE.FindStringSubmatch(l)
				if m == nil || m[1] != file {
					t.Errorf("not FILE:LINE: key: message: %q", l)
				}
			}
			var got []string
			for _, l := range lines {
				got = append(got, strings.TrimPrefix(l, file+":"))
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("stderr:\n%s\nwant (after %s:):\n%s", stderr, file, strings.Join(tc.want, "\n"))
			}
		})
	}
	t.Run("good file", func(t *testing.T) {
		cfg, _ := nodeConfig(t, "")
		file := write("good.yaml", strings.ReplaceAll(cfg, "{{dir}}", dir))
		code, stdout, stderr := runCLI(t, dir, exitBound, "check", "-c", file)
		if code != 0 || stdout != file+": ok (node configuration)\n" || stderr != "" {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
	})
}

// TestLifecycleEmbeddedDefault runs `chainmail serve` with no file in an
// empty directory, as a newcomer would: it creates ./chainmail-data,
// prints the console URL and a first admin password that logs in, archives
// on 127.0.0.1:2525, and on the next start prints no password. It needs
// the default's fixed ports, so it does not run in parallel.
func TestLifecycleEmbeddedDefault(t *testing.T) {
	const smtpAddr, webAddr = "127.0.0.1:2525", "127.0.0.1:8090"
	for _, a := range []string{smtpAddr, webAddr} {
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Skipf("the embedded default's port %s is in use by another process (%v); this test needs it free", a, err)
		}
		l.Close()
	}
	dir := t.TempDir()
	p := startDefault(t, dir)
	m := regexp.MustCompile(`console login "admin", password (\S+)`).FindStringSubmatch(p.stdout.String())
	if m == nil {
		t.Fatalf("no first admin password printed:\n%s", p.stdout.String())
	}
	password := m[1]
	if !strings.Contains(p.stdout.String(), "console and API       http://"+webAddr+"/") {
		t.Fatalf("no console URL printed:\n%s", p.stdout.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "chainmail-data", "chainmail.db")); err != nil {
		t.Fatalf("./chainmail-data: %v", err)
	}
	host, _ := os.Hostname()
	for _, tc := range []struct {
		user, pass string
		status     int
	}{
		{"admin", password, 200},
		{"admin", password + "x", 401},
	} {
		req, _ := http.NewRequest("GET", "http://"+webAddr+"/api/v1/node", nil)
		req.SetBasicAuth(tc.user, tc.pass)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Fatalf("Basic %s: HTTP %d, want %d: %s", tc.user, resp.StatusCode, tc.status, body)
		}
		if tc.status == 200 && !bytes.Contains(body, []byte(fmt.Sprintf("%q", host))) {
			t.Fatalf("/api/v1/node does not name the host %q: %s", host, body)
		}
	}
	msg := textMessage("to the embedded default", "default@example.com", 2)
	r, err := testutil.Send(smtpAddr, "s@example.com", []string{"r@example.org"}, msg)
	expect(t, r, err, archived(msg))
	p.stop(t)

	// Only the hash is kept, and the password is shown once.
	db, err := os.ReadFile(filepath.Join(dir, "chainmail-data", "chainmail.db"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(db, []byte(password)) {
		t.Fatal("the admin password is stored in clear")
	}
	again := startDefault(t, dir)
	if strings.Contains(again.stdout.String(), "password") {
		t.Fatalf("second start prints a password again:\n%s", again.stdout.String())
	}
	again.stop(t)
}

// defaultProc is a `chainmail serve` with no -c.
type defaultProc struct {
	cmd            *exec.Cmd
	stdout, stderr *lockedBuffer
	exited         chan struct{}
	err            error
}

func startDefault(t *testing.T, dir string) *defaultProc {
	t.Helper()
	p := &defaultProc{stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(testutil.Binary(t), "serve")
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("chainmail serve in %s:\nstdout:\n%s\nstderr:\n%s", dir, p.stdout.String(), p.stderr.String())
		}
	})
	deadline := time.Now().Add(exitBound)
	for !strings.Contains(p.stdout.String(), "console and API") {
		select {
		case <-p.exited:
			if strings.Contains(p.stderr.String(), "address already in use") {
				t.Skipf("the embedded default's ports were taken by another process during the test:\n%s", p.stderr.String())
			}
			t.Fatalf("chainmail serve exited during start-up: %v", p.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("chainmail serve did not start within %s", exitBound)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The banner comes before the listeners serve: wait for the API.
	testutil.WaitFor(t, exitBound, "the API to answer", func() bool {
		resp, err := http.Get("http://127.0.0.1:8090/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return p
}

func (p *defaultProc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if p.err != nil {
			t.Fatalf("exit after SIGTERM: %v", p.err)
		}
	case <-time.After(exitBound):
		p.cmd.Process.Kill()
		<-p.exited
		t.Fatalf("chainmail serve did not exit within %s of SIGTERM", exitBound)
	}
}

// runCLI runs the binary to completion, within bound, in dir.
func runCLI(t *testing.T, dir string, bound time.Duration, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	cmd := exec.CommandContext(ctx, testutil.Binary(t), args...)
	cmd.Dir = dir
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("chainmail %v did not exit within %s", args, bound)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return code, o.String(), e.String()
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
