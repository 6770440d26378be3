//go:build !linux

package balancer

import (
	"io"
	"net"
)

// pump is io.Copy outside Linux, where TCPConn.ReadFrom has no splice.
func pump(dst, src *net.TCPConn) (n, spliced int64, err error) {
	n, err = io.Copy(dst, src)
	return n, 0, err
}
