package balancer

import (
	"bytes"
	"container/heap"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// An engine is an event loop on one locked OS thread. It accepts the
// sessions of every frontend, connects to servers, reads their greetings
// and relays, all on non-blocking sockets that Go's poller never sees.
//
// Why not a goroutine per session, as the rest of chainmail: on a busy
// two-core machine a relayed SMTP session costs Go's scheduler about a dozen
// goroutine wake-ups (accept, connect, greeting, one per command and reply),
// each a pass through the poller and often a thread hand-off. The loop
// serves the same events from one epoll_wait, in batches, with the system
// calls a C proxy makes (docs/BENCHMARKS.md, "Balancer"). Measured: about
// 25 % less CPU per session, as fast as HAProxy.
//
// Everything that needs to wait on something other than a socket, or to
// resolve a name, stays on the goroutine path (session.go), to which the
// loop hands the client connection: a session over max_sessions, one that
// must wait for a free slot (max_conns), one with no server left (it gets
// its 421 there), a server given by host name.
//
// All engine state is owned by the loop's goroutine; other goroutines talk
// to it only through do.
type engine struct {
	b    *Balancer
	ep   int
	wake int // eventfd: commands are waiting

	cmdMu  sync.Mutex
	cmds   []func()
	closed bool // the loop has ended: no command will run

	conns     map[int32]*econn // by fd: every socket in the epoll set but listeners
	listeners map[int32]*frontend
	paused    map[int32]*frontend // listeners out of the set after an accept error
	backoff   map[*frontend]time.Duration
	sessions  map[*esess]struct{}
	timers    timerHeap
	now       time.Time
	closing   []int // closed at the end of the batch, so no fd number is reused within it
	bufs      [][]byte
	pipes     [][2]int
	stopping  bool
	done      chan struct{}
	spliced   int64 // bytes relayed by splice(2), for the tests
}

// Buffer and pipe sizes. A command, a reply or a small message fits one
// read of relayBufSize; a read that fills it starts a bulk transfer, which
// from then on goes through a pipe by splice(2) and never enters user space.
const (
	relayBufSize = 16 << 10
	pipeSize     = 64 << 10 // Linux's default pipe capacity
	maxIdleBufs  = 256
	maxIdlePipes = 64
	acceptBatch  = 64
)

// Session phases.
const (
	phaseConnect = iota
	phaseGreeting
	phaseRelay
	phaseDone
)

const epollEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

// esess is one client session on the loop.
type esess struct {
	fe     *frontend
	fc     *FrontendConfig
	p      *pool
	start  time.Time
	client econn
	server econn
	raddr  netip.AddrPort // the client's
	key    []byte         // what ip-hash hashes
	hdr    []byte         // PROXY header, sent right after each connect
	proxy  string
	over   bool // past the frontend's max_sessions
	tries  int
	tried  []*server
	srv    *server // the server being tried, or bound
	err    error   // why the last try failed
	phase  int

	greet  []byte // the greeting as read so far
	parsed int    // bytes of greet already parsed as whole lines
	lines  int
	code   int

	in, out    int64
	lastActive time.Time
	finAt      time.Time // the server has ended: when to stop waiting for the client
	timerAt    time.Time // the session's one deadline
	hidx       int       // its index in the timer heap, -1 when not there
	idled      bool
}

// econn is one socket of a session and the direction that reads it.
type econn struct {
	fd       int
	s        *esess
	peer     *econn
	readable bool // an edge came and no read has found it empty since
	writable bool
	// hup: the peer has ended its side (EPOLLRDHUP) or the socket failed.
	// Its edge may have come before the data is read, so from then on
	// only a read that returns nothing shows the socket empty.
	hup    bool
	eof    bool // its input has ended
	shut   bool // its output has been shut down
	buf    []byte
	pend   []byte // read from this socket, not yet sent to the peer
	pipe   [2]int // bulk: read end, write end
	inPipe int
	bulk   bool
	bytes  *int64
}

// newEngine creates the epoll set and the wake-up eventfd; run serves it.
func newEngine(b *Balancer) (*engine, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("balancer: epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(ep)
		return nil, fmt.Errorf("balancer: eventfd: %w", err)
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(ep)
		unix.Close(wake)
		return nil, fmt.Errorf("balancer: epoll_ctl eventfd: %w", err)
	}
	return &engine{
		b:         b,
		ep:        ep,
		wake:      wake,
		conns:     map[int32]*econn{},
		listeners: map[int32]*frontend{},
		paused:    map[int32]*frontend{},
		backoff:   map[*frontend]time.Duration{},
		sessions:  map[*esess]struct{}{},
		done:      make(chan struct{}),
	}, nil
}

// useEngine: on Linux every frontend is served by an engine.
const useEngine = true

// do runs f on the loop, unless the loop has ended.
func (e *engine) do(f func()) bool {
	e.cmdMu.Lock()
	defer e.cmdMu.Unlock()
	if e.closed {
		return false
	}
	e.cmds = append(e.cmds, f)
	one := [8]byte{1}
	unix.Write(e.wake, one[:]) // EAGAIN only when the counter is already set
	return true
}

// sync returns once the loop has run every command sent before it.
func (e *engine) sync() {
	done := make(chan struct{})
	if e.do(func() { close(done) }) {
		<-done
	}
}

// addListener makes the loop accept fe's sessions.
func (e *engine) addListener(fe *frontend) {
	e.do(func() {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(fe.lfd)}
		if err := unix.EpollCtl(e.ep, unix.EPOLL_CTL_ADD, fe.lfd, &ev); err != nil {
			e.b.log.WithError(err).WithField("frontend", fe.name).Error("cannot watch the listener")
			return
		}
		e.listeners[int32(fe.lfd)] = fe
	})
}

// removeListener stops accepting fe's sessions; the last engine to do so
// closes its socket. Sessions under way go on.
func (e *engine) removeListener(fe *frontend) {
	if !e.do(func() { e.dropListener(fe) }) {
		releaseListener(fe)
	}
}

func (e *engine) dropListener(fe *frontend) {
	fd := int32(fe.lfd)
	if e.listeners[fd] == fe {
		unix.EpollCtl(e.ep, unix.EPOLL_CTL_DEL, int(fd), nil)
		delete(e.listeners, fd)
	}
	delete(e.paused, fd)
	delete(e.backoff, fe)
	releaseListener(fe)
}

// releaseListener closes fe's socket once no engine watches it.
func releaseListener(fe *frontend) {
	if fe.lfdRefs.Add(-1) == 0 {
		closeFD(fe.lfd)
	}
}

// killAll ends every session on the loop at once (a forced stop) and
// reports how many there were.
func (e *engine) killAll() int {
	n := 0
	done := make(chan struct{})
	if !e.do(func() {
		n = len(e.sessions)
		for s := range e.sessions {
			e.finish(s, resultShutdown)
		}
		close(done)
	}) {
		return 0
	}
	<-done
	return n
}

// stop ends the loop once it has no session left and waits for it.
func (e *engine) stop() {
	e.do(func() { e.stopping = true })
	<-e.done
}

func (e *engine) run() {
	runtime.LockOSThread()
	defer close(e.done)
	defer e.cleanup()
	evs := make([]unix.EpollEvent, 256)
	for !(e.stopping && len(e.sessions) == 0) {
		timeout := -1
		if len(e.timers) > 0 {
			d := time.Until(e.timers[0].timerAt)
			timeout = int((d + time.Millisecond - 1) / time.Millisecond)
			timeout = max(timeout, 0)
		}
		n, err := unix.EpollWait(e.ep, evs, timeout)
		if err != nil && !errors.Is(err, unix.EINTR) {
			e.b.log.WithError(err).Error("epoll_wait failed")
			time.Sleep(10 * time.Millisecond)
			continue
		}
		e.now = time.Now()
		for _, ev := range evs[:max(n, 0)] {
			switch {
			case ev.Fd == int32(e.wake):
				e.runCommands()
			case e.listeners[ev.Fd] != nil:
				e.accept(e.listeners[ev.Fd])
			default:
				if c := e.conns[ev.Fd]; c != nil {
					e.event(c, ev.Events)
				}
			}
		}
		e.expire()
		for _, fd := range e.closing {
			unix.Close(fd)
		}
		e.closing = e.closing[:0]
	}
}

func (e *engine) runCommands() {
	var b [8]byte
	unix.Read(e.wake, b[:])
	e.cmdMu.Lock()
	cmds := e.cmds
	e.cmds = nil
	e.cmdMu.Unlock()
	for _, f := range cmds {
		f()
	}
}

func (e *engine) cleanup() {
	e.cmdMu.Lock()
	e.closed = true
	cmds := e.cmds
	e.cmds = nil
	e.cmdMu.Unlock()
	for _, f := range cmds { // sent before the loop ended: they still run
		f()
	}
	for _, fe := range e.listeners {
		e.dropListener(fe)
	}
	for _, fe := range e.paused {
		e.dropListener(fe)
	}
	for _, p := range e.pipes {
		unix.Close(p[0])
		unix.Close(p[1])
	}
	unix.Close(e.wake)
	unix.Close(e.ep)
}

// --- accepting ---------------------------------------------------------------

func (e *engine) accept(fe *frontend) {
	for range acceptBatch {
		fd, sa, err := unix.Accept4(fe.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch {
		case err == nil:
			e.startSession(fe, fd, sa)
			continue
		case errors.Is(err, unix.EAGAIN):
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
			continue
		default:
			// Out of file descriptors and the like: the listener stays
			// readable, so take it out of the set for a while rather than spin.
			backoff := min(max(2*e.backoff[fe], 5*time.Millisecond), time.Second)
			e.backoff[fe] = backoff
			e.b.log.WithError(err).WithFields(logrus.Fields{"frontend": fe.name, "retry_in": backoff.String()}).Warn("accept failed")
			fd := int32(fe.lfd)
			unix.EpollCtl(e.ep, unix.EPOLL_CTL_DEL, int(fd), nil)
			delete(e.listeners, fd)
			e.paused[fd] = fe
			time.AfterFunc(backoff, func() {
				e.do(func() {
					if e.paused[fd] == fe {
						delete(e.paused, fd)
						e.addListenerNow(fe)
					}
				})
			})
		}
		return
	}
}

func (e *engine) addListenerNow(fe *frontend) {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(fe.lfd)}
	if unix.EpollCtl(e.ep, unix.EPOLL_CTL_ADD, fe.lfd, &ev) == nil {
		e.listeners[int32(fe.lfd)] = fe
	}
}

func (e *engine) startSession(fe *frontend, fd int, sa unix.Sockaddr) {
	if len(e.backoff) > 0 {
		delete(e.backoff, fe)
	}
	b := e.b
	fc := fe.cfg.Load()
	n := fe.active.Add(1)
	fe.sessions.Add(1)
	b.sessions.Add(1)
	// As Go's net does for every TCP connection: SMTP is a dialogue of
	// short lines, which Nagle's algorithm would only delay.
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	s := &esess{fe: fe, fc: fc, start: e.now, raddr: addrPort(sa), hidx: -1}
	s.client = econn{fd: fd, s: s, peer: &s.server, writable: true, bytes: &s.in}
	s.server = econn{fd: -1, s: s, peer: &s.client, bytes: &s.out}
	s.err = errNoServer
	if fc.MaxSessions > 0 && n > int64(fc.MaxSessions) {
		s.over = true
		e.handOff(s, nil) // it is answered 421 there
		return
	}
	if s.p = b.pool(fc.Pool); s.p == nil {
		e.handOff(s, nil)
		return
	}
	s.tries, s.proxy = s.p.sessionParams()
	s.key = s.raddr.Addr().AsSlice()
	if err := unix.EpollCtl(e.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: epollEvents, Fd: int32(fd)}); err != nil {
		e.handOff(s, nil)
		return
	}
	e.conns[int32(fd)] = &s.client
	e.sessions[s] = struct{}{}
	e.nextTry(s)
}

func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// --- trying servers ------------------------------------------------------------

// nextTry connects to the next server, or hands the session to the
// goroutine path when that is the one to go on.
func (e *engine) nextTry(s *esess) {
	for len(s.tried) < s.tries {
		srv, full := s.p.tryAcquire(s.key, s.tried)
		if srv == nil {
			if full {
				e.handOff(s, nil) // it waits for a slot there
				return
			}
			break
		}
		s.tried = append(s.tried, srv)
		if !srv.ap.IsValid() || srv.ap.Addr().Zone() != "" {
			s.tried = s.tried[:len(s.tried)-1]
			e.handOff(s, srv) // a host name (or a zone): Go's resolver and dialer, there
			return
		}
		s.srv = srv
		if err := e.connect(s); err != nil {
			e.tryFailed(s, failConnect, err)
			continue
		}
		return
	}
	e.handOff(s, nil) // it answers 421 there, and logs why
}

func (e *engine) connect(s *esess) error {
	if s.hdr == nil && s.proxy != ProxyNone && s.proxy != "" {
		local, err := unix.Getsockname(s.client.fd)
		if err != nil {
			return fmt.Errorf("build PROXY header: %w", err)
		}
		hdr, err := proxyHeader(s.proxy, net.TCPAddrFromAddrPort(s.raddr), net.TCPAddrFromAddrPort(addrPort(local)))
		if err != nil {
			return fmt.Errorf("build PROXY header: %w", err)
		}
		s.hdr = hdr
	}
	ap := s.srv.ap
	family, sa := unix.AF_INET, unix.Sockaddr(nil)
	if ip := ap.Addr().Unmap(); ip.Is4() {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ip.As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		unix.Close(fd)
		return fmt.Errorf("dial tcp %s: %w", s.srv.addr, err)
	}
	if err := unix.EpollCtl(e.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: epollEvents, Fd: int32(fd)}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	s.server = econn{fd: fd, s: s, peer: &s.client, bytes: &s.out}
	e.conns[int32(fd)] = &s.server
	s.phase = phaseConnect
	s.greet, s.parsed, s.lines = s.greet[:0], 0, 0
	e.setTimer(s, e.now.Add(s.fc.ConnectTimeout))
	return nil
}

// tryFailed ends the try of s.srv: it records the failure and frees the
// server's slot. The caller moves on.
func (e *engine) tryFailed(s *esess, kind string, err error) {
	if s.server.fd >= 0 {
		e.closeConn(&s.server)
	}
	e.b.tryFailed(s.fe, s.fc, s.p, s.srv, s.raddr.String(), len(s.tried), kind, err)
	s.srv = nil
	s.err = err
}

// serverEvent advances a session that is still connecting or awaiting the
// greeting.
func (e *engine) serverEvent(s *esess, events uint32) {
	c := &s.server
	if s.phase == phaseConnect {
		if events&unix.EPOLLERR != 0 {
			if v, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && v != 0 {
				e.tryFailed(s, failConnect, fmt.Errorf("dial tcp %s: %w", s.srv.addr, syscall.Errno(v)))
				e.nextTry(s)
				return
			}
		}
		if !c.writable && !c.readable {
			return
		}
		s.phase = phaseGreeting
		e.setTimer(s, e.now.Add(s.fc.GreetingTimeout))
		if len(s.hdr) > 0 {
			// A fresh socket's buffer takes it whole.
			if m, errno := rawSend(uintptr(c.fd), s.hdr); errno != 0 || m != len(s.hdr) {
				var err error = errno
				if errno == 0 {
					err = errors.New("short write")
				}
				e.tryFailed(s, failClosed, fmt.Errorf("write PROXY header: %w", err))
				e.nextTry(s)
				return
			}
		}
	}
	if s.phase != phaseGreeting || !c.readable {
		return
	}
	kind, err := e.readGreeting(s)
	switch {
	case err != nil:
		e.tryFailed(s, kind, err)
		e.nextTry(s)
	case s.phase == phaseRelay:
		e.flowBoth(s)
	}
}

// greetMax bounds what a greeting may take: replyLinesMax lines.
const greetMax = replyLinesMax * (replyLineMax + 2)

// readGreeting reads the server's greeting as far as it has come. Once it
// is whole and a 220, the session is bound: the greeting (and anything
// after it) goes to the client and the relay starts.
func (e *engine) readGreeting(s *esess) (string, error) {
	c := &s.server
	for c.readable {
		if cap(s.greet)-len(s.greet) < 512 {
			s.greet = slices.Grow(s.greet, max(replyBufSize, cap(s.greet)))
		}
		room := s.greet[len(s.greet):cap(s.greet)]
		m, errno := rawRecv(uintptr(c.fd), room)
		switch {
		case errno == syscall.EINTR:
			continue
		case errno == syscall.EAGAIN:
			c.readable = false
			return "", nil
		case errno != 0:
			return failClosed, fmt.Errorf("read greeting: %w", errno)
		case m == 0:
			return failClosed, errors.New("read greeting: EOF")
		}
		if m < len(room) && !c.hup {
			c.readable = false
		}
		s.greet = s.greet[:len(s.greet)+m]
		done, err := s.parseGreeting()
		if err != nil {
			return failClosed, err
		}
		if done {
			if s.code != 220 {
				return failRejected, fmt.Errorf("greeting %.80q", s.greet[:s.parsed])
			}
			e.bind(s)
			return "", nil
		}
		if len(s.greet) >= greetMax {
			return failClosed, fmt.Errorf("reply longer than %d lines", replyLinesMax)
		}
	}
	return "", nil
}

// parseGreeting parses the whole lines read so far, as readReply does.
func (s *esess) parseGreeting() (done bool, err error) {
	for {
		rest := s.greet[s.parsed:]
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			if len(rest) > replyLineMax {
				return false, errReplyTooLong
			}
			return false, nil
		}
		line := rest[:i+1]
		if len(line) > replyLineMax {
			return false, errReplyTooLong
		}
		code, last, err := parseReplyLine(line)
		if err != nil {
			return false, err
		}
		if s.lines == 0 {
			s.code = code
		} else if code != s.code {
			return false, fmt.Errorf("reply code changed from %d to %d within one reply", s.code, code)
		}
		s.lines++
		s.parsed += len(line)
		if last {
			return true, nil
		}
		if s.lines == replyLinesMax {
			return false, fmt.Errorf("reply longer than %d lines", replyLinesMax)
		}
	}
}

// bind starts the relay: the greeting is the first thing the client gets.
func (e *engine) bind(s *esess) {
	if s.p.tryOK(s.srv) {
		e.b.log.WithFields(logrus.Fields{"frontend": s.fe.name, "pool": s.fc.Pool, "client": s.raddr.String(), "server": s.srv.name}).Info("server available again")
	}
	s.phase = phaseRelay
	s.server.pend = s.greet
	s.out = int64(len(s.greet))
	s.greet = nil
	s.lastActive = e.now
	if err := e.flush(&s.server); err != nil {
		rawSend(uintptr(s.server.fd), []byte("QUIT\r\n")) // spare the server a lost connection
		e.finish(s, resultClientGone)
		return
	}
	e.armRelayTimer(s)
}

// --- relaying ----------------------------------------------------------------

func (e *engine) event(c *econn, events uint32) {
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.readable = true
	}
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.hup = true
	}
	if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.writable = true
	}
	s := c.s
	switch {
	case s.phase == phaseRelay:
		e.flowBoth(s)
	case c == &s.server:
		e.serverEvent(s, events)
	}
	// The client's events before the relay only set its flags: nothing is
	// read from it until a server has greeted.
}

func (e *engine) flowBoth(s *esess) {
	err := e.flow(&s.client)
	if err == nil {
		err = e.flow(&s.server)
	}
	switch {
	case err != nil:
		e.finish(s, resultError)
	case s.client.shut && s.server.shut:
		e.finish(s, resultOK)
	case s.client.shut && s.finAt.IsZero():
		// The server has ended and the client has seen that. Whatever it
		// sends now cannot matter: give it finLinger to close its side.
		s.finAt = e.now.Add(finLinger)
		e.armRelayTimer(s)
	}
}

// flow moves what src has to its peer until src has nothing more or the
// peer no room, and passes src's end of input on as a half-close.
func (e *engine) flow(src *econn) error {
	dst := src.peer
	for {
		if len(src.pend) > 0 || src.inPipe > 0 {
			if !dst.writable {
				return nil
			}
			if err := e.flush(src); err != nil {
				return err
			}
			if len(src.pend) > 0 || src.inPipe > 0 {
				return nil // no room: EPOLLOUT brings us back
			}
		}
		if src.eof {
			if !dst.shut {
				dst.shut = true
				// When dst has ended too, the session is about to close,
				// and the close sends the FIN.
				if !dst.eof {
					if err := unix.Shutdown(dst.fd, unix.SHUT_WR); err != nil && !errors.Is(err, unix.ENOTCONN) {
						return err
					}
				}
			}
			return nil
		}
		if !src.readable {
			return nil
		}
		var n int
		var err error
		if src.bulk {
			n, err = e.spliceIn(src)
		} else {
			n, err = e.recv(src)
		}
		switch {
		case err != nil:
			return err
		case n < 0:
			return nil // nothing there now
		case n > 0:
			*src.bytes += int64(n)
			src.s.lastActive = e.now
		}
		// n == 0: src.eof is set, and the top of the loop passes it on.
	}
}

// recv reads src into its buffer, then into pend. It returns -1 when
// there was nothing to read, 0 at the end of input.
func (e *engine) recv(src *econn) (int, error) {
	if src.buf == nil {
		src.buf = e.getBuf()
	}
	for {
		m, errno := rawRecv(uintptr(src.fd), src.buf)
		switch {
		case errno == syscall.EINTR:
			continue
		case errno == syscall.EAGAIN:
			src.readable = false
			return -1, nil
		case errno != 0:
			return 0, errno
		case m == 0:
			src.eof = true
			return 0, nil
		}
		// A short read emptied the socket: the next byte to arrive is a new
		// edge (unless the peer's end came first: see hup). A full one may
		// have left more: the rest goes by splice.
		if m < len(src.buf) {
			src.readable = src.hup
		} else {
			src.bulk = true
		}
		src.pend = src.buf[:m]
		return m, nil
	}
}

// spliceIn moves what src has into its pipe.
func (e *engine) spliceIn(src *econn) (int, error) {
	if src.pipe[1] == 0 {
		p, err := e.getPipe()
		if err != nil {
			return 0, err
		}
		src.pipe = p
	}
	for {
		m, err := unix.Splice(src.fd, nil, src.pipe[1], nil, pipeSize, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			src.readable = false // the pipe is empty when we read: the socket is
			return -1, nil
		case err != nil:
			return 0, err
		case m == 0:
			src.eof = true
			return 0, nil
		}
		src.inPipe += int(m)
		return int(m), nil
	}
}

// flush sends src's pending bytes, then its pipe, to the peer.
func (e *engine) flush(src *econn) error {
	dst := src.peer
	for len(src.pend) > 0 {
		m, errno := rawSend(uintptr(dst.fd), src.pend)
		switch {
		case errno == syscall.EINTR:
			continue
		case errno == syscall.EAGAIN:
			dst.writable = false
			return nil
		case errno != 0:
			return errno
		}
		src.pend = src.pend[m:]
	}
	for src.inPipe > 0 {
		m, err := unix.Splice(src.pipe[0], nil, dst.fd, nil, src.inPipe, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			dst.writable = false
			return nil
		case err != nil:
			return err
		}
		src.inPipe -= int(m)
		e.spliced += m
	}
	return nil
}

// finish ends a session: its sockets close at the end of the batch, its
// slot is freed, it is counted and logged.
func (e *engine) finish(s *esess, result string) {
	if s.phase == phaseDone {
		return
	}
	bound := s.phase == phaseRelay
	s.phase = phaseDone
	delete(e.sessions, s)
	e.clearTimer(s)
	e.closeConn(&s.client)
	if s.server.fd >= 0 {
		e.closeConn(&s.server)
	}
	b := e.b
	if s.srv != nil {
		if bound {
			b.sessionDone(s.p, s.srv, s.fe, s.in, s.out)
		} else {
			s.p.release(s.srv)
		}
	}
	s.fe.active.Add(-1)
	if s.idled {
		result = resultIdle
	}
	if b.log.Logger.IsLevelEnabled(logrus.InfoLevel) {
		f := logrus.Fields{
			"frontend": s.fe.name, "pool": s.fc.Pool, "client": s.raddr.String(),
			"tries": len(s.tried), "bytes_in": s.in, "bytes_out": s.out,
			"duration": e.now.Sub(s.start).Seconds(), "result": result,
		}
		if s.srv != nil {
			f["server"] = s.srv.name
		}
		b.log.WithFields(f).Info("session")
	}
	b.sessions.Done()
}

// closeConn takes c out of the loop; its fd closes at the end of the batch.
func (e *engine) closeConn(c *econn) {
	delete(e.conns, int32(c.fd))
	e.closing = append(e.closing, c.fd)
	c.fd = -1
	if c.buf != nil {
		e.putBuf(c.buf)
		c.buf, c.pend = nil, nil
	}
	if c.pipe[1] != 0 {
		e.putPipe(c.pipe, c.inPipe == 0)
		c.pipe, c.inPipe = [2]int{}, 0
	}
}

// handOff gives the session to the goroutine path, with first (a server
// it has acquired) as the next to try.
func (e *engine) handOff(s *esess, first *server) {
	b := e.b
	fd := s.client.fd
	if _, ok := e.conns[int32(fd)]; ok {
		delete(e.conns, int32(fd))
		unix.EpollCtl(e.ep, unix.EPOLL_CTL_DEL, fd, nil)
	}
	delete(e.sessions, s)
	e.clearTimer(s)
	s.phase = phaseDone
	f := os.NewFile(uintptr(fd), "client")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		if first != nil {
			s.p.release(first)
		}
		s.fe.active.Add(-1)
		b.log.WithError(err).WithFields(logrus.Fields{"frontend": s.fe.name, "client": s.raddr.String()}).Error("session lost: cannot hand over the connection")
		b.sessions.Done()
		return
	}
	sess := &session{client: c.(*net.TCPConn)}
	b.liveMu.Lock()
	b.live[sess] = struct{}{}
	b.liveMu.Unlock()
	go func() {
		defer b.sessions.Done()
		defer s.fe.active.Add(-1)
		if s.over {
			b.rejectMaxSessions(s.fe, s.fc, sess.client, s.start)
		} else {
			b.serveTries(s.fe, s.fc, sess, s.start, s.tried, first, s.err)
		}
		b.liveMu.Lock()
		delete(b.live, sess)
		b.liveMu.Unlock()
	}()
}

// --- timers --------------------------------------------------------------------

// setTimer makes at the session's one deadline.
func (e *engine) setTimer(s *esess, at time.Time) {
	s.timerAt = at
	if s.hidx >= 0 {
		heap.Fix(&e.timers, s.hidx)
	} else {
		heap.Push(&e.timers, s)
	}
}

func (e *engine) clearTimer(s *esess) {
	if s.hidx >= 0 {
		heap.Remove(&e.timers, s.hidx)
	}
}

// armRelayTimer sets the deadline of an established session: the idle
// timeout, or the end of finLinger, whichever comes first.
func (e *engine) armRelayTimer(s *esess) {
	var at time.Time
	if idle := s.fc.IdleTimeout; idle > 0 {
		at = s.lastActive.Add(idle)
	}
	if !s.finAt.IsZero() && (at.IsZero() || s.finAt.Before(at)) {
		at = s.finAt
	}
	if at.IsZero() {
		e.clearTimer(s)
		return
	}
	if s.hidx >= 0 && !at.Before(s.timerAt) && s.timerAt.After(e.now) {
		return // the deadline set comes first and re-arms when it passes
	}
	e.setTimer(s, at)
}

// expire handles the deadlines that have passed.
func (e *engine) expire() {
	for len(e.timers) > 0 && !e.timers[0].timerAt.After(e.now) {
		s := heap.Pop(&e.timers).(*esess)
		switch s.phase {
		case phaseConnect:
			e.tryFailed(s, failConnect, fmt.Errorf("dial tcp %s: i/o timeout", s.srv.addr))
			e.nextTry(s)
		case phaseGreeting:
			e.tryFailed(s, failTimeout, fmt.Errorf("no greeting within %s", s.fc.GreetingTimeout))
			e.nextTry(s)
		case phaseRelay:
			switch {
			case !s.finAt.IsZero() && !e.now.Before(s.finAt):
				e.finish(s, resultOK)
			case s.fc.IdleTimeout > 0 && e.now.Sub(s.lastActive) >= s.fc.IdleTimeout:
				s.idled = true
				e.finish(s, resultIdle)
			default:
				e.armRelayTimer(s)
			}
		}
	}
}

// timerHeap holds the sessions that have a deadline, soonest first.
type timerHeap []*esess

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].timerAt.Before(h[j].timerAt) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx, h[j].hidx = i, j
}
func (h *timerHeap) Push(x any) {
	s := x.(*esess)
	s.hidx = len(*h)
	*h = append(*h, s)
}
func (h *timerHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	s.hidx = -1
	return s
}

// --- buffers and pipes -----------------------------------------------------------

func (e *engine) getBuf() []byte {
	if n := len(e.bufs); n > 0 {
		b := e.bufs[n-1]
		e.bufs = e.bufs[:n-1]
		return b
	}
	return make([]byte, relayBufSize)
}

func (e *engine) putBuf(b []byte) {
	if len(e.bufs) < maxIdleBufs {
		e.bufs = append(e.bufs, b[:relayBufSize])
	}
}

func (e *engine) getPipe() ([2]int, error) {
	if n := len(e.pipes); n > 0 {
		p := e.pipes[n-1]
		e.pipes = e.pipes[:n-1]
		return p, nil
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return p, fmt.Errorf("pipe: %w", err)
	}
	return p, nil
}

// putPipe keeps an empty pipe for the next bulk transfer; one with bytes
// still in it belonged to a session that ended, and is closed.
func (e *engine) putPipe(p [2]int, empty bool) {
	if empty && len(e.pipes) < maxIdlePipes {
		e.pipes = append(e.pipes, p)
		return
	}
	e.closing = append(e.closing, p[0], p[1])
}

// dupListener takes a copy of ln's socket for an engine; the caller then
// closes ln, which takes the original out of Go's poller.
func dupListener(ln *net.TCPListener) (int, error) {
	raw, err := ln.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := raw.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	return fd, derr
}

func closeFD(fd int) { unix.Close(fd) }

func rawRecv(fd uintptr, b []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT, 0, 0)
	return int(r), e
}

func rawSend(fd uintptr, b []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
	return int(r), e
}
