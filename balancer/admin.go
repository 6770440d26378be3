package balancer

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// maxAdminBody bounds a POST body on the admin endpoint.
const maxAdminBody = 64 << 10

// adminHandler serves the balancer's API:
//
//	GET  /healthz                                 no auth; 503 when a pool has no available server
//	GET  /metrics                                 no auth; Prometheus text format
//	GET  /api/v1/pools                            pools and servers with state and counters
//	GET  /api/v1/frontends                        frontends with counters
//	POST /api/v1/pools/{pool}/servers/{server}    {"state":"ready|drain|maint","weight":N}
func (b *Balancer) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", b.handleHealthz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(b.metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /api/v1/pools", b.auth(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"pools": b.Pools()})
	}))
	mux.HandleFunc("GET /api/v1/frontends", b.auth(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"frontends": b.Frontends()})
	}))
	mux.HandleFunc("POST /api/v1/pools/{pool}/servers/{server}", b.auth(b.handleSetServer))
	mux.HandleFunc("/api/", b.auth(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint")
	}))
	b.consoleRoutes(mux) // console.go: the HTML page over SetServer
	return mux
}

func (b *Balancer) handleHealthz(w http.ResponseWriter, r *http.Request) {
	bad := b.unhealthyPools()
	body := map[string]any{"status": "ok", "uptime_s": int64(time.Since(b.started).Seconds())}
	code := http.StatusOK
	if len(bad) > 0 {
		body["status"] = "unavailable"
		body["pools_without_server"] = bad
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, body)
}

func (b *Balancer) handleSetServer(w http.ResponseWriter, r *http.Request) {
	var ch ServerChange
	dec := json.NewDecoder(io.LimitReader(r.Body, maxAdminBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ch); err != nil {
		writeError(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
		return
	}
	st, err := b.SetServer(r.PathValue("pool"), r.PathValue("server"), ch)
	switch {
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case err != nil:
		writeError(w, http.StatusBadRequest, err.Error())
	default:
		writeJSON(w, http.StatusOK, st)
	}
}

// auth requires one of api_tokens as a bearer token. With no token
// configured the API is closed.
func (b *Balancer) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || !b.validToken([]byte(strings.TrimSpace(tok))) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="chainmail balancer"`)
			writeError(w, http.StatusUnauthorized, "missing or invalid bearer token")
			return
		}
		h(w, r)
	}
}

func (b *Balancer) validToken(tok []byte) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	found := 0
	for _, t := range b.tokens {
		found |= subtle.ConstantTimeCompare(tok, t)
	}
	return len(tok) > 0 && found == 1
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
