package balancer

import (
	"io"
	"net"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pumpBufSize is one direction's user-space buffer. A command, a reply or
// a small message arrives in one read of it; a read that fills it is the
// start of a bulk transfer, left to splice(2).
const pumpBufSize = 16 << 10

var pumpBufs = sync.Pool{New: func() any { b := make([]byte, pumpBufSize); return &b }}

// pump copies src to dst until src's end of input and returns the bytes
// moved, and of those the bytes spliced. It copies by recv(2) and send(2)
// until a read fills its buffer, and from then on by io.Copy, which Linux
// serves with splice(2): the rest of a large message never enters user
// space.
//
// It does not start with io.Copy because of what SMTP traffic is: short
// commands and replies, one at a time. With bench/balancer.sh (one 1 KB
// message per connection) it costs about 20 % less CPU per session than
// io.Copy, for three reasons:
//
//   - A 30-byte command costs one recv and one send; spliced, it costs two
//     splice calls through a pipe, and the first is dearer than recv.
//   - io.Copy ends every chunk with a read that returns EAGAIN before it
//     waits. pump waits as soon as a read comes back short of its buffer:
//     the socket was empty then, and the poller is edge-triggered per
//     arrival, so any byte that comes after the read wakes it.
//   - Its system calls are raw. On non-blocking sockets none of them
//     blocks, but through syscall.Syscall each one releases the P, and
//     on a busy machine the runtime's monitor hands the P to another
//     thread in the middle of a session: two context switches per hand-off.
//
// Handing a transfer to io.Copy is safe at any moment: it reads before it
// waits. With 1 MB messages a session costs 15-30 % more CPU than with
// io.Copy alone, for reasons not understood (docs/BENCHMARKS.md).
//
// The one short read that does not mean "empty" is a read that stops at a
// TCP urgent mark, which SMTP never sends; a client that does stalls only
// its own session, until it sends again or the idle timeout ends it.
func pump(dst, src *net.TCPConn) (n, spliced int64, err error) {
	srcRaw, err := src.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	dstRaw, err := dst.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	bp := pumpBufs.Get().(*[]byte)
	buf := *bp
	var (
		opErr error
		bulk  bool
	)
	// One RawRead for the whole copy: RawRead forgets readiness reported
	// before it starts, so leaving and re-entering it between chunks would
	// have to read once more to find out.
	rerr := srcRaw.Read(func(fd uintptr) bool {
		m, errno := rawRecv(fd, buf)
		for errno == syscall.EINTR {
			m, errno = rawRecv(fd, buf)
		}
		switch {
		case errno == syscall.EAGAIN:
			return false
		case errno != 0:
			opErr = errno
			return true
		case m == 0:
			return true // end of input
		}
		if err := sendAll(dstRaw, buf[:m]); err != nil {
			opErr = err
			return true
		}
		n += int64(m)
		bulk = m == len(buf)
		return bulk
	})
	pumpBufs.Put(bp)
	// RawRead returns nil only once the callback said so: an error, the
	// end of input or a bulk transfer.
	switch {
	case opErr != nil:
		return n, 0, opErr
	case rerr != nil:
		return n, 0, rerr
	case bulk:
		spliced, err = io.Copy(dst, src)
		return n + spliced, spliced, err
	}
	return n, 0, nil
}

// sendAll sends b on the connection, waiting for room as needed.
func sendAll(raw syscall.RawConn, b []byte) error {
	var serr error
	err := raw.Write(func(fd uintptr) bool {
		for len(b) > 0 {
			m, errno := rawSend(fd, b)
			switch {
			case errno == syscall.EINTR:
				continue
			case errno == syscall.EAGAIN:
				return false
			case errno != 0:
				serr = errno
				return true
			}
			b = b[m:]
		}
		return true
	})
	if serr != nil {
		return serr
	}
	return err
}

func rawRecv(fd uintptr, b []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT, 0, 0)
	return int(r), e
}

func rawSend(fd uintptr, b []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
	return int(r), e
}
