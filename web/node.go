package web

import (
	"context"
	"net/http"
	"sync"
	"time"

	"chainmail/archive"
)

// NodeInfo is the answer of GET /api/v1/node.
type NodeInfo struct {
	Node     string           `json:"node"`
	Version  string           `json:"version"`
	Started  time.Time        `json:"started"`
	UptimeS  int64            `json:"uptime_s"`
	Counters map[string]int64 `json:"counters"`
	Archive  archive.Stats    `json:"archive"`
}

// Health is the answer of GET /healthz.
type Health struct {
	Status string  `json:"status"` // "ok" or "failing"
	Checks []Check `json:"checks"`
	// Failing names the checks that failed, so a probe's log shows why.
	Failing []string `json:"failing,omitempty"`
}

// node gathers the node's identity and counters.
func (s *Server) node() NodeInfo {
	info := NodeInfo{
		Node:     s.opts.NodeID,
		Version:  s.opts.Version,
		Started:  s.opts.Started.UTC(),
		UptimeS:  int64(s.now().Sub(s.opts.Started) / time.Second),
		Counters: map[string]int64{},
		Archive:  s.opts.Archive.Stats(),
	}
	if s.opts.Counters != nil {
		for k, v := range s.opts.Counters() {
			info.Counters[k] = v
		}
	}
	return info
}

// health runs the node's checks. Probes that arrive while a run is in
// progress share it, so there is at most one run at a time however often
// load balancers probe; and a run that does not finish within
// its bound makes the answer "failing" instead of hanging the probe (a
// wedged check, such as a disk that blocks, is exactly what a probe is for).
func (s *Server) health(ctx context.Context) Health {
	h := Health{Status: "ok", Checks: []Check{}}
	if s.opts.Health != nil {
		run := s.checks.start(s.opts.Health, s.healthTimeout)
		timer := time.NewTimer(s.healthTimeout)
		defer timer.Stop()
		select {
		case <-run.done:
			h.Checks = append(h.Checks, run.checks...)
		case <-timer.C:
			h.Checks = append(h.Checks, Check{Name: "health", OK: false,
				Detail: "the checks did not finish within " + s.healthTimeout.String()})
		case <-ctx.Done():
			return Health{Status: "failing", Checks: []Check{}}
		}
	}
	for _, c := range h.Checks {
		if !c.OK {
			h.Status = "failing"
			h.Failing = append(h.Failing, c.Name)
		}
	}
	return h
}

// checkRunner holds the one health-check run in progress.
type checkRunner struct {
	mu  sync.Mutex
	run *checkRun
}

type checkRun struct {
	done   chan struct{}
	checks []Check // set before done is closed
}

// start joins the run in progress or begins one. The run's context is not
// the probe's: it is shared, and bounded by healthTimeout on its own.
func (r *checkRunner) start(fn func(context.Context) []Check, timeout time.Duration) *checkRun {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.run != nil {
		return r.run
	}
	run := &checkRun{done: make(chan struct{})}
	r.run = run
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		run.checks = fn(ctx)
		r.mu.Lock()
		r.run = nil
		r.mu.Unlock()
		close(run.done)
	}()
	return run
}

func (s *Server) handleNode(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.node())
}

func (s *Server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	h := s.health(r.Context())
	status := http.StatusOK
	if h.Status != "ok" {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, h)
}
