package route

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/sirupsen/logrus"
	bolt "go.etcd.io/bbolt"

	"chainmail/archive"
	"chainmail/internal/config"
	"chainmail/internal/envelope"
	"chainmail/queue"
)

// Errors the listener turns into SMTP replies.
var (
	// ErrTooManyHops: the trace is longer than max_hops (554 5.4.6).
	ErrTooManyHops = errors.New("too many hops")
	// ErrQueueFull: a connection's queue is at its limit (452 4.3.1).
	ErrQueueFull = errors.New("queue full")
	// ErrNoRoute: no enabled route takes from the listener (451 4.3.0;
	// configuration validation makes this unreachable, but a live change
	// may race a session).
	ErrNoRoute = errors.New("no route")
)

// Committer runs a function in a durable, group-committed transaction.
type Committer interface {
	Update(ctx context.Context, fn func(*bolt.Tx) error) error
}

// Archiver stores a message inside a transaction.
type Archiver interface {
	PutTx(tx *bolt.Tx, it *archive.Item) (archive.PutResult, error)
}

// Enqueuer queues a reference to an archived message for a connection. It
// returns an error wrapping queue.ErrFull when the queue is at its limit.
type Enqueuer interface {
	EnqueueTx(tx *bolt.Tx, connection string, h envelope.Hash) error
}

// Stager writes the bytes of a large message in transactions of their own
// ahead of the one that archives it (archive.Store.Stage), so that no
// transaction holds a whole large message in memory. After Stage, the
// archiving transaction commits or Unstage undoes it.
type Stager interface {
	Stage(ctx context.Context, it *archive.Item) error
	Unstage(it *archive.Item)
}

// Peers tells which node a connection leads to ("" while unknown).
type Peers interface {
	PeerNode(connection string) string
}

// Metrics observes outcomes; nil methods are fine to skip.
type Metrics interface {
	Delivered(route string, isNew bool)
	LoopDetected(listener string)
}

// Deps are what a Router needs.
type Deps struct {
	Node    string
	MaxHops int
	Commit  Committer
	Archive Archiver
	Stage   Stager   // nil: a message's bytes go in its one transaction
	Queue   Enqueuer // nil: forwarding is not available (no connections)
	Peers   Peers
	Metrics Metrics
	Log     *logrus.Entry
}

// Router applies the routing table. The table can be replaced live.
type Router struct {
	deps  Deps
	table atomic.Pointer[table]
}

type table struct {
	byListener map[string]plan
}

// plan is the united actions of every route taking from one listener.
type plan struct {
	routes   []string
	archive  bool
	forwards []string
}

// New builds a Router over routes.
func New(routes []config.Route, deps Deps) *Router {
	r := &Router{deps: deps}
	r.SetRoutes(routes)
	return r
}

// SetRoutes replaces the routing table; sessions in flight keep the plan
// they started with.
func (r *Router) SetRoutes(routes []config.Route) {
	t := &table{byListener: map[string]plan{}}
	for _, rt := range routes {
		if rt.Disabled {
			continue
		}
		for _, l := range rt.From {
			p := t.byListener[l]
			p.routes = append(p.routes, rt.Name)
			for _, a := range rt.Actions {
				switch {
				case a == config.ActionArchive:
					p.archive = true
				case strings.HasPrefix(a, config.ActionForward):
					c := strings.TrimPrefix(a, config.ActionForward)
					if !slices.Contains(p.forwards, c) {
						p.forwards = append(p.forwards, c)
					}
				}
			}
			t.byListener[l] = p
		}
	}
	r.table.Store(t)
}

// Takes tells whether some enabled route takes from listener.
func (r *Router) Takes(listener string) bool {
	_, ok := r.table.Load().byListener[listener]
	return ok
}

// Outcome is what Deliver did, for the session's log line.
type Outcome struct {
	Routes    []string
	New       bool     // archived now (false: already archived, merged)
	Forwarded []string // connections the message was queued for
	Loop      bool     // the trace named this node or a skipped peer
}

// Deliver archives and queues one message durably. It returns after the
// transaction is committed, or with an error and nothing stored.
func (r *Router) Deliver(ctx context.Context, listener string, it *archive.Item) (Outcome, error) {
	p, ok := r.table.Load().byListener[listener]
	if !ok {
		return Outcome{}, fmt.Errorf("route: listener %s: %w", listener, ErrNoRoute)
	}
	if len(it.Trace) > r.deps.MaxHops {
		return Outcome{}, fmt.Errorf("route: message %s: %d hops, max_hops is %d: %w", it.Hash.Short(), len(it.Trace), r.deps.MaxHops, ErrTooManyHops)
	}
	out := Outcome{Routes: p.routes}
	selfInTrace := it.Trace.Has(r.deps.Node)
	var targets []string
	for _, c := range p.forwards {
		if selfInTrace {
			out.Loop = true
			continue
		}
		if peer := r.peerNode(c); peer != "" && it.Trace.Has(peer) {
			out.Loop = true
			continue
		}
		targets = append(targets, c)
	}
	if len(targets) > 0 && r.deps.Queue == nil {
		return Outcome{}, fmt.Errorf("route: listener %s: forwarding is not available", listener)
	}
	if r.deps.Stage != nil {
		if err := r.deps.Stage.Stage(ctx, it); err != nil {
			return Outcome{}, err
		}
	}
	err := r.deps.Commit.Update(ctx, func(tx *bolt.Tx) error {
		out.Forwarded = out.Forwarded[:0]
		res, err := r.deps.Archive.PutTx(tx, it)
		if err != nil {
			return err
		}
		out.New = res.New
		if !res.New && !res.NewRecipients {
			return nil // already archived and already queued when it first came
		}
		for _, c := range targets {
			if err := r.deps.Queue.EnqueueTx(tx, c, it.Hash); err != nil {
				if errors.Is(err, queue.ErrFull) {
					return fmt.Errorf("route: forward:%s: %w (%w)", c, ErrQueueFull, err)
				}
				return fmt.Errorf("route: forward:%s: %w", c, err)
			}
			out.Forwarded = append(out.Forwarded, c)
		}
		return nil
	})
	if err != nil {
		if r.deps.Stage != nil {
			r.deps.Stage.Unstage(it)
		}
		return Outcome{}, err
	}
	if m := r.deps.Metrics; m != nil {
		for _, name := range p.routes {
			m.Delivered(name, out.New)
		}
		if out.Loop {
			m.LoopDetected(listener)
		}
	}
	if out.Loop && r.deps.Log != nil {
		r.deps.Log.WithFields(logrus.Fields{"listener": listener, "msg": it.Hash.Short(), "trace": traceNodes(it.Trace)}).
			Info("loop detected: not forwarded to nodes already on the path")
	}
	return out, nil
}

func (r *Router) peerNode(c string) string {
	if r.deps.Peers == nil {
		return ""
	}
	return r.deps.Peers.PeerNode(c)
}

func traceNodes(t envelope.Trace) string {
	nodes := make([]string, len(t))
	for i, h := range t {
		nodes[i] = h.Node
	}
	return strings.Join(nodes, ">")
}
