package balancer

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns the two ends of one loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

type pumpResult struct {
	n, spliced int64
	err        error
}

// startPump runs pump from a fresh connection to another and returns the
// writing end of the first, the reading end of the second and pump's
// result. The pump half-closes its destination when its source ends, as
// relay does, so the reader sees the end.
func startPump(t *testing.T) (w, r *net.TCPConn, src *net.TCPConn, res <-chan pumpResult) {
	t.Helper()
	w, src = tcpPair(t)
	dst, r := tcpPair(t)
	ch := make(chan pumpResult, 1)
	go func() {
		n, s, err := pump(dst, src)
		dst.CloseWrite()
		ch <- pumpResult{n, s, err}
	}()
	return w, r, src, ch
}

func waitPump(t *testing.T, res <-chan pumpResult) pumpResult {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("pump did not return")
		return pumpResult{}
	}
}

// readAllAsync reads r to its end, starting after delay.
func readAllAsync(r io.Reader, delay time.Duration) <-chan []byte {
	ch := make(chan []byte, 1)
	go func() {
		time.Sleep(delay)
		b, _ := io.ReadAll(r)
		ch <- b
	}()
	return ch
}

// An SMTP dialogue's commands, each written and delivered on its own: every
// byte arrives in order, nothing is spliced, and the end of input ends the
// copy without error.
func TestPumpCommandsStayInUserSpace(t *testing.T) {
	w, r, _, res := startPump(t)
	got := readAllAsync(r, 0)
	var want bytes.Buffer
	for _, line := range []string{"EHLO client.example\r\n", "MAIL FROM:<a@example.org>\r\n", "RCPT TO:<b@example.org>\r\n", "DATA\r\n", "Subject: x\r\n\r\nbody\r\n.\r\n", "QUIT\r\n"} {
		want.WriteString(line)
		if _, err := w.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // one segment each, as a client waiting for replies sends them
	}
	w.CloseWrite()
	pr := waitPump(t, res)
	if pr.err != nil {
		t.Fatalf("pump: %v", pr.err)
	}
	if pr.n != int64(want.Len()) || pr.spliced != 0 {
		t.Errorf("pump moved %d bytes, %d spliced; want %d, none spliced", pr.n, pr.spliced, want.Len())
	}
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Errorf("received %q, want %q", b, want.Bytes())
	}
}

// A large message behind a slow reader: the bulk goes to io.Copy (splice),
// the destination fills up, and the bytes arrive exact, with the commands
// around the message.
func TestPumpBulkIsSplicedAndExact(t *testing.T) {
	w, r, _, res := startPump(t)
	blob := make([]byte, 8<<20)
	rand.Read(blob)
	want := append(append([]byte("DATA\r\n"), blob...), "\r\n.\r\nQUIT\r\n"...)

	got := readAllAsync(r, 200*time.Millisecond)         // let every buffer on the way fill first
	w.SetWriteDeadline(time.Now().Add(15 * time.Second)) // a stalled pump fails the test, not the run
	for off := 0; off < len(want); off += 1 << 20 {
		if _, err := w.Write(want[off:min(off+1<<20, len(want))]); err != nil {
			t.Fatalf("writing the message: %v", err)
		}
	}
	w.CloseWrite()
	pr := waitPump(t, res)
	if pr.err != nil {
		t.Fatalf("pump: %v", pr.err)
	}
	if pr.n != int64(len(want)) {
		t.Errorf("pump moved %d bytes, want %d", pr.n, len(want))
	}
	if pr.spliced < int64(len(want))*9/10 {
		t.Errorf("only %d of %d bytes spliced: the bulk went through user space", pr.spliced, len(want))
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Errorf("received %d bytes, not the %d sent (first difference at %d)", len(b), len(want), firstDiff(b, want))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// The read deadline relay sets once the server has closed (finLinger) ends
// a pump waiting for input.
func TestPumpReadDeadline(t *testing.T) {
	_, _, src, res := startPump(t)
	src.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if pr := waitPump(t, res); !errors.Is(pr.err, os.ErrDeadlineExceeded) {
		t.Errorf("pump returned %v, want a deadline error", pr.err)
	}
}

// Closing the source from elsewhere, as a shutdown or the other direction's
// failure does, ends a waiting pump.
func TestPumpCloseUnblocks(t *testing.T) {
	_, _, src, res := startPump(t)
	time.Sleep(50 * time.Millisecond)
	src.Close()
	if pr := waitPump(t, res); !errors.Is(pr.err, net.ErrClosed) {
		t.Errorf("pump returned %v, want net.ErrClosed", pr.err)
	}
}

// A source that resets is an error, not an end of input.
func TestPumpSourceReset(t *testing.T) {
	w, _, _, res := startPump(t)
	w.Write([]byte("MAIL FROM:<a@example.org>\r\n"))
	time.Sleep(20 * time.Millisecond)
	w.SetLinger(0)
	w.Close()
	if pr := waitPump(t, res); !errors.Is(pr.err, syscall.ECONNRESET) {
		t.Errorf("pump returned %v, want ECONNRESET", pr.err)
	}
}

// A destination that is gone makes the next send fail, in the command path
// and in the bulk path.
func TestPumpDestinationGone(t *testing.T) {
	for _, size := range []int{64, 4 << 20} {
		w, r, _, res := startPump(t)
		r.SetLinger(0)
		r.Close()
		time.Sleep(20 * time.Millisecond)
		go func() {
			chunk := make([]byte, size)
			for range 8 {
				if _, err := w.Write(chunk); err != nil {
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
		if pr := waitPump(t, res); pr.err == nil {
			t.Errorf("%d-byte writes to a reset destination: pump returned no error after %d bytes", size, pr.n)
		}
	}
}
