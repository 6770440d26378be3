package web

import (
	"context"
	"net/http"
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

// health runs the checks within a bound, so a wedged check makes the node
// unhealthy instead of hanging its probe.
func (s *Server) health(ctx context.Context) Health {
	h := Health{Status: "ok", Checks: []Check{}}
	if s.opts.Health != nil {
		ctx, cancel := context.WithTimeout(ctx, healthTimeout)
		defer cancel()
		h.Checks = append(h.Checks, s.opts.Health(ctx)...)
	}
	for _, c := range h.Checks {
		if !c.OK {
			h.Status = "failing"
			h.Failing = append(h.Failing, c.Name)
		}
	}
	return h
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
