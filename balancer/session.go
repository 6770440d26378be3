package balancer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
)

// Session results, as logged and counted.
const (
	resultOK          = "ok"
	resultNoServer    = "no_server"
	resultMaxSessions = "max_sessions"
	resultIdle        = "idle_timeout"
	resultShutdown    = "shutdown"
	resultClientGone  = "client_gone"
	resultError       = "error"
)

// rejectLinger bounds how long a refused client is given to read our 421
// before the connection is closed; finLinger how long a client may keep
// its side open after the server has closed the session.
const (
	rejectLinger = 2 * time.Second
	finLinger    = 5 * time.Second
)

// session is one client connection, tracked so a shutdown that runs out of
// time can close it.
type session struct {
	client *net.TCPConn

	mu      sync.Mutex
	backend net.Conn
	killed  bool
}

func (s *session) setBackend(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.backend = c
	return !s.killed
}

func (s *session) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killed = true
	s.client.Close()
	if s.backend != nil {
		s.backend.Close()
	}
}

func (s *session) wasKilled() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.killed
}

func (b *Balancer) acceptLoop(ctx context.Context, fe *frontend) {
	var backoff time.Duration
	for {
		c, err := fe.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			b.log.WithError(err).WithField("frontend", fe.name).Warn("accept failed")
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		s := &session{client: c}
		b.liveMu.Lock()
		b.live[s] = struct{}{}
		b.sessions.Add(1)
		b.liveMu.Unlock()
		go func() {
			defer b.sessions.Done()
			b.serve(fe, s)
			b.liveMu.Lock()
			delete(b.live, s)
			b.liveMu.Unlock()
		}()
	}
}

// serve runs one client session accepted by an accept loop: it counts
// the session against the frontend's max_sessions, then runs serveTries.
func (b *Balancer) serve(fe *frontend, sess *session) {
	start := time.Now()
	fc := fe.cfg.Load()
	n := fe.active.Add(1)
	defer fe.active.Add(-1)
	fe.sessions.Add(1)
	if fc.MaxSessions > 0 && n > int64(fc.MaxSessions) {
		b.rejectMaxSessions(fe, fc, sess.client, start)
		return
	}
	b.serveTries(fe, fc, sess, start, nil, nil, errNoServer)
}

func (b *Balancer) rejectMaxSessions(fe *frontend, fc *FrontendConfig, client *net.TCPConn, start time.Time) {
	fe.rejected.Add(1)
	reject(client, "too many sessions, try again later")
	b.log.WithFields(logrus.Fields{
		"frontend": fe.name, "pool": fc.Pool, "client": client.RemoteAddr().String(),
		"result": resultMaxSessions, "duration": time.Since(start).Seconds(),
	}).Warn("session")
}

// serveTries finds a server that greets with 220 (trying the next
// eligible one after a refused connect, a timeout or a 4xx/5xx greeting),
// relays that greeting and then copies both ways. When no server is left
// the client is answered 421 4.3.2. It logs one line. tried are the
// servers an event loop tried already, first one it has acquired and
// leaves to this path, lastErr why the last try failed.
func (b *Balancer) serveTries(fe *frontend, fc *FrontendConfig, sess *session, start time.Time, tried []*server, first *server, lastErr error) {
	client := sess.client
	defer client.Close()
	log := func(f logrus.Fields) *logrus.Entry { // built only when a line is written
		f["frontend"], f["pool"], f["client"] = fe.name, fc.Pool, client.RemoteAddr().String()
		return b.log.WithFields(f)
	}
	p := b.pool(fc.Pool)
	if p == nil { // the pool went away in a reload between the two loads
		fc = fe.cfg.Load()
		if p = b.pool(fc.Pool); p == nil {
			fe.noServer.Add(1)
			reject(client, "no server available, try again later")
			log(logrus.Fields{"result": resultNoServer, "duration": time.Since(start).Seconds()}).Warn("session")
			return
		}
	}
	tries, proxy := p.sessionParams()
	key := clientKey(client.RemoteAddr())
	for len(tried) < tries && !sess.wasKilled() {
		s := first
		first = nil
		if s == nil {
			var err error
			if s, err = p.acquire(b.hardCtx, key, tried, fc.QueueTimeout); err != nil {
				lastErr = err
				break
			}
		}
		tried = append(tried, s)
		backend, greeting, kind, err := b.connect(s, client, proxy, fc)
		if err != nil {
			b.tryFailed(fe, fc, p, s, client.RemoteAddr().String(), len(tried), kind, err)
			lastErr = err
			continue
		}
		if p.tryOK(s) {
			log(logrus.Fields{"server": s.name}).Info("server available again")
		}
		in, out, result := b.relay(sess, backend, greeting, fc.IdleTimeout)
		b.sessionDone(p, s, fe, in, out)
		if b.log.Logger.IsLevelEnabled(logrus.InfoLevel) {
			log(logrus.Fields{
				"server": s.name, "tries": len(tried), "bytes_in": in, "bytes_out": out,
				"duration": time.Since(start).Seconds(), "result": result,
			}).Info("session")
		}
		return
	}
	if first != nil {
		p.release(first) // killed before it was tried
	}
	fe.noServer.Add(1)
	reject(client, "no server available, try again later")
	log(logrus.Fields{
		"tries": len(tried), "duration": time.Since(start).Seconds(), "result": resultNoServer, "error": lastErr.Error(),
	}).Warn("session")
}

// tryFailed records a failed try of s and logs it.
func (b *Balancer) tryFailed(fe *frontend, fc *FrontendConfig, p *pool, s *server, client string, try int, kind string, err error) {
	out := p.tryFailed(s, kind, err)
	p.release(s)
	tl := b.log.WithFields(logrus.Fields{
		"frontend": fe.name, "pool": fc.Pool, "client": client,
		"server": s.name, "try": try, "error": err.Error(), "failure": kind,
	})
	tl.Warn("server try failed")
	if out {
		tl.Warn("server marked unavailable")
	}
}

// sessionDone frees the session's slot on s and counts its bytes.
func (b *Balancer) sessionDone(p *pool, s *server, fe *frontend, in, out int64) {
	p.release(s)
	s.bytesIn.Add(in)
	s.bytesOut.Add(out)
	fe.bytesIn.Add(in)
	fe.bytesOut.Add(out)
}

// sessionParams reads what a session needs of the pool's configuration.
func (p *pool) sessionParams() (tries int, proxy string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	tries = p.cfg.Tries
	if tries == 0 || tries > len(p.servers) {
		tries = len(p.servers)
	}
	return tries, p.cfg.ProxyProtocol
}

// clientKey is what ip-hash hashes: the client's IP address, 4 bytes for
// IPv4 so an IPv4-mapped IPv6 client hashes the same.
func clientKey(a net.Addr) []byte {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return []byte(a.String())
	}
	if ip4 := ta.IP.To4(); ip4 != nil {
		return ip4
	}
	return ta.IP
}

// connect opens a connection to s for the client, sends the PROXY header
// (before any greeting is awaited) and reads the server's greeting. It
// returns the connection and the bytes to relay to the client once the
// greeting is a 220; otherwise the failure's kind and cause.
func (b *Balancer) connect(s *server, client net.Conn, proxy string, fc *FrontendConfig) (net.Conn, []byte, string, error) {
	hdr, err := proxyHeader(proxy, client.RemoteAddr(), client.LocalAddr())
	if err != nil {
		return nil, nil, failConnect, fmt.Errorf("build PROXY header: %w", err)
	}
	// Not derived from hardCtx: a forced stop closes the client, and the
	// session checks for that between tries; connect_timeout bounds this.
	dctx, cancel := context.WithTimeout(context.Background(), fc.ConnectTimeout)
	conn, err := b.dialer.DialContext(dctx, "tcp", s.addr)
	cancel()
	if err != nil {
		return nil, nil, failConnect, err
	}
	conn.SetReadDeadline(time.Now().Add(fc.GreetingTimeout))
	if hdr != nil {
		if _, err := conn.Write(hdr); err != nil { // a fresh socket's buffer takes it at once
			conn.Close()
			return nil, nil, failClosed, fmt.Errorf("write PROXY header: %w", err)
		}
	}
	br, _ := b.readers.Get().(*bufio.Reader)
	if br == nil {
		br = bufio.NewReaderSize(conn, replyBufSize)
	}
	br.Reset(conn)
	defer func() {
		br.Reset(nil)
		b.readers.Put(br)
	}()
	rep, err := readReply(br)
	if err != nil {
		conn.Close()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, nil, failTimeout, fmt.Errorf("no greeting within %s", fc.GreetingTimeout)
		}
		return nil, nil, failClosed, fmt.Errorf("read greeting: %w", err)
	}
	if rep.code != 220 {
		conn.Close()
		return nil, nil, failRejected, fmt.Errorf("greeting %.80q", rep.raw)
	}
	conn.SetReadDeadline(time.Time{})
	greeting := rep.raw
	if n := br.Buffered(); n > 0 { // nothing should follow a greeting, but keep it if it does
		extra, _ := br.Peek(n)
		greeting = append(greeting, extra...)
	}
	return conn, greeting, "", nil
}

// relay writes the greeting to the client, then copies both ways until
// both directions end, by io.Copy: between two *net.TCPConn that is
// splice(2) on Linux, so nothing may wrap the connections on this path
// (a Dialer that returns something else is copied through user space). An
// end of input in one direction is passed on as a half-close (FIN). The
// server-to-client direction runs on the session's own goroutine.
func (b *Balancer) relay(sess *session, backend net.Conn, greeting []byte, idle time.Duration) (in, out int64, result string) {
	client := sess.client
	defer backend.Close()
	if !sess.setBackend(backend) {
		return 0, 0, resultShutdown
	}
	if _, err := client.Write(greeting); err != nil {
		backend.Write([]byte("QUIT\r\n")) // spare the server a lost connection
		return 0, 0, resultClientGone
	}
	var st relayState
	if idle > 0 {
		st.watchIdle(client, backend, idle)
	}
	up := make(chan error, 1)
	go func() {
		n, err := io.Copy(backend, client)
		in = n
		if errors.Is(err, os.ErrDeadlineExceeded) && st.downDone.Load() {
			err = nil // finLinger ran out: the server had closed already
		}
		st.upDone.Store(true)
		switch {
		case err != nil:
			client.Close() // unblock the other direction
			backend.Close()
		case !st.downDone.Load():
			closeWrite(backend)
		}
		up <- err
	}()
	n, downErr := io.Copy(client, backend)
	out = int64(len(greeting)) + n
	st.downDone.Store(true)
	switch {
	case downErr != nil:
		client.Close()
		backend.Close()
	case !st.upDone.Load():
		closeWrite(client)
		// The server has closed: once the client has seen that, nothing
		// it sends can matter. Give it finLinger to close its side.
		client.SetReadDeadline(time.Now().Add(finLinger))
	}
	upErr := <-up
	idled := st.stop()

	switch {
	case sess.wasKilled():
		result = resultShutdown
	case idled:
		result = resultIdle
	case upErr != nil || downErr != nil:
		result = resultError
	default:
		result = resultOK
	}
	return in, out, result
}

// relayState is what the two directions of a relay and its idle watch
// share.
type relayState struct {
	upDone, downDone atomic.Bool

	mu      sync.Mutex // held by the idle check while it runs
	timer   *time.Timer
	stopped bool
	idled   bool
}

// watchIdle closes both connections once neither peer has sent anything
// for idle. The check runs from a timer; stop waits for a running one.
func (st *relayState) watchIdle(client, backend net.Conn, idle time.Duration) {
	st.timer = time.AfterFunc(idle, func() {
		st.mu.Lock()
		defer st.mu.Unlock()
		if st.stopped {
			return
		}
		quiet, known := quietFor(client, backend)
		if !known || quiet < idle {
			wait := idle
			if known {
				wait = idle - quiet
			}
			st.timer.Reset(max(wait, 10*time.Millisecond))
			return
		}
		st.idled = true
		client.Close()
		backend.Close()
	})
}

// stop ends the idle watch, waiting for a check under way, and reports
// whether the watch closed the session.
func (st *relayState) stop() bool {
	if st.timer == nil {
		return false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.stopped = true
	st.timer.Stop()
	return st.idled
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		c.Close()
	}
}

// reject answers a client that no server will take with 421 4.3.2
// (RFC 5321 §3.8: a server may refuse service with 421 in place of the
// greeting), then lingers briefly so the reply is read rather than reset.
func reject(c *net.TCPConn, reason string) {
	c.SetDeadline(time.Now().Add(rejectLinger))
	if _, err := fmt.Fprintf(c, "421 4.3.2 %s\r\n", reason); err != nil {
		return
	}
	c.CloseWrite()
	io.CopyN(io.Discard, c, 4096) // until the client closes, or the deadline
}
