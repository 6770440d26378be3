package forwarder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"chainmail/archive"
	"chainmail/internal/config"
	"chainmail/queue"
)

// Queue is what the forwarder needs of the queues.
type Queue interface {
	Wake(conn string) <-chan struct{}
	Due(conn string, now time.Time, max int, busy func(uint64) bool) ([]queue.Entry, error)
	NextAttempt(conn string) time.Time
	Ack(ctx context.Context, conn string, seqs ...uint64) error
	Drop(ctx context.Context, conn string, seq uint64) error
	Fail(ctx context.Context, conn string, seq uint64, reason string, next time.Time, dead bool) error
	Stats(conn string) queue.Stats
	PeerNode(conn string) string
	SetPeerNode(ctx context.Context, conn, node string) error
	SetLimit(conn string, limit int)
	Retry(ctx context.Context, conn string) (int, error)
	Purge(ctx context.Context, conn string) (int, error)
	List(conn string, dead bool, limit int) ([]queue.Entry, error)
}

// Archive is what the forwarder reads of the archive.
type Archive interface {
	Get(ctx context.Context, id string) (*archive.Meta, error)
	OpenMeta(ctx context.Context, m *archive.Meta) (io.ReadCloser, int64, error)
}

// Deps are the forwarder's collaborators.
type Deps struct {
	Node    string
	Queue   Queue
	Archive Archive
	Log     *logrus.Entry
	Metrics *Metrics
	// Dial opens connections to peers; nil uses a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Forwarder runs every connection.
type Forwarder struct {
	deps Deps

	mu    sync.Mutex
	conns map[string]*conn
	ctx   context.Context
	wg    sync.WaitGroup
}

// New prepares the connections; Run starts them.
func New(cfgs []config.Connection, deps Deps) *Forwarder {
	if deps.Dial == nil {
		deps.Dial = (&net.Dialer{}).DialContext
	}
	f := &Forwarder{deps: deps, conns: map[string]*conn{}}
	for _, c := range cfgs {
		f.conns[c.Name] = f.newConn(c)
	}
	return f
}

// Run drives every connection until ctx ends, then waits for them. A
// message in flight is abandoned, not waited for (a hung peer would hold
// the shutdown for the command timeout): its entry stays queued, and the
// peer deduplicates it if it had it all.
func (f *Forwarder) Run(ctx context.Context) error {
	f.mu.Lock()
	f.ctx = ctx
	for _, c := range f.conns {
		f.start(c)
	}
	f.mu.Unlock()
	<-ctx.Done()
	// Once this passes the lock, start (always called under it) sees ctx
	// ended and starts nothing: no wg.Add can race the Wait, and no
	// connection a SetConnections adds meanwhile outlives Run.
	f.mu.Lock()
	f.mu.Unlock()
	f.wg.Wait()
	return nil
}

// start runs c's loop; f.mu is held.
func (f *Forwarder) start(c *conn) {
	if f.ctx.Err() != nil {
		return // Run is ending
	}
	cctx, cancel := context.WithCancel(f.ctx)
	c.cancel = cancel
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer close(c.done)
		c.run(cctx)
	}()
}

// SetConnections applies a new list of connections live: new ones start,
// removed ones stop (abandoning a message in flight, as Run does), changed
// ones restart. Their queues stay on disk.
func (f *Forwarder) SetConnections(cfgs []config.Connection) {
	f.mu.Lock()
	defer f.mu.Unlock()
	want := map[string]config.Connection{}
	for _, c := range cfgs {
		want[c.Name] = c
	}
	var stopped []*conn
	for name, c := range f.conns {
		if nc, ok := want[name]; !ok || fmt.Sprintf("%+v", nc) != fmt.Sprintf("%+v", c.cfg) {
			stopped = append(stopped, c)
			delete(f.conns, name)
		}
	}
	for _, c := range stopped {
		if c.cancel != nil {
			c.cancel()
			<-c.done
		}
	}
	for name, cfg := range want {
		if _, ok := f.conns[name]; ok {
			continue
		}
		c := f.newConn(cfg)
		f.conns[name] = c
		if f.ctx != nil {
			f.start(c)
		}
	}
}

func (f *Forwarder) get(name string) (*conn, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.conns[name]
	return c, ok
}

// PeerNode is the node id of a connection's peer: configured, or learned
// from its greeting ("" while unknown). Route uses it for loop detection.
func (f *Forwarder) PeerNode(name string) string {
	c, ok := f.get(name)
	if !ok {
		return ""
	}
	if c.cfg.PeerNode != "" {
		return c.cfg.PeerNode
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peerNode
}

// PeerSeen is told that node has just greeted one of this node's ha
// listeners. A peer that sends to us is up, so each connection to it that
// is down probes now rather than at its next probe_interval: a node that
// comes back gets its backlog the moment it starts replicating its own.
// A false claim costs one probe.
func (f *Forwarder) PeerSeen(node string) {
	if node == "" {
		return
	}
	f.mu.Lock()
	list := make([]*conn, 0, len(f.conns))
	for _, c := range f.conns {
		list = append(list, c)
	}
	f.mu.Unlock()
	for _, c := range list {
		c.mu.Lock()
		// A peer never reached has no known id yet: it may be this one.
		back := c.state == StateDown && (c.cfg.PeerNode == node || c.cfg.PeerNode == "" && (c.peerNode == node || c.peerNode == ""))
		c.mu.Unlock()
		if back {
			c.log.WithField("peer_node", node).Debug("the peer greeted our ha listener; probing it now")
			c.kickNow()
		}
	}
}

// Pause stops sending on a connection until Resume; its queue keeps
// filling.
func (f *Forwarder) Pause(name string) error { return f.control(name, true) }

// Resume undoes Pause.
func (f *Forwarder) Resume(name string) error { return f.control(name, false) }

func (f *Forwarder) control(name string, pause bool) error {
	c, ok := f.get(name)
	if !ok {
		return fmt.Errorf("%w: %q", ErrNoConnection, name)
	}
	c.mu.Lock()
	c.paused = pause
	c.mu.Unlock()
	c.kickNow()
	return nil
}

// Kick makes a connection try at once: a down peer is probed now, a
// sending one looks at its queue again (after an operator's retry).
func (f *Forwarder) Kick(name string) error {
	c, ok := f.get(name)
	if !ok {
		return fmt.Errorf("%w: %q", ErrNoConnection, name)
	}
	c.kickNow()
	return nil
}

// Status is one connection as the API shows it.
type Status struct {
	Name        string    `json:"name"`
	Address     string    `json:"address"`
	PeerNode    string    `json:"peer_node"`
	State       string    `json:"state"`
	Paused      bool      `json:"paused"` // the operator's setting; state follows it
	QueueDepth  int64     `json:"queue_depth"`
	OldestAgeS  float64   `json:"oldest_age_s"`
	Delivered   int64     `json:"delivered"`
	Failed      int64     `json:"failed"`
	DeadLetters int64     `json:"dead_letters"`
	Rate        float64   `json:"rate"`  // messages/s over the last 10 s
	ETAS        float64   `json:"eta_s"` // backlog / rate; 0 when unknown or empty
	Concurrency int       `json:"concurrency"`
	Sessions    int       `json:"sessions"`
	LastError   string    `json:"last_error"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// Status lists every connection, by name.
func (f *Forwarder) Status() []Status {
	f.mu.Lock()
	list := make([]*conn, 0, len(f.conns))
	for _, c := range f.conns {
		list = append(list, c)
	}
	f.mu.Unlock()
	out := make([]Status, 0, len(list))
	for _, c := range list {
		out = append(out, c.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// StatusOf is one connection's status.
func (f *Forwarder) StatusOf(name string) (Status, bool) {
	c, ok := f.get(name)
	if !ok {
		return Status{}, false
	}
	return c.status(), true
}

// Retry revives a connection's dead letters, makes every deferred entry due
// now and wakes the connection (a down peer is probed at once). It returns
// how many dead letters were revived.
func (f *Forwarder) Retry(ctx context.Context, name string) (int, error) {
	c, ok := f.get(name)
	if !ok {
		return 0, fmt.Errorf("%w: %q", ErrNoConnection, name)
	}
	n, err := f.deps.Queue.Retry(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("forwarder: retry %s: %w", name, err)
	}
	c.kickNow()
	c.log.WithField("revived", n).Info("operator retry: dead letters revived, deferred entries due now")
	return n, nil
}

// Purge drops a connection's queue and dead letters; the messages stay in
// the archive. It returns how many entries were dropped.
func (f *Forwarder) Purge(ctx context.Context, name string) (int, error) {
	c, ok := f.get(name)
	if !ok {
		return 0, fmt.Errorf("%w: %q", ErrNoConnection, name)
	}
	n, err := f.deps.Queue.Purge(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("forwarder: purge %s: %w", name, err)
	}
	c.log.WithField("dropped", n).Warn("operator purge: queue and dead letters dropped (messages stay archived)")
	return n, nil
}

// Entries lists up to limit entries of a connection's queue, or of its
// dead-letter list.
func (f *Forwarder) Entries(name string, dead bool, limit int) ([]queue.Entry, error) {
	if _, ok := f.get(name); !ok {
		return nil, fmt.Errorf("%w: %q", ErrNoConnection, name)
	}
	return f.deps.Queue.List(name, dead, limit)
}

// ErrNoConnection: no connection by that name.
var ErrNoConnection = errors.New("no such connection")
