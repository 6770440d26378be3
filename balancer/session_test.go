package balancer

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// poolYAML renders a one-frontend, one-pool configuration.
func poolYAML(pool string, servers []string, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "balancer:\n  shutdown_timeout: 5s\n%s  frontends:\n    - {name: smtp, address: \"127.0.0.1:0\", pool: p, greeting_timeout: 500ms, connect_timeout: 1s}\n", extra)
	fmt.Fprintf(&b, "  pools:\n    - name: p\n%s      servers:\n", pool)
	for _, s := range servers {
		fmt.Fprintf(&b, "        - %s\n", s)
	}
	return b.String()
}

// load runs n whole sessions with c concurrent clients and returns the
// greeting-named server of each and the errors.
func load(addr string, n, c int) (map[string]int, []error) {
	var mu sync.Mutex
	got := map[string]int{}
	var errs []error
	var next atomic.Int64
	var wg sync.WaitGroup
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				g, err := runSession(addr, "")
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					got[served(g)]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return got, errs
}

func TestWeightsOneToFour(t *testing.T) {
	t.Parallel()
	a := startBackend(t, "a", "127.0.0.1", false)
	b := startBackend(t, "b", "127.0.0.1", false)
	bal := startBalancer(t, poolYAML("", []string{
		fmt.Sprintf("{name: a, address: %q, weight: 1}", a.addr),
		fmt.Sprintf("{name: b, address: %q, weight: 4}", b.addr),
	}, ""), Options{})
	got, errs := load(bal.frontend(t, "smtp"), 2000, 8)
	if len(errs) > 0 {
		t.Fatalf("%d failed sessions, first: %v", len(errs), errs[0])
	}
	// Counted by the backends themselves, not by the balancer.
	na, nb := a.accepted.Load(), b.accepted.Load()
	if na+nb != 2000 || got["a"] != int(na) || got["b"] != int(nb) {
		t.Fatalf("backends accepted a=%d b=%d, clients saw %v", na, nb, got)
	}
	share := float64(na) / 2000
	if share < 0.2*0.98 || share > 0.2*1.02 {
		t.Fatalf("weight-1 server took %.4f of sessions, want 0.2 ± 2%%", share)
	}
	if a.mails.Load() != na || b.mails.Load() != nb {
		t.Fatalf("mails a=%d b=%d", a.mails.Load(), b.mails.Load())
	}
}

// hold opens a session through addr, EHLOs and leaves it open.
func hold(t *testing.T, addr, localIP string) *client {
	t.Helper()
	c, err := dialClient(addr, localIP)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd(250, "EHLO hold.test"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.conn.Close() })
	return c
}

func TestLeastConnWithRealSessions(t *testing.T) {
	t.Parallel()
	a := startBackend(t, "a", "127.0.0.1", false)
	b := startBackend(t, "b", "127.0.0.1", false)
	bal := startBalancer(t, poolYAML("      algorithm: least-conn\n", []string{
		fmt.Sprintf("{name: a, address: %q, weight: 1}", a.addr),
		fmt.Sprintf("{name: b, address: %q, weight: 3}", b.addr),
	}, ""), Options{})
	addr := bal.frontend(t, "smtp")
	var held []*client
	n := map[string]int{}
	for range 8 {
		c := hold(t, addr, "")
		held = append(held, c)
		n[served(c.Greeting)]++
	}
	if n["a"] != 2 || n["b"] != 6 {
		t.Fatalf("8 held sessions over weights 1:3 went %v, want a=2 b=6", n)
	}
	// Free b's sessions: the next ones go to b, the least loaded per weight.
	for _, c := range held {
		if served(c.Greeting) == "b" {
			if err := c.quit(); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, "b's sessions to end", func() bool { return bal.server(t, "p", "b").ActiveSessions == 0 })
	for range 3 {
		if c := hold(t, addr, ""); served(c.Greeting) != "b" {
			t.Fatalf("a holds 2, b holds fewer than 2 per weight: new session went to %s", served(c.Greeting))
		}
	}
	for _, c := range held {
		if served(c.Greeting) == "a" {
			if err := c.send(false); err != nil { // held sessions still relay
				t.Fatal(err)
			}
		}
	}
}

func TestIPHashWithRealClients(t *testing.T) {
	t.Parallel()
	var bes []*backend
	var servers []string
	for _, name := range []string{"a", "b", "c"} {
		be := startBackend(t, name, "127.0.0.1", false)
		bes = append(bes, be)
		servers = append(servers, fmt.Sprintf("{name: %s, address: %q}", name, be.addr))
	}
	bal := startBalancer(t, poolYAML("      algorithm: ip-hash\n", servers, "  api_tokens: [\"0123456789abcdef-token\"]\n"), Options{})
	addr := bal.frontend(t, "smtp")
	first := map[string]string{}
	per := map[string]int{}
	for i := 10; i < 70; i++ {
		ip := fmt.Sprintf("127.0.0.%d", i)
		for j := range 2 {
			g, err := runSession(addr, ip)
			if err != nil {
				t.Fatal(err)
			}
			if j == 0 {
				first[ip] = served(g)
				per[served(g)]++
			} else if served(g) != first[ip] {
				t.Fatalf("client %s went to %s then %s", ip, first[ip], served(g))
			}
		}
	}
	for _, name := range []string{"a", "b", "c"} {
		if per[name] < 8 {
			t.Fatalf("60 clients spread %v: ip-hash is not spreading", per)
		}
	}
	if _, err := bal.SetServer("p", "c", ServerChange{State: StateMaint}); err != nil {
		t.Fatal(err)
	}
	for ip, was := range first {
		g, err := runSession(addr, ip)
		if err != nil {
			t.Fatal(err)
		}
		now := served(g)
		if was != "c" && now != was {
			t.Fatalf("client %s moved %s → %s, though only c left", ip, was, now)
		}
		if now == "c" {
			t.Fatalf("client %s still sent to c in maint", ip)
		}
	}
}

func TestGreeting421AndHangFailOver(t *testing.T) {
	t.Parallel()
	bad := startBackend(t, "bad", "127.0.0.1", false)
	bad.mode.Store(mode421)
	hung := startBackend(t, "hung", "127.0.0.1", false)
	hung.mode.Store(modeHang)
	good := startBackend(t, "good", "127.0.0.1", false)
	clk := newFakeClock()
	log, hook := testLogger()
	bal := startBalancer(t, poolYAML("", []string{
		fmt.Sprintf("{name: bad, address: %q, max_fails: 2, fail_timeout: 30s}", bad.addr),
		fmt.Sprintf("{name: hung, address: %q, max_fails: 2, fail_timeout: 30s}", hung.addr),
		fmt.Sprintf("{name: good, address: %q, max_fails: 2, fail_timeout: 30s}", good.addr),
	}, ""), Options{Clock: clk, Logger: log})
	addr := bal.frontend(t, "smtp")

	// Round robin sends sessions to bad and hung too; every one of them
	// still ends at good, until both are marked out.
	for i := range 9 {
		g, err := runSession(addr, "")
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		if served(g) != "good" {
			t.Fatalf("session %d served by %s", i, served(g))
		}
	}
	for _, name := range []string{"bad", "hung"} {
		st := bal.server(t, "p", name)
		if st.Available || st.Fails != 2 || st.FailedUntil == nil || !st.FailedUntil.Equal(clk.Now().Add(30*time.Second)) {
			t.Fatalf("%s after 2 failures at %v: %+v", name, clk.Now(), st)
		}
	}
	if st := bal.server(t, "p", "bad"); st.Failures[failRejected] != 2 {
		t.Fatalf("bad's failures: %v", st.Failures)
	}
	if st := bal.server(t, "p", "hung"); st.Failures[failTimeout] != 2 {
		t.Fatalf("hung's failures: %v", st.Failures)
	}
	// While out, no session tries them.
	badBefore, hungBefore := bad.accepted.Load(), hung.accepted.Load()
	for range 5 {
		if _, err := runSession(addr, ""); err != nil {
			t.Fatal(err)
		}
	}
	if bad.accepted.Load() != badBefore || hung.accepted.Load() != hungBefore {
		t.Fatal("servers marked out still got connections")
	}
	// fail_timeout later both come back for one probe each; bad recovers.
	bad.mode.Store(modeOK)
	clk.Advance(30 * time.Second)
	for range 6 {
		if _, err := runSession(addr, ""); err != nil {
			t.Fatal(err)
		}
	}
	if st := bal.server(t, "p", "bad"); !st.Available || st.Fails != 0 || st.TotalSessions == 0 {
		t.Fatalf("bad after a good probe: %+v", st)
	}
	if st := bal.server(t, "p", "hung"); st.Available || !st.FailedUntil.Equal(clk.Now().Add(30*time.Second)) {
		t.Fatalf("hung after a failed probe: %+v", st)
	}
	if n := len(entries(hook, "server marked unavailable")); n != 3 {
		t.Fatalf("%d 'server marked unavailable' lines, want 3 (bad, hung, hung again)", n)
	}
	for _, e := range entries(hook, "session") {
		if e.Data["result"] != resultOK {
			t.Fatalf("a session failed: %v", e.Data)
		}
	}
}

func TestNothingEligibleAnswers421(t *testing.T) {
	t.Parallel()
	dead := freeAddr(t, "127.0.0.1")
	bad := startBackend(t, "bad", "127.0.0.1", false)
	bad.mode.Store(mode421)
	log, hook := testLogger()
	bal := startBalancer(t, poolYAML("", []string{
		fmt.Sprintf("{name: dead, address: %q}", dead),
		fmt.Sprintf("{name: bad, address: %q}", bad.addr),
	}, ""), Options{Logger: log})
	c, err := dialClient(bal.frontend(t, "smtp"), "")
	if err == nil {
		c.conn.Close()
	}
	if c == nil || c.Code != 421 || !strings.HasPrefix(c.Greeting, "4.3.2 ") {
		t.Fatalf("client got %+v, %v; want 421 4.3.2", c, err)
	}
	waitFor(t, "the session log line", func() bool { return len(entries(hook, "session")) == 1 })
	e := entries(hook, "session")[0]
	if e.Data["result"] != resultNoServer || e.Data["tries"] != 2 {
		t.Fatalf("log line: %v", e.Data)
	}
	// Both are now out (max_fails 1): the next client is refused without a try.
	c, _ = dialClient(bal.frontend(t, "smtp"), "")
	if c == nil || c.Code != 421 {
		t.Fatalf("second client: %+v", c)
	}
	if bad.accepted.Load() != 1 {
		t.Fatalf("bad was tried %d times, want once", bad.accepted.Load())
	}
}

func TestMaxSessionsAndMaxConns(t *testing.T) {
	t.Parallel()
	be := startBackend(t, "a", "127.0.0.1", false)
	yaml := poolYAML("", []string{fmt.Sprintf("{name: a, address: %q, max_conns: 1}", be.addr)}, "")
	yaml = strings.Replace(yaml, "connect_timeout: 1s}", "connect_timeout: 1s, max_sessions: 2, queue_timeout: 1h}", 1)
	bal := startBalancer(t, yaml, Options{})
	addr := bal.frontend(t, "smtp")

	first := hold(t, addr, "")
	// The second waits for a's only slot: no greeting yet.
	second := make(chan *client, 1)
	go func() {
		c, _ := dialClient(addr, "")
		second <- c
	}()
	waitFor(t, "the second session to wait", func() bool { return bal.Frontends()[0].ActiveSessions == 2 })
	// A third is over max_sessions: refused at once.
	c, _ := dialClient(addr, "")
	if c == nil || c.Code != 421 || !strings.Contains(c.Greeting, "too many sessions") {
		t.Fatalf("third client: %+v", c)
	}
	if err := first.quit(); err != nil {
		t.Fatal(err)
	}
	c = <-second
	if c == nil || c.Code != 220 {
		t.Fatalf("queued client: %+v", c)
	}
	if err := c.send(true); err != nil {
		t.Fatal(err)
	}
	c.quit()
	if fs := bal.Frontends()[0]; fs.Rejected != 1 || fs.TotalSessions != 3 {
		t.Fatalf("frontend counters: %+v", fs)
	}
}

func TestQueueTimeoutAnswers421(t *testing.T) {
	t.Parallel()
	be := startBackend(t, "a", "127.0.0.1", false)
	yaml := poolYAML("", []string{fmt.Sprintf("{name: a, address: %q, max_conns: 1}", be.addr)}, "")
	yaml = strings.Replace(yaml, "connect_timeout: 1s}", "connect_timeout: 1s, queue_timeout: 50ms}", 1)
	bal := startBalancer(t, yaml, Options{})
	addr := bal.frontend(t, "smtp")
	hold(t, addr, "")
	c, _ := dialClient(addr, "")
	if c == nil || c.Code != 421 {
		t.Fatalf("client past max_conns and queue_timeout: %+v", c)
	}
}

func TestIdleTimeoutClosesSession(t *testing.T) {
	t.Parallel()
	be := startBackend(t, "a", "127.0.0.1", false)
	log, hook := testLogger()
	yaml := poolYAML("", []string{fmt.Sprintf("{name: a, address: %q}", be.addr)}, "")
	yaml = strings.Replace(yaml, "connect_timeout: 1s}", "connect_timeout: 1s, idle_timeout: 300ms}", 1)
	bal := startBalancer(t, yaml, Options{Logger: log})
	c := hold(t, bal.frontend(t, "smtp"), "")
	buf := make([]byte, 64)
	if n, err := c.conn.Read(buf); err == nil {
		t.Fatalf("idle session got %q instead of a close", buf[:n])
	}
	waitFor(t, "the session log line", func() bool { return len(entries(hook, "session")) == 1 })
	if r := entries(hook, "session")[0].Data["result"]; r != resultIdle {
		t.Fatalf("result %v", r)
	}
}

func TestBackupDrainMaint(t *testing.T) {
	t.Parallel()
	a := startBackend(t, "a", "127.0.0.1", false)
	b := startBackend(t, "b", "127.0.0.1", false)
	c := startBackend(t, "c", "127.0.0.1", false)
	bal := startBalancer(t, poolYAML("", []string{
		fmt.Sprintf("{name: a, address: %q}", a.addr),
		fmt.Sprintf("{name: b, address: %q}", b.addr),
		fmt.Sprintf("{name: c, address: %q, backup: true}", c.addr),
	}, ""), Options{})
	addr := bal.frontend(t, "smtp")
	check := func(n int, want ...string) {
		t.Helper()
		got, errs := load(addr, n, 2)
		if len(errs) > 0 {
			t.Fatal(errs[0])
		}
		total := 0
		for _, w := range want {
			total += got[w]
		}
		if total != n {
			t.Fatalf("sessions went %v, want only %v", got, want)
		}
	}
	check(20, "a", "b")
	if c.accepted.Load() != 0 {
		t.Fatal("backup used while primaries are up")
	}
	// A session established on a survives a's drain and finishes.
	var onA *client
	for onA == nil {
		h := hold(t, addr, "")
		if served(h.Greeting) == "a" {
			onA = h
		}
	}
	if _, err := bal.SetServer("p", "a", ServerChange{State: StateDrain}); err != nil {
		t.Fatal(err)
	}
	check(10, "b")
	if _, err := bal.SetServer("p", "b", ServerChange{State: StateMaint}); err != nil {
		t.Fatal(err)
	}
	check(10, "c")
	if err := onA.send(false); err != nil {
		t.Fatalf("drained server's established session: %v", err)
	}
	if err := onA.quit(); err != nil {
		t.Fatal(err)
	}
	if _, err := bal.SetServer("p", "a", ServerChange{State: StateReady}); err != nil {
		t.Fatal(err)
	}
	check(10, "a")
}

func TestKill9UnderLoad(t *testing.T) {
	t.Parallel()
	sinks := []*sink{startSink(t, "127.0.0.1"), startSink(t, "127.0.0.1"), startSink(t, "127.0.0.1")}
	var servers []string
	for i, s := range sinks {
		servers = append(servers, fmt.Sprintf("{name: s%d, address: %q, max_fails: 1, fail_timeout: 1h}", i, s.addr))
	}
	bal := startBalancer(t, poolYAML("", servers, ""), Options{})
	addr := bal.frontend(t, "smtp")

	const total, workers = 3000, 8
	var killed atomic.Bool
	var next, done atomic.Int64
	var mu sync.Mutex
	var failedAfter, failedDuring []error
	var wg sync.WaitGroup
	deadline := time.Now().Add(60 * time.Second)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= total && time.Now().Before(deadline) {
				startedAfterKill := killed.Load()
				_, err := runSession(addr, "")
				done.Add(1)
				if err != nil {
					mu.Lock()
					if startedAfterKill {
						failedAfter = append(failedAfter, err)
					} else {
						failedDuring = append(failedDuring, err)
					}
					mu.Unlock()
				}
			}
		}()
	}
	waitFor(t, "load to be under way", func() bool { return done.Load() >= total/4 })
	sinks[1].kill() // SIGKILL, reaped
	killed.Store(true)
	wg.Wait()
	if int(done.Load()) != total {
		t.Fatalf("only %d of %d sessions ran before the deadline", done.Load(), total)
	}
	if len(failedAfter) > 0 {
		t.Fatalf("%d sessions started after the kill failed; first: %v", len(failedAfter), failedAfter[0])
	}
	if len(failedDuring) > workers {
		t.Fatalf("%d sessions in flight at the kill failed, more than the %d clients", len(failedDuring), workers)
	}
	t.Logf("%d sessions; 0 failed after the kill; %d were bound to the killed server at that moment", total, len(failedDuring))
	if st := bal.server(t, "p", "s1"); st.Available {
		t.Fatalf("killed server still available: %+v", st)
	}
}
