package balancer_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"

	"chainmail/balancer"
)

// A balancer in front of one SMTP server: the client gets the server's
// greeting through it.
func Example() {
	// A stand-in SMTP server that greets and waits.
	srv, _ := net.Listen("tcp", "127.0.0.1:0")
	defer srv.Close()
	go func() {
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			go func() {
				fmt.Fprint(c, "220 node-a.example ESMTP\r\n")
				io.Copy(io.Discard, c) // until the client leaves
				c.Close()
			}()
		}
	}()

	cfg, err := balancer.ParseConfig("balancer.yaml", []byte(fmt.Sprintf(`
balancer:
  frontends:
    - {name: smtp, address: "127.0.0.1:0", pool: archive}
  pools:
    - name: archive
      algorithm: weighted-round-robin
      servers:
        - {name: a, address: %q, weight: 4}
`, srv.Addr())))
	if err != nil {
		fmt.Println(err)
		return
	}
	b, err := balancer.New(cfg, balancer.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- b.Run(ctx) }()

	c, _ := net.Dial("tcp", b.FrontendAddr("smtp").String())
	greeting, _ := bufio.NewReader(c).ReadString('\n')
	fmt.Println(strings.TrimSpace(greeting))
	c.Close()

	stop()
	<-done
	fmt.Println(b.Pools()[0].Servers[0].TotalSessions, "session")
	// Output:
	// 220 node-a.example ESMTP
	// 1 session
}
