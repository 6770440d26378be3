package balancer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
)

// Dialer opens connections to servers. *net.Dialer is one; a dialer that
// returns anything but *net.TCPConn still works, relayed by io.Copy.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Options are the balancer's dependencies. The zero value is usable: no
// log output, the real clock, a plain *net.Dialer.
type Options struct {
	Logger *logrus.Logger
	Clock  Clock
	Dialer Dialer
	// Seed seeds random-two's choices; 0 picks a random seed.
	Seed uint64
	// Loops is how many event loops serve the sessions on Linux; 0 means
	// one per two GOMAXPROCS, at least one.
	Loops int
}

// Balancer is a running balancer tier: frontends, pools, health checks and
// the admin endpoint. Create it with New, then call Run exactly once.
type Balancer struct {
	log     *logrus.Entry
	clock   Clock
	dialer  Dialer
	seed    uint64
	metrics *prometheus.Registry
	started time.Time

	mu        sync.RWMutex
	cfg       *Config
	pools     map[string]*pool
	frontends map[string]*frontend
	checkers  map[*server]*checker
	tokens    [][]byte
	adminLn   net.Listener
	adminSrv  *http.Server
	running   bool
	stopping  bool
	runCtx    context.Context // ends when Run's context does: accept loops, checkers

	// hardCtx ends when a graceful stop gives up waiting: it aborts the
	// connects and slot waits of sessions still starting.
	hardCtx    context.Context
	hardCancel context.CancelFunc

	liveMu sync.Mutex
	live   map[*session]struct{}

	readers sync.Pool // *bufio.Reader for greetings, replyBufSize each

	// engines serve the sessions on Linux (engine_linux.go), every one
	// accepting on every frontend; none elsewhere, where each frontend has
	// an accept loop and each session a goroutine.
	nloops  int
	engines []*engine

	loops    sync.WaitGroup // accept loops, checkers, admin server
	sessions sync.WaitGroup
}

// New validates cfg and binds every frontend and the admin address, so a
// configuration that cannot run fails here. Nothing is served until Run.
func New(cfg *Config, opts Options) (*Balancer, error) {
	if err := cfg.validateErr(); err != nil {
		return nil, err
	}
	b := &Balancer{
		clock:     opts.Clock,
		dialer:    opts.Dialer,
		seed:      opts.Seed,
		nloops:    opts.Loops,
		started:   time.Now(),
		pools:     map[string]*pool{},
		frontends: map[string]*frontend{},
		checkers:  map[*server]*checker{},
		live:      map[*session]struct{}{},
		runCtx:    context.Background(),
	}
	logger := opts.Logger
	if logger == nil {
		logger = logrus.New()
		logger.SetOutput(io.Discard)
	}
	b.log = logger.WithField("component", "balancer")
	if b.clock == nil {
		b.clock = realClock{}
	}
	if b.dialer == nil {
		// No TCP keepalive: the idle timeout finds dead peers, and the
		// keepalive setup costs four system calls per connection.
		b.dialer = &net.Dialer{KeepAlive: -1}
	}
	if b.seed == 0 {
		b.seed = rand.Uint64()
	}
	b.hardCtx, b.hardCancel = context.WithCancel(context.Background())
	b.metrics = newRegistry(b)

	ok := false
	defer func() {
		if !ok {
			b.closeListeners()
		}
	}()
	for _, fc := range cfg.Balancer.Frontends {
		fe, err := listenFrontend(fc)
		if err != nil {
			return nil, err
		}
		b.frontends[fc.Name] = fe
	}
	if cfg.Balancer.Admin != "" {
		ln, err := net.Listen("tcp", cfg.Balancer.Admin)
		if err != nil {
			return nil, fmt.Errorf("balancer: listen admin: %w", err)
		}
		b.adminLn = ln
		b.adminSrv = &http.Server{Handler: b.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
	}
	b.applyLocked(cfg)
	ok = true
	return b, nil
}

func (b *Balancer) closeListeners() {
	for _, fe := range b.frontends {
		fe.closeListener()
	}
	if b.adminLn != nil {
		b.adminLn.Close()
	}
}

// FrontendAddr is the address a frontend listens on (useful with port 0),
// or nil if there is no such frontend.
func (b *Balancer) FrontendAddr(name string) net.Addr {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if fe, ok := b.frontends[name]; ok {
		return fe.laddr
	}
	return nil
}

// AdminAddr is the address of the admin endpoint, or nil if none.
func (b *Balancer) AdminAddr() net.Addr {
	if b.adminLn == nil {
		return nil
	}
	return b.adminLn.Addr()
}

// Run serves until ctx ends, then stops gracefully: it closes the
// listeners, stops the checks, waits up to shutdown_timeout for established
// sessions to finish and closes the rest. It returns when every goroutine
// it started has ended.
func (b *Balancer) Run(ctx context.Context) error {
	b.mu.Lock()
	if b.running || b.stopping {
		b.mu.Unlock()
		return errors.New("balancer: Run called twice")
	}
	if useEngine {
		n := b.nloops
		if n <= 0 {
			// A loop waits in epoll_wait holding its P in a system call.
			// With no P left idle the runtime's monitor takes them back
			// every 20 µs, which cost 20 % more CPU per session with two
			// loops on two cores. Half leaves room for it, and for the
			// goroutines: checks, the admin API, handed-over sessions.
			n = max(1, runtime.GOMAXPROCS(0)/2)
		}
		for range n {
			eng, err := newEngine(b)
			if err != nil {
				for _, e := range b.engines {
					e.stop()
				}
				b.mu.Unlock()
				return err
			}
			b.engines = append(b.engines, eng)
			go eng.run()
		}
	}
	b.running = true
	runCtx, cancelRun := context.WithCancel(context.Background())
	b.runCtx = runCtx
	for _, fe := range b.frontends {
		b.startFrontendLocked(fe)
	}
	for s, c := range b.checkers {
		b.startCheckerLocked(s, c)
	}
	if b.adminSrv != nil {
		b.loops.Add(1)
		go func() {
			defer b.loops.Done()
			if err := b.adminSrv.Serve(b.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				b.log.WithError(err).Error("admin server failed")
			}
		}()
	}
	shutdown := b.cfg.Balancer.ShutdownTimeout
	b.log.WithField("frontends", len(b.frontends)).Info("balancer started")
	b.mu.Unlock()

	<-ctx.Done()

	b.mu.Lock()
	b.stopping = true
	shutdown = b.cfg.Balancer.ShutdownTimeout
	for _, fe := range b.frontends {
		b.stopFrontendLocked(fe)
	}
	cancelRun()
	if b.adminSrv != nil {
		b.adminSrv.Close() // and its listener
	}
	b.mu.Unlock()
	b.loops.Wait()
	for _, e := range b.engines {
		e.sync() // no accept after this
	}

	done := make(chan struct{})
	go func() {
		b.sessions.Wait()
		close(done)
	}()
	timer := time.NewTimer(shutdown)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		b.liveMu.Lock()
		n := len(b.live)
		for s := range b.live {
			s.kill()
		}
		b.liveMu.Unlock()
		for _, e := range b.engines {
			n += e.killAll()
		}
		b.hardCancel()
		b.log.WithField("sessions", n).Warn("shutdown timeout: closing sessions")
		<-done
	}
	for _, e := range b.engines {
		e.stop()
	}
	b.hardCancel()
	b.log.Info("balancer stopped")
	return nil
}

// Reload applies a new configuration without dropping established
// sessions: new frontends start listening, removed ones stop, servers are
// added and removed, weights and checks change. Runtime state set through
// the API (drain, maint, weight) survives unless the file changes that
// server's weight. The admin address cannot move without a restart. On
// error nothing has changed.
func (b *Balancer) Reload(cfg *Config) error {
	if err := cfg.validateErr(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopping {
		return errors.New("balancer: reload: stopping")
	}
	if cfg.Balancer.Admin != b.cfg.Balancer.Admin {
		return fmt.Errorf("balancer: reload: the admin address cannot change from %q to %q without a restart",
			b.cfg.Balancer.Admin, cfg.Balancer.Admin)
	}
	frontends := map[string]*frontend{}
	var opened []*frontend
	for _, fc := range cfg.Balancer.Frontends {
		if fe, ok := b.frontends[fc.Name]; ok && fe.addr == fc.Address {
			frontends[fc.Name] = fe
			continue
		}
		fe, err := listenFrontend(fc)
		if err != nil {
			for _, o := range opened {
				o.closeListener()
			}
			return fmt.Errorf("balancer: reload: %w", err)
		}
		opened = append(opened, fe)
		frontends[fc.Name] = fe
	}
	for name, fe := range b.frontends {
		if frontends[name] != fe {
			b.stopFrontendLocked(fe) // its sessions go on
		}
	}
	b.frontends = frontends
	for _, fe := range opened {
		if b.running {
			b.startFrontendLocked(fe)
		}
	}
	b.applyLocked(cfg)
	b.log.WithFields(logrus.Fields{"frontends": len(b.frontends), "pools": len(b.pools)}).Info("configuration reloaded")
	return nil
}

// applyLocked installs cfg's pools, servers, checks, frontend settings and
// tokens. b.mu (or exclusive ownership in New).
func (b *Balancer) applyLocked(cfg *Config) {
	pools := map[string]*pool{}
	for _, pc := range cfg.Balancer.Pools {
		p, ok := b.pools[pc.Name]
		if !ok {
			p = newPool(pc, b.clock, b.seed)
		} else {
			p.apply(pc)
		}
		pools[pc.Name] = p
	}
	// Checks: keep a checker whose server and settings are unchanged.
	want := map[*server]*checker{}
	for _, pc := range cfg.Balancer.Pools {
		if pc.HealthCheck.Type == CheckNone {
			continue
		}
		p := pools[pc.Name]
		p.mu.Lock()
		for _, s := range p.servers {
			want[s] = &checker{cfg: pc.HealthCheck, proxy: pc.ProxyProtocol, pool: p}
		}
		p.mu.Unlock()
	}
	for s, c := range b.checkers {
		if w, ok := want[s]; ok && w.cfg == c.cfg && w.proxy == c.proxy && w.pool == c.pool {
			want[s] = c
			continue
		}
		if c.cancel != nil {
			c.cancel()
		}
	}
	b.checkers = want
	if b.running {
		for s, c := range want {
			if c.cancel == nil {
				b.startCheckerLocked(s, c)
			}
		}
	}
	for _, fc := range cfg.Balancer.Frontends {
		fc := fc
		b.frontends[fc.Name].cfg.Store(&fc)
	}
	b.pools = pools
	b.tokens = b.tokens[:0]
	for _, t := range cfg.Balancer.APITokens {
		b.tokens = append(b.tokens, []byte(t))
	}
	b.cfg = cfg
}

func (b *Balancer) startCheckerLocked(s *server, c *checker) {
	ctx, cancel := context.WithCancel(b.runCtx)
	c.cancel = cancel
	b.loops.Add(1)
	go func() {
		defer b.loops.Done()
		b.runChecker(ctx, c.pool, s, c)
	}()
}

func (b *Balancer) startFrontendLocked(fe *frontend) {
	fe.started = true
	if len(b.engines) > 0 {
		fe.lfdRefs.Store(int32(len(b.engines)))
		for _, e := range b.engines {
			e.addListener(fe)
		}
		return
	}
	b.loops.Add(1)
	go func() {
		defer b.loops.Done()
		b.acceptLoop(b.runCtx, fe)
	}()
}

// stopFrontendLocked stops accepting on fe and closes its socket.
func (b *Balancer) stopFrontendLocked(fe *frontend) {
	if fe.started && len(b.engines) > 0 {
		for _, e := range b.engines {
			e.removeListener(fe)
		}
		return
	}
	fe.closeListener() // an accept loop, if any, ends
}

func (b *Balancer) pool(name string) *pool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.pools[name]
}

// frontend is one listening address.
type frontend struct {
	name  string
	addr  string // as configured
	laddr net.Addr
	// The listening socket: ln for an accept loop; lfd, outside Go's
	// poller, for an engine, which owns it once started.
	ln      *net.TCPListener
	lfd     int
	started bool         // b.mu
	lfdRefs atomic.Int32 // engines still watching lfd: the last one closes it
	cfg     atomic.Pointer[FrontendConfig]

	active   atomic.Int64
	sessions atomic.Int64 // accepted
	rejected atomic.Int64 // over max_sessions
	noServer atomic.Int64 // answered 421: nothing eligible
	bytesIn  atomic.Int64
	bytesOut atomic.Int64
}

// listenFrontend binds a frontend. A plain listen: no TCP_DEFER_ACCEPT,
// since an SMTP client waits for the server to speak first; no TCP
// keepalive on accepted connections, the idle timeout covers dead peers.
func listenFrontend(fc FrontendConfig) (*frontend, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", fc.Address)
	if err != nil {
		return nil, fmt.Errorf("balancer: listen frontend %s: %w", fc.Name, err)
	}
	fe := &frontend{name: fc.Name, addr: fc.Address, laddr: ln.Addr(), ln: ln.(*net.TCPListener), lfd: -1}
	if useEngine {
		// The engine's epoll set takes the socket. Go's poller must not
		// keep it too, or every connection would also wake the runtime.
		fd, err := dupListener(fe.ln)
		fe.ln.Close()
		if err != nil {
			return nil, fmt.Errorf("balancer: listen frontend %s: %w", fc.Name, err)
		}
		fe.ln, fe.lfd = nil, fd
	}
	fe.cfg.Store(&fc)
	return fe, nil
}

// closeListener closes a listening socket no engine has.
func (fe *frontend) closeListener() {
	if fe.ln != nil {
		fe.ln.Close()
	} else if fe.lfd >= 0 {
		closeFD(fe.lfd)
		fe.lfd = -1
	}
}
