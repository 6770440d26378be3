//go:build !linux

package balancer

import (
	"net"
	"time"
)

// quietFor cannot ask the kernel outside Linux; the idle timeout then
// never fires and sessions end when a peer closes or TCP keepalive fails.
func quietFor(a, b net.Conn) (time.Duration, bool) { return 0, false }
