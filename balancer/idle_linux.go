package balancer

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// quietFor is how long neither peer has sent data, from the kernel's
// TCP_INFO (tcpi_last_data_recv). The relay does not time the bytes it
// moves (and never sees those it splices), so the kernel is the one to
// ask. known is false if either socket cannot tell.
func quietFor(a, b net.Conn) (quiet time.Duration, known bool) {
	qa, ok := lastRecv(a)
	if !ok {
		return 0, false
	}
	qb, ok := lastRecv(b)
	if !ok {
		return 0, false
	}
	return min(qa, qb), true
}

func lastRecv(c net.Conn) (time.Duration, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var info *unix.TCPInfo
	var ierr error
	if err := raw.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || ierr != nil {
		return 0, false
	}
	return time.Duration(info.Last_data_recv) * time.Millisecond, true
}
