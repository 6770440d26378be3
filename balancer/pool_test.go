package balancer

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

func testPool(t *testing.T, algorithm string, clock Clock, servers ...ServerConfig) *pool {
	t.Helper()
	pc := PoolConfig{Name: "p", Servers: servers}
	pc.Defaults()
	pc.Algorithm = algorithm
	pc.HealthCheck.Defaults()
	return newPool(pc, clock, 1)
}

func srv(name string, weight int) ServerConfig {
	var s ServerConfig
	s.Defaults()
	s.Name, s.Address, s.Weight = name, "127.0.0.1:1", weight
	return s
}

// pick takes and immediately releases a slot, as a one-shot session would.
func pick(t *testing.T, p *pool, key []byte) string {
	t.Helper()
	p.mu.Lock()
	s, _ := p.pickLocked(p.clock.Now(), key, nil)
	p.mu.Unlock()
	if s == nil {
		return ""
	}
	return s.name
}

func TestSmoothWeightedRoundRobinSequence(t *testing.T) {
	t.Parallel()
	p := testPool(t, AlgorithmWeightedRoundRobin, realClock{}, srv("a", 5), srv("b", 1), srv("c", 1))
	var seq []string
	for range 7 {
		seq = append(seq, pick(t, p, nil))
	}
	// nginx's documented sequence for weights 5,1,1: spread, not bursts.
	if got, want := strings.Join(seq, ""), "aabacaa"; got != want {
		t.Fatalf("sequence = %s, want %s", got, want)
	}
}

func TestSmoothWeightedRoundRobinRatio(t *testing.T) {
	t.Parallel()
	p := testPool(t, AlgorithmWeightedRoundRobin, realClock{}, srv("a", 1), srv("b", 4))
	n := map[string]int{}
	for range 2000 {
		n[pick(t, p, nil)]++
	}
	if n["a"] != 400 || n["b"] != 1600 {
		t.Fatalf("weights 1:4 over 2000 picks gave %v", n)
	}
}

func TestLeastConnWeighted(t *testing.T) {
	t.Parallel()
	p := testPool(t, AlgorithmLeastConn, realClock{}, srv("a", 1), srv("b", 3))
	for range 8 { // held sessions: each new one goes where (active+1)/weight is least
		s, err := p.acquire(t.Context(), nil, nil, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = s
	}
	p.mu.Lock()
	a, b := p.servers[0].active, p.servers[1].active
	p.mu.Unlock()
	if a != 2 || b != 6 {
		t.Fatalf("8 held sessions over weights 1:3 went a=%d b=%d, want 2 and 6", a, b)
	}
}

func TestIPHashConsistent(t *testing.T) {
	t.Parallel()
	p := testPool(t, AlgorithmIPHash, realClock{}, srv("a", 1), srv("b", 1), srv("c", 1), srv("d", 1))
	before := map[string]string{}
	count := map[string]int{}
	for i := range 1000 {
		ip := net.IPv4(10, byte(i>>8), byte(i), 7).To4()
		before[ip.String()] = pick(t, p, ip)
		count[before[ip.String()]]++
	}
	for _, name := range []string{"a", "b", "c", "d"} {
		if count[name] < 180 || count[name] > 320 {
			t.Errorf("server %s got %d of 1000 clients; want about 250", name, count[name])
		}
	}
	p.servers[2].state = StateMaint // take c away
	moved := 0
	for ipStr, was := range before {
		now := pick(t, p, net.ParseIP(ipStr).To4())
		if was != "c" && now != was {
			t.Fatalf("client %s moved from %s to %s though only c went away", ipStr, was, now)
		}
		if was == "c" {
			moved++
			if now == "c" {
				t.Fatalf("client %s still on c in maint", ipStr)
			}
		}
	}
	if moved != count["c"] {
		t.Fatalf("moved %d clients, c had %d", moved, count["c"])
	}
}

func TestRandomTwoFollowsWeightsAndLoad(t *testing.T) {
	t.Parallel()
	p := testPool(t, AlgorithmRandomTwo, realClock{}, srv("a", 1), srv("b", 3))
	n := map[string]int{}
	for range 4000 {
		n[pick(t, p, nil)]++
	}
	// With two servers both are always drawn, so the lighter (active+1)/weight
	// wins: idle, that is always b.
	if n["b"] != 4000 {
		t.Fatalf("idle pool: random-two picked %v, want always the heavier-weighted b", n)
	}
	// Under load the less loaded wins.
	p.mu.Lock()
	p.servers[1].active = 10
	p.mu.Unlock()
	if got := pick(t, p, nil); got != "a" {
		t.Fatalf("b holds 10 sessions, a none: picked %s", got)
	}
}

func TestBackupOnlyWithoutPrimary(t *testing.T) {
	t.Parallel()
	c := srv("c", 1)
	c.Backup = true
	p := testPool(t, AlgorithmWeightedRoundRobin, realClock{}, srv("a", 1), srv("b", 1), c)
	for range 10 {
		if got := pick(t, p, nil); got == "c" {
			t.Fatal("backup picked while primaries are eligible")
		}
	}
	p.servers[0].state = StateDrain
	p.servers[1].health = health{checked: true, up: false}
	if got := pick(t, p, nil); got != "c" {
		t.Fatalf("all primaries out: picked %q, want the backup", got)
	}
	p.servers[2].cfg.Down = true
	if got := pick(t, p, nil); got != "" {
		t.Fatalf("nothing eligible: picked %q", got)
	}
}

func TestPassiveMaxFailsFailTimeout(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	a := srv("a", 1)
	a.MaxFails, a.FailTimeout = 3, 10*time.Second
	p := testPool(t, AlgorithmWeightedRoundRobin, clk, a, srv("b", 1))
	sa := p.servers[0]
	errX := fmt.Errorf("x")

	// Two failures, then the window passes: the count starts again.
	p.tryFailed(sa, failConnect, errX)
	clk.Advance(5 * time.Second)
	p.tryFailed(sa, failConnect, errX)
	clk.Advance(5 * time.Second) // 10s after the first: a new window
	if p.tryFailed(sa, failConnect, errX) {
		t.Fatal("marked out by failures spread over more than fail_timeout")
	}
	clk.Advance(time.Second)
	p.tryFailed(sa, failConnect, errX)
	marked := clk.Now()
	if !p.tryFailed(sa, failConnect, errX) {
		t.Fatal("3 failures within fail_timeout did not mark the server out")
	}
	st := p.status().Servers[0]
	if st.Available || st.FailedUntil == nil || !st.FailedUntil.Equal(marked.Add(10*time.Second)) {
		t.Fatalf("after max_fails: %+v, want out until %v", st, marked.Add(10*time.Second))
	}
	for range 5 {
		if got := pick(t, p, nil); got != "b" {
			t.Fatalf("picked %s while a is out", got)
		}
	}
	clk.Advance(10*time.Second - time.Millisecond)
	if got := pick(t, p, nil); got != "b" {
		t.Fatal("a came back before fail_timeout ended")
	}
	clk.Advance(time.Millisecond)
	// Out period over: exactly one session probes a; the others keep off it.
	probes := 0
	for range 4 {
		if pick(t, p, nil) == "a" {
			probes++
		}
	}
	if probes != 1 {
		t.Fatalf("%d sessions probed a; want exactly 1", probes)
	}
	// The probe fails: out for another fail_timeout at once.
	if !p.tryFailed(sa, failTimeout, errX) {
		t.Fatal("failed probe did not take the server out again")
	}
	clk.Advance(10 * time.Second)
	if x, y := pick(t, p, nil), pick(t, p, nil); x != "a" && y != "a" {
		t.Fatal("no probe after the second out period")
	}
	if !p.tryOK(sa) {
		t.Fatal("successful probe not reported as a comeback")
	}
	if st := p.status().Servers[0]; !st.Available || st.Fails != 0 {
		t.Fatalf("after a good probe: %+v", st)
	}
}

func TestPassiveDisabled(t *testing.T) {
	t.Parallel()
	a := srv("a", 1)
	a.MaxFails = 0
	p := testPool(t, AlgorithmWeightedRoundRobin, newFakeClock(), a)
	for range 100 {
		if p.tryFailed(p.servers[0], failConnect, fmt.Errorf("x")) {
			t.Fatal("max_fails 0 marked a server out")
		}
	}
	if pick(t, p, nil) != "a" {
		t.Fatal("max_fails 0: server not eligible")
	}
}

func TestSlowStartRampsLinearly(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	a := srv("a", 10)
	a.SlowStart = 100 * time.Second
	p := testPool(t, AlgorithmWeightedRoundRobin, clk, a)
	s := p.servers[0]
	if w := s.effectiveWeight(clk.Now()); w != 10000 {
		t.Fatalf("weight before any comeback = %d, want full", w)
	}
	s.upSince = clk.Now()
	for _, tc := range []struct {
		at   time.Duration
		want int64
	}{{0, 1}, {25 * time.Second, 2500}, {50 * time.Second, 5000}, {99 * time.Second, 9900}, {100 * time.Second, 10000}, {time.Hour, 10000}} {
		if got := s.effectiveWeight(s.upSince.Add(tc.at)); got != tc.want {
			t.Errorf("effective weight %s into slow start = %d, want %d", tc.at, got, tc.want)
		}
	}
}

func TestMaxConnsWaitsForSlot(t *testing.T) {
	t.Parallel()
	a := srv("a", 1)
	a.MaxConns = 1
	p := testPool(t, AlgorithmWeightedRoundRobin, realClock{}, a)
	s, err := p.acquire(t.Context(), nil, nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		s2, err := p.acquire(t.Context(), nil, nil, time.Hour)
		if err == nil {
			p.release(s2)
		}
		got <- err
	}()
	waitFor(t, "a waiter", func() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.waiters == 1 })
	p.release(s)
	if err := <-got; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	s, _ = p.acquire(t.Context(), nil, nil, time.Second)
	if _, err := p.acquire(t.Context(), nil, nil, time.Millisecond); err != errQueueTimeout {
		t.Fatalf("full server, queue timeout: err = %v", err)
	}
	p.release(s)
}
