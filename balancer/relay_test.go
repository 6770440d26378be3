package balancer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests pin down what the relay does as seen from its two peers, so
// that any implementation of it can be checked against them: only the
// configuration, real loopback sockets and the public methods are used.

// relayDeadline bounds every socket operation in these tests: a relay that
// stalls fails the test instead of hanging it.
const relayDeadline = 20 * time.Second

// relayPrompt is how soon the balancer must pass on a close or a reset:
// far more than it needs, far less than relayDeadline, so a close that is
// only noticed by a deadline or the idle timeout fails.
const relayPrompt = 5 * time.Second

// fakeServer is a scripted TCP server on 127.0.0.1: each connection it
// accepts is handed to script on a goroutine of its own, and closed when
// script returns.
type fakeServer struct {
	addr     string
	port     int
	accepted atomic.Int64

	mu    sync.Mutex
	conns []*net.TCPConn
	wg    sync.WaitGroup
}

func startFake(t *testing.T, script func(c *net.TCPConn)) *fakeServer {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	fs := &fakeServer{addr: ln.Addr().String(), port: ln.Addr().(*net.TCPAddr).Port}
	fs.wg.Add(1)
	go func() {
		defer fs.wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			fs.accepted.Add(1)
			c.SetDeadline(time.Now().Add(relayDeadline))
			fs.mu.Lock()
			fs.conns = append(fs.conns, c)
			fs.mu.Unlock()
			fs.wg.Add(1)
			go func() {
				defer fs.wg.Done()
				defer c.Close()
				script(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		fs.mu.Lock()
		for _, c := range fs.conns {
			c.Close()
		}
		fs.mu.Unlock()
		fs.wg.Wait()
	})
	return fs
}

// relayYAML is one frontend on 127.0.0.1 feeding one pool of the given
// servers, named s0, s1, … in order.
func relayYAML(shutdown time.Duration, servers ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "balancer:\n  shutdown_timeout: %s\n", shutdown)
	b.WriteString("  frontends:\n    - {name: smtp, address: \"127.0.0.1:0\", pool: p, connect_timeout: 2s, greeting_timeout: 5s}\n")
	b.WriteString("  pools:\n    - name: p\n      servers:\n")
	for i, s := range servers {
		fmt.Fprintf(&b, "        - {name: s%d, address: %q}\n", i, s)
	}
	return b.String()
}

// startRelay runs a balancer in front of servers and returns it with its
// frontend's address.
func startRelay(t *testing.T, servers ...string) (*Balancer, string) {
	t.Helper()
	b := startBalancer(t, relayYAML(2*time.Second, servers...), Options{})
	return b, b.frontend(t, "smtp")
}

// dialRelay connects a client to addr; the connection is closed at cleanup.
func dialRelay(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(relayDeadline))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// readExactly reads len(want) bytes from r and reports whether they are want.
func readExactly(r io.Reader, want string) error {
	got := make([]byte, len(want))
	n, err := io.ReadFull(r, got)
	if err != nil {
		return fmt.Errorf("read %d of %d bytes (%s): %w", n, len(want), clip(got[:n]), err)
	}
	if string(got) != want {
		return fmt.Errorf("got %s, want %s", clip(got), clip([]byte(want)))
	}
	return nil
}

func expectRead(t *testing.T, r io.Reader, want string) {
	t.Helper()
	if err := readExactly(r, want); err != nil {
		t.Fatal(err)
	}
}

// clip quotes b, shortened so a long mismatch stays readable.
func clip(b []byte) string {
	if len(b) > 120 {
		return fmt.Sprintf("%q…(%d bytes)", b[:120], len(b))
	}
	return fmt.Sprintf("%q", b)
}

// readEnd reads c to its end within d and returns what came. A clean end
// (FIN) gives a nil error; a reset gives the reset.
func readEnd(c net.Conn, d time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(d))
	return io.ReadAll(c)
}

// resetClose closes c with an RST instead of a FIN, as a crashed or
// impatient peer does.
func resetClose(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// activeSessions is the frontend's count of sessions in progress.
func activeSessions(b *Balancer) int64 {
	for _, f := range b.Frontends() {
		if f.Name == "smtp" {
			return f.ActiveSessions
		}
	}
	return -1
}

// within polls cond every few milliseconds until it holds, failing the test
// after d.
func within(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitSignal waits up to d for a value on ch.
func waitSignal[T any](t *testing.T, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("%s: not within %s", what, d)
		var zero T
		return zero
	}
}

// serverExpect is readExactly for a server script, which may not call
// t.Fatal: it reports the mismatch and tells the script to stop.
func serverExpect(t *testing.T, r io.Reader, want string) bool {
	if err := readExactly(r, want); err != nil {
		serverError(t, err)
		return false
	}
	return true
}

// serverError reports a server script's failure, unless the connection
// was closed under it by the cleanup of a test that has failed already.
func serverError(t *testing.T, err error) {
	if !errors.Is(err, net.ErrClosed) {
		t.Errorf("server: %v", err)
	}
}

// bigSize is large enough that a relay must wait for a slow receiver (see
// receiverBuf), and small enough to stay quick under the race detector.
const bigSize = 8 << 20

// receiverBuf is the receive buffer of the test's receiving end of a large
// transfer. With it, what the relay may have in flight towards the receiver
// is at most that plus its own socket's send buffer (tcp_wmem's maximum,
// 4 MiB by default): less than bigSize, so the relay is sure to find its
// destination full and have to wait. Smaller, and the window drops below
// one loopback segment (64 KiB), where the kernel's own timers take over
// and a transfer crawls.
const receiverBuf = 256 << 10

// logInFlight notes how much the sender got rid of while the receiver was
// not reading: what the relay and the kernel buffers held.
func logInFlight(t *testing.T, sender string, sent int64) {
	t.Logf("the %s had sent %d of %d bytes when the other side started reading", sender, sent, bigSize)
}

var big = sync.OnceValues(func() ([]byte, string) {
	b := make([]byte, bigSize)
	rand.NewChaCha8([32]byte{'r', 'e', 'l', 'a', 'y'}).Read(b)
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
})

// A large message must arrive byte-exact in both directions while its
// receiver is slow to start reading: the relay has to stop reading from the
// sender when it cannot write, and resume without losing or repeating a
// byte once the receiver drains.
func TestRelayLargeMessageBackPressure(t *testing.T) {
	t.Parallel()
	data, sum := big()
	const chunk = 64 << 10
	const slow = 300 * time.Millisecond

	t.Run("client to server", func(t *testing.T) {
		t.Parallel()
		var sent atomic.Int64
		sentBeforeRead := make(chan int64, 1)
		srv := startFake(t, func(c *net.TCPConn) {
			c.SetReadBuffer(receiverBuf)
			c.Write([]byte("220 big ESMTP\r\n"))
			time.Sleep(slow)
			sentBeforeRead <- sent.Load()
			h := sha256.New()
			if n, err := io.CopyN(h, c, bigSize); err != nil {
				serverError(t, fmt.Errorf("read %d of %d bytes: %w", n, bigSize, err))
				return
			}
			fmt.Fprintf(c, "250 %x\r\n", h.Sum(nil))
			io.Copy(io.Discard, c)
		})
		_, addr := startRelay(t, srv.addr)
		c := dialRelay(t, addr)
		expectRead(t, c, "220 big ESMTP\r\n")
		werr := make(chan error, 1)
		go func() {
			for off := 0; off < len(data); off += chunk {
				n, err := c.Write(data[off : off+chunk])
				sent.Add(int64(n))
				if err != nil {
					werr <- err
					return
				}
			}
			werr <- nil
		}()
		expectRead(t, c, "250 "+sum+"\r\n")
		if err := <-werr; err != nil {
			t.Fatalf("client write: %v", err)
		}
		logInFlight(t, "client", <-sentBeforeRead)
	})

	t.Run("server to client", func(t *testing.T) {
		t.Parallel()
		var sent atomic.Int64
		srv := startFake(t, func(c *net.TCPConn) {
			c.Write([]byte("220 big ESMTP\r\n"))
			for off := 0; off < len(data); off += chunk {
				n, err := c.Write(data[off : off+chunk])
				sent.Add(int64(n))
				if err != nil {
					serverError(t, fmt.Errorf("write after %d bytes: %w", sent.Load(), err))
					return
				}
			}
			io.Copy(io.Discard, c) // until the client is done
		})
		_, addr := startRelay(t, srv.addr)
		c := dialRelay(t, addr)
		c.SetReadBuffer(receiverBuf)
		expectRead(t, c, "220 big ESMTP\r\n")
		time.Sleep(slow)
		sentBeforeRead := sent.Load()
		h := sha256.New()
		if n, err := io.CopyN(h, c, bigSize); err != nil {
			t.Fatalf("client read %d of %d bytes: %v", n, bigSize, err)
		}
		got := hex.EncodeToString(h.Sum(nil))
		if got != sum {
			t.Fatalf("client got data with sha256 %s, server sent %s", got, sum)
		}
		logInFlight(t, "server", sentBeforeRead)
	})
}

// endWays are the two ways a peer ends its side after its last bytes: in
// the same TCP segment as them, as a client that sends QUIT and shuts down
// its socket or a server that answers QUIT and closes often does, so that
// the bytes and the end of input arrive at once; and after a pause, so that
// they arrive apart.
var endWays = []struct {
	name     string
	together bool
}{{"end in the last bytes' segment", true}, {"end after a pause", false}}

// endPause is long enough for the relay to have read a peer's last bytes
// before their end of input arrives, even on a loaded machine.
const endPause = 200 * time.Millisecond

// writeThenEnd writes b on c, then ends c's sending side by end (CloseWrite
// or Close): in the same segment if together, else endPause later.
func writeThenEnd(c *net.TCPConn, b []byte, end func() error, together bool) error {
	if together {
		// TCP_CORK holds the bytes back until the FIN, which the kernel
		// puts on the last segment still unsent and pushes at once.
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK, 1)
		}); err != nil {
			return err
		}
		if serr != nil {
			return serr
		}
	}
	if _, err := c.Write(b); err != nil {
		return err
	}
	if !together {
		time.Sleep(endPause)
	}
	return end()
}

// The client ends its side first: the server must see the command and then
// the end of input, and the way back must stay open for the reply, which
// the client must get whole, followed by the end once the server closes.
func TestRelayHalfCloseClientFirst(t *testing.T) {
	t.Parallel()
	// A reply larger than a socket buffer's first allotment, so it is not
	// all in flight at once when the server closes.
	var reply strings.Builder
	for i := range 2000 {
		fmt.Fprintf(&reply, "221-line %04d of a long farewell, padded to make it longer\r\n", i)
	}
	reply.WriteString("221 bye\r\n")
	for _, tc := range endWays {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			serverGot := make(chan string, 1)
			srv := startFake(t, func(c *net.TCPConn) {
				c.Write([]byte("220 hc ESMTP\r\n"))
				got, err := io.ReadAll(c)
				if err != nil {
					serverError(t, fmt.Errorf("reading to the client's end: %w (after %s)", err, clip(got)))
					return
				}
				serverGot <- string(got)
				// Let the client's end be well behind us before
				// answering, so the reply cannot slip through before
				// the half-close is handled.
				time.Sleep(100 * time.Millisecond)
				if err := writeThenEnd(c, []byte(reply.String()), c.Close, tc.together); err != nil {
					serverError(t, fmt.Errorf("reply after the client's half-close: %w", err))
				}
			})
			_, addr := startRelay(t, srv.addr)
			c := dialRelay(t, addr)
			expectRead(t, c, "220 hc ESMTP\r\n")
			if err := writeThenEnd(c, []byte("QUIT\r\n"), c.CloseWrite, tc.together); err != nil {
				t.Fatal(err)
			}
			if got := waitSignal(t, serverGot, relayPrompt, "the server to see the client's end"); got != "QUIT\r\n" {
				t.Fatalf("server got %q before the end, want %q", got, "QUIT\r\n")
			}
			got, err := readEnd(c, relayPrompt)
			if err != nil {
				t.Fatalf("client reading the reply to its end: %v (after %d bytes)", err, len(got))
			}
			if string(got) != reply.String() {
				t.Fatalf("client got %d bytes %s, want the %d-byte reply", len(got), clip(got), reply.Len())
			}
		})
	}
}

// The server ends first: the client must get its last reply and then a
// clean end, without having to close or send anything itself.
func TestRelayHalfCloseServerFirst(t *testing.T) {
	t.Parallel()
	for _, tc := range endWays {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startFake(t, func(c *net.TCPConn) {
				c.Write([]byte("220 sf ESMTP\r\n"))
				if serverExpect(t, c, "QUIT\r\n") {
					writeThenEnd(c, []byte("221 bye\r\n"), c.Close, tc.together)
				}
			})
			bal, addr := startRelay(t, srv.addr)
			c := dialRelay(t, addr)
			expectRead(t, c, "220 sf ESMTP\r\n")
			if _, err := c.Write([]byte("QUIT\r\n")); err != nil {
				t.Fatal(err)
			}
			got, err := readEnd(c, relayPrompt)
			if err != nil || string(got) != "221 bye\r\n" {
				t.Fatalf("client got %s, %v; want \"221 bye\\r\\n\" and a clean end", clip(got), err)
			}
			c.Close()
			within(t, relayPrompt, "the session to end once both sides closed", func() bool { return activeSessions(bal) == 0 })
		})
	}
}

// A greeting is relayed only once it is complete: a server that writes it
// in pieces must not have any piece reach the client before the last, and
// the client must get it exactly, with nothing before it. Bytes the server
// writes right behind the greeting are the client's too.
func TestRelayGreetingInPieces(t *testing.T) {
	t.Parallel()

	t.Run("multi-line, written slowly", func(t *testing.T) {
		t.Parallel()
		const greeting = "220-first\r\n220-second\r\n220 last\r\n"
		lastAt := make(chan time.Time, 1)
		srv := startFake(t, func(c *net.TCPConn) {
			c.SetNoDelay(true)
			for _, b := range []byte("220-first\r\n") {
				c.Write([]byte{b})
				time.Sleep(20 * time.Millisecond)
			}
			c.Write([]byte("220-second\r\n"))
			time.Sleep(20 * time.Millisecond)
			lastAt <- time.Now()
			c.Write([]byte("220 last\r\n"))
			if serverExpect(t, c, "EHLO x\r\n") {
				c.Write([]byte("250 x\r\n"))
			}
			io.Copy(io.Discard, c)
		})
		_, addr := startRelay(t, srv.addr)
		c := dialRelay(t, addr)
		first := make([]byte, 1)
		if _, err := io.ReadFull(c, first); err != nil {
			t.Fatalf("no greeting: %v", err)
		}
		firstAt := time.Now()
		if first[0] != greeting[0] {
			t.Fatalf("first byte %q, want %q", first, greeting[0])
		}
		expectRead(t, c, greeting[1:])
		if last := waitSignal(t, lastAt, relayPrompt, "the server's last line"); firstAt.Before(last) {
			t.Fatalf("the client got the greeting's first byte %s before the server wrote its last line",
				last.Sub(firstAt))
		}
		if _, err := c.Write([]byte("EHLO x\r\n")); err != nil {
			t.Fatal(err)
		}
		expectRead(t, c, "250 x\r\n")
	})

	t.Run("extra bytes after the greeting", func(t *testing.T) {
		t.Parallel()
		// More than fits in the buffer a greeting is read with, so some
		// of it is still in the socket when the relay starts.
		extra := strings.Repeat("extra bytes after the greeting\r\n", 100)
		srv := startFake(t, func(c *net.TCPConn) {
			c.Write([]byte("220 ready\r\n" + extra))
			if serverExpect(t, c, "QUIT\r\n") {
				c.Write([]byte("221 bye\r\n"))
			}
		})
		_, addr := startRelay(t, srv.addr)
		c := dialRelay(t, addr)
		expectRead(t, c, "220 ready\r\n"+extra)
		c.Write([]byte("QUIT\r\n"))
		expectRead(t, c, "221 bye\r\n")
	})
}

// badGreetingScript greets with greeting and then waits for the balancer
// to hang up, reporting on closed an error if it sent anything instead or
// kept the connection open for relayPrompt.
func badGreetingScript(t *testing.T, greeting string, closed chan<- error) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		c.Write([]byte(greeting))
		c.SetReadDeadline(time.Now().Add(relayPrompt))
		got, err := io.ReadAll(c)
		switch {
		case len(got) > 0:
			err = fmt.Errorf("got %s before the close", clip(got))
		case !errors.Is(err, os.ErrDeadlineExceeded):
			err = nil // a FIN, or a reset if our greeting was left unread
		}
		closed <- err
	}
}

// A greeting that is not a valid SMTP reply counts as a failed server, as a
// 4xx would: the session goes on to the next server, and the client sees
// only that server's greeting.
func TestRelayBadGreetingFailsOver(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, greeting string
	}{
		{"line too long", "220 " + strings.Repeat("x", replyLineMax-5) + "\r\n"}, // replyLineMax+1 bytes
		{"no line end", "220 " + strings.Repeat("x", 8<<10)},
		{"malformed", "hello\r\n"},
		{"code changes", "220-first\r\n250 second\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			closed := make(chan error, 4)
			bad := startFake(t, badGreetingScript(t, tc.greeting, closed))
			good := startFake(t, func(c *net.TCPConn) {
				c.Write([]byte("220 good ESMTP\r\n"))
				if serverExpect(t, c, "QUIT\r\n") {
					c.Write([]byte("221 bye\r\n"))
				}
			})
			_, addr := startRelay(t, bad.addr, good.addr)
			// The bad server is listed first, so round robin tries it
			// first; a second session covers a pick order that does not.
			for i := 0; i < 2 && (i == 0 || bad.accepted.Load() == 0); i++ {
				start := time.Now()
				c := dialRelay(t, addr)
				expectRead(t, c, "220 good ESMTP\r\n")
				// Failing over must come from reading the greeting, not
				// from waiting out greeting_timeout (5s).
				if d := time.Since(start); d > 2*time.Second {
					t.Fatalf("good greeting took %s", d)
				}
				c.Write([]byte("QUIT\r\n"))
				expectRead(t, c, "221 bye\r\n")
				c.Close()
			}
			if bad.accepted.Load() == 0 {
				t.Fatal("the bad server was never tried")
			}
			if err := waitSignal(t, closed, relayPrompt, "the bad server's connection to close"); err != nil {
				t.Fatalf("bad server's connection: %v", err)
			}
		})
	}

	// The other side of the limit: a verbose banner of exactly
	// replyLineMax bytes, line end included, is a good greeting.
	t.Run("longest allowed line", func(t *testing.T) {
		t.Parallel()
		greeting := "220 " + strings.Repeat("y", replyLineMax-6) + "\r\n"
		srv := startFake(t, func(c *net.TCPConn) {
			c.Write([]byte(greeting))
			io.Copy(io.Discard, c)
		})
		_, addr := startRelay(t, srv.addr)
		c := dialRelay(t, addr)
		expectRead(t, c, greeting)
	})
}

// A server may be given by name; the balancer resolves it.
func TestRelayServerByHostName(t *testing.T) {
	t.Parallel()
	msg := bytes.Repeat([]byte("by name\r\n"), 32<<10) // past a single read
	sum := sha256.Sum256(msg)
	srv := startFake(t, func(c *net.TCPConn) {
		c.Write([]byte("220 named ESMTP\r\n"))
		if !serverExpect(t, c, "EHLO x\r\n") {
			return
		}
		c.Write([]byte("250 x\r\n"))
		h := sha256.New()
		if _, err := io.CopyN(h, c, int64(len(msg))); err != nil {
			serverError(t, fmt.Errorf("message: %w", err))
			return
		}
		fmt.Fprintf(c, "250 %x\r\n", h.Sum(nil))
		if serverExpect(t, c, "QUIT\r\n") {
			c.Write([]byte("221 bye\r\n"))
		}
	})
	_, addr := startRelay(t, "localhost:"+strconv.Itoa(srv.port))
	c := dialRelay(t, addr)
	expectRead(t, c, "220 named ESMTP\r\n")
	c.Write([]byte("EHLO x\r\n"))
	expectRead(t, c, "250 x\r\n")
	c.Write(msg)
	expectRead(t, c, fmt.Sprintf("250 %x\r\n", sum))
	c.Write([]byte("QUIT\r\n"))
	expectRead(t, c, "221 bye\r\n")
}

// checkServes runs one short session through addr: the balancer still
// takes clients.
func checkServes(t *testing.T, addr, greeting string) {
	t.Helper()
	c := dialRelay(t, addr)
	expectRead(t, c, greeting)
	c.Write([]byte("QUIT\r\n"))
	expectRead(t, c, "221 bye\r\n")
	c.Close()
}

// A client that resets its connection in the middle of a session must not
// leave the server's connection open: the balancer closes it promptly, and
// goes on serving. The reset comes when the session is idle; right behind
// the start of a command, so that bytes and reset arrive together; and
// while the server is pushing data the client does not read, so that the
// relay is waiting to write to the client rather than to read from it.
func TestRelayClientReset(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"idle", "right behind a partial command", "server streaming"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ended := make(chan error, 1)
			srv := startFake(t, func(c *net.TCPConn) {
				c.Write([]byte("220 rst ESMTP\r\n"))
				br := bufio.NewReader(c)
				line, err := br.ReadString('\n')
				if err != nil {
					serverError(t, fmt.Errorf("first command: %w", err))
					return
				}
				if line == "QUIT\r\n" { // the session that checks the balancer still serves
					c.Write([]byte("221 bye\r\n"))
					return
				}
				c.Write([]byte("250 x\r\n"))
				if mode == "server streaming" {
					buf := bytes.Repeat([]byte("z"), 64<<10)
					for {
						if _, err := c.Write(buf); err != nil {
							ended <- nil
							return
						}
					}
				}
				_, err = io.Copy(io.Discard, br)
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					err = nil // a FIN or a reset: closed either way
				}
				ended <- err
			})
			bal, addr := startRelay(t, srv.addr)
			c := dialRelay(t, addr)
			expectRead(t, c, "220 rst ESMTP\r\n")
			c.Write([]byte("EHLO x\r\n"))
			expectRead(t, c, "250 x\r\n")
			switch mode {
			case "idle":
				time.Sleep(endPause)
			case "right behind a partial command":
				c.Write([]byte("MAIL FROM:<half"))
			case "server streaming":
				time.Sleep(100 * time.Millisecond) // let the buffers fill
			}
			resetClose(c)
			if err := waitSignal(t, ended, relayPrompt, "the server's connection to be closed"); err != nil {
				t.Fatalf("server's connection still open %s after the client's reset", relayPrompt)
			}
			within(t, relayPrompt, "the session to end", func() bool { return activeSessions(bal) == 0 })
			checkServes(t, addr, "220 rst ESMTP\r\n")
		})
	}
}

// A server that resets its connection mid-session must not leave the
// client's open: the balancer closes it promptly. The reset comes when the
// session is idle; right behind a reply, so that the reply and the reset
// arrive together; and while the client is sending data the server does
// not read.
func TestRelayServerReset(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"idle", "right behind a reply", "client streaming"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			srv := startFake(t, func(c *net.TCPConn) {
				c.Write([]byte("220 rst ESMTP\r\n"))
				if !serverExpect(t, c, "EHLO x\r\n") {
					return
				}
				c.Write([]byte("250 x\r\n"))
				switch mode {
				case "idle":
					time.Sleep(endPause)
				case "client streaming":
					io.CopyN(io.Discard, c, 64<<10)
					time.Sleep(100 * time.Millisecond) // let the buffers fill
				}
				resetClose(c)
			})
			bal, addr := startRelay(t, srv.addr)
			c := dialRelay(t, addr)
			expectRead(t, c, "220 rst ESMTP\r\n")
			c.Write([]byte("EHLO x\r\n"))
			if mode == "client streaming" {
				expectRead(t, c, "250 x\r\n")
				werr := make(chan error, 1)
				go func() {
					buf := bytes.Repeat([]byte("y"), 64<<10)
					for {
						if _, err := c.Write(buf); err != nil {
							werr <- err
							return
						}
					}
				}()
				err := waitSignal(t, werr, relayPrompt, "the client's writes to fail")
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("client write: %v", err)
				}
			}
			// A reply the reset overtook may be lost; nothing else may
			// come.
			got, err := readEnd(c, relayPrompt)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("client's connection still open %s after the server's reset (got %s)", relayPrompt, clip(got))
			}
			if !strings.HasPrefix("250 x\r\n", string(got)) || mode == "client streaming" && len(got) > 0 {
				t.Fatalf("client got %s after the reset", clip(got))
			}
			within(t, relayPrompt, "the session to end", func() bool { return activeSessions(bal) == 0 })
		})
	}
}

// runningBalancer is a balancer whose Run the test stops itself.
type runningBalancer struct {
	*Balancer
	addr    string
	cancel  context.CancelFunc
	done    chan struct{}
	stopped time.Time // when Run returned
	err     error
}

func runRelay(t *testing.T, shutdown time.Duration, servers ...string) *runningBalancer {
	t.Helper()
	cfg, err := ParseConfig("test.yaml", []byte(relayYAML(shutdown, servers...)))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rb := &runningBalancer{Balancer: b, addr: b.frontend(t, "smtp"), cancel: cancel, done: make(chan struct{})}
	go func() {
		rb.err = b.Run(ctx)
		rb.stopped = time.Now()
		close(rb.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-rb.done
	})
	return rb
}

// stop cancels Run's context and waits up to d for Run to return; it
// returns how long Run took.
func (rb *runningBalancer) stop(t *testing.T, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	rb.cancel()
	select {
	case <-rb.done:
	case <-time.After(d):
		t.Fatalf("Run still running %s after its context ended", d)
	}
	if rb.err != nil {
		t.Fatalf("Run: %v", rb.err)
	}
	return rb.stopped.Sub(start)
}

// A graceful stop waits for sessions in progress, up to shutdown_timeout:
// a session that stays idle is closed when the time is up, and one that
// ends sooner lets Run return as soon as it has.
func TestRelayGracefulStop(t *testing.T) {
	t.Parallel()

	t.Run("idle session closed at the timeout", func(t *testing.T) {
		t.Parallel()
		const shutdown = 500 * time.Millisecond
		serverEnded := make(chan error, 1)
		srv := startFake(t, func(c *net.TCPConn) {
			c.Write([]byte("220 gs ESMTP\r\n"))
			if !serverExpect(t, c, "EHLO x\r\n") {
				return
			}
			c.Write([]byte("250 x\r\n"))
			_, err := io.Copy(io.Discard, c)
			serverEnded <- err
		})
		rb := runRelay(t, shutdown, srv.addr)
		c := dialRelay(t, rb.addr)
		expectRead(t, c, "220 gs ESMTP\r\n")
		c.Write([]byte("EHLO x\r\n"))
		expectRead(t, c, "250 x\r\n")

		took := rb.stop(t, shutdown+relayPrompt)
		if took < shutdown-50*time.Millisecond || took > shutdown+2*time.Second {
			t.Fatalf("Run returned %s after the stop, want about shutdown_timeout (%s)", took, shutdown)
		}
		got, err := readEnd(c, relayPrompt)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("client's connection still open after Run returned")
		}
		if len(got) > 0 {
			t.Fatalf("client got %s at the stop", clip(got))
		}
		if err := waitSignal(t, serverEnded, relayPrompt, "the server's connection to close"); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("server's connection: %v", err)
		}
	})

	t.Run("session ending early", func(t *testing.T) {
		t.Parallel()
		const shutdown = 10 * time.Second
		srv := startFake(t, func(c *net.TCPConn) {
			c.Write([]byte("220 gs ESMTP\r\n"))
			line, err := bufio.NewReader(c).ReadString('\n')
			switch {
			case err != nil && line == "":
				// A probe of the frontend that got in before it closed.
			case line != "QUIT\r\n":
				t.Errorf("server: got %q, %v; want QUIT", line, err)
			default:
				c.Write([]byte("221 bye\r\n"))
			}
		})
		rb := runRelay(t, shutdown, srv.addr)
		c := dialRelay(t, rb.addr)
		expectRead(t, c, "220 gs ESMTP\r\n")

		start := time.Now()
		rb.cancel()
		// The frontend stops taking clients while the session goes on.
		within(t, relayPrompt, "the frontend to refuse new clients", func() bool {
			nc, err := net.DialTimeout("tcp", rb.addr, time.Second)
			if err == nil {
				nc.Close()
			}
			return err != nil
		})
		time.Sleep(200 * time.Millisecond)
		select {
		case <-rb.done:
			t.Fatal("Run returned while a session was in progress")
		default:
		}
		c.Write([]byte("QUIT\r\n"))
		expectRead(t, c, "221 bye\r\n")
		c.Close()
		ended := time.Now()
		select {
		case <-rb.done:
		case <-time.After(relayPrompt):
			t.Fatalf("Run still running %s after its last session ended", relayPrompt)
		}
		if rb.err != nil {
			t.Fatalf("Run: %v", rb.err)
		}
		if d := rb.stopped.Sub(ended); d > 2*time.Second {
			t.Fatalf("Run returned %s after the last session ended (%s after the stop), want at once",
				d, rb.stopped.Sub(start))
		}
	})
}

// hashSMTP is a small SMTP server that answers the end of DATA with the
// sha256 of the message as it arrived, so a client can tell whether its
// message got through byte-exact; every digest is also sent on got.
func hashSMTP(t *testing.T, got chan<- string) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		bw := bufio.NewWriter(c)
		reply := func(s string) bool {
			bw.WriteString(s)
			return bw.Flush() == nil
		}
		if !reply("220 hash ESMTP\r\n") {
			return
		}
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				if err != io.EOF {
					serverError(t, err)
				}
				return
			}
			verb, _, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
			var ok bool
			switch strings.ToUpper(verb) {
			case "EHLO":
				ok = reply("250-hash\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
			case "MAIL", "RCPT":
				ok = reply("250 2.1.0 ok\r\n")
			case "DATA":
				if !reply("354 go ahead\r\n") {
					return
				}
				h := sha256.New()
				for {
					l, err := br.ReadString('\n')
					if err != nil {
						serverError(t, fmt.Errorf("in DATA: %w", err))
						return
					}
					if l == ".\r\n" {
						break
					}
					h.Write([]byte(l))
				}
				sum := hex.EncodeToString(h.Sum(nil))
				got <- sum
				ok = reply("250 2.0.0 " + sum + "\r\n")
			case "QUIT":
				reply("221 2.0.0 bye\r\n")
				return
			default:
				ok = reply("500 5.5.2 what?\r\n")
			}
			if !ok {
				return
			}
		}
	}
}

// message is session i's message: 20 KiB of lines that differ from every
// other session's, none starting with a dot.
func message(i int) []byte {
	var seed [32]byte
	copy(seed[:], fmt.Sprintf("message %d", i))
	r := rand.NewChaCha8(seed)
	raw := make([]byte, 31)
	var b bytes.Buffer
	for range 320 { // 320 lines of 64 bytes
		r.Read(raw)
		b.WriteString(hex.EncodeToString(raw))
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// Many sessions at once must each get their own bytes through, unmixed,
// and every reply back to the right client.
func TestRelayConcurrentSessions(t *testing.T) {
	t.Parallel()
	const sessions = 200
	got := make(chan string, sessions)
	a := startFake(t, hashSMTP(t, got))
	b := startFake(t, hashSMTP(t, got))
	_, addr := startRelay(t, a.addr, b.addr)

	var (
		mu   sync.Mutex
		errs []error
		want = map[string]int{}
	)
	fail := func(i int, err error) {
		mu.Lock()
		errs = append(errs, fmt.Errorf("session %d: %w", i, err))
		mu.Unlock()
	}
	// Every session is established before any sends its message, so all
	// of them are in the relay together.
	var greeted, done sync.WaitGroup
	greeted.Add(sessions)
	done.Add(sessions)
	for i := range sessions {
		go func() {
			defer done.Done()
			msg := message(i)
			sum := sha256.Sum256(msg)
			mu.Lock()
			want[hex.EncodeToString(sum[:])]++
			mu.Unlock()
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				greeted.Done()
				fail(i, err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(relayDeadline))
			br := bufio.NewReader(c)
			err = readExactly(br, "220 hash ESMTP\r\n")
			greeted.Done()
			if err != nil {
				fail(i, fmt.Errorf("greeting: %w", err))
				return
			}
			greeted.Wait()
			steps := []struct{ send, want string }{
				{"EHLO c" + strconv.Itoa(i) + ".test\r\n", "250-hash\r\n250-PIPELINING\r\n250 8BITMIME\r\n"},
				{"MAIL FROM:<s" + strconv.Itoa(i) + "@example.org>\r\n", "250 2.1.0 ok\r\n"},
				{"RCPT TO:<archive@example.org>\r\n", "250 2.1.0 ok\r\n"},
				{"DATA\r\n", "354 go ahead\r\n"},
				{string(msg) + ".\r\n", "250 2.0.0 " + hex.EncodeToString(sum[:]) + "\r\n"},
				{"QUIT\r\n", "221 2.0.0 bye\r\n"},
			}
			for _, s := range steps {
				if _, err := c.Write([]byte(s.send)); err != nil {
					fail(i, err)
					return
				}
				if err := readExactly(br, s.want); err != nil {
					fail(i, fmt.Errorf("after %.20q: %w", s.send, err))
					return
				}
			}
		}()
	}
	done.Wait()
	for i, err := range errs {
		if i == 5 {
			t.Errorf("… and %d more", len(errs)-i)
			break
		}
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	close(got)
	for sum := range got {
		want[sum]--
	}
	for sum, n := range want {
		if n != 0 {
			t.Fatalf("servers got message %s %d times too few", sum[:12], n)
		}
	}
}

// A client may talk before it is greeted (impatient or pipelining ones do).
// What it sends must not be lost, and must reach only the server that
// greets it, after that server's greeting: not a server that failed.
func TestRelayClientTalksFirst(t *testing.T) {
	t.Parallel()

	t.Run("held until the greeting", func(t *testing.T) {
		t.Parallel()
		srv := startFake(t, func(c *net.TCPConn) {
			// Give the client's bytes time to arrive, then make sure
			// none came before the greeting.
			c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if n, err := c.Read(make([]byte, 64)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("server: before its greeting: read %d bytes, %v; want nothing", n, err)
				return
			}
			c.SetReadDeadline(time.Now().Add(relayDeadline))
			c.Write([]byte("220 late ESMTP\r\n"))
			if serverExpect(t, c, "EHLO x\r\n") {
				c.Write([]byte("250 x\r\n"))
			}
			io.Copy(io.Discard, c)
		})
		_, addr := startRelay(t, srv.addr)
		c := dialRelay(t, addr)
		c.Write([]byte("EHLO x\r\n"))
		expectRead(t, c, "220 late ESMTP\r\n250 x\r\n")
	})

	t.Run("kept across a failover", func(t *testing.T) {
		t.Parallel()
		closed := make(chan error, 2)
		bad := startFake(t, func(c *net.TCPConn) {
			time.Sleep(200 * time.Millisecond)
			badGreetingScript(t, "421 4.3.2 busy\r\n", closed)(c)
		})
		good := startFake(t, func(c *net.TCPConn) {
			c.Write([]byte("220 good ESMTP\r\n"))
			if serverExpect(t, c, "EHLO x\r\n") {
				c.Write([]byte("250 x\r\n"))
			}
			io.Copy(io.Discard, c)
		})
		_, addr := startRelay(t, bad.addr, good.addr)
		// The bad server is listed first, so round robin tries it first;
		// a second session covers a pick order that does not.
		for i := 0; i < 2 && (i == 0 || bad.accepted.Load() == 0); i++ {
			c := dialRelay(t, addr)
			c.Write([]byte("EHLO x\r\n"))
			expectRead(t, c, "220 good ESMTP\r\n250 x\r\n")
			c.Close()
		}
		if bad.accepted.Load() == 0 {
			t.Fatal("the failing server was never tried")
		}
		if err := waitSignal(t, closed, relayPrompt, "the failing server's connection to close"); err != nil {
			t.Fatalf("failing server's connection: %v", err)
		}
	})
}
