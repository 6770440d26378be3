package balancer

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/pires/go-proxyproto"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"chainmail/internal/testutil"
)

// waitLimit bounds every wait for a condition in these tests.
const waitLimit = 30 * time.Second

// waitFor polls cond until it holds, failing the test after waitLimit.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// fakeClock is a Clock the test moves by hand.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{c.now.Add(d), ch})
	return ch
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}

func (c *fakeClock) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

// freeAddr finds a free TCP port on a loopback address, below the
// ephemeral range (testutil.FreeAddr says why).
func freeAddr(t testing.TB, ip string) string {
	t.Helper()
	return testutil.FreeAddr(t, ip)
}

// sink is a Postfix smtp-sink process: a real SMTP server that accepts and
// discards mail.
type sink struct {
	addr string
	cmd  *exec.Cmd
}

const smtpSinkPath = "/usr/sbin/smtp-sink"

func startSink(t testing.TB, ip string) *sink {
	t.Helper()
	if _, err := os.Stat(smtpSinkPath); err != nil {
		t.Skipf("smtp-sink not installed (apt-get install postfix): %v", err)
	}
	addr := freeAddr(t, ip)
	args := []string{addr, "256"}
	if os.Geteuid() == 0 {
		args = append([]string{"-u", "nobody"}, args...)
	}
	cmd := exec.Command(smtpSinkPath, args...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // even if the test binary dies
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &sink{addr: addr, cmd: cmd}
	t.Cleanup(s.kill)
	waitFor(t, "smtp-sink on "+addr, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return s
}

// kill stops the process with SIGKILL by its PID and reaps it.
func (s *sink) kill() {
	if s.cmd.ProcessState != nil {
		return
	}
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGKILL)
	s.cmd.Wait()
}

// Backend behaviours.
const (
	modeOK     int32 = iota // go-smtp greets 220 and takes mail
	mode421                 // greets "421 4.3.2 busy" and closes
	modeHang                // accepts and never says a word
	modeReset               // accepts and closes at once
	modeRefuse              // listener closed: connection refused
)

// backend is a go-smtp server whose behaviour a test can switch, counting
// the connections it accepts and the client addresses its sessions saw.
type backend struct {
	name     string
	addr     string
	mode     atomic.Int32
	accepted atomic.Int64
	mails    atomic.Int64
	ln       net.Listener
	srv      *smtp.Server

	mu      sync.Mutex
	remotes []string
	parked  []net.Conn
}

// startBackend runs a backend on ip; proxy wraps its listener in a PROXY
// protocol reader (trusting every source).
func startBackend(t testing.TB, name, ip string, proxy bool) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	be := &backend{name: name, addr: ln.Addr().String()}
	var inner net.Listener = &switchListener{Listener: ln, be: be}
	if proxy {
		inner = &proxyproto.Listener{Listener: inner, ReadHeaderTimeout: 5 * time.Second}
	}
	be.ln = inner
	be.srv = smtp.NewServer(be)
	be.srv.Domain = name
	be.srv.ErrorLog = log.New(io.Discard, "", 0)
	be.srv.ReadTimeout = time.Minute
	go be.srv.Serve(inner)
	t.Cleanup(be.close)
	return be
}

func (be *backend) close() {
	be.srv.Close()
	be.mu.Lock()
	for _, c := range be.parked {
		c.Close()
	}
	be.parked = nil
	be.mu.Unlock()
}

func (be *backend) Remotes() []string {
	be.mu.Lock()
	defer be.mu.Unlock()
	return append([]string(nil), be.remotes...)
}

// switchListener handles the misbehaving modes itself and hands only
// well-behaved connections to go-smtp.
type switchListener struct {
	net.Listener
	be *backend
}

func (l *switchListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.be.accepted.Add(1)
		switch l.be.mode.Load() {
		case modeOK:
			return c, nil
		case mode421:
			c.Write([]byte("421 4.3.2 " + l.be.name + " busy\r\n"))
			c.Close()
		case modeHang:
			l.be.mu.Lock()
			l.be.parked = append(l.be.parked, c)
			l.be.mu.Unlock()
		default:
			c.Close()
		}
	}
}

func (be *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	be.mu.Lock()
	be.remotes = append(be.remotes, c.Conn().RemoteAddr().String())
	be.mu.Unlock()
	return &beSession{be: be}, nil
}

type beSession struct{ be *backend }

func (s *beSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *beSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *beSession) Reset()                               {}
func (s *beSession) Logout() error                        { return nil }
func (s *beSession) Data(r io.Reader) error               { io.Copy(io.Discard, r); s.be.mails.Add(1); return nil }

// client is a raw SMTP client session through the balancer.
type client struct {
	conn     net.Conn
	tp       *textproto.Conn
	Greeting string // text of the greeting reply
	Code     int
}

// dialClient connects (from localIP if given) and reads the greeting.
func dialClient(addr, localIP string) (*client, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if localIP != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(localIP)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(waitLimit))
	c := &client{conn: conn, tp: textproto.NewConn(conn)}
	code, msg, err := c.tp.ReadResponse(0)
	c.Code, c.Greeting = code, msg
	if err != nil {
		conn.Close()
		return c, fmt.Errorf("greeting: %w", err)
	}
	return c, nil
}

func (c *client) cmd(want int, format string, args ...any) error {
	id, err := c.tp.Cmd(format, args...)
	if err != nil {
		return err
	}
	c.tp.StartResponse(id)
	defer c.tp.EndResponse(id)
	_, _, err = c.tp.ReadResponse(want)
	return err
}

// send runs EHLO (once) and one mail transaction.
func (c *client) send(ehlo bool) error {
	if ehlo {
		if err := c.cmd(250, "EHLO client.test"); err != nil {
			return fmt.Errorf("EHLO: %w", err)
		}
	}
	steps := []struct {
		code int
		line string
	}{{250, "MAIL FROM:<journal@example.org>"}, {250, "RCPT TO:<archive@example.org>"}, {354, "DATA"},
		{250, "Subject: test\r\nFrom: journal@example.org\r\n\r\nhello\r\n."}}
	for _, s := range steps {
		if err := c.cmd(s.code, "%s", s.line); err != nil {
			return fmt.Errorf("%s: %w", strings.SplitN(s.line, ":", 2)[0], err)
		}
	}
	return nil
}

func (c *client) quit() error {
	defer c.conn.Close()
	return c.cmd(221, "QUIT")
}

// runSession is one whole client session; it returns the greeting text.
func runSession(addr, localIP string) (string, error) {
	c, err := dialClient(addr, localIP)
	if err != nil {
		return "", err
	}
	if c.Code != 220 {
		c.conn.Close()
		return c.Greeting, fmt.Errorf("greeting %d %s", c.Code, c.Greeting)
	}
	if err := c.send(true); err != nil {
		c.conn.Close()
		return c.Greeting, err
	}
	return c.Greeting, c.quit()
}

// served names the backend a greeting came from (go-smtp greets with its
// Domain, which the tests set to the backend's name).
func served(greeting string) string {
	name, _, _ := strings.Cut(greeting, " ")
	return name
}

// testLogger captures log entries.
func testLogger() (*logrus.Logger, *logtest.Hook) {
	l, h := logtest.NewNullLogger()
	l.SetLevel(logrus.DebugLevel)
	return l, h
}

// entries returns the captured entries with the given message.
func entries(h *logtest.Hook, msg string) []*logrus.Entry {
	var out []*logrus.Entry
	for _, e := range h.AllEntries() {
		if e.Message == msg {
			out = append(out, e)
		}
	}
	return out
}

// startBalancer parses yaml, starts the balancer and stops it at cleanup.
func startBalancer(t testing.TB, yaml string, opts Options) *Balancer {
	t.Helper()
	cfg, err := ParseConfig("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config:\n%v\n%s", err, yaml)
	}
	b, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return b
}

func (b *Balancer) frontend(t testing.TB, name string) string {
	t.Helper()
	a := b.FrontendAddr(name)
	if a == nil {
		t.Fatalf("no frontend %q", name)
	}
	return a.String()
}

func (b *Balancer) server(t testing.TB, pool, name string) ServerStatus {
	t.Helper()
	for _, p := range b.Pools() {
		if p.Name != pool {
			continue
		}
		for _, s := range p.Servers {
			if s.Name == name {
				return s
			}
		}
	}
	t.Fatalf("no server %s/%s", pool, name)
	return ServerStatus{}
}
