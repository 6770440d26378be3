package balancer

import (
	"context"
	"errors"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// Reasons a session finds no server.
var (
	errNoServer     = errors.New("no server available")
	errQueueTimeout = errors.New("no free server slot")
)

// pool is a set of servers and the algorithm that spreads sessions over
// them. mu guards the pool's configuration, its server list and every
// server's "pool.mu" fields; sessions hold it only to pick and release.
type pool struct {
	name  string
	clock Clock

	mu      sync.Mutex
	cfg     PoolConfig // Servers is not used; see servers
	servers []*server  // in configuration order
	rng     *rand.Rand
	next    int           // least-conn tie rotation
	freed   chan struct{} // closed when a slot is released and someone waits
	waiters int
	scratch []*server
}

func newPool(cfg PoolConfig, clock Clock, seed uint64) *pool {
	p := &pool{
		name:  cfg.Name,
		clock: clock,
		rng:   rand.New(rand.NewPCG(seed, uint64(len(cfg.Name)))),
		freed: make(chan struct{}),
	}
	p.apply(cfg)
	return p
}

// apply installs a new configuration of the pool, keeping the runtime state
// (state, health, passive record, counters, established sessions) of every
// server whose name and address are unchanged. A changed configured weight
// replaces the runtime weight; an unchanged one keeps a weight set through
// the API.
func (p *pool) apply(cfg PoolConfig) (added, removed []*server) {
	p.mu.Lock()
	defer p.mu.Unlock()
	checked := cfg.HealthCheck.Type != CheckNone
	old := map[string]*server{}
	for _, s := range p.servers {
		old[s.name] = s
	}
	servers := make([]*server, 0, len(cfg.Servers))
	for _, sc := range cfg.Servers {
		s, ok := old[sc.Name]
		if ok && s.addr == sc.Address {
			delete(old, sc.Name)
			if sc.Weight != s.cfg.Weight {
				s.weight = sc.Weight
			}
			s.cfg = sc
			if !checked || !s.health.checked {
				s.health = health{checked: checked, up: true}
			}
		} else {
			s = newServer(sc, checked)
			added = append(added, s)
		}
		servers = append(servers, s)
	}
	for _, s := range old {
		removed = append(removed, s)
	}
	if cfg.Algorithm != p.cfg.Algorithm {
		for _, s := range servers {
			s.current = 0
		}
	}
	cfg.Servers = nil
	p.cfg = cfg
	p.servers = servers
	p.wakeLocked()
	return added, removed
}

// tries is the most servers one session may try.
func (p *pool) tries() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg.Tries > 0 {
		return p.cfg.Tries
	}
	return len(p.servers)
}

// acquire picks a server for a session from those not yet tried and takes
// one of its slots. When every eligible server is at its max_conns it waits
// for a slot up to queueTimeout. key is the client's address (for ip-hash).
func (p *pool) acquire(ctx context.Context, key []byte, tried []*server, queueTimeout time.Duration) (*server, error) {
	var timer *time.Timer
	for {
		p.mu.Lock()
		s, full := p.pickLocked(p.clock.Now(), key, tried)
		if s != nil {
			s.active++
			p.mu.Unlock()
			if timer != nil {
				timer.Stop()
			}
			return s, nil
		}
		if !full {
			p.mu.Unlock()
			return nil, errNoServer
		}
		p.waiters++
		freed := p.freed
		p.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(queueTimeout)
		}
		var err error
		select {
		case <-freed:
		case <-timer.C:
			err = errQueueTimeout
		case <-ctx.Done():
			err = ctx.Err()
		}
		p.mu.Lock()
		p.waiters--
		p.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
}

// tryAcquire is acquire without the wait: full reports that a slot would
// have to be waited for.
func (p *pool) tryAcquire(key []byte, tried []*server) (s *server, full bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, full = p.pickLocked(p.clock.Now(), key, tried)
	if s != nil {
		s.active++
	}
	return s, full
}

// release gives back the slot a session held on s.
func (p *pool) release(s *server) {
	p.mu.Lock()
	s.active--
	p.wakeLocked()
	p.mu.Unlock()
}

func (p *pool) wakeLocked() {
	if p.waiters > 0 {
		close(p.freed)
		p.freed = make(chan struct{})
	}
}

// tryFailed records a failed try on s: passive health and counters. It
// returns true if the failure took the server out.
func (p *pool) tryFailed(s *server, kind string, err error) bool {
	s.countFailure(kind, err)
	p.mu.Lock()
	defer p.mu.Unlock()
	return s.passive.fail(p.clock.Now(), s.cfg.MaxFails, s.cfg.FailTimeout)
}

// tryOK records that s greeted a session; it returns true if s had been
// taken out by passive health and is now back.
func (p *pool) tryOK(s *server) bool {
	s.sessions.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if s.passive.ok() {
		s.upSince = p.clock.Now()
		return true
	}
	return false
}

// pickLocked chooses among the eligible servers not yet tried and not at
// max_conns: primaries first, backups only when no primary is eligible.
// full reports that eligible servers exist but all are at max_conns.
func (p *pool) pickLocked(now time.Time, key []byte, tried []*server) (s *server, full bool) {
	for _, backup := range []bool{false, true} {
		cands := p.scratch[:0]
		eligible := false
		for _, s := range p.servers {
			if s.cfg.Backup != backup || slices.Contains(tried, s) || s.unavailable(now) != "" {
				continue
			}
			eligible = true
			if !s.full() {
				cands = append(cands, s)
			}
		}
		p.scratch = cands[:0]
		if len(cands) > 0 {
			s := p.chooseLocked(now, key, cands)
			s.passive.claimProbe(now, s.cfg.FailTimeout)
			return s, false
		}
		if eligible {
			return nil, true
		}
	}
	return nil, false
}

func (p *pool) chooseLocked(now time.Time, key []byte, cands []*server) *server {
	if len(cands) == 1 {
		return cands[0]
	}
	switch p.cfg.Algorithm {
	case AlgorithmLeastConn:
		return p.leastConn(now, cands)
	case AlgorithmIPHash:
		return rendezvous(now, key, cands)
	case AlgorithmRandomTwo:
		return p.randomTwo(now, cands)
	}
	return smoothWRR(now, cands)
}

// smoothWRR is nginx's smooth weighted round robin: each pick adds every
// candidate's weight to its current value, takes the largest and subtracts
// the total from it. Weights 5,1,1 give a,a,b,a,c,a,a — spread, not bursts.
func smoothWRR(now time.Time, cands []*server) *server {
	var best *server
	var total int64
	for _, s := range cands {
		w := s.effectiveWeight(now)
		s.current += w
		total += w
		if best == nil || s.current > best.current {
			best = s
		}
	}
	best.current -= total
	return best
}

// lessLoaded compares (active+1)/weight without division.
func lessLoaded(now time.Time, a, b *server) bool {
	return int64(a.active+1)*b.effectiveWeight(now) < int64(b.active+1)*a.effectiveWeight(now)
}

// leastConn picks the server with the fewest sessions per unit of weight;
// ties go round robin.
func (p *pool) leastConn(now time.Time, cands []*server) *server {
	p.next++
	start := p.next % len(cands)
	best := cands[start]
	for i := 1; i < len(cands); i++ {
		s := cands[(start+i)%len(cands)]
		if lessLoaded(now, s, best) {
			best = s
		}
	}
	return best
}

// rendezvous is weighted highest-random-weight hashing of the client's
// address: each server scores -w/ln(u) with u a hash of (client, server)
// in (0,1), and the best score wins. Taking a server away moves only the
// clients that scored it best; everyone else keeps their server.
func rendezvous(now time.Time, key []byte, cands []*server) *server {
	var best *server
	bestScore := math.Inf(-1)
	for _, s := range cands {
		h := fnv.New64a()
		h.Write(key)
		h.Write([]byte{0})
		h.Write([]byte(s.name))
		u := (float64(mix64(h.Sum64())>>11) + 0.5) / (1 << 53)
		score := -float64(s.effectiveWeight(now)) / math.Log(u)
		if score > bestScore {
			best, bestScore = s, score
		}
	}
	return best
}

// mix64 is a 64-bit finaliser (splitmix64's) that spreads FNV's weak low
// bits over the whole word.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// randomTwo is the power of two choices: two servers drawn at random in
// proportion to their weights, and the less loaded of them wins.
func (p *pool) randomTwo(now time.Time, cands []*server) *server {
	a := p.weightedRandom(now, cands, nil)
	b := p.weightedRandom(now, cands, a)
	if b != nil && lessLoaded(now, b, a) {
		return b
	}
	return a
}

func (p *pool) weightedRandom(now time.Time, cands []*server, skip *server) *server {
	var total int64
	for _, s := range cands {
		if s != skip {
			total += s.effectiveWeight(now)
		}
	}
	if total <= 0 {
		return nil
	}
	r := p.rng.Int64N(total)
	for _, s := range cands {
		if s == skip {
			continue
		}
		if r -= s.effectiveWeight(now); r < 0 {
			return s
		}
	}
	return nil
}
