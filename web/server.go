package web

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"

	"chainmail/archive"
)

// Archive is what the API needs of the archive; *archive.Store has it.
// Get and OpenPart return archive.ErrNotFound for an unknown id, Search
// returns archive.ErrBadCursor for a cursor it did not issue.
type Archive interface {
	Search(ctx context.Context, q archive.Query) (archive.Page, error)
	Get(ctx context.Context, id string) (*archive.Meta, error)
	// OpenPart streams one part of a message: a journal report's original
	// (the default), the report itself or its decrypted copy (see
	// archive.Store.OpenPart); archive.ErrNoPart when there is none.
	OpenPart(ctx context.Context, id, part string) (io.ReadCloser, archive.PartInfo, error)
	Digest(ctx context.Context) (archive.Digest, error)
	Stats() archive.Stats
}

// UserChecker verifies a console account's password; *Users is one.
type UserChecker interface {
	Check(user, password string) (role string, ok bool)
}

// Check is the outcome of one health check, as /healthz shows it.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// LoginLimit bounds failed authentication attempts per client IP (per /64
// for IPv6, since one host usually holds a whole /64).
type LoginLimit struct {
	// Failures allowed within Window; the next attempt gets 429 until
	// the window that began with the first failure is over.
	Failures int
	Window   time.Duration
}

// Options are everything a Server needs; cmd fills them from the node's
// configuration and its components.
type Options struct {
	// Address is the listen address of Run (web.address).
	Address string
	NodeID  string
	Version string
	// Started is when the node started; /api/v1/node reports the uptime.
	Started time.Time

	// Archive is required.
	Archive Archive
	// Connections are the forwarder's; nil lists none.
	Connections Connections
	// Config is the live configuration; nil turns its endpoints off.
	Config RuntimeConfig
	// ListenerStates reports each listener's state by name.
	ListenerStates func() map[string]ListenerState
	// Health runs the node's health checks for /healthz; nil means none
	// (the node is healthy when it can answer).
	Health func(ctx context.Context) []Check
	// Counters gives /api/v1/node its counters (messages, sessions, …);
	// nil means none.
	Counters func() map[string]int64

	// Registry receives this package's metrics and is what /metrics
	// serves. nil gives the server a registry of its own (tests).
	Registry *prometheus.Registry

	// APITokens have the admin role, ReadOnlyTokens the read-only role
	// (web.api_tokens, web.read_only_tokens).
	APITokens      []string
	ReadOnlyTokens []string
	// MetricsAuth puts /metrics behind the same auth as the API.
	MetricsAuth bool
	// Users checks HTTP Basic and console logins; nil turns them off.
	// When it is also an AccountStore (*Users is), /api/v1/users and the
	// console's Accounts page manage the accounts; otherwise they answer
	// 404.
	Users UserChecker
	// LoginLimit defaults to 10 failures per 5 minutes.
	LoginLimit LoginLimit

	// Log defaults to a logger that discards.
	Log *logrus.Entry
	// Now is the clock (uptime, login limits); default time.Now.
	Now func() time.Time
	// ShutdownTimeout bounds the graceful shutdown of Run; default 10s.
	ShutdownTimeout time.Duration
}

// Timeouts of the HTTP server. Requests are small (GETs, later console
// forms), so headers and bodies have tight bounds; responses may be large
// message downloads, whose handler extends its write deadline as it makes
// progress (see raw), so WriteTimeout only catches a stalled JSON answer.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = time.Minute
	writeTimeout      = time.Minute
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10
	healthTimeout     = 5 * time.Second
)

// Server is the HTTP API of one node.
type Server struct {
	opts    Options
	log     *logrus.Entry
	now     func() time.Time
	mux     *http.ServeMux
	handler http.Handler
	auth    *authenticator
	metrics *metrics
	// allowed lists the methods registered per path, for 405 answers.
	allowed map[string][]string
	checks  checkRunner
	// healthTimeout bounds a health-check run (a field so tests can
	// shorten it).
	healthTimeout time.Duration
	// console is the HTML console (console.go).
	console *console
}

// New checks opts and builds the Server with its routes; it registers the
// server's metrics in opts.Registry.
func New(opts Options) (*Server, error) {
	if opts.Archive == nil {
		return nil, errors.New("web: Options.Archive is required")
	}
	if opts.Log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		opts.Log = logrus.NewEntry(l)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Started.IsZero() {
		opts.Started = opts.Now()
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = 10 * time.Second
	}
	if opts.LoginLimit.Failures <= 0 {
		opts.LoginLimit.Failures = 10
	}
	if opts.LoginLimit.Window <= 0 {
		opts.LoginLimit.Window = 5 * time.Minute
	}
	m, err := newMetrics(opts.Registry)
	if err != nil {
		return nil, err
	}
	a, err := newAuthenticator(opts, m)
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts:    opts,
		log:     opts.Log.WithField("component", "web"),
		now:     opts.Now,
		mux:     http.NewServeMux(),
		auth:    a,
		metrics: m,
		allowed: map[string][]string{},

		healthTimeout: healthTimeout,
	}
	s.routes()
	s.handler = securityHeaders(s.mux)
	return s, nil
}

// routes is the whole URL space; docs/api.md describes each entry.
func (s *Server) routes() {
	s.handle("GET", "/healthz", accessOpen, s.handleHealthz)
	metricsAccess := accessOpen
	if s.opts.MetricsAuth {
		metricsAccess = accessAPI
	}
	prom := promhttp.HandlerFor(s.opts.Registry, promhttp.HandlerOpts{
		ErrorLog:            logrusPrinter{s.log},
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
	s.handle("GET", "/metrics", metricsAccess, prom.ServeHTTP)

	s.handle("GET", "/api/v1/node", accessAPI, s.handleNode)
	s.handle("GET", "/api/v1/archive/messages", accessAPI, s.handleSearch)
	s.handle("GET", "/api/v1/archive/messages/{id}", accessAPI, s.handleMessage)
	s.handle("GET", "/api/v1/archive/messages/{id}/raw", accessAPI, s.handleRaw)
	s.handle("GET", "/api/v1/archive/digest", accessAPI, s.handleDigest)
	s.handle("GET", "/api/v1/archive/verify", accessAPI, s.handleVerify)
	s.handle("GET", "/api/v1/connections", accessAPI, s.handleConnections)
	s.handle("GET", "/api/v1/connections/{name}", accessAPI, s.handleConnection)
	s.handle("POST", "/api/v1/connections", accessAPI, s.handleConfigWrite("connections", true))
	s.handle("PUT", "/api/v1/connections/{name}", accessAPI, s.handleConfigWrite("connections", false))
	s.handle("DELETE", "/api/v1/connections/{name}", accessAPI, s.handleConfigDelete("connections"))
	for _, kind := range []string{"listeners", "routes"} {
		s.handle("GET", "/api/v1/"+kind, accessAPI, s.handleConfigList(kind))
		s.handle("POST", "/api/v1/"+kind, accessAPI, s.handleConfigWrite(kind, true))
		s.handle("GET", "/api/v1/"+kind+"/{name}", accessAPI, s.handleConfigGet(kind))
		s.handle("PUT", "/api/v1/"+kind+"/{name}", accessAPI, s.handleConfigWrite(kind, false))
		s.handle("DELETE", "/api/v1/"+kind+"/{name}", accessAPI, s.handleConfigDelete(kind))
	}
	s.handle("GET", "/api/v1/config", accessAPI, s.handleConfigYAML)
	s.handle("GET", "/api/v1/audit", accessAPI, s.handleAudit)
	s.handle("GET", "/api/v1/users", accessAPI, s.handleUsers)
	s.handle("POST", "/api/v1/users", accessAPI, s.handleUserCreate)
	s.handle("DELETE", "/api/v1/users/{name}", accessAPI, s.handleUserDelete)
	s.handle("POST", "/api/v1/users/{name}/password", accessOwn, s.handleUserPassword)
	s.handle("POST", "/api/v1/users/{name}/role", accessAPI, s.handleUserRole)
	s.handle("GET", "/api/v1/connections/{name}/queue", accessAPI, s.handleQueue)
	for _, action := range []string{"retry", "purge", "pause", "resume"} {
		s.handle("POST", "/api/v1/connections/{name}/"+action, accessAPI, s.handleConnectionAction(action))
	}

	// The HTML console (console.go, docs/console.md): session cookies,
	// not tokens, and the same operations as the routes above.
	s.consoleRoutes()

	// Unknown API paths answer 404 only to an authenticated caller, so the
	// path space cannot be probed anonymously.
	s.mux.Handle("/api/", s.wrap("/api/", accessAPI, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, s.log, &Error{Status: http.StatusNotFound, Msg: "no such endpoint"})
	}))
	s.mux.Handle("/", s.wrap("/", accessOpen, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, s.log, &Error{Status: http.StatusNotFound, Msg: "not found"})
	}))
}

// access says who may call a route.
type access int

const (
	accessOpen access = iota // anyone (/healthz)
	accessAPI                // a token or account; writes need admin
	// accessOwn: as accessAPI, and an account may also write to its own
	// {name} (its password), whatever its role.
	accessOwn
)

// handle registers "METHOD path" with auth and instrumentation, and a
// method-less fallback for the same path that answers 405 in JSON (the
// mux's own 405 is plain text). A GET route also serves HEAD.
func (s *Server) handle(method, path string, acc access, h http.HandlerFunc) {
	pattern := method + " " + path
	s.mux.Handle(pattern, s.wrap(pattern, acc, h))
	if _, seen := s.allowed[path]; !seen {
		s.mux.Handle(path, s.wrap(path, acc, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allowHeader(s.allowed[path]))
			writeError(w, r, s.log, &Error{Status: http.StatusMethodNotAllowed,
				Msg: fmt.Sprintf("method %s not allowed (allowed: %s)", r.Method, allowHeader(s.allowed[path]))})
		}))
	}
	s.allowed[path] = append(s.allowed[path], method)
	if method == "GET" {
		s.allowed[path] = append(s.allowed[path], "HEAD")
	}
}

func allowHeader(methods []string) string {
	out := ""
	for i, m := range methods {
		if i > 0 {
			out += ", "
		}
		out += m
	}
	return out
}

// wrap puts a route's handler behind auth and the request metrics; the
// pattern is the metrics label, so its cardinality is the route count.
func (s *Server) wrap(pattern string, acc access, h http.HandlerFunc) http.Handler {
	var next http.Handler = h
	switch acc {
	case accessAPI:
		next = s.auth.require(next, s.log, byRole)
	case accessOwn:
		next = s.auth.require(next, s.log, byRoleOrOwn)
	}
	return s.metrics.instrument(pattern, next)
}

// Handler is the server's whole HTTP handler (for tests and for mounting).
func (s *Server) Handler() http.Handler { return s.handler }

// Run listens on Options.Address and serves until ctx ends, then shuts
// down gracefully within Options.ShutdownTimeout. A listen error returns at
// once and names the address.
func (s *Server) Run(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.opts.Address)
	if err != nil {
		return fmt.Errorf("web: listen on %s: %w", s.opts.Address, err)
	}
	return s.Serve(ctx, ln)
}

// Serve is Run on a listener the caller opened (tests use port 0); it
// closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	// Requests must not be cancelled the moment ctx ends: graceful
	// shutdown lets them finish. Their base context is cancelled only if
	// the shutdown bound passes.
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	errLog := s.log.WriterLevel(logrus.DebugLevel) // TLS noise, bad clients
	defer errLog.Close()
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return base },
		ErrorLog:          log.New(errLog, "", 0),
	}
	// The console's traffic sampler runs while the server does.
	samplerCtx, stopSampler := context.WithCancel(ctx)
	defer stopSampler()
	waitSampler := s.console.startSampler(samplerCtx)
	defer waitSampler()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.WithField("address", ln.Addr().String()).Info("web: listening")

	select {
	case err := <-errc:
		return fmt.Errorf("web: serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.opts.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		// Downloads still running after the bound are cut; the archive
		// is unaffected, so this is a warning and not a failed stop.
		s.log.WithError(err).WithField("timeout", s.opts.ShutdownTimeout.String()).
			Warn("web: requests still running after the shutdown bound, closing them")
		cancelBase()
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("web: serve on %s: %w", ln.Addr(), err)
	}
	s.log.Info("web: stopped")
	return nil
}

// securityHeaders are set on every answer. The API serves only JSON, text
// and message downloads, so the policy forbids everything a page could do;
// the console will set its own, wider CSP on its HTML pages.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'; sandbox")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// logrusPrinter adapts a logrus entry to promhttp's Logger.
type logrusPrinter struct{ log *logrus.Entry }

func (p logrusPrinter) Println(v ...any) {
	p.log.WithField("error", fmt.Sprint(v...)).Warn("web: serving metrics")
}
