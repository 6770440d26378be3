package e2e

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"chainmail/internal/testutil"
)

// load sends distinct messages to addr from several goroutines until stop is
// closed or max messages are sent, and returns those that got a 250.
func load(t *testing.T, addr, prefix string, workers, max int, stop <-chan struct{}) [][]byte {
	var mu sync.Mutex
	var acked [][]byte
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				i := next.Add(1)
				if i > int64(max) {
					return
				}
				m := msgN(prefix, int(i))
				if r, err := testutil.Send(addr, "j@example.com", []string{"r@example.org"}, m); err == nil && r.Code == 250 {
					mu.Lock()
					acked = append(acked, m)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return acked
}

// TestPeerKilledUnderLoadCatchesUp: b is killed -9 while a takes journal
// traffic; a's backlog builds; b restarts and is brought up to date, with
// no message lost and none duplicated.
func TestPeerKilledUnderLoadCatchesUp(t *testing.T) {
	t.Parallel()
	a, b := newHANode(t, "a"), newHANode(t, "b")
	a.peers = []string{"b"}
	all := map[string]*haNode{"a": a, "b": b}
	na := testutil.StartNode(t, a.config(all))
	nb := testutil.StartNode(t, b.config(all))

	stop := make(chan struct{})
	var acked [][]byte
	done := make(chan struct{})
	go func() { acked = load(t, a.journal, "load", 8, 3000, stop); close(done) }()
	testutil.WaitFor(t, 30*time.Second, "b to receive some replicated mail", func() bool { return nb.Digest().Count >= 50 })
	nb.Kill()
	testutil.WaitFor(t, 30*time.Second, "a to see b down with a backlog", func() bool {
		c := connections(t, na)["to-b"]
		return c.State == "down" && c.QueueDepth >= 100
	})
	close(stop)
	<-done
	nb.Restart()
	want := testutil.DigestOf(acked)
	testutil.WaitFor(t, 60*time.Second, "b to catch up", func() bool { return nb.Digest() == want })
	if d := na.Digest(); d != want {
		t.Fatalf("a lost acknowledged mail: %+v, want %+v", d, want)
	}
	testutil.WaitFor(t, 10*time.Second, "a's queue to drain", func() bool { return connections(t, na)["to-b"].QueueDepth == 0 })
	if c := connections(t, na)["to-b"]; c.State != "up" {
		t.Fatalf("after catch-up: %+v", c)
	}
}

// TestSenderKilledMidForward: a is killed -9 while forwarding a backlog;
// after a restart b holds every message exactly once (a 250 lost on the
// wire costs a dedupe on b, not a duplicate).
func TestSenderKilledMidForward(t *testing.T) {
	t.Parallel()
	a, b := newHANode(t, "a"), newHANode(t, "b")
	a.peers = []string{"b"}
	all := map[string]*haNode{"a": a, "b": b}
	na := testutil.StartNode(t, a.config(all))
	// b is not running yet: a builds a backlog.
	acked := load(t, a.journal, "mid", 8, 1500, nil)
	nb := testutil.StartNode(t, b.config(all))
	testutil.WaitFor(t, 30*time.Second, "forwarding to be under way", func() bool { return nb.Digest().Count >= 100 })
	na.Kill()
	na.Restart()
	want := testutil.DigestOf(acked)
	testutil.WaitFor(t, 60*time.Second, "b to hold everything", func() bool { return nb.Digest() == want })
	testutil.WaitFor(t, 10*time.Second, "a's queue to drain", func() bool { return connections(t, na)["to-b"].QueueDepth == 0 })
	if d := na.Digest(); d != want {
		t.Fatalf("a: %+v, want %+v", d, want)
	}
}

// TestQueueFullAnswers452 and the dead-letter path: a peer that refuses a
// message permanently dead-letters it after max_retries; retry through the
// API delivers it once the peer accepts.
func TestQueueFullAndDeadLetters(t *testing.T) {
	t.Parallel()
	t.Run("queue full", func(t *testing.T) {
		t.Parallel()
		a, b := newHANode(t, "a"), newHANode(t, "b")
		a.peers = []string{"b"}
		a.extra = ", queue_limit: 5"
		na := testutil.StartNode(t, a.config(map[string]*haNode{"a": a, "b": b})) // b never starts
		for i := range 5 {
			if r, err := testutil.Send(a.journal, "j@example.com", []string{"r@example.org"}, msgN("full", i)); err != nil || r.Code != 250 {
				t.Fatalf("message %d: %v %v", i, r, err)
			}
		}
		r, err := testutil.Send(a.journal, "j@example.com", []string{"r@example.org"}, msgN("full", 5))
		if err != nil || r.Code != 452 || r.Text[:5] != "4.3.1" {
			t.Fatalf("over queue_limit: %v %v, want 452 4.3.1", r, err)
		}
		if d := na.Digest(); d.Count != 5 {
			t.Fatalf("the refused message was archived anyway: %+v", d)
		}
	})
	t.Run("dead letter and retry", func(t *testing.T) {
		t.Parallel()
		a, b := newHANode(t, "a"), newHANode(t, "b")
		a.peers = []string{"b"}
		a.extra = ", max_retries: 2"
		all := map[string]*haNode{"a": a, "b": b}
		na := testutil.StartNode(t, a.config(all))
		// b's ha listener refuses anything over 1 KiB: a permanent 552.
		small := bytes.Replace([]byte(b.config(all)), []byte("role: ha,"), []byte("role: ha, max_message_size: 1KiB,"), 1)
		nb := testutil.StartNode(t, string(small))
		big := []byte("Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 76)+"\r\n", 60))
		if r, err := testutil.Send(a.journal, "j@example.com", []string{"r@example.org"}, big); err != nil || r.Code != 250 {
			t.Fatalf("send: %v %v", r, err)
		}
		testutil.WaitFor(t, 30*time.Second, "the message to be dead-lettered", func() bool {
			c := connections(t, na)["to-b"]
			return c.DeadLetters == 1 && c.QueueDepth == 0
		})
		if c := connections(t, na)["to-b"]; c.LastError == "" {
			t.Fatalf("no last_error: %+v", c)
		}
		// The operator raises b's limit and retries.
		nb.Stop()
		nb2 := testutil.StartNodeIn(t, nb.Dir, b.config(all))
		if status, body := na.Do("POST", "/api/v1/connections/to-b/retry", nil); status != 200 {
			t.Fatalf("retry: HTTP %d %s", status, body)
		}
		testutil.WaitFor(t, 30*time.Second, "b to receive the retried message", func() bool {
			return nb2.Digest() == testutil.DigestOf([][]byte{big})
		})
		// The ack trails the peer's 250 by up to the forwarder's ack interval.
		testutil.WaitFor(t, 10*time.Second, "the retried entry to leave the queue", func() bool {
			c := connections(t, na)["to-b"]
			return c.DeadLetters == 0 && c.QueueDepth == 0 && c.Delivered == 1
		})
	})
}

// TestForgedTraceOnJournalIsIgnored: a client outside the chain cannot stop
// replication by naming the peer in a trace field.
func TestForgedTraceOnJournalIsIgnored(t *testing.T) {
	t.Parallel()
	a, b := newHANode(t, "a"), newHANode(t, "b")
	a.peers = []string{"b"}
	all := map[string]*haNode{"a": a, "b": b}
	na := testutil.StartNode(t, a.config(all))
	nb := testutil.StartNode(t, b.config(all))
	body := []byte("From: x@example.com\r\nSubject: forged\r\n\r\nbody\r\n")
	forged := append([]byte(fmt.Sprintf("X-Chainmail-Trace: node=b; hash=%s; received=2026-01-01T00:00:00Z\r\nX-Chainmail-Trace: node=a; hash=%s; received=2026-01-01T00:00:00Z\r\n", testutil.HashOf(body), testutil.HashOf(body))), body...)
	if r, err := testutil.Send(a.journal, "j@example.com", []string{"r@example.org"}, forged); err != nil || r.Code != 250 {
		t.Fatalf("send: %v %v", r, err)
	}
	want := testutil.DigestOf([][]byte{body}) // archived without the forged fields
	testutil.WaitFor(t, 20*time.Second, "b to receive the message", func() bool { return nb.Digest() == want })
	if d := na.Digest(); d != want {
		t.Fatalf("a archived %+v, want the message without trace fields", d)
	}
	if got := na.Raw(testutil.HashOf(body)); !bytes.Equal(got, body) {
		t.Fatalf("archived bytes keep forged fields: %q", got)
	}
}
