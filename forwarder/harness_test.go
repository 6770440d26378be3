package forwarder_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	bolt "go.etcd.io/bbolt"

	"chainmail/archive"
	"chainmail/forwarder"
	"chainmail/internal/config"
	"chainmail/internal/envelope"
	"chainmail/internal/store"
	"chainmail/internal/testutil"
	"chainmail/queue"
)

// wait bounds every condition a test waits for; generous, because -race on
// two shared cores is slow, and never reached when things work.
const wait = 20 * time.Second

// node is one chainmail node's stores, on a bbolt file of the test's own.
type node struct {
	t     *testing.T
	id    string
	db    *store.DB
	arch  *archive.Store
	q     *queue.Store
	logs  *testutil.SyncBuffer
	dials atomic.Int64
	next  int
}

func newNode(t *testing.T, id string) *node {
	t.Helper()
	path := filepath.Join(t.TempDir(), "chainmail.db")
	db, err := store.Open(path, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	arch, err := archive.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, id: id, db: db, arch: arch, q: q, logs: &testutil.SyncBuffer{}}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Error(err)
		}
		testutil.CheckBolt(t, path)
		if t.Failed() {
			t.Logf("forwarder log:\n%s", n.logs.String())
		}
	})
	return n
}

// msg is one archived message.
type msg struct {
	hash  envelope.Hash
	raw   []byte
	rcpt  string
	more  []string // further envelope recipients
	recv  time.Time
	trace envelope.Trace
}

// messages makes count distinct messages, each with its own envelope
// recipient so that a peer's behaviour can single one out.
func (n *node) messages(count int) []*msg {
	out := make([]*msg, count)
	for i := range out {
		n.next++
		k := n.next
		rcpt := fmt.Sprintf("r%d@example.org", k)
		raw := fmt.Appendf(nil, "Message-ID: <%d.%s@test>\r\nFrom: s@example.org\r\nTo: %s\r\nSubject: message %d\r\n\r\n.line with a leading dot\r\nbody %d\r\n",
			k, strings.ReplaceAll(n.t.Name(), "/", "."), rcpt, k, k)
		out[i] = &msg{hash: sha256.Sum256(raw), raw: raw, rcpt: rcpt, recv: time.Now().UTC()}
	}
	return out
}

// viaNode gives m a trace as if it had reached this node from another.
func (m *msg) viaNode(id string) *msg {
	m.trace = append(m.trace, envelope.Hop{Node: id, Hash: m.hash, Received: m.recv.Add(-time.Second)})
	return m
}

// put archives ms and queues them for every connection in conns, in one
// write transaction, as route does.
func (n *node) put(conns []string, ms ...*msg) {
	n.t.Helper()
	err := n.db.Update(context.Background(), func(tx *bolt.Tx) error {
		for _, m := range ms {
			it := &archive.Item{
				Hash:     m.hash,
				Body:     envelope.BodyFromBytes(m.raw),
				Envelope: envelope.Envelope{MailFrom: "s@example.org", RcptTo: append([]string{m.rcpt}, m.more...)},
				Receipt:  envelope.Receipt{Node: n.id, Listener: "journal", Received: m.recv},
				Trace:    m.trace,
			}
			archive.Prepare(it)
			if _, err := n.arch.PutTx(tx, it); err != nil {
				return err
			}
			for _, c := range conns {
				if err := n.q.EnqueueTx(tx, c, m.hash); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		n.t.Fatal(err)
	}
}

// conn is a connection to addr with test timings.
func conn(name, addr string, edit func(*config.Connection)) config.Connection {
	var c config.Connection
	c.Defaults()
	c.Name, c.Address = name, addr
	c.ProbeInterval = 50 * time.Millisecond
	c.RetryMin, c.RetryMax = 20*time.Millisecond, 40*time.Millisecond
	c.Timeout = 10 * time.Second
	if edit != nil {
		edit(&c)
	}
	return c
}

func (n *node) deps(q forwarder.Queue, a forwarder.Archive) forwarder.Deps {
	log := logrus.New()
	log.SetOutput(n.logs)
	log.SetLevel(logrus.DebugLevel)
	log.SetFormatter(&logrus.TextFormatter{TimestampFormat: "15:04:05.000000", FullTimestamp: true})
	if q == nil {
		q = n.q
	}
	if a == nil {
		a = n.arch
	}
	return forwarder.Deps{
		Node: n.id, Queue: q, Archive: a, Log: logrus.NewEntry(log),
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			n.dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
}

// running is a forwarder whose Run the test started.
type running struct {
	*forwarder.Forwarder
	n      *node
	cancel context.CancelFunc
	done   chan struct{}
}

func (n *node) start(cfgs ...config.Connection) *running {
	n.t.Helper()
	return n.startWith(n.deps(nil, nil), cfgs...)
}

func (n *node) startWith(deps forwarder.Deps, cfgs ...config.Connection) *running {
	n.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Forwarder: forwarder.New(cfgs, deps), n: n, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		if err := r.Run(ctx); err != nil {
			n.t.Errorf("Run: %v", err)
		}
	}()
	n.t.Cleanup(func() { r.stop(n.t) })
	return r
}

// stop cancels Run and waits, boundedly, for it to return.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(wait):
		t.Fatalf("Run did not return within %s of its context's end", wait)
	}
}

func (r *running) status(name string) forwarder.Status {
	r.n.t.Helper()
	s, ok := r.StatusOf(name)
	if !ok {
		r.n.t.Fatalf("no connection %q", name)
	}
	return s
}

// waitState waits until the connection is in state.
func (r *running) waitState(name, state string) forwarder.Status {
	r.n.t.Helper()
	var s forwarder.Status
	testutil.WaitFor(r.n.t, wait, name+" "+state, func() bool {
		s = r.status(name)
		return s.State == state
	})
	return s
}

// waitDown waits until the connection is down for a reason: it starts
// down, before its first probe, with no last_error.
func (r *running) waitDown(name string) forwarder.Status {
	r.n.t.Helper()
	var s forwarder.Status
	testutil.WaitFor(r.n.t, wait, name+" down with a last_error", func() bool {
		s = r.status(name)
		return s.State == forwarder.StateDown && s.LastError != ""
	})
	return s
}

// waitDrained waits until the queue is empty and the connection up.
func (r *running) waitDrained(name string) forwarder.Status {
	r.n.t.Helper()
	var s forwarder.Status
	testutil.WaitFor(r.n.t, wait, name+" drained and up", func() bool {
		s = r.status(name)
		return s.State == forwarder.StateUp && s.QueueDepth == 0
	})
	return s
}

var traceField = []byte(envelope.TraceHeader + ": ")

// splitTrace parses the X-Chainmail-Trace fields in front of a forwarded
// message and returns them with the bytes that follow.
func splitTrace(t *testing.T, data []byte) (envelope.Trace, []byte) {
	t.Helper()
	var tr envelope.Trace
	for bytes.HasPrefix(data, traceField) {
		end := bytes.Index(data, []byte("\r\n"))
		if end < 0 {
			t.Fatalf("unterminated trace field in %q", data)
		}
		h, err := envelope.ParseHop(string(data[len(traceField):end]))
		if err != nil {
			t.Fatalf("trace field %q: %v", data[:end], err)
		}
		tr = append(tr, h)
		data = data[end+2:]
	}
	return tr, data
}

// checkDelivered asserts that each of ms was accepted by the peer exactly
// once, byte-identical after its trace, with one trace field per hop: the
// message's own hops first, this node's last.
func (n *node) checkDelivered(peer *testutil.FakePeer, ms ...*msg) {
	n.t.Helper()
	byHash := map[envelope.Hash][]testutil.Received{}
	for _, r := range peer.Accepted() {
		tr, body := splitTrace(n.t, r.Data)
		h := envelope.Hash(sha256.Sum256(body))
		if len(tr) == 0 || tr[len(tr)-1].Hash != h {
			n.t.Fatalf("accepted message %s: trace %+v does not end with this node's hop for it", h.Short(), tr)
		}
		byHash[h] = append(byHash[h], r)
	}
	for _, m := range ms {
		got := byHash[m.hash]
		if len(got) != 1 {
			n.t.Errorf("message %s (%s) accepted %d times, want exactly once", m.hash.Short(), m.rcpt, len(got))
			continue
		}
		r := got[0]
		tr, body := splitTrace(n.t, r.Data)
		if !bytes.Equal(body, m.raw) {
			n.t.Errorf("message %s: bytes after the trace differ from the archived bytes:\n%q\n%q", m.hash.Short(), body, m.raw)
		}
		want := append(append(envelope.Trace(nil), m.trace...), envelope.Hop{Node: n.id, Hash: m.hash, Received: m.recv})
		if len(tr) != len(want) {
			n.t.Errorf("message %s: trace %+v, want %+v", m.hash.Short(), tr, want)
			continue
		}
		for i := range want {
			if tr[i].Node != want[i].Node || tr[i].Hash != want[i].Hash || !tr[i].Received.Equal(want[i].Received) {
				n.t.Errorf("message %s: hop %d is %+v, want %+v", m.hash.Short(), i, tr[i], want[i])
			}
		}
		if r.From != "s@example.org" || len(r.To) != 1 || r.To[0] != m.rcpt {
			n.t.Errorf("message %s: envelope %s → %v, want s@example.org → [%s]", m.hash.Short(), r.From, r.To, m.rcpt)
		}
	}
}

// entries are a connection's queued (or dead) entries, by hash.
func (n *node) entries(connName string, dead bool) map[envelope.Hash]queue.Entry {
	n.t.Helper()
	list, err := n.q.List(connName, dead, 1<<20)
	if err != nil {
		n.t.Fatal(err)
	}
	out := map[envelope.Hash]queue.Entry{}
	for _, e := range list {
		out[e.Hash] = e
	}
	return out
}

// forRcpt is a behaviour that applies act to the transactions of the
// message sent to rcpt, at step, and accepts everything else.
func forRcpt(rcpt string, step testutil.Step, act func() testutil.Action) testutil.Behaviour {
	return func(c testutil.Call) testutil.Action {
		if c.Step == step && len(c.To) > 0 && c.To[0] == rcpt {
			return act()
		}
		return testutil.Action{}
	}
}

var goroutineID = regexp.MustCompile(`(?m)^goroutine (\d+) \[`)

// goroutines maps the id of every live goroutine to its stack.
func goroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		if m := goroutineID.FindStringSubmatch(g); m != nil {
			out[m[1]] = g
		}
	}
	return out
}

// checkNoLeaks fails the test if goroutines started during it outlive it.
// Register it first, so that it runs after every other cleanup. It needs
// the test not to run in parallel with others.
func checkNoLeaks(t *testing.T) {
	before := goroutines()
	t.Cleanup(func() {
		var leaked []string
		deadline := time.Now().Add(wait)
		for {
			leaked = leaked[:0]
			for id, stack := range goroutines() {
				if _, ok := before[id]; !ok {
					leaked = append(leaked, stack)
				}
			}
			if len(leaked) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if len(leaked) > 0 {
			t.Errorf("%d goroutines outlived the test:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
	})
}
