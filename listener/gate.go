package listener

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	proxyproto "github.com/pires/go-proxyproto"
	"github.com/sirupsen/logrus"
)

// proxyHeaderTimeout bounds the wait for a trusted balancer's PROXY header.
const proxyHeaderTimeout = 5 * time.Second

// gate is the net.Listener go-smtp serves from. Its own accept loop vets
// every connection (PROXY header, allow list, caps, shutdown) before
// go-smtp sees it, so go-smtp's greeting goes only to admitted clients.
type gate struct {
	raw       net.Listener
	name      string
	allow     []netip.Prefix // empty: everyone
	proxyFrom []netip.Prefix
	maxConns  int
	maxPerIP  int
	log       *logrus.Entry
	metrics   *Metrics

	closing atomic.Bool // answer 421 4.3.2 to newcomers
	conns   chan net.Conn
	done    chan struct{}
	vetting chan struct{} // bounds connections being vetted at once
	wg      sync.WaitGroup

	mu     sync.Mutex
	active int
	perIP  map[netip.Addr]int
	open   map[*trackedConn]struct{}
}

func newGate(raw net.Listener, name string, allow, proxyFrom []netip.Prefix, maxConns, maxPerIP int, log *logrus.Entry, m *Metrics) *gate {
	return &gate{
		raw: raw, name: name, allow: allow, proxyFrom: proxyFrom, maxConns: maxConns, maxPerIP: maxPerIP,
		log: log, metrics: m,
		conns:   make(chan net.Conn),
		done:    make(chan struct{}),
		vetting: make(chan struct{}, 2*maxConns),
		perIP:   map[netip.Addr]int{},
		open:    map[*trackedConn]struct{}{},
	}
}

// run accepts until the raw listener closes.
func (g *gate) run() {
	defer g.wg.Done()
	for {
		c, err := g.raw.Accept()
		if err != nil {
			select {
			case <-g.done:
				return
			default:
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			// EMFILE and friends: back off instead of spinning.
			g.log.WithError(err).Warn("accept failed")
			select {
			case <-time.After(100 * time.Millisecond):
				continue
			case <-g.done:
				return
			}
		}
		select {
		case g.vetting <- struct{}{}:
		default:
			g.refuse(c, replyTooMany, "too many connections being vetted")
			continue
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			defer func() { <-g.vetting }()
			g.vet(c)
		}()
	}
}

func (g *gate) vet(raw net.Conn) {
	conn := raw
	remote := addrPort(raw.RemoteAddr())
	var proxiedBy string
	if contains(g.proxyFrom, remote.Addr()) {
		// A trusted balancer must start with a PROXY header: the SMTP
		// client waits for our greeting, so an optional header could only
		// be told apart by a timeout.
		pc := proxyproto.NewConn(raw, proxyproto.WithPolicy(proxyproto.REQUIRE), proxyproto.SetReadHeaderTimeout(proxyHeaderTimeout))
		if pc.ProxyHeader() == nil {
			g.metrics.refused(g.name, 0)
			g.log.WithField("client", remote.String()).Warn("connection from a proxy_protocol_from network without a valid PROXY header; closed")
			raw.Close()
			return
		}
		proxiedBy = remote.String()
		conn = pc
		remote = addrPort(pc.RemoteAddr())
	}
	if g.closing.Load() {
		g.refuse(conn, replyShutdown, "shutting down")
		return
	}
	if len(g.allow) > 0 && !contains(g.allow, remote.Addr()) {
		g.refuse(conn, replyDenied, "address not allowed")
		return
	}
	ip := remote.Addr()
	g.mu.Lock()
	switch {
	case g.active >= g.maxConns:
		g.mu.Unlock()
		g.refuse(conn, replyTooMany, "listener session cap reached")
		return
	case g.perIP[ip] >= g.maxPerIP:
		g.mu.Unlock()
		g.refuse(conn, replyTooMany, "per-IP session cap reached")
		return
	}
	g.active++
	g.perIP[ip]++
	tc := &trackedConn{Conn: conn, gate: g, ip: ip, remote: remote, proxiedBy: proxiedBy, start: time.Now()}
	g.open[tc] = struct{}{}
	g.mu.Unlock()
	g.metrics.opened(g.name)
	select {
	case g.conns <- tc:
	case <-g.done:
		tc.Close()
	}
}

// refuse answers before the greeting and closes.
func (g *gate) refuse(c net.Conn, r *smtp.SMTPError, why string) {
	g.metrics.refused(g.name, r.Code)
	g.log.WithFields(logrus.Fields{"client": c.RemoteAddr().String(), "code": r.Code}).Info("connection refused: " + why)
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintf(c, "%d %d.%d.%d %s\r\n", r.Code, r.EnhancedCode[0], r.EnhancedCode[1], r.EnhancedCode[2], r.Message)
	c.Close()
}

func (g *gate) release(tc *trackedConn) {
	ip := tc.ip
	g.mu.Lock()
	delete(g.open, tc)
	g.active--
	if g.perIP[ip]--; g.perIP[ip] <= 0 {
		delete(g.perIP, ip)
	}
	g.mu.Unlock()
}

// Accept hands go-smtp the next admitted connection.
func (g *gate) Accept() (net.Conn, error) {
	select {
	case c := <-g.conns:
		return c, nil
	case <-g.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; vetting in progress is abandoned.
func (g *gate) Close() error {
	select {
	case <-g.done:
		return nil
	default:
	}
	close(g.done)
	return g.raw.Close()
}

func (g *gate) Addr() net.Addr { return g.raw.Addr() }

func (g *gate) sessions() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.active
}

// trackedConn is an admitted connection; closing it frees its place under
// the caps and writes the connection's log line.
type trackedConn struct {
	net.Conn
	gate      *gate
	ip        netip.Addr
	remote    netip.AddrPort
	proxiedBy string
	start     time.Time
	once      sync.Once

	mu           sync.Mutex
	helo         string
	messages     int
	bytes        int64
	failures     int
	authFailures int // per connection: STARTTLS starts a new session, not a new count

	// closeAfterWrite closes the connection once the next reply is out,
	// for replies after which go-smtp would read on (AUTH's).
	closeAfterWrite atomic.Bool
}

func (c *trackedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.closeAfterWrite.Load() {
		c.Conn.Close() // go-smtp's next read fails and it closes c
	}
	return n, err
}

// authFailed counts a failed AUTH and returns the connection's count.
func (c *trackedConn) authFailed() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.authFailures++
	return c.authFailures
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.gate.release(c)
		c.gate.metrics.closed(c.gate.name)
		c.mu.Lock()
		defer c.mu.Unlock()
		c.gate.log.WithFields(logrus.Fields{
			"client": c.remote.String(), "helo": c.helo, "messages": c.messages, "failed": c.failures,
			"bytes": c.bytes, "duration_ms": time.Since(c.start).Milliseconds(),
		}).Info("session closed")
	})
	return err
}

func (c *trackedConn) count(size int64, ok bool) {
	c.mu.Lock()
	if ok {
		c.messages++
		c.bytes += size
	} else {
		c.failures++
	}
	c.mu.Unlock()
}

func addrPort(a net.Addr) netip.AddrPort {
	switch v := a.(type) {
	case *net.TCPAddr:
		ap := v.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func contains(list []netip.Prefix, a netip.Addr) bool {
	for _, p := range list {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// closeAll closes every admitted connection's socket. Each session's own
// goroutine then sees the error and ends as it would for a client that
// went away; nothing else touches go-smtp's session state (go-smtp's
// Server.Close clears it from the caller's goroutine, racing the session's
// own reads).
func (g *gate) closeAll() {
	g.mu.Lock()
	conns := make([]*trackedConn, 0, len(g.open))
	for tc := range g.open {
		conns = append(conns, tc)
	}
	g.mu.Unlock()
	for _, tc := range conns {
		tc.Conn.Close()
	}
}
