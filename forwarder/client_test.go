package forwarder

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"chainmail/internal/testutil"
)

// scripted is a peer that answers each command with the reply its script
// gives and records the session: every line it read and, for DATA and BDAT,
// the message as it arrived on the wire.
type scripted struct {
	t      *testing.T
	ext    []string
	answer func(cmd string) string // reply to a command ("" = "250 2.0.0 OK")
	mu     sync.Mutex
	lines  []string
	data   [][]byte
}

func (p *scripted) serve(conn net.Conn) {
	defer conn.Close()
	r := bufio.NewReader(conn)
	w := bufio.NewWriter(conn)
	reply := func(s string) {
		w.WriteString(s + "\r\n")
		w.Flush()
	}
	reply("220 peer ESMTP ready")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		p.mu.Lock()
		p.lines = append(p.lines, line)
		p.mu.Unlock()
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		ans := ""
		if p.answer != nil {
			ans = p.answer(line)
		}
		switch {
		case verb == "EHLO" && ans == "":
			all := append([]string{"peer greets " + arg}, p.ext...)
			for i, e := range all {
				sep := "-"
				if i == len(all)-1 {
					sep = " "
				}
				w.WriteString("250" + sep + e + "\r\n")
			}
			w.Flush()
		case verb == "BDAT":
			f := strings.Fields(arg)
			n, _ := strconv.Atoi(f[0])
			buf := make([]byte, n)
			if _, err := io.ReadFull(r, buf); err != nil {
				return
			}
			// Only a message the peer accepts is recorded: a refused
			// chunk is read and dropped.
			if ans == "" {
				p.mu.Lock()
				p.data = append(p.data, buf)
				p.mu.Unlock()
			}
			reply(or(ans, "250 2.0.0 OK: archived"))
		case verb == "DATA":
			reply(or(ans, "354 go ahead"))
			if !strings.HasPrefix(or(ans, "354"), "354") {
				continue
			}
			var msg bytes.Buffer
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
				msg.WriteString(l)
			}
			p.mu.Lock()
			p.data = append(p.data, msg.Bytes())
			p.mu.Unlock()
			reply("250 2.0.0 OK: archived")
		case verb == "QUIT":
			reply("221 2.0.0 bye")
			return
		default:
			reply(or(ans, "250 2.0.0 OK"))
		}
	}
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// client connects a fresh smtpClient to p over a pipe and says EHLO.
func (p *scripted) client() *smtpClient {
	p.t.Helper()
	a, b := net.Pipe()
	go p.serve(b)
	p.t.Cleanup(func() { a.Close() })
	c := newSMTPClient(a, 5*time.Second)
	if g, err := c.greet(); err != nil || peerNode(g) != "peer" {
		p.t.Fatalf("greeting %q, %v", g, err)
	}
	if err := c.hello("a"); err != nil {
		p.t.Fatal(err)
	}
	return c
}

func (p *scripted) got() ([]string, [][]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...), append([][]byte(nil), p.data...)
}

func txn(body string, rcpts ...string) mailTxn {
	return mailTxn{from: "s@example.org", rcpts: rcpts, head: []byte("X-Chainmail-Trace: node=a\r\n"),
		body: strings.NewReader(body), size: int64(len(body))}
}

const (
	dotty = "Subject: x\r\n\r\n.leading dot\r\n..two\r\nlast\r\n"
	size  = len("X-Chainmail-Trace: node=a\r\n") + len(dotty)
)

func TestClientSendsByExtension(t *testing.T) {
	for _, tc := range []struct {
		name string
		ext  []string
		// what the peer reads, in order
		want []string
		// the message as it arrives on the wire
		wire string
	}{
		{"chainmail peer: pipelined BDAT", []string{"PIPELINING", "CHUNKING", "SIZE 1000"},
			[]string{"EHLO a", "MAIL FROM:<s@example.org> SIZE=" + strconv.Itoa(size), "RCPT TO:<r@example.org>", "BDAT " + strconv.Itoa(size) + " LAST"},
			"X-Chainmail-Trace: node=a\r\n" + dotty},
		{"BDAT, no pipelining", []string{"CHUNKING"},
			[]string{"EHLO a", "MAIL FROM:<s@example.org>", "RCPT TO:<r@example.org>", "BDAT " + strconv.Itoa(size) + " LAST"},
			"X-Chainmail-Trace: node=a\r\n" + dotty},
		{"DATA, pipelined", []string{"PIPELINING"},
			[]string{"EHLO a", "MAIL FROM:<s@example.org>", "RCPT TO:<r@example.org>", "DATA"},
			"X-Chainmail-Trace: node=a\r\nSubject: x\r\n\r\n..leading dot\r\n...two\r\nlast\r\n"},
		{"plain RFC 5321", nil,
			[]string{"EHLO a", "MAIL FROM:<s@example.org>", "RCPT TO:<r@example.org>", "DATA"},
			"X-Chainmail-Trace: node=a\r\nSubject: x\r\n\r\n..leading dot\r\n...two\r\nlast\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &scripted{t: t, ext: tc.ext}
			c := p.client()
			for range 2 { // two messages on one session
				if err := c.send(txn(dotty, "r@example.org")); err != nil {
					t.Fatal(err)
				}
			}
			c.quit()
			lines, data := p.got()
			want := append(append([]string{}, tc.want...), tc.want[1:]...)
			want = append(want, "QUIT")
			if strings.Join(lines, "|") != strings.Join(want, "|") {
				t.Errorf("peer read\n%q\nwant\n%q", lines, want)
			}
			if len(data) != 2 || string(data[0]) != tc.wire || string(data[1]) != tc.wire {
				t.Errorf("message on the wire %q, want twice %q", data, tc.wire)
			}
		})
	}
}

func TestClientRefusals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ext    []string
		rcpts  []string
		answer func(string) string
		code   int
		stored int // messages the peer accepted
	}{
		{"lone recipient refused, pipelined BDAT: chunk read and dropped", []string{"PIPELINING", "CHUNKING"}, []string{"r@x"},
			func(l string) string {
				switch {
				case strings.HasPrefix(l, "RCPT"):
					return "550 5.1.1 no such user"
				case strings.HasPrefix(l, "BDAT"):
					return "502 5.5.1 Missing RCPT TO command."
				}
				return ""
			}, 550, 0},
		{"one of two recipients refused: no content sent", []string{"PIPELINING", "CHUNKING"}, []string{"r@x", "bad@x"},
			func(l string) string {
				if l == "RCPT TO:<bad@x>" {
					return "452 4.5.3 too many"
				}
				return ""
			}, 452, 0},
		{"sender refused, pipelined DATA", []string{"PIPELINING"}, []string{"r@x"},
			func(l string) string {
				switch {
				case strings.HasPrefix(l, "MAIL"):
					return "451 4.3.0 busy"
				case strings.HasPrefix(l, "RCPT"), l == "DATA":
					return "503 5.5.1 no MAIL"
				}
				return ""
			}, 451, 0},
		{"message refused at its end", []string{"PIPELINING", "CHUNKING"}, []string{"r@x"},
			func(l string) string {
				if strings.HasPrefix(l, "BDAT") {
					return "554 5.6.0 bad message"
				}
				return ""
			}, 554, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &scripted{t: t, ext: tc.ext, answer: tc.answer}
			c := p.client()
			err := c.send(txn(dotty, tc.rcpts...))
			var se *smtp.SMTPError
			if !errors.As(err, &se) || se.Code != tc.code {
				t.Fatalf("send: %v, want a %d reply", err, tc.code)
			}
			// The session stays in step: RSET and a NOOP-like command
			// get their own replies.
			if err := c.reset(); err != nil {
				t.Fatalf("RSET after the refusal: %v", err)
			}
			if _, err := c.cmd(2, "NOOP"); err != nil {
				t.Fatalf("NOOP: %v", err)
			}
			if _, data := p.got(); len(data) != tc.stored {
				t.Errorf("peer got %d messages, want %d", len(data), tc.stored)
			}
		})
	}
}

func TestClientGoAheadAfterRefusalDropsSession(t *testing.T) {
	// A peer that refuses the recipient and still says 354: the message
	// must not be ended with an empty body; the session is given up.
	p := &scripted{t: t, ext: []string{"PIPELINING"}, answer: func(l string) string {
		if strings.HasPrefix(l, "RCPT") {
			return "550 5.1.1 no"
		}
		return ""
	}}
	c := p.client()
	err := c.send(txn(dotty, "r@x"))
	var se *smtp.SMTPError
	if err == nil || errors.As(err, &se) {
		t.Fatalf("send: %v, want an error that is not a reply", err)
	}
}

func TestReplyParsing(t *testing.T) {
	for _, tc := range []struct {
		in   string
		code int
		text string
		ok   bool
	}{
		{"250 OK\r\n", 250, "OK", true},
		{"250\r\n", 250, "", true},
		{"250-a\r\n250-b\r\n250 c\r\n", 250, "a\nb\nc", true},
		{"250-a\r\n251 b\r\n", 0, "", false},
		{"25 short\r\n", 0, "", false},
		{"abc def\r\n", 0, "", false},
		{"250xOK\r\n", 0, "", false},
	} {
		a, b := net.Pipe()
		go func() { b.Write([]byte(tc.in)); b.Close() }()
		c := newSMTPClient(a, time.Second)
		code, text, err := c.reply(time.Second)
		a.Close()
		if (err == nil) != tc.ok || code != tc.code || text != tc.text {
			t.Errorf("%q: %d %q %v", tc.in, code, text, err)
		}
	}
	e := replyError(451, "4.3.0 first\n4.3.0 second")
	if e.Code != 451 || e.EnhancedCode != (smtp.EnhancedCode{4, 3, 0}) || e.Message != "first\nsecond" {
		t.Errorf("enhanced code: %+v", e)
	}
	if e := replyError(550, "no such user"); e.EnhancedCode != (smtp.EnhancedCode{}) || e.Message != "no such user" {
		t.Errorf("no enhanced code: %+v", e)
	}
}

func TestClientRefusesLineBreaksInAddresses(t *testing.T) {
	p := &scripted{t: t, ext: []string{"PIPELINING", "CHUNKING"}}
	c := p.client()
	m := txn(dotty, "r@x>\r\nRCPT TO:<evil@x")
	if err := c.send(m); err == nil {
		t.Fatal("an address with a line break was sent")
	}
}

// tlsPeer is a go-smtp server with a certificate for 127.0.0.1 that wants
// AUTH PLAIN as bob, over STARTTLS or implicit TLS.
type tlsPeer struct {
	srv    *smtp.Server
	addr   string
	mu     sync.Mutex
	users  []string
	bodies [][]byte
}

type tlsSession struct {
	p    *tlsPeer
	user string
}

func (s *tlsSession) AuthMechanisms() []string { return []string{sasl.Plain} }
func (s *tlsSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != "bob" || pass != "secret" {
			return errors.New("bad credentials")
		}
		s.user = user
		return nil
	}), nil
}
func (s *tlsSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *tlsSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *tlsSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	s.p.mu.Lock()
	s.p.users = append(s.p.users, s.user)
	s.p.bodies = append(s.p.bodies, b)
	s.p.mu.Unlock()
	return err
}
func (s *tlsSession) Reset()        {}
func (s *tlsSession) Logout() error { return nil }

func startTLSPeer(t *testing.T, implicit bool) (*tlsPeer, *tls.Config) {
	certFile, keyFile, pool := testutil.SelfSignedCert(t, t.TempDir(), "127.0.0.1")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	p := &tlsPeer{}
	p.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &tlsSession{p: p}, nil }))
	p.srv.Domain = "peer"
	p.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	var ln net.Listener
	if implicit {
		ln, err = tls.Listen("tcp", "127.0.0.1:0", p.srv.TLSConfig)
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() { defer close(done); p.srv.Serve(ln) }()
	t.Cleanup(func() { p.srv.Close(); <-done })
	return p, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
}

func TestClientTLSAndAuth(t *testing.T) {
	for _, implicit := range []bool{false, true} {
		t.Run(map[bool]string{false: "starttls", true: "implicit"}[implicit], func(t *testing.T) {
			p, cfg := startTLSPeer(t, implicit)
			raw, err := net.Dial("tcp", p.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			if implicit {
				tc := tls.Client(raw, cfg)
				if err := tc.Handshake(); err != nil {
					t.Fatal(err)
				}
				raw = tc
			}
			c := newSMTPClient(raw, 5*time.Second)
			if _, err := c.greet(); err != nil {
				t.Fatal(err)
			}
			if err := c.hello("a"); err != nil {
				t.Fatal(err)
			}
			if !implicit {
				if ok, _ := c.extension("AUTH"); ok {
					t.Fatal("peer offers AUTH before TLS: the test peer is wrong")
				}
				tc, err := c.startTLS(cfg)
				if err != nil {
					t.Fatal(err)
				}
				if err := tc.Handshake(); err != nil {
					t.Fatal(err)
				}
				if err := c.hello("a"); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.auth(sasl.NewPlainClient("", "bob", "wrong")); err == nil {
				t.Fatal("wrong password accepted")
			}
			if err := c.auth(sasl.NewPlainClient("", "bob", "secret")); err != nil {
				t.Fatal(err)
			}
			if err := c.send(txn(dotty, "r@example.org")); err != nil {
				t.Fatal(err)
			}
			c.quit()
			p.mu.Lock()
			defer p.mu.Unlock()
			want := "X-Chainmail-Trace: node=a\r\n" + dotty
			if len(p.bodies) != 1 || string(p.bodies[0]) != want || p.users[0] != "bob" {
				t.Fatalf("peer got %q as %q, want %q as bob", p.bodies, p.users, want)
			}
		})
	}
}

func TestStartTLSNotOffered(t *testing.T) {
	p := &scripted{t: t, ext: []string{"PIPELINING"}}
	c := p.client()
	if _, err := c.startTLS(&tls.Config{}); err == nil {
		t.Fatal("STARTTLS attempted with a peer that does not offer it")
	}
}
