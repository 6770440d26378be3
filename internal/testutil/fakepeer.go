package testutil

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// FakePeer is a small SMTP server, built on go-smtp, that stands in for a
// chainmail peer in forwarder tests. It greets as a given node id (the
// greeting is "220 <node> ESMTP Service Ready", where the forwarder reads
// the peer's id), records every message it receives, and misbehaves on
// demand: a Behaviour chooses, at each MAIL, RCPT and DATA, whether to
// accept, answer a 4xx/5xx, answer late, hold the reply until released, or
// hang up (at DATA, in the middle of the message). Down stops listening and
// drops every session, as a dead process would; Up listens again on the same
// port.
//
// The test owns it: StartFakePeer registers Stop with t.Cleanup, and Stop
// returns only after every goroutine of the peer has ended.
type FakePeer struct {
	tb   testing.TB
	addr string

	mu        sync.Mutex
	node      string
	maxRcpt   int
	behave    Behaviour
	srv       *smtp.Server
	ln        net.Listener
	live      map[*trackedConn]bool
	serveDone chan struct{}
	stop      chan struct{} // closed by Down: ends delays and holds
	conns     sync.WaitGroup
	open      int
	sessions  int // EHLO'd sessions since the start
	mailSess  map[int]bool
	mails     int
	received  []Received
}

// Step is the point of a transaction a Behaviour is asked about.
type Step string

// Steps of a transaction.
const (
	StepMail Step = "MAIL"
	StepRcpt Step = "RCPT"
	StepData Step = "DATA"
)

// Call describes the command the peer is about to answer.
type Call struct {
	Step    Step
	Session int      // 1-based, in the order sessions said EHLO
	Txn     int      // 1-based number of this MAIL within the session
	From    string   // MAIL FROM of the transaction
	To      []string // RCPT TO so far (at RCPT, including the one asked about)
}

// Action is the peer's answer to one Call. The zero Action accepts at once.
type Action struct {
	Delay  time.Duration   // wait this long before answering
	Hold   <-chan struct{} // if set, answer only once it is closed
	Reply  *smtp.SMTPError // answer this (4xx, 5xx) instead of accepting
	Hangup bool            // close the connection instead of answering
	// HangupAfter, with Hangup at DATA: read this many bytes of the
	// message, then close the connection (mid-DATA).
	HangupAfter int
}

// Behaviour decides the peer's action at each step. It runs in the
// session's goroutine and may be called concurrently.
type Behaviour func(Call) Action

// Outcome of one DATA at the peer.
type Outcome string

// Outcomes.
const (
	Accepted Outcome = "accepted" // answered 250: the message is the peer's
	Rejected Outcome = "rejected" // answered the Action's Reply
	HungUp   Outcome = "hung-up"  // the connection was closed during DATA
)

// Received is one DATA the peer took part in.
type Received struct {
	Session int
	From    string
	To      []string
	Data    []byte // the bytes after dot-unstuffing, CRLF kept; partial when HungUp
	Outcome Outcome
}

// StartFakePeer listens on 127.0.0.1:0 and greets as node.
func StartFakePeer(tb testing.TB, node string) *FakePeer {
	tb.Helper()
	p := &FakePeer{tb: tb, node: node, mailSess: map[int]bool{}, live: map[*trackedConn]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("fake peer: %v", err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	tb.Cleanup(p.Stop)
	return p
}

// Addr is the peer's address; it stays the same across Down and Up.
func (p *FakePeer) Addr() string { return p.addr }

// SetNode changes the id the peer greets with, from the next session on.
func (p *FakePeer) SetNode(node string) {
	p.mu.Lock()
	p.node = node
	p.mu.Unlock()
}

// SetMaxRecipients makes the peer refuse recipients past n per
// transaction and advertise LIMITS RCPTMAX=n (RFC 9422), from the next Up.
func (p *FakePeer) SetMaxRecipients(n int) {
	p.mu.Lock()
	p.maxRcpt = n
	p.mu.Unlock()
}

// SetBehaviour replaces the behaviour; nil accepts everything.
func (p *FakePeer) SetBehaviour(b Behaviour) {
	p.mu.Lock()
	p.behave = b
	p.mu.Unlock()
}

func (p *FakePeer) serve(ln net.Listener) {
	p.mu.Lock()
	defer p.mu.Unlock()
	srv := smtp.NewServer(smtp.BackendFunc(p.newSession))
	// go-smtp reads Domain for every greeting: a new server per Up keeps
	// SetNode free of data races.
	srv.Domain = p.node
	srv.MaxRecipients = p.maxRcpt
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	srv.ErrorLog = log.New(io.Discard, "", 0)
	p.srv, p.ln = srv, ln
	p.stop = make(chan struct{})
	p.serveDone = make(chan struct{})
	done := p.serveDone
	go func() {
		defer close(done)
		srv.Serve(&trackedListener{Listener: ln, p: p})
	}()
}

// Down stops listening and closes every session: connections are refused
// until Up. It waits for every session to end.
func (p *FakePeer) Down() {
	p.mu.Lock()
	srv, ln, done, stop := p.srv, p.ln, p.serveDone, p.stop
	p.srv, p.ln = nil, nil
	p.mu.Unlock()
	if srv == nil {
		return
	}
	close(stop)
	// Not srv.Close: it closes each session from this goroutine, writing
	// go-smtp's session field that the session's own goroutine reads
	// unlocked (at EHLO), a data race under -race. Closing the listener
	// and the sockets lets every session end in its own goroutine.
	ln.Close()
	<-done
	p.mu.Lock()
	live := make([]*trackedConn, 0, len(p.live))
	for c := range p.live {
		live = append(live, c)
	}
	p.mu.Unlock()
	for _, c := range live {
		c.Close()
	}
	p.conns.Wait()
}

// Up listens again on the same address.
func (p *FakePeer) Up() {
	p.tb.Helper()
	p.mu.Lock()
	running := p.srv != nil
	p.mu.Unlock()
	if running {
		return
	}
	// The port was ours a moment ago; retry briefly in case the kernel
	// has not let go of it yet.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", p.addr)
		if err == nil {
			p.serve(ln)
			return
		}
		if time.Now().After(deadline) {
			p.tb.Fatalf("fake peer: listen again on %s: %v", p.addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop is Down for good; StartFakePeer registers it with t.Cleanup.
func (p *FakePeer) Stop() { p.Down() }

// Received lists every DATA so far, in the order they ended.
func (p *FakePeer) Received() []Received {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Received(nil), p.received...)
}

// Accepted lists the messages the peer answered 250 to.
func (p *FakePeer) Accepted() []Received {
	var out []Received
	for _, r := range p.Received() {
		if r.Outcome == Accepted {
			out = append(out, r)
		}
	}
	return out
}

// Sessions counts the sessions that said EHLO (probes included).
func (p *FakePeer) Sessions() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sessions
}

// MailSessions counts the sessions that started at least one transaction.
func (p *FakePeer) MailSessions() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.mailSess)
}

// Mails counts MAIL commands.
func (p *FakePeer) Mails() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mails
}

// Open counts the connections open now.
func (p *FakePeer) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open
}

func (p *FakePeer) newSession(c *smtp.Conn) (smtp.Session, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sessions++
	return &fakeSession{p: p, conn: c, id: p.sessions}, nil
}

func (p *FakePeer) record(r Received) {
	p.mu.Lock()
	p.received = append(p.received, r)
	p.mu.Unlock()
}

// act asks the behaviour and carries out its delay or hold. It returns the
// action and false when the peer went down meanwhile.
func (p *FakePeer) act(c Call) (Action, bool) {
	p.mu.Lock()
	b, stop := p.behave, p.stop
	p.mu.Unlock()
	var a Action
	if b != nil {
		a = b(c)
	}
	if a.Delay > 0 {
		t := time.NewTimer(a.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-stop:
			return a, false
		}
	}
	if a.Hold != nil {
		select {
		case <-a.Hold:
		case <-stop:
			return a, false
		}
	}
	return a, true
}

var errHangup = errors.New("fake peer: hung up")

type fakeSession struct {
	p    *FakePeer
	conn *smtp.Conn
	id   int
	txn  int
	from string
	to   []string
}

func (s *fakeSession) Reset()        { s.from, s.to = "", nil }
func (s *fakeSession) Logout() error { return nil }

func (s *fakeSession) answer(step Step) (Action, error) {
	a, ok := s.p.act(Call{Step: step, Session: s.id, Txn: s.txn, From: s.from, To: append([]string(nil), s.to...)})
	if !ok || (a.Hangup && step != StepData) {
		s.conn.Conn().Close()
		return a, errHangup
	}
	return a, nil
}

func (s *fakeSession) Mail(from string, _ *smtp.MailOptions) error {
	s.txn++
	s.from, s.to = from, nil
	s.p.mu.Lock()
	s.p.mails++
	s.p.mailSess[s.id] = true
	s.p.mu.Unlock()
	a, err := s.answer(StepMail)
	if err != nil {
		return err
	}
	if a.Reply != nil {
		return a.Reply
	}
	return nil
}

func (s *fakeSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.to = append(s.to, to)
	a, err := s.answer(StepRcpt)
	if err != nil {
		s.to = s.to[:len(s.to)-1]
		return err
	}
	if a.Reply != nil {
		s.to = s.to[:len(s.to)-1]
		return a.Reply
	}
	return nil
}

func (s *fakeSession) Data(r io.Reader) error {
	rec := Received{Session: s.id, From: s.from, To: append([]string(nil), s.to...)}
	a, err := s.answer(StepData)
	if err != nil {
		rec.Outcome = HungUp
		s.p.record(rec)
		return err
	}
	if a.Hangup {
		rec.Data, _ = io.ReadAll(io.LimitReader(r, int64(a.HangupAfter)))
		rec.Outcome = HungUp
		s.p.record(rec)
		s.conn.Conn().Close()
		return errHangup
	}
	data, err := io.ReadAll(r)
	rec.Data = data
	if err != nil {
		rec.Outcome = HungUp
		s.p.record(rec)
		return fmt.Errorf("fake peer: read DATA: %w", err)
	}
	if a.Reply != nil {
		rec.Outcome = Rejected
		s.p.record(rec)
		return a.Reply
	}
	rec.Outcome = Accepted
	s.p.record(rec)
	return nil
}

// trackedListener counts the peer's connections so that Down can wait for
// their goroutines and tests can see how many are open.
type trackedListener struct {
	net.Listener
	p *FakePeer
}

func (l *trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, p: l.p}
	l.p.conns.Add(1)
	l.p.mu.Lock()
	l.p.open++
	l.p.live[tc] = true
	l.p.mu.Unlock()
	return tc, nil
}

type trackedConn struct {
	net.Conn
	p    *FakePeer
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.p.mu.Lock()
		c.p.open--
		delete(c.p.live, c)
		c.p.mu.Unlock()
		c.p.conns.Done()
	})
	return err
}
