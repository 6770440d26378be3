package balancer

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sirupsen/logrus"
)

// PoolStatus is a pool as GET /api/v1/pools shows it.
type PoolStatus struct {
	Name          string         `json:"name"`
	Algorithm     string         `json:"algorithm"`
	ProxyProtocol string         `json:"proxy_protocol"`
	HealthCheck   string         `json:"health_check"`
	Available     int            `json:"available"` // servers that may take a new session now
	Servers       []ServerStatus `json:"servers"`
}

// ServerStatus is one server's configuration, runtime state and counters.
type ServerStatus struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Backup  bool   `json:"backup"`
	Down    bool   `json:"down"`
	State   State  `json:"state"`
	// Weight is the runtime weight, ConfigWeight the file's, and
	// EffectiveWeight the weight used now (lower during slow start).
	Weight          int     `json:"weight"`
	ConfigWeight    int     `json:"config_weight"`
	EffectiveWeight float64 `json:"effective_weight"`
	// Health is "up" or "down" by the active check, "unchecked" without one.
	Health string `json:"health"`
	// Available tells whether it may take a new session now; if not,
	// Reason says why: down, drain, maint, health check, failed, weight 0.
	Available bool   `json:"available"`
	Reason    string `json:"reason,omitempty"`
	// Fails and FailedUntil are the passive (max_fails) record.
	Fails       int        `json:"fails"`
	FailedUntil *time.Time `json:"failed_until,omitempty"`
	MaxConns    int        `json:"max_conns"`

	ActiveSessions int64            `json:"active_sessions"`
	TotalSessions  int64            `json:"total_sessions"`
	BytesIn        int64            `json:"bytes_in"`
	BytesOut       int64            `json:"bytes_out"`
	Failures       map[string]int64 `json:"failures"`
	LastError      string           `json:"last_error,omitempty"`

	Checks          int64        `json:"checks"`
	CheckSuccesses  int          `json:"check_successes"` // consecutive
	CheckFailures   int          `json:"check_failures"`  // consecutive
	LastCheck       *CheckResult `json:"last_check,omitempty"`
	HealthChangedAt *time.Time   `json:"health_changed_at,omitempty"`
}

// FrontendStatus is one frontend's settings and counters.
type FrontendStatus struct {
	Name           string `json:"name"`
	Address        string `json:"address"`
	Pool           string `json:"pool"`
	MaxSessions    int    `json:"max_sessions"`
	ActiveSessions int64  `json:"active_sessions"`
	TotalSessions  int64  `json:"total_sessions"`
	Rejected       int64  `json:"rejected"`  // over max_sessions
	NoServer       int64  `json:"no_server"` // answered 421: nothing eligible
	BytesIn        int64  `json:"bytes_in"`
	BytesOut       int64  `json:"bytes_out"`
}

// Pools returns every pool's state, in configuration order.
func (b *Balancer) Pools() []PoolStatus {
	b.mu.RLock()
	order := make([]*pool, 0, len(b.cfg.Balancer.Pools))
	for _, pc := range b.cfg.Balancer.Pools {
		order = append(order, b.pools[pc.Name])
	}
	b.mu.RUnlock()
	out := make([]PoolStatus, 0, len(order))
	for _, p := range order {
		out = append(out, p.status())
	}
	return out
}

// Frontends returns every frontend's state, in configuration order.
func (b *Balancer) Frontends() []FrontendStatus {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make([]FrontendStatus, 0, len(b.frontends))
	for _, fc := range b.cfg.Balancer.Frontends {
		fe := b.frontends[fc.Name]
		out = append(out, FrontendStatus{
			Name: fe.name, Address: fe.laddr.String(), Pool: fc.Pool, MaxSessions: fc.MaxSessions,
			ActiveSessions: fe.active.Load(), TotalSessions: fe.sessions.Load(), Rejected: fe.rejected.Load(),
			NoServer: fe.noServer.Load(), BytesIn: fe.bytesIn.Load(), BytesOut: fe.bytesOut.Load(),
		})
	}
	return out
}

func (p *pool) status() PoolStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock.Now()
	ps := PoolStatus{Name: p.name, Algorithm: p.cfg.Algorithm, ProxyProtocol: p.cfg.ProxyProtocol, HealthCheck: p.cfg.HealthCheck.Type}
	for _, s := range p.servers {
		ss := s.statusLocked(now)
		if ss.Available {
			ps.Available++
		}
		ps.Servers = append(ps.Servers, ss)
	}
	return ps
}

func (s *server) statusLocked(now time.Time) ServerStatus {
	ss := ServerStatus{
		Name: s.name, Address: s.addr, Backup: s.cfg.Backup, Down: s.cfg.Down, State: s.state,
		Weight: s.weight, ConfigWeight: s.cfg.Weight, EffectiveWeight: float64(s.effectiveWeight(now)) / 1000,
		Health: "unchecked", Fails: s.passive.fails, MaxConns: s.cfg.MaxConns,
		ActiveSessions: int64(s.active), TotalSessions: s.sessions.Load(),
		BytesIn: s.bytesIn.Load(), BytesOut: s.bytesOut.Load(), Failures: map[string]int64{},
		Checks: s.health.checks, CheckSuccesses: s.health.okRun, CheckFailures: s.health.failRun,
		LastCheck: s.health.last,
	}
	ss.Reason = s.unavailable(now)
	ss.Available = ss.Reason == ""
	if s.passive.out(now) {
		t := s.passive.downUntil
		ss.FailedUntil = &t
	}
	if s.health.checked {
		ss.Health = "down"
		if s.health.up {
			ss.Health = "up"
		}
		if !s.health.changed.IsZero() {
			t := s.health.changed
			ss.HealthChangedAt = &t
		}
	}
	for i, k := range failKinds {
		ss.Failures[k] = s.failures[i].Load()
	}
	if e := s.lastError.Load(); e != nil {
		ss.LastError = *e
	}
	return ss
}

// ServerChange is a runtime change to one server: POST
// /api/v1/pools/{pool}/servers/{server}. Empty fields are left as they are.
type ServerChange struct {
	State  State `json:"state,omitempty"`
	Weight *int  `json:"weight,omitempty"`
}

// Errors of SetServer.
var (
	ErrNotFound      = errors.New("no such pool or server")
	ErrInvalidChange = errors.New("invalid change")
)

// SetServer changes a server's state or weight at runtime, effective for
// the next session. A server set back to ready from drain or maint starts
// its slow start.
func (b *Balancer) SetServer(poolName, serverName string, ch ServerChange) (ServerStatus, error) {
	if ch.State != "" && !ch.State.valid() {
		return ServerStatus{}, fmt.Errorf("%w: state %q (want ready, drain or maint)", ErrInvalidChange, ch.State)
	}
	if ch.Weight != nil && (*ch.Weight < 0 || *ch.Weight > maxWeight) {
		return ServerStatus{}, fmt.Errorf("%w: weight %d (want 0 to %d)", ErrInvalidChange, *ch.Weight, maxWeight)
	}
	if ch.State == "" && ch.Weight == nil {
		return ServerStatus{}, fmt.Errorf("%w: nothing to change (give state or weight)", ErrInvalidChange)
	}
	p := b.pool(poolName)
	if p == nil {
		return ServerStatus{}, fmt.Errorf("pool %q: %w", poolName, ErrNotFound)
	}
	p.mu.Lock()
	i := slices.IndexFunc(p.servers, func(s *server) bool { return s.name == serverName })
	if i < 0 {
		p.mu.Unlock()
		return ServerStatus{}, fmt.Errorf("server %q of pool %q: %w", serverName, poolName, ErrNotFound)
	}
	s := p.servers[i]
	now := p.clock.Now()
	from, fromWeight := s.state, s.weight
	if ch.State != "" {
		if ch.State == StateReady && s.state != StateReady {
			s.upSince = now
		}
		s.state = ch.State
	}
	if ch.Weight != nil {
		s.weight = *ch.Weight
	}
	st := s.statusLocked(now)
	p.wakeLocked()
	p.mu.Unlock()
	b.log.WithFields(logrus.Fields{
		"pool": poolName, "server": serverName, "from": string(from), "to": string(st.State),
		"from_weight": fromWeight, "weight": st.Weight,
	}).Info("server changed")
	return st, nil
}

// unhealthyPools names the pools no server of which may take a session.
func (b *Balancer) unhealthyPools() []string {
	var bad []string
	for _, ps := range b.Pools() {
		if ps.Available == 0 {
			bad = append(bad, ps.Name)
		}
	}
	return bad
}
