package balancer

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func TestReloadUnderLoad(t *testing.T) {
	t.Parallel()
	a := startBackend(t, "a", "127.0.0.1", false)
	b := startBackend(t, "b", "127.0.0.1", false)
	x := startBackend(t, "x", "127.0.0.1", false)
	y := startBackend(t, "y", "127.0.0.1", false)
	srvA := func(w int) string { return fmt.Sprintf("{name: a, address: %q, weight: %d}", a.addr, w) }
	srvB := fmt.Sprintf("{name: b, address: %q}", b.addr)
	srvX := fmt.Sprintf("{name: x, address: %q}", x.addr)
	srvY := fmt.Sprintf("{name: y, address: %q}", y.addr)
	log, hook := testLogger()
	cfg1 := poolYAML("", []string{srvA(1), srvB, srvX}, "")
	bal := startBalancer(t, cfg1, Options{Logger: log})
	addr := bal.frontend(t, "smtp")

	// A session on x, held across the reload that removes x.
	var onX *client
	for onX == nil {
		h := hold(t, addr, "")
		if served(h.Greeting) == "x" {
			onX = h
		} else {
			h.quit()
		}
	}
	// b's drain, set through the API, must survive the reload.
	if _, err := bal.SetServer("p", "b", ServerChange{State: StateDrain}); err != nil {
		t.Fatal(err)
	}

	var stop atomic.Bool
	var mu sync.Mutex
	var errs []error
	count := map[string]int{}
	var wg sync.WaitGroup
	var sessions atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5000 && !stop.Load(); i++ {
				g, err := runSession(addr, "")
				sessions.Add(1)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					count[served(g)]++
				}
				mu.Unlock()
			}
		}()
	}
	waitFor(t, "load", func() bool { return sessions.Load() >= 100 })

	// A bad configuration changes nothing.
	if err := bal.Reload(&Config{}); err == nil {
		t.Fatal("reload accepted an empty configuration")
	}

	// Remove x, add y, change a's weight, add a second frontend.
	cfg2 := poolYAML("", []string{srvA(3), srvB, srvY}, "")
	cfg2 = strings.Replace(cfg2, "  pools:\n", "    - {name: second, address: \"127.0.0.1:0\", pool: p}\n  pools:\n", 1)
	parsed, err := ParseConfig("reload.yaml", []byte(cfg2))
	if err != nil {
		t.Fatal(err)
	}
	if err := bal.Reload(parsed); err != nil {
		t.Fatal(err)
	}
	reloadedAt := sessions.Load()
	waitFor(t, "load after the reload", func() bool { return sessions.Load() >= reloadedAt+200 })
	g, err := runSession(bal.frontend(t, "second"), "")
	if err != nil {
		t.Fatalf("new frontend: %v", err)
	}
	if s := served(g); s != "a" && s != "y" {
		t.Fatalf("new frontend served by %s", s)
	}
	stop.Store(true)
	wg.Wait()

	// The held session on the removed server is still relayed.
	if err := onX.send(false); err != nil {
		t.Fatalf("session on a removed server: %v", err)
	}
	if err := onX.quit(); err != nil {
		t.Fatal(err)
	}
	if len(errs) > 0 {
		t.Fatalf("%d sessions failed across the reload; first: %v", len(errs), errs[0])
	}
	for _, e := range entries(hook, "session") {
		if e.Data["result"] != resultOK {
			t.Fatalf("session %v", e.Data)
		}
	}
	if count["y"] == 0 {
		t.Fatalf("added server y got no session: %v", count)
	}
	pools := bal.Pools()
	if n := len(pools[0].Servers); n != 3 {
		t.Fatalf("servers after reload: %+v", pools[0].Servers)
	}
	if sa := bal.server(t, "p", "a"); sa.Weight != 3 {
		t.Fatalf("a's weight after reload: %+v", sa)
	}
	if sb := bal.server(t, "p", "b"); sb.State != StateDrain {
		t.Fatalf("b's drain lost in the reload: %+v", sb)
	}
	// After the reload x gets nothing new (its only connection is the held one).
	before := x.accepted.Load()
	if _, errs := load(addr, 20, 2); len(errs) > 0 {
		t.Fatal(errs[0])
	}
	if x.accepted.Load() != before {
		t.Fatal("removed server still gets sessions")
	}
}

func TestReloadKeepsAPIWeightUnlessFileChangesIt(t *testing.T) {
	t.Parallel()
	a := startBackend(t, "a", "127.0.0.1", false)
	yaml := func(w int) *Config {
		cfg, err := ParseConfig("w.yaml", []byte(poolYAML("", []string{fmt.Sprintf("{name: a, address: %q, weight: %d}", a.addr, w)}, "")))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	bal := startBalancer(t, poolYAML("", []string{fmt.Sprintf("{name: a, address: %q, weight: 2}", a.addr)}, ""), Options{})
	w := 9
	bal.SetServer("p", "a", ServerChange{Weight: &w})
	if err := bal.Reload(yaml(2)); err != nil {
		t.Fatal(err)
	}
	if got := bal.server(t, "p", "a").Weight; got != 9 {
		t.Fatalf("unchanged file weight replaced the API's: %d", got)
	}
	if err := bal.Reload(yaml(5)); err != nil {
		t.Fatal(err)
	}
	if got := bal.server(t, "p", "a").Weight; got != 5 {
		t.Fatalf("changed file weight not applied: %d", got)
	}
}
