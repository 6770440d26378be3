package forwarder

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/sirupsen/logrus"

	"chainmail/internal/config"
	"chainmail/queue"
)

// Connection states.
const (
	StateUp         = "up"
	StateDown       = "down"
	StateCatchingUp = "catching-up"
	StatePaused     = "paused"
)

// idleSession closes a worker's SMTP session after this long without work,
// so an idle chain holds no sessions open on its peers.
const idleSession = 10 * time.Second

// deferralsDown is how many consecutive 4xx replies, across messages, take
// the connection down: a peer deferring everything is a peer-level
// condition (its disk or queue is full), not a property of each message.
// The replies before it count as the messages' attempts; the one that
// reaches it, and those after it until the peer accepts a message, do not.
const deferralsDown = 3

type conn struct {
	cfg    config.Connection
	f      *Forwarder
	log    *logrus.Entry
	cancel context.CancelFunc
	done   chan struct{}
	kick   chan struct{}
	// finished wakes the feeder when a worker is done with an entry: one
	// it had to skip as in flight may have been deferred, and is due at
	// its backoff, not at the feeder's next idle tick.
	finished chan struct{}

	mu          sync.Mutex
	state       string
	paused      bool
	peerNode    string
	lastError   string
	lastErrorAt time.Time
	// inflight holds the entries handed to workers: true while being
	// sent, false once finished until the next Due starts (see busy).
	inflight  map[uint64]bool
	failed    int64
	sessions  int
	dialling  int // workers opening a session
	deferrals int
	rate      rateWindow
}

func (f *Forwarder) newConn(cfg config.Connection) *conn {
	f.deps.Queue.SetLimit(cfg.Name, cfg.QueueLimit)
	c := &conn{
		cfg:      cfg,
		f:        f,
		log:      f.deps.Log.WithFields(logrus.Fields{"component": "forwarder", "connection": cfg.Name, "peer": cfg.Address}),
		done:     make(chan struct{}),
		kick:     make(chan struct{}, 1),
		finished: make(chan struct{}, 1),
		state:    StateDown,
		inflight: map[uint64]bool{},
		peerNode: f.deps.Queue.PeerNode(cfg.Name),
	}
	if cfg.Disabled {
		c.paused = true
	}
	return c
}

func (c *conn) kickNow() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *conn) setState(s string) {
	c.mu.Lock()
	old := c.state
	c.state = s
	c.mu.Unlock()
	if old != s {
		c.log.WithFields(logrus.Fields{"from": old, "to": s}).Info("connection state changed")
		c.f.deps.Metrics.state(c.cfg.Name, s)
	}
}

func (c *conn) setError(err error) {
	c.mu.Lock()
	c.lastError = err.Error()
	c.lastErrorAt = time.Now().UTC()
	c.mu.Unlock()
}

func (c *conn) isPaused() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.paused
}

// run is the connection's loop: probe while down, deliver while up.
func (c *conn) run(ctx context.Context) {
	for ctx.Err() == nil {
		if c.isPaused() {
			c.setState(StatePaused)
			select {
			case <-ctx.Done():
				return
			case <-c.kick:
			}
			continue
		}
		if err := c.probe(ctx); err != nil {
			if ctx.Err() != nil {
				return // stopped mid-probe: not the peer's failure
			}
			// The error first: whoever sees the state down sees why.
			c.setError(err)
			c.setState(StateDown)
			c.log.WithError(err).Warn("peer unavailable; probing every probe_interval")
			c.waitProbe(ctx)
			continue
		}
		if c.f.deps.Queue.Stats(c.cfg.Name).Depth > 0 {
			c.setState(StateCatchingUp)
		} else {
			c.setState(StateUp)
		}
		err := c.deliver(ctx)
		if err != nil && ctx.Err() == nil {
			c.setError(err)
			c.setState(StateDown)
			c.log.WithError(err).Warn("connection lost; probing every probe_interval")
			c.waitProbe(ctx)
		}
	}
}

// waitProbe waits probe_interval, or less when kicked.
func (c *conn) waitProbe(ctx context.Context) {
	t := time.NewTimer(c.cfg.ProbeInterval)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-c.kick:
	}
}

// probe opens a session, checks the greeting and EHLO, and quits.
func (c *conn) probe(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	s, err := c.dial(pctx)
	if err != nil {
		return err
	}
	s.quit()
	return nil
}

// errDefersAll: the peer answered the last messages with 4xx only.
var errDefersAll = errors.New("peer defers every message")

// errConnection marks an error that takes the whole connection down.
type errConnection struct{ err error }

func (e errConnection) Error() string { return e.err.Error() }
func (e errConnection) Unwrap() error { return e.err }

// deliver runs the workers until the connection fails or ctx ends.
func (c *conn) deliver(ctx context.Context) error {
	dctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	work := make(chan queue.Entry)
	acks := make(chan uint64, maxAckBatch)
	ackerDone := make(chan struct{})
	go func() {
		defer close(ackerDone)
		c.acker(ctx, stop, acks)
	}()
	var wg sync.WaitGroup
	for range c.cfg.Concurrency {
		// Workers get the connection's context, not dctx: their sessions
		// close when it ends (shutdown, removal), but a sibling's failure
		// lets each finish the message it is sending — aborting it after
		// the peer had it all would only send it twice.
		wg.Go(func() { c.worker(ctx, stop, work, acks) })
	}
	wake := c.f.deps.Queue.Wake(c.cfg.Name)
	batch := 4 * c.cfg.Concurrency
feed:
	for dctx.Err() == nil {
		if c.isPaused() {
			break
		}
		c.forgetFinished()
		due, err := c.f.deps.Queue.Due(c.cfg.Name, time.Now(), batch, c.busy)
		if err != nil {
			stop(err)
			break
		}
		if len(due) == 0 {
			// Nothing to hand out. Caught up once nothing is in
			// flight either: what is left, if anything, waits for its
			// retry time, and is not a backlog being sent. (With more
			// sessions than entries, every entry is in flight at once.)
			if !c.sending() {
				c.setState(StateUp)
			}
			wait := time.Second
			if na := c.f.deps.Queue.NextAttempt(c.cfg.Name); !na.IsZero() {
				wait = min(max(time.Until(na), 10*time.Millisecond), wait)
			}
			t := time.NewTimer(wait)
			select {
			case <-dctx.Done():
			case <-wake:
			case <-c.kick:
			case <-c.finished:
			case <-t.C:
			}
			t.Stop()
			continue
		}
		for _, e := range due {
			if c.isPaused() {
				break feed
			}
			c.mu.Lock()
			c.inflight[e.Seq] = true
			c.mu.Unlock()
			select {
			case work <- e:
			case <-dctx.Done():
				c.done1(e.Seq)
				break feed
			}
		}
	}
	close(work)
	wg.Wait()
	// The 250s already received are acked before the connection stops
	// (or restarts its workers), so none of them is sent again.
	close(acks)
	<-ackerDone
	if err := context.Cause(dctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// maxAckBatch bounds the entries one ack transaction removes: twice what
// ackInterval gathers at 5,000 messages a second.
const maxAckBatch = 1024

// ackInterval is the least time between the starts of two ack transactions
// of a connection. Each acked entry leaves the queue's hash index, keyed at
// random, so it dirties a page of its own whatever the batch; a batch saves
// the rest of a commit (two fsyncs, the branch and meta pages), and at
// catch-up pace frequent ack commits compete for the disk and the CPU with
// everything else the node writes (docs/BENCHMARKS.md, "Replication (HA)":
// 20 ms gave 8% less catch-up than 100 ms; 250 ms no more than 100).
// Waiting costs nothing but a resend after a crash, deduplicated by the
// peer, and a queue_depth that trails the deliveries by as much.
const ackInterval = 100 * time.Millisecond

// acker removes the entries whose messages the peer has accepted, a batch
// per transaction at most every ackInterval: the workers hand it each 250
// and go on to their next message instead of waiting for a commit (and its
// fsync) of their own, so a session's pace is the peer's, not the peer's
// plus ours. An entry stays in flight, and Due does not hand it out again,
// until its ack is committed. A crash before that resends it, which costs
// a dedupe at the peer. It runs until acks is closed, whatever ctx says,
// and then acks what is pending at once: what the peer has accepted is
// acked even while the connection stops.
func (c *conn) acker(ctx context.Context, fail context.CancelCauseFunc, acks <-chan uint64) {
	pending := make([]uint64, 0, maxAckBatch)
	var last time.Time // start of the last ack transaction
	flush := func() {
		last = time.Now()
		err := c.f.deps.Queue.Ack(context.WithoutCancel(ctx), c.cfg.Name, pending...)
		for _, seq := range pending {
			c.done1(seq)
		}
		if err != nil {
			// The entries stay queued and are sent again once the
			// connection is back: the peer deduplicates them.
			fail(errConnection{fmt.Errorf("ack %d delivered entries: %w", len(pending), err)})
		}
		pending = pending[:0]
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	armed := false
	for {
		var due <-chan time.Time
		if armed {
			due = timer.C
		}
		select {
		case seq, ok := <-acks:
			if !ok {
				if len(pending) > 0 {
					flush()
				}
				return
			}
			pending = append(pending, seq)
			switch {
			case len(pending) >= maxAckBatch:
				timer.Stop()
				armed = false
				flush()
			case !armed:
				timer.Reset(max(0, ackInterval-time.Since(last)))
				armed = true
			}
		case <-due:
			armed = false
			flush()
		}
	}
}

// busy tells Due to skip an entry in flight, or finished since Due's read
// transaction may have begun: its snapshot can predate the ack (or the
// deferral) of an entry a worker has just finished, and must not hand that
// entry out again.
func (c *conn) busy(seq uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.inflight[seq]
	return ok
}

// sending says whether an entry is in flight: being sent, or accepted
// and waiting for its ack.
func (c *conn) sending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, busy := range c.inflight {
		if busy {
			return true
		}
	}
	return false
}

// done1 marks an entry finished: its ack or failure is committed.
func (c *conn) done1(seq uint64) {
	c.mu.Lock()
	c.inflight[seq] = false
	c.mu.Unlock()
	select {
	case c.finished <- struct{}{}:
	default:
	}
}

// forgetFinished drops the finished entries before a Due: every change
// their workers made is committed, so the snapshot Due reads sees it.
func (c *conn) forgetFinished() {
	c.mu.Lock()
	for seq, sending := range c.inflight {
		if !sending {
			delete(c.inflight, seq)
		}
	}
	c.mu.Unlock()
}

// worker sends queued messages over one SMTP session it keeps open, and
// hands each one the peer accepts to the acker.
func (c *conn) worker(ctx context.Context, fail context.CancelCauseFunc, work <-chan queue.Entry, acks chan<- uint64) {
	var s *session
	defer func() {
		if s != nil {
			s.quit()
			c.sessionCount(-1)
		}
	}()
	idle := time.NewTimer(idleSession)
	defer idle.Stop()
	for {
		var e queue.Entry
		var ok bool
		select {
		case e, ok = <-work:
			if !ok {
				return
			}
		case <-idle.C:
			if s != nil {
				s.quit()
				s = nil
				c.sessionCount(-1)
			}
			idle.Reset(idleSession)
			continue
		}
		idle.Reset(idleSession)
		if c.isPaused() {
			// Paused while this entry was on its way: nothing starts
			// after Pause returns.
			c.done1(e.Seq)
			continue
		}
		reused := s != nil
		if s == nil {
			var err error
			c.mu.Lock()
			c.dialling++
			c.mu.Unlock()
			s, err = c.dial(ctx)
			c.mu.Lock()
			c.dialling--
			if err == nil {
				c.sessions++
			}
			others := c.sessions + c.dialling
			c.mu.Unlock()
			if err != nil {
				c.done1(e.Seq)
				if others > 0 && ctx.Err() == nil && !errors.Is(err, ErrSelfLoop) {
					// The peer is up, or another worker is still finding
					// out, and takes no more sessions of ours (its
					// max_sessions_per_ip, say): the connection goes on
					// with the sessions it has until it next restarts. The
					// last worker to fail with none open takes it down.
					c.log.WithError(err).Warn("peer refused one more session; sending on the sessions already open")
					return
				}
				fail(errConnection{err})
				return
			}
		}
		accepted, err := c.send(ctx, s, e)
		var ce errConnection
		if reused && errors.As(err, &ce) && !errors.Is(err, errDefersAll) && ctx.Err() == nil {
			// A session kept open across messages may have been closed
			// by the peer meanwhile (a restart, its idle timeout): one
			// fresh session decides whether the peer is really gone. A
			// resend after a lost reply costs a dedupe at the peer.
			s.close()
			c.sessionCount(-1)
			if s, err = c.dial(ctx); err == nil {
				c.sessionCount(1)
				accepted, err = c.send(ctx, s, e)
			} else {
				s = nil
				err = errConnection{err}
			}
		}
		if accepted {
			acks <- e.Seq // the acker marks it done once committed
		} else {
			c.done1(e.Seq)
		}
		if errors.As(err, &ce) {
			if s == nil {
				fail(err)
				return
			}
			s.close()
			s = nil
			c.sessionCount(-1)
			fail(err)
			return
		}
	}
}

func (c *conn) sessionCount(d int) {
	c.mu.Lock()
	c.sessions += d
	c.mu.Unlock()
}

// outcome records what happened to one message and decides whether the
// connection must go down.
func (c *conn) outcome(ctx context.Context, e queue.Entry, err error) error {
	q := c.f.deps.Queue
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return errConnection{err}
	}
	reason := se.Error()
	c.mu.Lock()
	c.failed++
	if se.Code/100 == 4 {
		c.deferrals++
	}
	peerWide := se.Code/100 == 4 && c.deferrals >= deferralsDown
	c.mu.Unlock()
	if peerWide {
		// The peer defers everything: an outage, not this message's
		// fault. Like any outage it costs no attempt — with a positive
		// max_retries the probe cycles would otherwise dead-letter the
		// queue head a message at a time — and it takes the connection
		// down until a probe succeeds; the counter restarts only with a
		// message the peer accepts.
		c.f.deps.Metrics.forwarded(c.cfg.Name, "deferred")
		return errConnection{fmt.Errorf("%w: %s", errDefersAll, reason)}
	}
	attempts := e.Attempts + 1
	dead := c.cfg.MaxRetries > 0 && attempts >= c.cfg.MaxRetries
	next := time.Now().Add(backoff(c.cfg.RetryMin, c.cfg.RetryMax, attempts))
	if ferr := q.Fail(context.WithoutCancel(ctx), c.cfg.Name, e.Seq, reason, next, dead); ferr != nil {
		return errConnection{ferr}
	}
	result := "deferred"
	if se.Code/100 == 5 {
		result = "failed"
	}
	if dead {
		result = "dead"
	}
	c.f.deps.Metrics.forwarded(c.cfg.Name, result)
	log := c.log.WithFields(logrus.Fields{"msg": e.Hash.Short(), "attempts": attempts, "code": se.Code, "error": reason})
	if dead {
		log.Error("message moved to the dead-letter list after max_retries; retry it from the console or API")
	} else {
		log.WithField("next_attempt", next.UTC().Format(time.RFC3339)).Warn("peer did not accept message; will retry")
	}
	c.setError(err)
	return nil
}

// backoff is exponential from min to max with ±20% jitter, so entries that
// failed together do not retry in lockstep.
func backoff(lo, hi time.Duration, attempts int) time.Duration {
	d := lo
	for i := 1; i < attempts && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

func (c *conn) status() Status {
	st := c.f.deps.Queue.Stats(c.cfg.Name)
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Status{
		Name: c.cfg.Name, Address: c.cfg.Address, PeerNode: c.cfg.PeerNode, State: c.state,
		QueueDepth: st.Depth, Delivered: st.Delivered, DeadLetters: st.Dead, Failed: c.failed,
		Concurrency: c.cfg.Concurrency, Sessions: c.sessions,
		LastError: c.lastError, LastErrorAt: c.lastErrorAt,
		Rate:   c.rate.perSecond(time.Now()),
		Paused: c.paused,
	}
	// A pause holds from the moment it is asked for, though the loop may
	// still be finishing a message; a resumed connection reports its real
	// state once the loop has probed the peer.
	if c.paused {
		s.State = StatePaused
	}
	if s.PeerNode == "" {
		s.PeerNode = c.peerNode
	}
	if !st.Oldest.IsZero() {
		s.OldestAgeS = time.Since(st.Oldest).Seconds()
	}
	// Only a connection that is sending has an ETA: the rate of the last
	// 10 s says nothing of when a paused or unreachable peer gets its
	// backlog.
	if sending := s.State == StateUp || s.State == StateCatchingUp; sending && s.Rate > 0 && st.Depth > 0 {
		s.ETAS = float64(st.Depth) / s.Rate
	}
	return s
}

// rateWindow counts deliveries per second over the last 10 seconds.
type rateWindow struct {
	buckets [10]int
	stamps  [10]int64
}

func (r *rateWindow) add(now time.Time) {
	sec := now.Unix()
	i := sec % 10
	if r.stamps[i] != sec {
		r.stamps[i], r.buckets[i] = sec, 0
	}
	r.buckets[i]++
}

func (r *rateWindow) perSecond(now time.Time) float64 {
	sec := now.Unix()
	total := 0
	for i := range r.buckets {
		if sec-r.stamps[i] < 10 && sec-r.stamps[i] >= 0 {
			total += r.buckets[i]
		}
	}
	return float64(total) / 10
}
