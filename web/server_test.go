package web

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestHealthz(t *testing.T) {
	t.Parallel()
	checks := []Check{{Name: "store", OK: true}, {Name: "listener journal", OK: true, Detail: "127.0.0.1:2525"}}
	s := newTestServer(t, newFakeArchive(), func(o *Options) {
		o.Health = func(ctx context.Context) []Check {
			if _, ok := ctx.Deadline(); !ok {
				t.Error("health checks run without a deadline")
			}
			return checks
		}
	})
	w := do(t, s, request{path: "/healthz"})
	var h Health
	if err := json.Unmarshal(w.Body.Bytes(), &h); err != nil || w.Code != 200 || h.Status != "ok" || len(h.Checks) != 2 || h.Failing != nil {
		t.Errorf("healthy: %d %s", w.Code, w.Body)
	}

	checks = append(checks, Check{Name: "listener ha", OK: false, Detail: "bind: address in use"})
	w = do(t, s, request{path: "/healthz"})
	h = Health{}
	if err := json.Unmarshal(w.Body.Bytes(), &h); err != nil || w.Code != http.StatusServiceUnavailable ||
		h.Status != "failing" || len(h.Failing) != 1 || h.Failing[0] != "listener ha" {
		t.Errorf("failing: %d %s", w.Code, w.Body)
	}
	if !strings.Contains(w.Body.String(), "address in use") {
		t.Errorf("failing check's detail missing: %s", w.Body)
	}

	// No checks configured: answering is healthy.
	s = newTestServer(t, newFakeArchive(), nil)
	if w := do(t, s, request{path: "/healthz"}); w.Code != 200 || !strings.Contains(w.Body.String(), `"checks":[]`) {
		t.Errorf("no checks: %d %s", w.Code, w.Body)
	}
}

func TestHealthzWedgedCheck(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var calls atomic.Int32
	s := newTestServer(t, newFakeArchive(), func(o *Options) {
		o.Health = func(ctx context.Context) []Check {
			calls.Add(1)
			<-release // a disk that blocks, ignoring ctx
			return []Check{{Name: "disk", OK: true}}
		}
	})
	s.healthTimeout = 100 * time.Millisecond

	// Concurrent probes share the one run and all answer in time, failing.
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			start := time.Now()
			w := do(t, s, request{path: "/healthz"})
			if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), `"failing":["health"]`) {
				t.Errorf("wedged check: %d %s", w.Code, w.Body)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("probe took %v", d)
			}
		})
	}
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("%d runs of the checks for 5 concurrent probes, want 1", n)
	}
	close(release)
	// Once the check answers, so does the probe.
	deadline := time.Now().Add(5 * time.Second)
	for {
		w := do(t, s, request{path: "/healthz"})
		if w.Code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz stayed failing after the check recovered: %s", w.Body)
		}
	}
}

func TestNode(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	started := clock.Now()
	s := newTestServer(t, newFakeArchive(tricky), func(o *Options) {
		o.Now = clock.Now
		o.Started = started
		o.Counters = func() map[string]int64 { return map[string]int64{"messages_received": 7} }
	})
	clock.Add(90 * time.Second)
	w := do(t, s, request{path: "/api/v1/node", token: readOnlyToken})
	var n NodeInfo
	if err := json.Unmarshal(w.Body.Bytes(), &n); err != nil {
		t.Fatal(err)
	}
	if n.Node != "a" || n.Version != "test" || n.UptimeS != 90 || !n.Started.Equal(started) ||
		n.Counters["messages_received"] != 7 || n.Archive.Messages != 1 || n.Archive.Bytes != int64(len(tricky)) {
		t.Errorf("node %+v", n)
	}
}

func TestSecurityHeaders(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, newFakeArchive(), nil)
	for _, path := range []string{"/healthz", "/api/v1/node", "/nothing"} {
		w := do(t, s, request{path: path})
		for _, k := range []string{"X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy", "Referrer-Policy", "Cache-Control"} {
			if w.Header().Get(k) == "" {
				t.Errorf("%s: no %s", path, k)
			}
		}
		if path == "/nothing" && w.Code != http.StatusNotFound {
			t.Errorf("/nothing: %d", w.Code)
		}
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	s := newTestServer(t, newFakeArchive(), func(o *Options) { o.Registry = reg })
	do(t, s, request{path: "/api/v1/node", token: adminToken})
	do(t, s, request{path: "/api/v1/node"})
	do(t, s, request{path: "/api/v1/node", token: "wrong-wrong-wrong-wrong"})

	if got := counterValue(t, s.metrics.requests.WithLabelValues("GET /api/v1/node", "GET", "200")); got != 1 {
		t.Errorf("200s counted %v", got)
	}
	if got := counterValue(t, s.metrics.requests.WithLabelValues("GET /api/v1/node", "GET", "401")); got != 2 {
		t.Errorf("401s counted %v", got)
	}
	if got := counterValue(t, s.metrics.authFailures.WithLabelValues("token")); got != 1 {
		t.Errorf("token failures %v", got)
	}
	w := do(t, s, request{path: "/metrics"})
	for _, name := range []string{MetricHTTPRequests, MetricHTTPDuration, MetricHTTPInFlight, MetricHTTPAuthFailures} {
		if !strings.Contains(w.Body.String(), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	// One registry, one server: a second registration is an error, not a
	// panic or silently shared counters.
	if _, err := New(Options{Archive: newFakeArchive(), Registry: reg}); err == nil {
		t.Error("second server on the same registry accepted")
	}
}

func TestRunListenError(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := newTestServer(t, newFakeArchive(), func(o *Options) { o.Address = ln.Addr().String() })
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
			t.Errorf("Run on a busy address: %v, want an error naming it", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run on a busy address did not return")
	}
}

func TestServeGracefulShutdown(t *testing.T) {
	t.Parallel()
	arch := newFakeArchive()
	id := arch.add([]byte(strings.Repeat("z", 200_000)))
	release := make(chan struct{})
	arch.open = func(_ string, b []byte) io.ReadCloser {
		return &gateReader{first: b[:1000], rest: b[1000:], gate: release}
	}
	s := newTestServer(t, arch, func(o *Options) { o.ShutdownTimeout = 5 * time.Second })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()

	// A download is in flight when the stop comes; it must complete.
	req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/api/v1/archive/messages/"+id+"/raw", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	cancel()
	// New connections are refused once shutdown began.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still open after shutdown began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	body, err := io.ReadAll(resp.Body)
	if err != nil || len(body) != 200_000 {
		t.Errorf("in-flight download: %d bytes, %v", len(body), err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after shutdown")
	}
}

func TestServeShutdownBound(t *testing.T) {
	t.Parallel()
	arch := newFakeArchive()
	id := arch.add([]byte(strings.Repeat("z", 200_000)))
	never := make(chan struct{})
	defer close(never)
	arch.open = func(_ string, b []byte) io.ReadCloser {
		return &gateReader{first: b[:1000], rest: b[1000:], gate: never}
	}
	s := newTestServer(t, arch, func(o *Options) { o.ShutdownTimeout = 200 * time.Millisecond })
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/api/v1/archive/messages/"+id+"/raw", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("shutdown took %v with a 200ms bound", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a stuck download held the shutdown past its bound")
	}
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("the cut download ended cleanly")
	} else if !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "reset") {
		t.Logf("cut download: %v", err)
	}
}

// counterValue reads one counter (prometheus's testutil would add a module).
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
