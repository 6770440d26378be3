package balancer

import (
	"fmt"
	"testing"
	"time"
)

// checkStepper advances the fake clock by one check interval and waits
// until every checker has run and is waiting again.
type checkStepper struct {
	t        *testing.T
	bal      *Balancer
	clk      *fakeClock
	interval time.Duration
	checkers int
}

func (s checkStepper) checks(name string) int64 { return s.bal.server(s.t, "p", name).Checks }

// settle waits for every checker to be waiting on the clock with the given
// check counts reached.
func (s checkStepper) settle(want map[string]int64) {
	s.t.Helper()
	waitFor(s.t, fmt.Sprintf("checks %v", want), func() bool {
		for name, n := range want {
			if s.checks(name) != n {
				return false
			}
		}
		return s.clk.Waiters() == s.checkers
	})
}

func TestActiveSMTPCheckRiseFall(t *testing.T) {
	t.Parallel()
	a := startBackend(t, "a", "127.0.0.1", false)
	b := startBackend(t, "b", "127.0.0.1", false)
	clk := newFakeClock()
	log, hook := testLogger()
	bal := startBalancer(t, poolYAML("      health_check: {type: smtp, interval: 10s, timeout: 2s, rise: 2, fall: 3}\n", []string{
		fmt.Sprintf("{name: a, address: %q}", a.addr),
		fmt.Sprintf("{name: b, address: %q}", b.addr),
	}, ""), Options{Clock: clk, Logger: log})
	st := checkStepper{t: t, bal: bal, clk: clk, interval: 10 * time.Second, checkers: 2}
	st.settle(map[string]int64{"a": 1, "b": 1}) // the first check runs at once
	n := int64(1)
	step := func() {
		t.Helper()
		n++
		clk.Advance(10 * time.Second)
		st.settle(map[string]int64{"a": n, "b": n})
	}
	health := func() ServerStatus { return bal.server(t, "p", "a") }
	if h := health(); h.Health != "up" || !h.LastCheck.OK || h.LastCheck.Code != 250 {
		t.Fatalf("after a good check: %+v", h)
	}

	a.mode.Store(mode421)
	for i := 1; i <= 3; i++ {
		step()
		h := health()
		if h.CheckFailures != i || h.LastCheck.OK || h.LastCheck.Code != 421 {
			t.Fatalf("failed check %d: %+v", i, h)
		}
		if wantUp := i < 3; (h.Health == "up") != wantUp {
			t.Fatalf("after %d failed checks with fall 3: health %s", i, h.Health)
		}
	}
	if h := health(); h.Available || h.Reason != "health check" || !h.HealthChangedAt.Equal(clk.Now()) {
		t.Fatalf("down: %+v", h)
	}
	if e := entries(hook, "server down"); len(e) != 1 || e[0].Data["failures"] != 3 || e[0].Data["server"] != "a" {
		t.Fatalf("server down log: %v", e)
	}
	// Down: sessions all go to b; a sees only the checks' connections.
	before := a.accepted.Load()
	got, errs := load(bal.frontend(t, "smtp"), 10, 2)
	if len(errs) > 0 || got["b"] != 10 || a.accepted.Load() != before {
		t.Fatalf("while a is down: %v %v", got, errs)
	}

	a.mode.Store(modeOK)
	step()
	if h := health(); h.Health != "down" || h.CheckSuccesses != 1 {
		t.Fatalf("one good check with rise 2: %+v", h)
	}
	step()
	if h := health(); h.Health != "up" || !h.Available || !h.HealthChangedAt.Equal(clk.Now()) {
		t.Fatalf("two good checks with rise 2: %+v", h)
	}
	if e := entries(hook, "server up"); len(e) != 1 || e[0].Data["successes"] != 2 {
		t.Fatalf("server up log: %v", e)
	}

	// maint pauses a's checks; b's go on.
	if _, err := bal.SetServer("p", "a", ServerChange{State: StateMaint}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(10 * time.Second)
	st.settle(map[string]int64{"a": n, "b": n + 1})
	clk.Advance(10 * time.Second)
	st.settle(map[string]int64{"a": n, "b": n + 2})
	if _, err := bal.SetServer("p", "a", ServerChange{State: StateReady}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(10 * time.Second)
	st.settle(map[string]int64{"a": n + 1, "b": n + 3})
}

func TestActiveTCPCheck(t *testing.T) {
	t.Parallel()
	live := startBackend(t, "live", "127.0.0.1", false)
	dead := freeAddr(t, "127.0.0.1")
	clk := newFakeClock()
	bal := startBalancer(t, poolYAML("      health_check: {type: tcp, interval: 1s, timeout: 1s, rise: 1, fall: 2}\n", []string{
		fmt.Sprintf("{name: live, address: %q}", live.addr),
		fmt.Sprintf("{name: dead, address: %q, max_fails: 0}", dead),
	}, ""), Options{Clock: clk})
	st := checkStepper{t: t, bal: bal, clk: clk, checkers: 2}
	st.settle(map[string]int64{"live": 1, "dead": 1})
	if h := bal.server(t, "p", "dead"); h.Health != "up" || h.CheckFailures != 1 {
		t.Fatalf("dead after one failed check with fall 2: %+v", h)
	}
	clk.Advance(time.Second)
	st.settle(map[string]int64{"live": 2, "dead": 2})
	if h := bal.server(t, "p", "dead"); h.Health != "down" {
		t.Fatalf("dead after two failed checks: %+v", h)
	}
	if h := bal.server(t, "p", "live"); h.Health != "up" || h.CheckSuccesses != 2 {
		t.Fatalf("live: %+v", h)
	}
}
