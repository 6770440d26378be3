package listener

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"

	"chainmail/archive"
	"chainmail/internal/config"
	"chainmail/route"
)

// Deliverer takes a received message to its routes.
type Deliverer interface {
	Deliver(ctx context.Context, listener string, it *archive.Item) (route.Outcome, error)
}

// Deps are what every listener of a node shares.
type Deps struct {
	Node           string
	Router         Deliverer
	SpoolDir       string
	SpoolThreshold int64
	Metrics        *Metrics
	Log            *logrus.Entry
	// ShutdownGrace bounds how long a stopping listener waits for
	// transactions in flight before closing their connections.
	ShutdownGrace time.Duration
	// PeerHello, if set, is told the EHLO name of every session on an ha
	// listener: a peer greets with its node id, and one that sends to us
	// is up (forwarder.PeerSeen).
	PeerHello func(node string)
}

// maxLineLength bounds a line, command or data. RFC 5322 §2.1.1 allows 998
// characters, but real mail (HTML parts, Exchange Online's binary
// attachments sent over DATA) breaks it, and an archive that refuses such a
// message loses it: a journaling MTA does not resend a rejected report.
// go-smtp's default, 2000, is too tight for that; 64 KiB still bounds what
// one session can make the server buffer.
const maxLineLength = 64 << 10

// Listener is one SMTP server.
type Listener struct {
	cfg       config.Listener
	deps      Deps
	log       *logrus.Entry
	srv       *smtp.Server
	gate      *gate
	ctx       context.Context
	dummyHash []byte
	ready     chan struct{}
	allow     []netip.Prefix
	inDATA    atomic.Int64 // sessions between DATA and their reply
}

// New prepares a listener; Run binds and serves it.
func New(cfg config.Listener, deps Deps) (*Listener, error) {
	l := &Listener{
		cfg:   cfg,
		deps:  deps,
		log:   deps.Log.WithFields(logrus.Fields{"component": "listener", "listener": cfg.Name}),
		ready: make(chan struct{}),
		allow: prefixes(cfg.Allow),
	}
	if deps.ShutdownGrace <= 0 {
		l.deps.ShutdownGrace = 30 * time.Second
	}
	srv := smtp.NewServer(smtp.BackendFunc(l.newSession))
	srv.Domain = deps.Node // the greeting names the node: peers detect self-loops by it
	srv.MaxMessageBytes = int64(cfg.MaxMessageSize)
	srv.MaxRecipients = cfg.MaxRecipients
	srv.ReadTimeout = cfg.ReadTimeout
	srv.WriteTimeout = cfg.WriteTimeout
	srv.EnableSMTPUTF8 = true
	srv.MaxLineLength = maxLineLength
	srv.ErrorLog = logrusAdapter{l.log}
	if cfg.TLS != nil {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.Cert, cfg.TLS.Key)
		if err != nil {
			return nil, fmt.Errorf("listener %s: tls: %w", cfg.Name, err)
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if cfg.Auth != nil {
		srv.AllowInsecureAuth = cfg.Auth.AllowInsecure
		pw := make([]byte, 16)
		rand.Read(pw)
		h, err := bcrypt.GenerateFromPassword(pw, bcrypt.DefaultCost)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", cfg.Name, err)
		}
		l.dummyHash = h
	}
	l.srv = srv
	return l, nil
}

// Name is the listener's configured name.
func (l *Listener) Name() string { return l.cfg.Name }

// Config is the configuration the listener runs with.
func (l *Listener) Config() config.Listener { return l.cfg }

// Addr is the bound address, once Ready.
func (l *Listener) Addr() net.Addr { return l.gate.Addr() }

// Ready is closed once the listener accepts connections.
func (l *Listener) Ready() <-chan struct{} { return l.ready }

// Sessions is the number of open connections.
func (l *Listener) Sessions() int {
	select {
	case <-l.ready:
		return l.gate.sessions()
	default:
		return 0
	}
}

// Listen binds the address, so a port clash is reported before the node
// claims to be up.
func (l *Listener) Listen() error {
	raw, err := net.Listen("tcp", l.cfg.Address)
	if err != nil {
		return fmt.Errorf("listener %s: %w", l.cfg.Name, err)
	}
	l.gate = newGate(raw, l.cfg.Name, l.allow, prefixes(l.cfg.ProxyProtocolFrom), l.cfg.MaxSessions, l.cfg.MaxSessionsPerIP, l.log, l.deps.Metrics)
	return nil
}

// Run serves until ctx ends, then stops gracefully: newcomers get 421
// 4.3.2, transactions in flight get up to ShutdownGrace to finish, then the
// remaining connections are closed. Run returns when every session is over.
func (l *Listener) Run(ctx context.Context) error {
	if l.gate == nil {
		if err := l.Listen(); err != nil {
			return err
		}
	}
	l.ctx = ctx
	l.gate.wg.Add(1)
	go l.gate.run()
	serveErr := make(chan error, 1)
	go func() { serveErr <- l.srv.Serve(gateListener{l.gate}) }()
	l.log.WithField("address", l.gate.Addr().String()).Info("listener started")
	close(l.ready)
	select {
	case err := <-serveErr:
		l.gate.Close()
		l.gate.wg.Wait()
		return fmt.Errorf("listener %s: %w", l.cfg.Name, err)
	case <-ctx.Done():
	}
	l.gate.closing.Store(true)
	l.log.Info("listener stopping: new sessions get 421")
	// Keep answering newcomers with 421 while sessions finish.
	grace, cancel := context.WithTimeout(context.Background(), l.deps.ShutdownGrace)
	defer cancel()
	l.waitIdle(grace)
	l.gate.Close()
	l.gate.closeAll()
	// Shutdown closes nothing but the (closed) gate and waits for the
	// session goroutines, which end on their closed sockets.
	done, cancelWait := context.WithTimeout(context.Background(), 10*time.Second)
	if err := l.srv.Shutdown(done); err != nil {
		l.log.WithError(err).Warn("sessions still running after their sockets closed")
	}
	cancelWait()
	<-serveErr
	l.gate.wg.Wait()
	l.log.Info("listener stopped")
	return nil
}

// waitIdle waits until no connection has a transaction in DATA, or grace
// ends. Connections idle between transactions are closed right after.
func (l *Listener) waitIdle(grace context.Context) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for l.inDATA.Load() > 0 {
		select {
		case <-grace.Done():
			l.log.WithField("sessions", l.gate.sessions()).Warn("shutdown grace over; closing sessions in progress")
			return
		case <-t.C:
		}
	}
}

// trustsTrace: trace fields are honoured only on role ha, from a client
// that matched a non-empty allow list or authenticated.
func (l *Listener) trustsTrace(s *session) bool {
	if l.cfg.Role != config.RoleHA {
		return false
	}
	return s.authUser != "" || (len(l.allow) > 0 && contains(l.allow, s.conn.remote.Addr()))
}

func prefixes(list []string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		if p, err := config.ParsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// gateListener hides the gate's extra methods from go-smtp.
type gateListener struct{ g *gate }

func (gl gateListener) Accept() (net.Conn, error) { return gl.g.Accept() }
func (gl gateListener) Close() error              { return gl.g.Close() }
func (gl gateListener) Addr() net.Addr            { return gl.g.Addr() }

type logrusAdapter struct{ e *logrus.Entry }

func (a logrusAdapter) Printf(format string, v ...any) { a.e.Warnf(format, v...) }
func (a logrusAdapter) Println(v ...any)               { a.e.Warn(v...) }
