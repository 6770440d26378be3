package forwarder_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"chainmail/archive"
	"chainmail/forwarder"
	"chainmail/internal/config"
	"chainmail/internal/envelope"
	"chainmail/internal/testutil"
	"chainmail/queue"
)

var (
	reply451 = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
	reply554 = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "refused"}
)

func TestDeliversEveryMessageOnceWithItsTrace(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	ms := n.messages(40)
	for i, m := range ms {
		if i%4 == 0 { // came from node x through this node's ha listener
			m.viaNode("x")
		}
		if i%8 == 0 {
			m.viaNode("y")
		}
	}
	n.put([]string{"peer-b"}, ms...)
	f := n.start(conn("peer-b", peer.Addr(), func(c *config.Connection) { c.Concurrency = 4 }))

	s := f.waitDrained("peer-b")
	n.checkDelivered(peer, ms...)
	if s.Delivered != 40 || s.Failed != 0 || s.DeadLetters != 0 || s.LastError != "" {
		t.Errorf("status %+v, want 40 delivered and no failure", s)
	}
	if st := n.q.Stats("peer-b"); st.Depth != 0 || st.Delivered != 40 || !st.Oldest.IsZero() {
		t.Errorf("queue stats %+v", st)
	}
	// Many messages per session: one session per worker, no reconnects.
	if got := peer.MailSessions(); got > 4 {
		t.Errorf("%d sessions carried the 40 messages, want at most concurrency (4)", got)
	}
	if s.PeerNode != "b" {
		t.Errorf("peer node %q, want b (learned from the greeting)", s.PeerNode)
	}
}

func TestPeerDownAtStartIsProbedThenCaughtUp(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	peer.Down()
	ms := n.messages(12)
	n.put([]string{"peer-b"}, ms...)
	f := n.start(conn("peer-b", peer.Addr(), func(c *config.Connection) { c.MaxRetries = 1 }))

	s := f.waitDown("peer-b")
	if s.QueueDepth != 12 {
		t.Fatalf("down: %+v, want last_error and 12 queued", s)
	}
	d := n.dials.Load()
	testutil.WaitFor(t, wait, "three more probes", func() bool { return n.dials.Load() >= d+3 })

	// The peer comes back but holds its replies: the backlog is being
	// caught up.
	hold := make(chan struct{})
	peer.SetBehaviour(func(c testutil.Call) testutil.Action {
		if c.Step == testutil.StepData {
			return testutil.Action{Hold: hold}
		}
		return testutil.Action{}
	})
	peer.Up()
	f.waitState("peer-b", forwarder.StateCatchingUp)
	for h, e := range n.entries("peer-b", false) {
		if e.Attempts != 0 || e.LastError != "" {
			t.Errorf("entry %s: %d attempts (%q) after an outage, want none", h.Short(), e.Attempts, e.LastError)
		}
	}
	close(hold)
	f.waitDrained("peer-b")
	n.checkDelivered(peer, ms...)
	if st := n.q.Stats("peer-b"); st.Dead != 0 {
		t.Errorf("%d dead letters after an outage", st.Dead)
	}
}

func TestPeerHangingUpDuringDataLosesNothing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		after int
	}{
		{"mid-DATA", 40},
		{"after the whole message, before the reply", 1 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t, "a")
			peer := testutil.StartFakePeer(t, "b")
			var hangups atomic.Int32
			peer.SetBehaviour(func(c testutil.Call) testutil.Action {
				if c.Step == testutil.StepData && hangups.Add(1) <= 3 {
					return testutil.Action{Hangup: true, HangupAfter: tt.after}
				}
				return testutil.Action{}
			})
			ms := n.messages(10)
			n.put([]string{"peer-b"}, ms...)
			// max_retries 1: a hang-up that cost an attempt would
			// dead-letter the message.
			f := n.start(conn("peer-b", peer.Addr(), func(c *config.Connection) { c.MaxRetries = 1; c.Concurrency = 2 }))
			s := f.waitDrained("peer-b")
			n.checkDelivered(peer, ms...)
			if s.DeadLetters != 0 || s.Delivered != 10 {
				t.Errorf("status %+v, want 10 delivered, no dead letter", s)
			}
			if !strings.HasPrefix(s.LastError, "send ") || !strings.Contains(s.LastError, peer.Addr()) {
				t.Errorf("last_error %q, want it to say what failed, and where", s.LastError)
			}
			hung := 0
			for _, r := range peer.Received() {
				if r.Outcome == testutil.HungUp {
					hung++
				}
			}
			if hung != 3 {
				t.Errorf("peer hung up %d times, want 3", hung)
			}
			// Each hang-up takes the connection down; it comes back with
			// a session per worker.
			if got := peer.MailSessions(); got > 2*(1+3) {
				t.Errorf("%d sessions, want at most concurrency x (1 + reconnects) = 8", got)
			}
		})
	}
}

func TestDeferredMessageIsRetriedWithBackoff(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	ms := n.messages(2)
	x, y := ms[0], ms[1]
	var accept atomic.Bool
	peer.SetBehaviour(forRcpt(x.rcpt, testutil.StepRcpt, func() testutil.Action {
		if accept.Load() {
			return testutil.Action{}
		}
		return testutil.Action{Reply: reply451}
	}))
	n.put([]string{"peer-b"}, ms...)
	f := n.start(conn("peer-b", peer.Addr(), func(c *config.Connection) {
		c.RetryMin, c.RetryMax = time.Hour, 2*time.Hour
	}))
	testutil.WaitFor(t, wait, "y delivered and x deferred", func() bool {
		return len(peer.Accepted()) == 1 && n.entries("peer-b", false)[x.hash].Attempts == 1
	})
	n.checkDelivered(peer, y)
	e := n.entries("peer-b", false)[x.hash]
	if !strings.Contains(e.LastError, "451") {
		t.Errorf("entry last_error %q, want the 451", e.LastError)
	}
	// retry_min 1h with ±20% jitter.
	if min := time.Now().Add(45 * time.Minute); e.NextAttempt.Before(min) {
		t.Errorf("next attempt %s, want backoff of about retry_min (after %s)", e.NextAttempt, min)
	}
	// One deferral is the message's, not the peer's: the connection stays
	// up, with nothing due.
	s := f.waitState("peer-b", forwarder.StateUp)
	if s.Failed != 1 || !strings.Contains(s.LastError, "451") || s.QueueDepth != 1 {
		t.Errorf("status %+v, want one failure with the 451 and x queued", s)
	}

	accept.Store(true)
	if _, err := n.q.Retry(context.Background(), "peer-b"); err != nil {
		t.Fatal(err)
	}
	if err := f.Kick("peer-b"); err != nil {
		t.Fatal(err)
	}
	f.waitDrained("peer-b")
	n.checkDelivered(peer, x, y)
}

func TestPeerDeferringEverythingGoesDownWithoutDeadLetters(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	var accept atomic.Bool
	peer.SetBehaviour(func(c testutil.Call) testutil.Action {
		if c.Step == testutil.StepRcpt && !accept.Load() {
			return testutil.Action{Reply: reply451}
		}
		return testutil.Action{}
	})
	ms := n.messages(5)
	n.put([]string{"peer-b"}, ms...)
	// max_retries 2 and a short backoff: a peer-wide deferral that kept
	// costing attempts would dead-letter mail within a few probe cycles.
	f := n.start(conn("peer-b", peer.Addr(), func(c *config.Connection) {
		c.MaxRetries = 2
		c.Concurrency = 1
	}))
	s := f.waitDown("peer-b")
	if !strings.Contains(s.LastError, "defers every message") {
		t.Errorf("last_error %q, want the peer-wide deferral", s.LastError)
	}
	// Let it probe, come back and be deferred again several times.
	testutil.WaitFor(t, wait, "several rounds of deferrals", func() bool { return peer.Mails() >= 12 })
	if st := n.q.Stats("peer-b"); st.Dead != 0 || st.Depth != 5 {
		t.Fatalf("queue %+v after a peer-wide deferral, want all 5 queued and no dead letter", st)
	}

	accept.Store(true)
	f.waitDrained("peer-b")
	n.checkDelivered(peer, ms...)
}

func TestRejectedMessageIsDeadLetteredThenRetried(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	ms := n.messages(3)
	x := ms[0]
	var accept atomic.Bool
	peer.SetBehaviour(forRcpt(x.rcpt, testutil.StepData, func() testutil.Action {
		if accept.Load() {
			return testutil.Action{}
		}
		return testutil.Action{Reply: reply554}
	}))
	n.put([]string{"peer-b"}, ms...)
	f := n.start(conn("peer-b", peer.Addr(), func(c *config.Connection) { c.MaxRetries = 2 }))

	testutil.WaitFor(t, wait, "x dead-lettered", func() bool { return n.q.Stats("peer-b").Dead == 1 })
	s := f.waitDrained("peer-b")
	dead := n.entries("peer-b", true)
	e, ok := dead[x.hash]
	if len(dead) != 1 || !ok || e.Attempts != 2 || !strings.Contains(e.LastError, "554") {
		t.Fatalf("dead letters %+v, want x after 2 attempts with the 554", dead)
	}
	if s.DeadLetters != 1 || s.Delivered != 2 {
		t.Errorf("status %+v, want 1 dead letter and 2 delivered", s)
	}
	rejected := 0
	for _, r := range peer.Received() {
		if r.Outcome == testutil.Rejected {
			rejected++
		}
	}
	if rejected != 2 {
		t.Errorf("peer rejected x %d times, want 2 (max_retries)", rejected)
	}

	accept.Store(true)
	if n, err := n.q.Retry(context.Background(), "peer-b"); err != nil || n != 1 {
		t.Fatalf("Retry: %d, %v", n, err)
	}
	if err := f.Kick("peer-b"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, wait, "x delivered after retry", func() bool {
		st := n.q.Stats("peer-b")
		return st.Depth == 0 && st.Dead == 0 && len(peer.Accepted()) == 3
	})
	n.checkDelivered(peer, ms...)
}

func TestMaxRetriesZeroNeverDeadLetters(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	ms := n.messages(1)
	peer.SetBehaviour(func(c testutil.Call) testutil.Action {
		if c.Step == testutil.StepData {
			return testutil.Action{Reply: reply554}
		}
		return testutil.Action{}
	})
	n.put([]string{"peer-b"}, ms...)
	n.start(conn("peer-b", peer.Addr(), func(c *config.Connection) {
		c.MaxRetries = 0
		c.RetryMin, c.RetryMax = 5*time.Millisecond, 10*time.Millisecond
	}))
	testutil.WaitFor(t, wait, "six refused attempts", func() bool { return n.entries("peer-b", false)[ms[0].hash].Attempts >= 6 })
	if st := n.q.Stats("peer-b"); st.Dead != 0 || st.Depth != 1 {
		t.Fatalf("queue %+v, want the message still queued, never dead", st)
	}
}

func TestSelfLoopIsRefused(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "a") // greets as this node
	n.put([]string{"peer-b"}, n.messages(3)...)
	f := n.start(conn("peer-b", peer.Addr(), nil))
	s := f.waitDown("peer-b")
	if !strings.Contains(s.LastError, "self-loop") {
		t.Errorf("last_error %q, want it to name the self-loop", s.LastError)
	}
	d := n.dials.Load()
	testutil.WaitFor(t, wait, "two more probes", func() bool { return n.dials.Load() >= d+2 })
	if got := peer.Mails(); got != 0 {
		t.Errorf("%d transactions started with a peer that is this node", got)
	}
	if s := f.status("peer-b"); s.State != forwarder.StateDown || s.QueueDepth != 3 || s.PeerNode != "" {
		t.Errorf("status %+v, want down, 3 queued, no peer node learned", s)
	}
	if got := n.q.PeerNode("peer-b"); got != "" {
		t.Errorf("persisted peer node %q after a self-loop", got)
	}
}

func TestPeerNode(t *testing.T) {
	t.Parallel()
	t.Run("configured and mismatched", func(t *testing.T) {
		t.Parallel()
		n := newNode(t, "a")
		peer := testutil.StartFakePeer(t, "c")
		ms := n.messages(2)
		n.put([]string{"peer-b"}, ms...)
		f := n.start(conn("peer-b", peer.Addr(), func(c *config.Connection) { c.PeerNode = "b" }))
		s := f.waitDown("peer-b")
		if !strings.Contains(s.LastError, "peer_node") || !strings.Contains(s.LastError, `"c"`) {
			t.Errorf("last_error %q, want the peer_node mismatch", s.LastError)
		}
		d := n.dials.Load()
		testutil.WaitFor(t, wait, "two more probes", func() bool { return n.dials.Load() >= d+2 })
		if peer.Mails() != 0 {
			t.Errorf("sent to a peer that is not peer_node")
		}
		if got := n.q.PeerNode("peer-b"); got != "" {
			t.Errorf("persisted peer node %q from a refused peer", got)
		}
		// The right node answers at that address now.
		peer.Down()
		peer.SetNode("b")
		peer.Up()
		f.waitDrained("peer-b")
		n.checkDelivered(peer, ms...)
	})
	t.Run("learned and persisted", func(t *testing.T) {
		t.Parallel()
		n := newNode(t, "a")
		peer := testutil.StartFakePeer(t, "b")
		ms := n.messages(1)
		n.put([]string{"peer-b"}, ms...)
		cfg := conn("peer-b", peer.Addr(), nil)
		f := n.start(cfg)
		s := f.waitDrained("peer-b")
		if s.PeerNode != "b" || f.PeerNode("peer-b") != "b" || n.q.PeerNode("peer-b") != "b" {
			t.Errorf("peer node: status %q, Forwarder %q, persisted %q; want b", s.PeerNode, f.PeerNode("peer-b"), n.q.PeerNode("peer-b"))
		}
		// A forwarder started later knows it before any session.
		later := forwarder.New([]config.Connection{cfg}, n.deps(nil, nil))
		if got := later.PeerNode("peer-b"); got != "b" {
			t.Errorf("peer node after a restart %q, want b", got)
		}
	})
}

func TestMessageWhoseTraceNamesThePeerIsNotSent(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	ms := n.messages(3)
	loop := ms[1].viaNode("b") // reached us from b: sending it back would loop
	n.put([]string{"peer-b"}, ms...)
	f := n.start(conn("peer-b", peer.Addr(), nil))
	s := f.waitDrained("peer-b")
	n.checkDelivered(peer, ms[0], ms[2])
	if s.Delivered != 2 {
		t.Errorf("%d delivered, want 2: the looping message was not delivered", s.Delivered)
	}
	for _, r := range peer.Received() {
		if slices.Contains(r.To, loop.rcpt) {
			t.Fatalf("the looping message was sent: %+v", r)
		}
	}
	if got := peer.Mails(); got != 2 {
		t.Errorf("%d transactions, want 2", got)
	}
}

func TestSlowPeer(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	peer.SetBehaviour(func(c testutil.Call) testutil.Action {
		if c.Step == testutil.StepMail || c.Step == testutil.StepData {
			return testutil.Action{Delay: 150 * time.Millisecond}
		}
		return testutil.Action{}
	})
	ms := n.messages(6)
	n.put([]string{"peer-b"}, ms...)
	f := n.start(conn("peer-b", peer.Addr(), func(c *config.Connection) { c.Concurrency = 2 }))
	s := f.waitDrained("peer-b")
	n.checkDelivered(peer, ms...)
	if len(peer.Received()) != 6 || s.Failed != 0 {
		t.Errorf("peer saw %d DATA, status %+v; want 6 and no failure", len(peer.Received()), s)
	}
}

func TestPauseAndResume(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	hold := make(chan struct{})
	inData := make(chan struct{})
	var once sync.Once
	peer.SetBehaviour(func(c testutil.Call) testutil.Action {
		if c.Step == testutil.StepData {
			first := false
			once.Do(func() { first = true; close(inData) })
			if first {
				return testutil.Action{Hold: hold}
			}
		}
		return testutil.Action{}
	})
	ms := n.messages(5)
	n.put([]string{"peer-b"}, ms...)
	f := n.start(conn("peer-b", peer.Addr(), func(c *config.Connection) { c.Concurrency = 1 }))

	// Pause while the first message is in flight: it completes, and no
	// other transaction starts.
	<-inData
	if err := f.Pause("peer-b"); err != nil {
		t.Fatal(err)
	}
	if s := f.status("peer-b"); s.State != forwarder.StatePaused || !s.Paused {
		t.Fatalf("status right after Pause: %+v, want paused", s)
	}
	close(hold)
	var s forwarder.Status
	testutil.WaitFor(t, wait, "the message in flight to finish", func() bool {
		s = f.status("peer-b")
		return s.Sessions == 0 && s.QueueDepth == 4
	})
	if got := peer.Mails(); got != 1 || len(peer.Accepted()) != 1 || s.QueueDepth != 4 {
		t.Fatalf("after pause: %d transactions, %d accepted, %d queued; want 1, 1, 4", got, len(peer.Accepted()), s.QueueDepth)
	}
	// While paused the queue keeps filling.
	more := n.messages(2)
	n.put([]string{"peer-b"}, more...)
	if err := f.Kick("peer-b"); err != nil {
		t.Fatal(err)
	}
	if s := f.status("peer-b"); s.State != forwarder.StatePaused || s.QueueDepth != 6 || s.Rate == 0 || s.ETAS != 0 {
		t.Fatalf("status %+v, want paused with 6 queued, a rate from the last 10 s and no ETA", s)
	}

	if err := f.Resume("peer-b"); err != nil {
		t.Fatal(err)
	}
	f.waitDrained("peer-b")
	n.checkDelivered(peer, append(ms, more...)...)
}

func TestSetConnectionsLive(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peerB := testutil.StartFakePeer(t, "b")
	peerC := testutil.StartFakePeer(t, "c")
	cb := conn("peer-b", peerB.Addr(), nil)
	cc := conn("peer-c", peerC.Addr(), nil)
	first := n.messages(3)
	n.put([]string{"peer-b"}, first...)
	f := n.start(cb)
	f.waitDrained("peer-b")

	// Add a connection.
	f.SetConnections([]config.Connection{cb, cc})
	second := n.messages(3)
	n.put([]string{"peer-b", "peer-c"}, second...)
	f.waitDrained("peer-b")
	f.waitDrained("peer-c")
	n.checkDelivered(peerC, second...)
	n.checkDelivered(peerB, append(first, second...)...)

	// Remove one: its worker stops, its sessions close, its queue stays.
	f.SetConnections([]config.Connection{cc})
	if st := f.Status(); len(st) != 1 || st[0].Name != "peer-c" {
		t.Fatalf("status after removing peer-b: %+v", st)
	}
	testutil.WaitFor(t, wait, "peer-b's sessions closed", func() bool { return peerB.Open() == 0 })
	third := n.messages(3)
	n.put([]string{"peer-b", "peer-c"}, third...)
	f.waitDrained("peer-c")
	n.checkDelivered(peerC, append(second, third...)...)
	if got := len(peerB.Accepted()); got != 6 {
		t.Errorf("removed connection still sends: peer-b accepted %d, want 6", got)
	}
	if st := n.q.Stats("peer-b"); st.Depth != 3 {
		t.Errorf("removed connection's queue %+v, want its 3 entries kept", st)
	}
	if err := f.Kick("peer-b"); err == nil {
		t.Error("Kick of a removed connection succeeded")
	}

	// Add it back: its queue is delivered.
	f.SetConnections([]config.Connection{cb, cc})
	f.waitDrained("peer-b")
	n.checkDelivered(peerB, append(append(first, second...), third...)...)

	// Change one: it restarts with the new settings.
	cc.Concurrency = 1
	f.SetConnections([]config.Connection{cb, cc})
	if s := f.status("peer-c"); s.Concurrency != 1 {
		t.Errorf("peer-c after a change: %+v, want concurrency 1", s)
	}
	fourth := n.messages(2)
	n.put([]string{"peer-c"}, fourth...)
	f.waitDrained("peer-c")
	n.checkDelivered(peerC, append(append(second, third...), fourth...)...)
}

// Not parallel: it counts goroutines.
func TestShutdownIsPromptAndLeavesNoGoroutine(t *testing.T) {
	checkNoLeaks(t)
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	// The peer holds every reply until it stops: a hung peer.
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	peer.SetBehaviour(func(c testutil.Call) testutil.Action {
		if c.Step == testutil.StepData {
			return testutil.Action{Hold: hold}
		}
		return testutil.Action{}
	})
	n.put([]string{"peer-b", "peer-c"}, n.messages(10)...)
	down := testutil.StartFakePeer(t, "c")
	down.Down()
	f := n.start(
		conn("peer-b", peer.Addr(), func(c *config.Connection) { c.Concurrency = 3; c.Timeout = time.Minute }),
		conn("peer-c", down.Addr(), nil),
	)
	testutil.WaitFor(t, wait, "three messages in flight", func() bool { return peer.Mails() == 3 })
	f.waitDown("peer-c")

	// stop's bound (wait) is well below what a held DATA reply takes to
	// time out (twice the one-minute timeout): shutdown does not wait
	// for a hung peer.
	f.stop(t)
	if st := n.q.Stats("peer-b"); st.Depth != 10 {
		t.Errorf("queue %+v after shutdown, want the 10 entries kept (none was acknowledged)", st)
	}
}

// staleDue runs Due as the forwarder's feeder does, but lets a worker finish
// its message while Due's read transaction is open: the moment an entry is
// acknowledged and no longer in flight, after the snapshot it is read from
// was taken.
type staleDue struct {
	*queue.Store
	provoked atomic.Bool
}

func (s *staleDue) Due(conn string, now time.Time, max int, busy func(uint64) bool) ([]queue.Entry, error) {
	return s.Store.Due(conn, now, max, func(seq uint64) bool {
		if busy(seq) && s.provoked.CompareAndSwap(false, true) {
			deadline := time.Now().Add(time.Second)
			for busy(seq) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
		return busy(seq)
	})
}

func TestEntryFinishedDuringDueIsNotSentAgain(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	ms := n.messages(8)
	n.put([]string{"peer-b"}, ms...)
	q := &staleDue{Store: n.q}
	f := n.startWith(n.deps(q, nil), conn("peer-b", peer.Addr(), func(c *config.Connection) { c.Concurrency = 1 }))
	f.waitDrained("peer-b")
	if !q.provoked.Load() {
		t.Fatal("the race was not provoked")
	}
	n.checkDelivered(peer, ms...)
}

// brokenRaw is an archive whose bytes cannot be read for one message.
type brokenRaw struct {
	forwarder.Archive
	id     string
	broken atomic.Bool
}

func (b *brokenRaw) OpenMeta(ctx context.Context, m *archive.Meta) (io.ReadCloser, int64, error) {
	if m.ID == b.id && b.broken.Load() {
		return nil, 0, errors.New("disk read error")
	}
	return b.Archive.OpenMeta(ctx, m)
}

func TestUnreadableMessageIsNeverSentEmpty(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	ms := n.messages(3)
	x := ms[1]
	arch := &brokenRaw{Archive: n.arch, id: x.hash.String()}
	arch.broken.Store(true)
	n.put([]string{"peer-b"}, ms...)
	f := n.startWith(n.deps(nil, arch), conn("peer-b", peer.Addr(), func(c *config.Connection) {
		c.RetryMin, c.RetryMax = time.Hour, 2*time.Hour
	}))
	testutil.WaitFor(t, wait, "x's failed attempt", func() bool { return n.entries("peer-b", false)[x.hash].Attempts == 1 })
	// A local fault is the message's failed attempt, not the peer's: the
	// others go through and the connection stays up.
	var s forwarder.Status
	testutil.WaitFor(t, wait, "the others delivered", func() bool {
		s = f.status("peer-b")
		return s.State == forwarder.StateUp && s.QueueDepth == 1
	})
	n.checkDelivered(peer, ms[0], ms[2])
	if e := n.entries("peer-b", false)[x.hash]; !strings.Contains(e.LastError, "disk read error") {
		t.Errorf("x's last_error %q, want the read error", e.LastError)
	}
	if s.QueueDepth != 1 {
		t.Errorf("status %+v, want x still queued", s)
	}
	for _, r := range peer.Received() {
		if slices.Contains(r.To, x.rcpt) {
			t.Fatalf("the peer got a transaction for the unreadable message: %+v", r)
		}
	}

	arch.broken.Store(false)
	if _, err := n.q.Retry(context.Background(), "peer-b"); err != nil {
		t.Fatal(err)
	}
	f.waitDrained("peer-b")
	n.checkDelivered(peer, ms...)
}

func TestPurgeDuringDeliveryLosesNoLaterMessage(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	hold := make(chan struct{})
	inData := make(chan struct{})
	var once sync.Once
	peer.SetBehaviour(func(c testutil.Call) testutil.Action {
		if c.Step == testutil.StepData {
			first := false
			once.Do(func() { first = true; close(inData) })
			if first {
				return testutil.Action{Hold: hold}
			}
		}
		return testutil.Action{}
	})
	old := n.messages(3)
	n.put([]string{"peer-b"}, old...)
	f := n.start(conn("peer-b", peer.Addr(), func(c *config.Connection) { c.Concurrency = 1 }))
	<-inData // old[0] is in flight

	// The operator purges; new mail arrives; then the peer answers the
	// message in flight, whose entry the purge dropped.
	if dropped, err := n.q.Purge(context.Background(), "peer-b"); err != nil || dropped != 3 {
		t.Fatalf("Purge: %d, %v", dropped, err)
	}
	later := n.messages(3)
	n.put([]string{"peer-b"}, later...)
	close(hold)

	// The purged entries the forwarder had already taken may still go
	// out (the peer deduplicates); what matters is that the ack of the
	// one in flight does not remove a later entry.
	f.waitDrained("peer-b")
	n.checkDelivered(peer, append([]*msg{old[0]}, later...)...)
	if st := n.q.Stats("peer-b"); st.Depth != 0 || st.Dead != 0 {
		t.Errorf("queue %+v", st)
	}
}

func TestRecipientsPastThePeersLimitGoInSeveralTransactions(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	peer.SetMaxRecipients(2)
	peer.Down()
	peer.Up()
	m := n.messages(1)[0]
	m.more = []string{"x1@example.org", "x2@example.org", "x3@example.org", "x4@example.org"}
	n.put([]string{"peer-b"}, m)
	f := n.start(conn("peer-b", peer.Addr(), nil))
	f.waitDrained("peer-b")
	acc := peer.Accepted()
	var to []string
	for _, r := range acc {
		if len(r.To) > 2 {
			t.Errorf("a transaction with %d recipients, past RCPTMAX=2: %v", len(r.To), r.To)
		}
		to = append(to, r.To...)
		if _, body := splitTrace(t, r.Data); string(body) != string(m.raw) {
			t.Errorf("transaction to %v: bytes differ from the archived ones", r.To)
		}
	}
	want := append([]string{m.rcpt}, m.more...)
	slices.Sort(to)
	slices.Sort(want)
	if len(acc) != 3 || !slices.Equal(to, want) {
		t.Errorf("%d transactions to %v, want 3 covering %v once each", len(acc), to, want)
	}
}

func TestLargeMessageIsSentByteForByte(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	m := n.messages(1)[0]
	// Past several archive chunks, with lines that need dot-stuffing on
	// the wire everywhere, chunk boundaries included.
	var body strings.Builder
	for i := 0; body.Len() < 1<<20+1000; i++ {
		body.WriteString(".")
		body.WriteString(strings.Repeat("x", i%97))
		body.WriteString("\r\n")
	}
	body.WriteString(".\r\n")
	m.raw = append(m.raw, body.String()...)
	m.hash = sha256.Sum256(m.raw)
	n.put([]string{"peer-b"}, m)
	f := n.start(conn("peer-b", peer.Addr(), nil))
	f.waitDrained("peer-b")
	n.checkDelivered(peer, m)
}

func TestPeerRestartWhileUpLosesNothing(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	first := n.messages(4)
	n.put([]string{"peer-b"}, first...)
	f := n.start(conn("peer-b", peer.Addr(), func(c *config.Connection) { c.Concurrency = 2 }))
	f.waitDrained("peer-b")
	// The workers keep their sessions open; the peer restarts under them.
	peer.Down()
	peer.Up()
	second := n.messages(4)
	n.put([]string{"peer-b"}, second...)
	f.waitDrained("peer-b")
	n.checkDelivered(peer, append(first, second...)...)
	// A session the peer closed is replaced at once: the connection never
	// went down for it.
	if st := f.status("peer-b"); st.LastError != "" || st.State != forwarder.StateUp {
		t.Fatalf("after the peer's restart: %+v", st)
	}
}

// SetConnections racing the end of Run must neither start a goroutine Run
// does not wait for nor race its WaitGroup (the race detector sees it).
func TestSetConnectionsRacingShutdown(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	addr := testutil.FreeAddr(t, "127.0.0.1") // nobody listens: down
	for range 10 {
		one := conn("one", addr, nil)
		f := n.start(one)
		f.waitDown("one")
		done := make(chan struct{})
		go func() {
			defer close(done)
			f.SetConnections([]config.Connection{one, conn("two", addr, nil)})
		}()
		f.stop(t)
		<-done
	}
}

// failingAcks is the node's queue whose next Ack fails once armed.
type failingAcks struct {
	forwarder.Queue
	armed atomic.Bool
}

func (q *failingAcks) Ack(ctx context.Context, conn string, seqs ...uint64) error {
	if q.armed.CompareAndSwap(true, false) {
		return errors.New("disk on fire")
	}
	return q.Queue.Ack(ctx, conn, seqs...)
}

// An ack that cannot be committed takes the connection down; its entries
// stay queued and are sent again (the real peer deduplicates them), and
// delivered counts each message once.
func TestFailedAckTakesTheConnectionDownAndLosesNothing(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	ms := n.messages(20)
	n.put([]string{"peer-b"}, ms...)
	q := &failingAcks{Queue: n.q}
	q.armed.Store(true)
	f := n.startWith(n.deps(q, nil), conn("peer-b", peer.Addr(), func(c *config.Connection) { c.Concurrency = 4 }))

	testutil.WaitFor(t, wait, "the failed ack to be reported", func() bool {
		return strings.Contains(f.status("peer-b").LastError, "disk on fire")
	})
	s := f.waitDrained("peer-b")
	if s.Delivered != 20 || s.DeadLetters != 0 {
		t.Errorf("status %+v, want 20 delivered, no dead letter", s)
	}
	seen := map[envelope.Hash]int{}
	for _, r := range peer.Accepted() {
		_, body := splitTrace(t, r.Data)
		seen[sha256.Sum256(body)]++
	}
	for _, m := range ms {
		if seen[m.hash] == 0 {
			t.Errorf("message %s never accepted by the peer", m.hash.Short())
		}
	}
	if len(peer.Accepted()) <= 20 {
		t.Errorf("%d acceptances: the entries of the failed ack were not sent again", len(peer.Accepted()))
	}
}

// countedConn tells its dialler when it closes.
type countedConn struct {
	net.Conn
	once   sync.Once
	closed func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.closed)
	return c.Conn.Close()
}

// A peer that takes fewer sessions than concurrency (its
// max_sessions_per_ip) gets the messages on the sessions it allows; the
// connection does not go down for the ones it refuses.
func TestPeerRefusingExtraSessionsKeepsConnectionUp(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	peer.SetBehaviour(func(c testutil.Call) testutil.Action {
		if c.Step == testutil.StepData {
			return testutil.Action{Delay: 5 * time.Millisecond} // keep sessions busy together
		}
		return testutil.Action{}
	})
	ms := n.messages(30)
	n.put([]string{"peer-b"}, ms...)
	deps := n.deps(nil, nil)
	var mu sync.Mutex
	open := 0
	deps.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		defer mu.Unlock()
		if open >= 2 {
			return nil, errors.New("421 too many sessions from your address")
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		open++
		return &countedConn{Conn: c, closed: func() { mu.Lock(); open--; mu.Unlock() }}, nil
	}
	f := n.startWith(deps, conn("peer-b", peer.Addr(), func(c *config.Connection) { c.Concurrency = 8 }))

	f.waitDrained("peer-b")
	n.checkDelivered(peer, ms...)
	logs := n.logs.String()
	if strings.Contains(logs, "connection lost") {
		t.Errorf("the connection went down for a refused extra session:\n%s", logs)
	}
	if !strings.Contains(logs, "peer refused one more session") {
		t.Errorf("no extra session was refused: the test did not test")
	}
}

// A peer that greets one of our ha listeners is up: its connection, down
// and an hour from its next probe, probes at once. Another node's greeting
// does not wake it.
func TestPeerSeenProbesAtOnce(t *testing.T) {
	t.Parallel()
	n := newNode(t, "a")
	peer := testutil.StartFakePeer(t, "b")
	peer.Down()
	ms := n.messages(3)
	n.put([]string{"peer-b"}, ms...)
	f := n.start(conn("peer-b", peer.Addr(), func(c *config.Connection) {
		c.ProbeInterval = time.Hour
		c.PeerNode = "b"
	}))
	f.waitDown("peer-b")
	peer.Up()
	d := n.dials.Load()
	f.PeerSeen("c")
	time.Sleep(300 * time.Millisecond) // an observation window, not synchronisation
	if got := n.dials.Load(); got != d {
		t.Fatalf("another node's greeting made %d probes", got-d)
	}
	f.PeerSeen("b")
	f.waitDrained("peer-b")
	n.checkDelivered(peer, ms...)
}
