package balancer

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/pires/go-proxyproto"
)

func TestProxyHeaderReachesServer(t *testing.T) {
	t.Parallel()
	for _, version := range []string{ProxyV1, ProxyV2} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			be := startBackend(t, "a", "127.0.0.1", true)
			clk := newFakeClock()
			bal := startBalancer(t, poolYAML(fmt.Sprintf("      proxy_protocol: %s\n      health_check: {type: smtp, interval: 1h}\n", version),
				[]string{fmt.Sprintf("{name: a, address: %q}", be.addr)}, ""), Options{Clock: clk})
			// The check sends a LOCAL (v2) or UNKNOWN (v1) header, which the
			// server accepts and answers as a direct connection.
			waitFor(t, "the first check", func() bool { return bal.server(t, "p", "a").Checks == 1 })
			if h := bal.server(t, "p", "a"); !h.LastCheck.OK {
				t.Fatalf("check through a PROXY-reading server: %+v", h.LastCheck)
			}
			for _, ip := range []string{"127.0.0.23", "127.0.0.24"} {
				c, err := dialClient(bal.frontend(t, "smtp"), ip)
				if err != nil {
					t.Fatal(err)
				}
				local := c.conn.LocalAddr().String()
				if err := c.send(true); err != nil {
					t.Fatal(err)
				}
				c.quit()
				remotes := be.Remotes()
				if got := remotes[len(remotes)-1]; got != local {
					t.Fatalf("server saw the session from %s, want the client's %s (all: %v)", got, local, remotes)
				}
			}
		})
	}
}

func TestProxyHeaderBytes(t *testing.T) {
	t.Parallel()
	src := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 40001}
	dst := &net.TCPAddr{IP: net.ParseIP("198.51.100.1"), Port: 25}
	v1, err := proxyHeader(ProxyV1, src, dst)
	if err != nil || string(v1) != "PROXY TCP4 192.0.2.7 198.51.100.1 40001 25\r\n" {
		t.Fatalf("v1 = %q, %v", v1, err)
	}
	v2, err := proxyHeader(ProxyV2, src, dst)
	if err != nil || !bytes.HasPrefix(v2, []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11")) {
		t.Fatalf("v2 = %q, %v", v2, err)
	}
	h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(v2)))
	if err != nil || h.SourceAddr.String() != src.String() || h.DestinationAddr.String() != dst.String() {
		t.Fatalf("v2 reads back as %+v, %v", h, err)
	}
	if none, _ := proxyHeader(ProxyNone, src, dst); none != nil {
		t.Fatalf("none = %q", none)
	}
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	pc := &addrConn{Conn: c1, local: src, remote: dst}
	if got, err := checkProxyHeader(ProxyV1, pc); err != nil || string(got) != "PROXY TCP4 192.0.2.7 198.51.100.1 40001 25\r\n" {
		t.Fatalf("v1 check header = %q, %v", got, err)
	}
	local, _ := checkProxyHeader(ProxyV2, pc)
	h, err = proxyproto.Read(bufio.NewReader(bytes.NewReader(local)))
	if err != nil || h.Command != proxyproto.LOCAL {
		t.Fatalf("v2 check header reads back as %+v, %v", h, err)
	}
	if none, _ := checkProxyHeader(ProxyNone, pc); none != nil {
		t.Fatalf("none = %q", none)
	}
	if !strings.HasPrefix(addressLiteral(src), "[192.0.2.7]") || addressLiteral(&net.TCPAddr{IP: net.ParseIP("2001:db8::1")}) != "[IPv6:2001:db8::1]" {
		t.Fatal("address literals")
	}
}

type addrConn struct {
	net.Conn
	local, remote net.Addr
}

func (c *addrConn) LocalAddr() net.Addr  { return c.local }
func (c *addrConn) RemoteAddr() net.Addr { return c.remote }
