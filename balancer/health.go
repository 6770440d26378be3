package balancer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/sirupsen/logrus"
)

// CheckResult is the outcome of one active health check.
type CheckResult struct {
	At       time.Time `json:"at"`
	OK       bool      `json:"ok"`
	Code     int       `json:"code,omitempty"` // the last SMTP reply code read
	Error    string    `json:"error,omitempty"`
	Duration float64   `json:"duration_ms"`
}

// checker runs one server's active health checks until its context ends.
type checker struct {
	cfg    HealthCheckConfig
	proxy  string
	pool   *pool
	cancel context.CancelFunc // nil until started
}

// runChecker checks s every interval, the first time at once. It skips
// checks while s is in maint.
func (b *Balancer) runChecker(ctx context.Context, p *pool, s *server, c *checker) {
	for {
		p.mu.Lock()
		paused := s.state == StateMaint
		p.mu.Unlock()
		if !paused {
			r := b.check(ctx, s.addr, c.cfg, c.proxy)
			if ctx.Err() != nil {
				return
			}
			b.recordCheck(p, s, r, c.cfg)
		}
		select {
		case <-ctx.Done():
			return
		case <-b.clock.After(c.cfg.Interval):
		}
	}
}

func (b *Balancer) recordCheck(p *pool, s *server, r CheckResult, hc HealthCheckConfig) {
	p.mu.Lock()
	changed := s.health.record(r, hc.Rise, hc.Fall)
	up, okRun, failRun, checks := s.health.up, s.health.okRun, s.health.failRun, s.health.checks
	if changed && up {
		s.upSince = b.clock.Now()
	}
	p.mu.Unlock()
	if !changed {
		return
	}
	log := b.log.WithFields(logrus.Fields{"pool": p.name, "server": s.name, "checks": checks, "check_error": r.Error})
	if up {
		log.WithField("successes", okRun).Info("server up")
	} else {
		log.WithField("failures", failRun).Warn("server down")
	}
}

// check runs one check of the given type against addr, within the timeout.
// With a PROXY protocol pool, the check connection starts with a header
// too (see checkProxyHeader), so a server that requires one still answers.
func (b *Balancer) check(ctx context.Context, addr string, hc HealthCheckConfig, proxy string) CheckResult {
	start := time.Now()
	r := CheckResult{At: b.clock.Now()}
	code, err := b.probe(ctx, addr, hc, proxy)
	r.Duration = float64(time.Since(start).Microseconds()) / 1000
	r.Code = code
	if err != nil {
		r.Error = err.Error()
	} else {
		r.OK = true
	}
	return r
}

func (b *Balancer) probe(ctx context.Context, addr string, hc HealthCheckConfig, proxy string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, hc.Timeout)
	defer cancel()
	conn, err := b.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	hdr, err := checkProxyHeader(proxy, conn)
	if err != nil {
		return 0, fmt.Errorf("build PROXY header: %w", err)
	}
	if hdr != nil {
		if _, err := conn.Write(hdr); err != nil {
			return 0, fmt.Errorf("write PROXY header: %w", err)
		}
	}
	if hc.Type != CheckSMTP {
		return 0, nil
	}
	return smtpCheck(conn, hc.Helo)
}

var errCheckReply = errors.New("unexpected reply")

// smtpCheck is a polite SMTP client: it reads the whole greeting before it
// says anything (no "improper command pipelining"), requires a 2xx
// greeting, sends EHLO, reads the whole 250 reply, and always ends with
// QUIT and waits for its reply (no "lost connection"). It returns the
// greeting's or EHLO's code, whichever decided.
func smtpCheck(conn net.Conn, helo string) (int, error) {
	br := bufio.NewReaderSize(conn, replyBufSize)
	greet, err := readReply(br)
	if err != nil {
		return 0, fmt.Errorf("read greeting: %w", err)
	}
	if greet.code/100 != 2 {
		quit(conn, br)
		return greet.code, fmt.Errorf("greeting %d: %w", greet.code, errCheckReply)
	}
	if helo == "" {
		helo = addressLiteral(conn.LocalAddr())
	}
	if _, err := fmt.Fprintf(conn, "EHLO %s\r\n", helo); err != nil {
		return greet.code, fmt.Errorf("write EHLO: %w", err)
	}
	ehlo, err := readReply(br)
	if err != nil {
		return 0, fmt.Errorf("read EHLO reply: %w", err)
	}
	quit(conn, br)
	if ehlo.code != 250 {
		return ehlo.code, fmt.Errorf("EHLO reply %d: %w", ehlo.code, errCheckReply)
	}
	return ehlo.code, nil
}

// quit ends a check session the way RFC 5321 §4.1.1.10 expects: QUIT, then
// the server's 221 before the close.
func quit(conn net.Conn, br *bufio.Reader) {
	if _, err := conn.Write([]byte("QUIT\r\n")); err == nil {
		readReply(br) // the check's verdict is already made
	}
}

// addressLiteral is RFC 5321 §4.1.3's form of an IP address for EHLO.
func addressLiteral(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return "localhost"
	}
	if ip4 := ta.IP.To4(); ip4 != nil {
		return "[" + ip4.String() + "]"
	}
	return "[IPv6:" + ta.IP.String() + "]"
}
