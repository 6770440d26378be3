package route

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"chainmail/archive"
	"chainmail/internal/config"
	"chainmail/internal/envelope"
	"chainmail/internal/store"
	"chainmail/internal/testutil"
	"chainmail/queue"
)

type peers map[string]string

func (p peers) PeerNode(c string) string { return p[c] }

type counts struct{ delivered, loops int }

func (c *counts) Delivered(string, bool) { c.delivered++ }
func (c *counts) LoopDetected(string)    { c.loops++ }

type rig struct {
	r   *Router
	a   *archive.Store
	q   *queue.Store
	m   *counts
	ctx context.Context
}

func newRig(t *testing.T, routes []config.Route, p peers) *rig {
	t.Helper()
	path := filepath.Join(t.TempDir(), "r.db")
	db, err := store.Open(path, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(); testutil.CheckBolt(t, path) })
	a, _ := archive.Open(db)
	q, _ := queue.Open(db)
	m := &counts{}
	r := New(routes, Deps{Node: "a", MaxHops: 3, Commit: db, Archive: a, Stage: a, Queue: q, Peers: p, Metrics: m})
	return &rig{r: r, a: a, q: q, m: m, ctx: context.Background()}
}

func item(body string, trace envelope.Trace, rcpt ...string) *archive.Item {
	b := []byte(body)
	it := &archive.Item{Hash: sha256.Sum256(b), Body: envelope.BodyFromBytes(b), Trace: trace,
		Envelope: envelope.Envelope{MailFrom: "j@example.com", RcptTo: rcpt},
		Receipt:  envelope.Receipt{Node: "a", Listener: "journal", Received: time.Now()}}
	archive.Prepare(it)
	return it
}

func hops(nodes ...string) envelope.Trace {
	var t envelope.Trace
	for _, n := range nodes {
		t = append(t, envelope.Hop{Node: n, Received: time.Now()})
	}
	return t
}

var chain = []config.Route{
	{Name: "journal", From: []string{"journal"}, Actions: []string{"archive", "forward:to-b", "forward:to-c"}},
	{Name: "copy", From: []string{"journal"}, Actions: []string{"forward:to-b"}}, // united, not doubled
	{Name: "ha", From: []string{"ha"}, Actions: []string{"archive"}},
	{Name: "off", From: []string{"ha"}, Actions: []string{"forward:to-b"}, Disabled: true},
}

func TestDeliverArchivesAndQueuesOnce(t *testing.T) {
	g := newRig(t, chain, peers{"to-b": "b", "to-c": "c"})
	out, err := g.r.Deliver(g.ctx, "journal", item("Subject: 1\r\n\r\nx\r\n", nil, "r@x"))
	if err != nil || !out.New || fmt.Sprint(out.Forwarded) != "[to-b to-c]" || len(out.Routes) != 2 {
		t.Fatalf("%+v %v", out, err)
	}
	// The same message again: stored once, not queued again.
	out, err = g.r.Deliver(g.ctx, "journal", item("Subject: 1\r\n\r\nx\r\n", nil, "r@x"))
	if err != nil || out.New || len(out.Forwarded) != 0 {
		t.Fatalf("duplicate: %+v %v", out, err)
	}
	// New recipients re-queue (the peers must learn them), whether the
	// first copy was delivered (to-b) or is still queued (to-c: the peer
	// gets it twice and deduplicates).
	g.q.Ack(g.ctx, "to-b", 1)
	out, _ = g.r.Deliver(g.ctx, "journal", item("Subject: 1\r\n\r\nx\r\n", nil, "bcc@x"))
	if fmt.Sprint(out.Forwarded) != "[to-b to-c]" || g.q.Stats("to-b").Depth != 1 || g.q.Stats("to-c").Depth != 2 {
		t.Fatalf("new recipients: %+v, queues %+v %+v", out, g.q.Stats("to-b"), g.q.Stats("to-c"))
	}
	// ha takes archive only; the disabled route adds nothing.
	out, _ = g.r.Deliver(g.ctx, "ha", item("Subject: 2\r\n\r\ny\r\n", hops("b")))
	if len(out.Forwarded) != 0 || !out.New {
		t.Fatalf("ha: %+v", out)
	}
	if _, err := g.r.Deliver(g.ctx, "nowhere", item("Subject: 3\r\n\r\n", nil)); !errors.Is(err, ErrNoRoute) {
		t.Fatalf("unrouted listener: %v", err)
	}
}

func TestLoopDetection(t *testing.T) {
	g := newRig(t, chain, peers{"to-b": "b"}) // to-c's peer is not known yet
	cases := []struct {
		name      string
		trace     envelope.Trace
		forwarded string
		loop      bool
		err       error
	}{
		{"fresh", nil, "[to-b to-c]", false, nil},
		{"peer b already on the path", hops("b"), "[to-c]", true, nil},
		{"this node on the path", hops("x", "a"), "[]", true, nil},
		{"max_hops exactly", hops("x", "y", "z"), "[to-b to-c]", false, nil},
		{"over max_hops", hops("w", "x", "y", "z"), "", false, ErrTooManyHops},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := g.r.Deliver(g.ctx, "journal", item(fmt.Sprintf("Subject: %d\r\n\r\n", i), tc.trace, "r@x"))
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if err == nil && (fmt.Sprint(out.Forwarded) != tc.forwarded || out.Loop != tc.loop || !out.New) {
				t.Fatalf("%+v", out)
			}
		})
	}
	if g.m.loops != 2 {
		t.Fatalf("loops counted %d, want 2", g.m.loops)
	}
	if st := g.a.Stats(); st.Messages != 4 {
		t.Fatalf("archived %d, want 4 (looping messages are archived, the refused one is not)", st.Messages)
	}
}

func TestQueueFullRefusesWholeMessage(t *testing.T) {
	g := newRig(t, chain, peers{})
	g.q.SetLimit("to-c", 1)
	if _, err := g.r.Deliver(g.ctx, "journal", item("Subject: 1\r\n\r\n", nil, "r@x")); err != nil {
		t.Fatal(err)
	}
	_, err := g.r.Deliver(g.ctx, "journal", item("Subject: 2\r\n\r\n", nil, "r@x"))
	if !errors.Is(err, ErrQueueFull) || !errors.Is(err, queue.ErrFull) {
		t.Fatalf("err %v", err)
	}
	// Nothing of it stayed: not archived, not queued for to-b either.
	if st := g.a.Stats(); st.Messages != 1 || g.q.Stats("to-b").Depth != 1 {
		t.Fatalf("partial effects: %+v %+v", st, g.q.Stats("to-b"))
	}
}

func TestSetRoutesLive(t *testing.T) {
	g := newRig(t, chain, peers{})
	if !g.r.Takes("ha") {
		t.Fatal("ha not taken")
	}
	g.r.SetRoutes(chain[:2])
	if g.r.Takes("ha") {
		t.Fatal("ha still taken after its route went")
	}
}
