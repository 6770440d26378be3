package testutil

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Token is the API token test configurations use.
const Token = "test-token-0123456789abcdef"

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Binary builds the chainmail binary once per test process and returns its
// path. Tests run it as a real process: what operators run is what is
// tested.
func Binary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "chainmail-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "chainmail")
		args := []string{"build", "-o", buildPath}
		if os.Getenv("CHAINMAIL_RACE") != "" {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "./cmd/chainmail")...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return buildPath
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the chainmail module")
	}
	return filepath.Dir(mod), nil
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago. host is "127.0.0.1" or another 127.0.0.0/8 address.
func FreeAddr(tb testing.TB, host string) string {
	tb.Helper()
	freePorts.Lock()
	defer freePorts.Unlock()
	if freePorts.next == 0 {
		// Test binaries run side by side: each starts somewhere else.
		freePorts.next = freePortLow + rand.IntN(freePortHigh-freePortLow)
	}
	for range freePortHigh - freePortLow {
		port := freePorts.next
		if freePorts.next++; freePorts.next == freePortHigh {
			freePorts.next = freePortLow
		}
		addr := net.JoinHostPort(host, strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		l.Close()
		return addr
	}
	tb.Fatalf("no free port on %s in %d-%d", host, freePortLow, freePortHigh-1)
	return ""
}

// FreeAddr's ports lie below Linux's ephemeral range (32768-60999 by
// default): a port from that range, closed again, may become the source
// port of any outgoing connection on the machine before the process the
// test starts binds it, and the suite makes thousands of connections.
// Within a test binary the ports are handed out in turn, never twice in a
// row of the range.
const freePortLow, freePortHigh = 20000, 32000

var freePorts struct {
	sync.Mutex
	next int
}

// Node is a chainmail serve process started by a test.
type Node struct {
	tb     testing.TB
	Dir    string // its data directory and config file live here
	Config string
	API    string // http://host:port
	cmd    *exec.Cmd
	out    *SyncBuffer
	exited chan struct{}
	err    error
}

// StartNode writes cfg (YAML; "{{dir}}" is replaced by a fresh directory)
// and runs `chainmail serve -c` on it until the API answers. The process is
// killed at the end of the test if it is still running.
func StartNode(tb testing.TB, cfg string) *Node {
	tb.Helper()
	dir := tb.TempDir()
	return StartNodeIn(tb, dir, cfg)
}

// StartNodeIn is StartNode with a given directory (a restart keeps it).
func StartNodeIn(tb testing.TB, dir, cfg string) *Node {
	tb.Helper()
	cfg = strings.ReplaceAll(cfg, "{{dir}}", dir)
	path := filepath.Join(dir, "chainmail.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		tb.Fatal(err)
	}
	n := &Node{tb: tb, Dir: dir, Config: path}
	n.API = "http://" + webAddress(tb, cfg)
	n.start()
	tb.Cleanup(func() {
		if n.Running() {
			n.Kill()
		}
		if tb.Failed() {
			tb.Logf("output of node in %s:\n%s", dir, n.Output())
		}
	})
	return n
}

func webAddress(tb testing.TB, cfg string) string {
	for _, line := range strings.Split(cfg, "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "web:") && strings.Contains(t, "address:") {
			t = t[strings.Index(t, "address:")+len("address:"):]
			return strings.Trim(strings.TrimSpace(strings.Split(strings.Split(t, ",")[0], "}")[0]), `"'`)
		}
	}
	tb.Fatalf("test config has no web: {address: …} line:\n%s", cfg)
	return ""
}

func (n *Node) start() {
	n.tb.Helper()
	n.out = &SyncBuffer{}
	n.cmd = exec.Command(Binary(n.tb), "serve", "-c", n.Config)
	n.cmd.Dir = n.Dir
	n.cmd.Stdout, n.cmd.Stderr = n.out, n.out
	if err := n.cmd.Start(); err != nil {
		n.tb.Fatal(err)
	}
	n.exited = make(chan struct{})
	go func() {
		n.err = n.cmd.Wait()
		close(n.exited)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(n.API + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-n.exited:
			n.tb.Fatalf("node exited during start-up: %v\n%s", n.err, n.out.String())
		default:
		}
		if time.Now().After(deadline) {
			n.Kill()
			n.tb.Fatalf("node did not become healthy within 20s:\n%s", n.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// PID is the process id.
func (n *Node) PID() int { return n.cmd.Process.Pid }

// Running tells whether the process is alive.
func (n *Node) Running() bool {
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// Output is everything the node wrote to stdout and stderr.
func (n *Node) Output() string { return n.out.String() }

// Stop sends SIGTERM and waits (up to a minute) for a clean exit.
func (n *Node) Stop() error {
	n.tb.Helper()
	n.cmd.Process.Signal(syscall.SIGTERM)
	return n.wait(time.Minute)
}

// Kill sends SIGKILL: a crash.
func (n *Node) Kill() {
	n.cmd.Process.Signal(syscall.SIGKILL)
	n.wait(30 * time.Second)
}

func (n *Node) wait(d time.Duration) error {
	select {
	case <-n.exited:
		return n.err
	case <-time.After(d):
		n.cmd.Process.Signal(syscall.SIGKILL)
		<-n.exited
		return fmt.Errorf("node %d did not exit within %s", n.PID(), d)
	}
}

// Restart starts the process again on the same directory and config.
func (n *Node) Restart() {
	n.tb.Helper()
	if n.Running() {
		n.tb.Fatal("Restart of a running node")
	}
	n.start()
}

// Get fetches an API path into v (JSON) with the test token.
func (n *Node) Get(path string, v any) int {
	n.tb.Helper()
	status, body := n.Do("GET", path, nil)
	if v != nil && status == 200 {
		if err := json.Unmarshal(body, v); err != nil {
			n.tb.Fatalf("GET %s: %v\n%s", path, err, body)
		}
	}
	return status
}

// Do runs an API request with the test token.
func (n *Node) Do(method, path string, body io.Reader) (int, []byte) {
	n.tb.Helper()
	req, err := http.NewRequest(method, n.API+path, body)
	if err != nil {
		n.tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// Digest is the archive digest.
type Digest struct {
	Count  int    `json:"count"`
	SHA256 string `json:"sha256"`
}

// Digest fetches /api/v1/archive/digest.
func (n *Node) Digest() Digest {
	n.tb.Helper()
	var d Digest
	if s := n.Get("/api/v1/archive/digest", &d); s != 200 {
		n.tb.Fatalf("digest: HTTP %d", s)
	}
	return d
}

// Hit is one search result.
type Hit struct {
	ID        string    `json:"id"`
	Hash      string    `json:"hash"`
	MessageID string    `json:"message_id"`
	From      string    `json:"from"`
	To        []string  `json:"to"`
	Subject   string    `json:"subject"`
	Size      int64     `json:"size"`
	Received  time.Time `json:"received"`
}

// Search follows every page of a search.
func (n *Node) Search(q url.Values) []Hit {
	n.tb.Helper()
	var all []Hit
	q = cloneValues(q)
	for {
		var page struct {
			Messages   []Hit  `json:"messages"`
			NextCursor string `json:"next_cursor"`
		}
		if s := n.Get("/api/v1/archive/messages?"+q.Encode(), &page); s != 200 {
			n.tb.Fatalf("search %v: HTTP %d", q, s)
		}
		all = append(all, page.Messages...)
		if page.NextCursor == "" {
			return all
		}
		q.Set("cursor", page.NextCursor)
	}
}

func cloneValues(q url.Values) url.Values {
	c := url.Values{}
	for k, v := range q {
		c[k] = append([]string(nil), v...)
	}
	if c.Get("limit") == "" {
		c.Set("limit", "1000")
	}
	return c
}

// Raw fetches the archived bytes of a message.
func (n *Node) Raw(id string) []byte {
	n.tb.Helper()
	status, b := n.Do("GET", "/api/v1/archive/messages/"+id+"/raw", nil)
	if status != 200 {
		n.tb.Fatalf("raw %s: HTTP %d: %s", id, status, b)
	}
	return b
}

// WaitFor polls cond until it holds or d passes.
func WaitFor(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// SyncBuffer is a bytes.Buffer safe to read while a child process or a
// logger writes to it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Digests computes the archive digest of a set of message bytes, as the
// API defines it.
func DigestOf(msgs [][]byte) Digest {
	return digestOf(msgs)
}
