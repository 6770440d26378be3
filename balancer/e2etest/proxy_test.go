// Package e2etest runs `chainmail balance` in front of a real `chainmail
// serve` node, both as processes of the built binary.
package e2etest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"chainmail/internal/testutil"
)

const wait = 30 * time.Second

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

// startBalance runs `chainmail balance -c` on cfg until its admin endpoint
// answers; it is stopped by PID (SIGTERM, then SIGKILL) at cleanup.
func startBalance(t *testing.T, cfg, admin string) *lockedBuffer {
	t.Helper()
	return startBalanceLimited(t, cfg, admin, 0)
}

// startBalanceLimited is startBalance with at most nofile open files, if
// nofile > 0 (the shell execs the balancer, so the PID stays its own).
func startBalanceLimited(t *testing.T, cfg, admin string, nofile int) *lockedBuffer {
	t.Helper()
	file := filepath.Join(t.TempDir(), "balancer.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out := &lockedBuffer{}
	cmd := exec.Command(testutil.Binary(t), "balance", "-c", file)
	if nofile > 0 {
		cmd = exec.Command("/bin/sh", "-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, nofile), testutil.Binary(t), "balance", "-c", file)
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // even if the test binary dies
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(wait):
			syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("balancer output:\n%s", out.String())
		}
	})
	testutil.WaitFor(t, wait, "the balancer's admin endpoint", func() bool {
		select {
		case <-exited:
			t.Fatalf("chainmail balance exited:\n%s", out.String())
		default:
		}
		resp, err := http.Get("http://" + admin + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	return out
}

// smtpClient is a raw SMTP client from a chosen loopback address.
type smtpClient struct {
	conn net.Conn
	br   *bufio.Reader
}

func dialFrom(t *testing.T, addr, local string) *smtpClient {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(wait))
	t.Cleanup(func() { conn.Close() })
	return &smtpClient{conn: conn, br: bufio.NewReader(conn)}
}

// reply reads one whole reply and returns its last line.
func (c *smtpClient) reply(t *testing.T) string {
	t.Helper()
	for {
		l, err := c.br.ReadString('\n')
		if err != nil {
			t.Fatalf("read reply: %v (got %q)", err, l)
		}
		if len(l) < 4 || l[3] != '-' {
			return strings.TrimRight(l, "\r\n")
		}
	}
}

func (c *smtpClient) send(t *testing.T, line, want string) string {
	t.Helper()
	fmt.Fprintf(c.conn, "%s\r\n", line)
	r := c.reply(t)
	if !strings.HasPrefix(r, want) {
		t.Fatalf("%q: got %q, want %s", line, r, want)
	}
	return r
}

// mail runs a whole session after the greeting; subject tags the message.
func (c *smtpClient) mail(t *testing.T, subject string) {
	t.Helper()
	c.send(t, "EHLO client.example", "250")
	c.send(t, "MAIL FROM:<journal@example.com>", "250")
	c.send(t, "RCPT TO:<archive@example.org>", "250")
	c.send(t, "DATA", "354")
	c.send(t, fmt.Sprintf("From: journal@example.com\r\nTo: archive@example.org\r\nSubject: %s\r\nMessage-ID: <%s@example.com>\r\n\r\nbody\r\n.", subject, subject), "250")
	c.send(t, "QUIT", "221")
}

// receipt finds the archived message with subject and returns its
// client_ip and proxied_by metadata.
func receipt(t *testing.T, n *testutil.Node, subject string) (clientIP, proxiedBy string) {
	t.Helper()
	var hits []testutil.Hit
	testutil.WaitFor(t, wait, "message "+subject+" to be searchable", func() bool {
		hits = n.Search(url.Values{"subject": {subject}})
		return len(hits) == 1
	})
	status, body := n.Do("GET", "/api/v1/archive/messages/"+hits[0].ID, nil)
	if status != 200 {
		t.Fatalf("message %s: HTTP %d %s", hits[0].ID, status, body)
	}
	var m any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	return findString(m, "client_ip"), findString(m, "proxied_by")
}

// findString is the first string value under key anywhere in v.
func findString(v any, key string) string {
	switch x := v.(type) {
	case map[string]any:
		if s, ok := x[key].(string); ok {
			return s
		}
		for _, e := range x {
			if s := findString(e, key); s != "" {
				return s
			}
		}
	case []any:
		for _, e := range x {
			if s := findString(e, key); s != "" {
				return s
			}
		}
	}
	return ""
}

// TestProxyProtocolToRealNode: a client's address crosses the balancer in
// a PROXY v1 or v2 header and the node archives it; the smtp checks with
// their own headers pass the node's gate; the node refuses a PROXY header
// from an untrusted address and closes a trusted one that sends none.
func TestProxyProtocolToRealNode(t *testing.T) {
	t.Parallel()
	smtpAddr := testutil.FreeAddr(t, "127.0.0.1")
	web := testutil.FreeAddr(t, "127.0.0.1")
	// The balancer reaches 127.0.0.1 from 127.0.0.1: that address, and only
	// it, is trusted to send PROXY headers.
	n := testutil.StartNode(t, fmt.Sprintf(`node: n1
data_dir: {{dir}}/data
listeners:
  - name: journal
    address: %s
    proxy_protocol_from: [127.0.0.1/32]
routes:
  - {name: journal, from: [journal], actions: [archive]}
web: {address: %s, api_tokens: [%s]}
log: {level: info, format: json}
`, smtpAddr, web, testutil.Token))

	fronts := map[string]string{}
	var frontends, pools strings.Builder
	for _, mode := range []string{"v1", "v2", "none"} {
		fronts[mode] = testutil.FreeAddr(t, "127.0.0.1")
		fmt.Fprintf(&frontends, "    - {name: %s, address: %q, pool: %s}\n", mode, fronts[mode], mode)
		check := "{type: smtp, interval: 100ms, timeout: 2s, rise: 1, fall: 1}"
		if mode == "none" {
			check = "{type: none}"
		}
		fmt.Fprintf(&pools, "    - name: %s\n      proxy_protocol: %s\n      health_check: %s\n      servers: [{name: n1, address: %q, max_fails: 0}]\n", mode, mode, check, smtpAddr)
	}
	admin := testutil.FreeAddr(t, "127.0.0.1")
	out := startBalance(t, fmt.Sprintf("balancer:\n  admin: %q\n  api_tokens: [%q]\n  log: {level: info, format: json}\n  frontends:\n%s  pools:\n%s",
		admin, testutil.Token, frontends.String(), pools.String()), admin)

	for _, tc := range []struct{ mode, client string }{{"v1", "127.0.0.42"}, {"v2", "127.0.0.43"}} {
		c := dialFrom(t, fronts[tc.mode], tc.client)
		if g := c.reply(t); !strings.HasPrefix(g, "220") {
			t.Fatalf("%s: greeting %q", tc.mode, g)
		}
		c.mail(t, "proxy-"+tc.mode)
		ip, by := receipt(t, n, "proxy-"+tc.mode)
		if ip != tc.client || !strings.HasPrefix(by, "127.0.0.1:") {
			t.Fatalf("%s: archived client_ip %q proxied_by %q, want %s via 127.0.0.1", tc.mode, ip, by, tc.client)
		}
	}

	// Checks with PROXY headers: several rounds, all passed by the gate.
	var pools2 struct {
		Pools []struct {
			Name    string `json:"name"`
			Servers []struct {
				Checks        int64  `json:"checks"`
				CheckFailures int    `json:"check_failures"`
				Health        string `json:"health"`
			} `json:"servers"`
		} `json:"pools"`
	}
	testutil.WaitFor(t, wait, "5 checks per PROXY pool", func() bool {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/api/v1/pools", admin), nil)
		req.Header.Set("Authorization", "Bearer "+testutil.Token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		if json.NewDecoder(resp.Body).Decode(&pools2) != nil {
			return false
		}
		for _, p := range pools2.Pools {
			if p.Name != "none" && p.Servers[0].Checks < 5 {
				return false
			}
		}
		return true
	})
	for _, p := range pools2.Pools {
		if p.Name != "none" && (p.Servers[0].CheckFailures > 0 || p.Servers[0].Health != "up") {
			t.Fatalf("pool %s: checks through the node's PROXY gate failed: %+v", p.Name, p.Servers[0])
		}
	}

	// A PROXY header from an untrusted address is not believed: the node
	// answers it as a bad command and archives the real address.
	c := dialFrom(t, smtpAddr, "127.0.0.44")
	if g := c.reply(t); !strings.HasPrefix(g, "220") {
		t.Fatalf("untrusted client's greeting %q", g)
	}
	if r := c.send(t, "PROXY TCP4 203.0.113.9 198.51.100.1 40000 25", "5"); !strings.HasPrefix(r, "5") {
		t.Fatalf("untrusted PROXY line answered %q", r)
	}
	c.mail(t, "proxy-untrusted")
	if ip, by := receipt(t, n, "proxy-untrusted"); ip != "127.0.0.44" || by != "" {
		t.Fatalf("untrusted PROXY header: archived client_ip %q proxied_by %q", ip, by)
	}

	// The trusted balancer without a header (pool "none") is refused: the
	// node closes, and the client gets the balancer's 421, not a reset.
	c = dialFrom(t, fronts["none"], "127.0.0.45")
	if g := c.reply(t); !strings.HasPrefix(g, "421 4.3.2") {
		t.Fatalf("trusted balancer without PROXY header: client got %q, want 421 4.3.2", g)
	}
	testutil.WaitFor(t, wait, "the node's warning", func() bool {
		return strings.Count(n.Output(), "without a valid PROXY header") == 1
	})
	// The line is written before the 421, but reaches out through the
	// pipe exec copies from.
	testutil.WaitFor(t, wait, "the balancer's log of the failed try", func() bool {
		return strings.Contains(out.String(), `"failure":"greeting_error"`)
	})
}
