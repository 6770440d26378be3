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

// localProxyHeader is the header for a connection the balancer makes on its
// own behalf (a health check): v2 LOCAL, v1 "PROXY UNKNOWN".
func localProxyHeader(mode string) []byte {
	v := proxyVersion(mode)
	if v == 0 {
		return nil
	}
	b, err := proxyproto.HeaderProxyFromAddrs(v, nil, nil).Format()
	if err != nil {
		return nil
	}
	return b
}
