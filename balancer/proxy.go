package balancer

import (
	"net"

	"github.com/pires/go-proxyproto"
)

// proxyVersion maps a pool's proxy_protocol to the header version, 0 for none.
func proxyVersion(mode string) byte {
	switch mode {
	case ProxyV1:
		return 1
	case ProxyV2:
		return 2
	}
	return 0
}

// proxyHeader is the PROXY protocol header announcing a relayed client
// connection: src is the client, dst the frontend address it reached.
// It returns nil when the pool sends no header.
func proxyHeader(mode string, src, dst net.Addr) ([]byte, error) {
	v := proxyVersion(mode)
	if v == 0 {
		return nil, nil
	}
	return proxyproto.HeaderProxyFromAddrs(v, src, dst).Format()
}

// checkProxyHeader is the header a health check sends on its own
// connection c. v2 uses the LOCAL command, which the spec provides for
// checks. v1 has "PROXY UNKNOWN" for that, but Postfix (3.7) rejects it, so
// a v1 check announces its own connection's addresses, as HAProxy's
// check-send-proxy does.
func checkProxyHeader(mode string, c net.Conn) ([]byte, error) {
	switch proxyVersion(mode) {
	case 1:
		return proxyproto.HeaderProxyFromAddrs(1, c.LocalAddr(), c.RemoteAddr()).Format()
	case 2:
		return proxyproto.HeaderProxyFromAddrs(2, nil, nil).Format()
	}
	return nil, nil
}
