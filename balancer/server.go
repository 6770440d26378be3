package balancer

import (
	"net/netip"
	"sync/atomic"
	"time"
)

// State is a server's administrative state, set through the API.
type State string

// Administrative states, with HAProxy's meanings.
const (
	// StateReady takes new sessions.
	StateReady State = "ready"
	// StateDrain takes no new sessions; established ones finish.
	StateDrain State = "drain"
	// StateMaint takes no new sessions and pauses its health checks.
	StateMaint State = "maint"
)

func (s State) valid() bool { return s == StateReady || s == StateDrain || s == StateMaint }

// Kinds of failed tries, as counted per server.
const (
	failConnect  = "connect"
	failTimeout  = "greeting_timeout"
	failRejected = "greeting_rejected"
	failClosed   = "greeting_error"
)

var failKinds = []string{failConnect, failTimeout, failRejected, failClosed}

// server is one server of a pool. Fields marked "pool.mu" are read and
// written only under its pool's mutex; the counters are atomics so a session
// can update them without the lock.
type server struct {
	name string
	addr string
	// ap is addr when it is an IP literal, which an event loop can connect
	// to without a name lookup; zero otherwise.
	ap netip.AddrPort

	// pool.mu
	cfg     ServerConfig
	state   State
	weight  int       // runtime weight; starts as cfg.Weight
	current int64     // smooth weighted round robin state
	active  int       // slots held: sessions bound or being tried
	upSince time.Time // when it last came back; the origin of slow start
	passive passive
	health  health

	sessions  atomic.Int64 // sessions bound to it
	bytesIn   atomic.Int64 // client → server
	bytesOut  atomic.Int64 // server → client
	failures  [4]atomic.Int64
	lastError atomic.Pointer[string]
}

func newServer(cfg ServerConfig, checked bool) *server {
	ap, _ := netip.ParseAddrPort(cfg.Address)
	return &server{
		name:   cfg.Name,
		addr:   cfg.Address,
		ap:     ap,
		cfg:    cfg,
		state:  StateReady,
		weight: cfg.Weight,
		health: health{checked: checked, up: true},
	}
}

func (s *server) countFailure(kind string, err error) {
	for i, k := range failKinds {
		if k == kind {
			s.failures[i].Add(1)
		}
	}
	msg := kind + ": " + err.Error()
	s.lastError.Store(&msg)
}

// unavailable says why the server may not take a new session now, or ""
// if it may. pool.mu.
func (s *server) unavailable(now time.Time) string {
	switch {
	case s.cfg.Down:
		return "down"
	case s.state != StateReady:
		return string(s.state)
	case s.health.checked && !s.health.up:
		return "health check"
	case s.passive.out(now):
		return "failed"
	case s.weight == 0:
		return "weight 0"
	}
	return ""
}

// full tells whether the server is at its max_conns. pool.mu.
func (s *server) full() bool { return s.cfg.MaxConns > 0 && s.active >= s.cfg.MaxConns }

// effectiveWeight is the weight in thousandths, ramped up linearly during
// slow start after the server came back (nginx's and HAProxy's slow_start).
// pool.mu.
func (s *server) effectiveWeight(now time.Time) int64 {
	w := int64(s.weight) * 1000
	if ss := s.cfg.SlowStart; ss > 0 && !s.upSince.IsZero() {
		if el := now.Sub(s.upSince); el >= 0 && el < ss {
			w = int64(float64(w) * float64(el) / float64(ss))
			if w < 1 {
				w = 1
			}
		}
	}
	return w
}

// passive is nginx's max_fails/fail_timeout: max_fails failed tries within
// fail_timeout take the server out for fail_timeout. After that, one session
// at a time probes it; a success clears the record, a failure takes it out
// for another fail_timeout.
type passive struct {
	fails       int       // failures in the current window
	windowStart time.Time // first failure of the window
	downUntil   time.Time // out until then; zero when never out
	probing     bool      // out period over and one probe session under way
}

func (p *passive) out(now time.Time) bool { return now.Before(p.downUntil) }

// claimProbe is called when the server is picked. If its out period is
// over, this session is the probe and the server stays out for the others
// until the probe's outcome is known (or fail_timeout passes again).
func (p *passive) claimProbe(now time.Time, window time.Duration) {
	if !p.downUntil.IsZero() && !p.out(now) {
		p.probing = true
		p.downUntil = now.Add(window)
	}
}

// fail records a failed try; it returns true when the try takes the server
// out.
func (p *passive) fail(now time.Time, maxFails int, window time.Duration) bool {
	if maxFails <= 0 {
		return false
	}
	if p.probing {
		p.probing = false
		p.fails++
		p.downUntil = now.Add(window)
		return true
	}
	if p.out(now) {
		p.fails++
		return false
	}
	if p.windowStart.IsZero() || now.Sub(p.windowStart) >= window {
		p.windowStart, p.fails = now, 0
	}
	p.fails++
	if p.fails >= maxFails {
		p.downUntil = now.Add(window)
		return true
	}
	return false
}

// ok records a successful try; it returns true if the server was out or
// probing, i.e. it has just come back.
func (p *passive) ok() bool {
	back := p.probing || !p.downUntil.IsZero()
	*p = passive{}
	return back
}

// health is the active check's view of a server: HAProxy's rise and fall.
type health struct {
	checked bool // a check runs for this server
	up      bool
	okRun   int // consecutive successes
	failRun int // consecutive failures
	checks  int64
	last    *CheckResult
	changed time.Time
}

// record adds one check result and says whether the server changed state.
func (h *health) record(r CheckResult, rise, fall int) bool {
	h.checks++
	h.last = &r
	if r.OK {
		h.okRun++
		h.failRun = 0
		if !h.up && h.okRun >= rise {
			h.up = true
			h.changed = r.At
			return true
		}
		return false
	}
	h.failRun++
	h.okRun = 0
	if h.up && h.failRun >= fall {
		h.up = false
		h.changed = r.At
		return true
	}
	return false
}
