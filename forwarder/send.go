package forwarder

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/sirupsen/logrus"

	"chainmail/archive"
	"chainmail/internal/envelope"
	"chainmail/queue"
)

// ErrSelfLoop: the peer greets with this node's own id. Its text names the
// self-loop, as DESIGN.md does, so an operator reading last_error knows.
var ErrSelfLoop = errors.New("self-loop: the peer greets with this node's own id (the connection points back at this node)")

// session is one SMTP client session to the peer. It lives no longer than
// the context it was dialled under: when that ends, its connection is
// closed, whatever it is waiting for.
type session struct {
	c       *smtpClient
	peer    string // node id from the greeting
	rcptMax int
	unwatch func() bool // stops the watch on the dial context
}

func (s *session) quit() {
	s.c.quit()
	s.unwatch()
}

func (s *session) close() {
	s.unwatch()
	s.c.close()
}

// dial connects, reads the greeting, says EHLO, runs STARTTLS as
// configured, refuses a self-loop, and authenticates as configured.
func (c *conn) dial(ctx context.Context) (*session, error) {
	raw, err := c.f.deps.Dial(ctx, "tcp", c.cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", c.cfg.Address, err)
	}
	// A peer that connects and then hangs must not hold up a shutdown
	// (or a removed connection) for the command timeout: abandoning a
	// message is safe, as delivery is idempotent and the entry stays
	// queued.
	tcp := raw
	unwatch := context.AfterFunc(ctx, func() { tcp.Close() })
	dialled := false
	defer func() {
		if !dialled {
			unwatch()
			tcp.Close()
		}
	}()
	var tcfg *tls.Config
	if c.cfg.TLS != "none" {
		if tcfg, err = c.tlsConfig(); err != nil {
			return nil, err
		}
	}
	if c.cfg.TLS == "implicit" {
		tc := tls.Client(raw, tcfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("tls handshake with %s: %w", c.cfg.Address, err)
		}
		raw = tc
	}
	cl := newSMTPClient(raw, c.cfg.Timeout)
	greeting, err := cl.greet()
	if err == nil {
		err = cl.hello(c.f.deps.Node)
	}
	if err != nil {
		return nil, fmt.Errorf("greeting from %s: %w", c.cfg.Address, err)
	}
	if c.cfg.TLS == "starttls" {
		tc, err := cl.startTLS(tcfg)
		if err == nil {
			err = tc.HandshakeContext(ctx)
		}
		if err == nil {
			err = cl.hello(c.f.deps.Node)
		}
		if err != nil {
			return nil, fmt.Errorf("starttls with %s: %w", c.cfg.Address, err)
		}
	}
	s := &session{c: cl, peer: peerNode(greeting), rcptMax: 1000, unwatch: unwatch}
	if err := c.checkPeer(ctx, s.peer); err != nil {
		return nil, err
	}
	if ok, v := cl.extension("LIMITS"); ok {
		for _, f := range strings.Fields(v) {
			if n, err := strconv.Atoi(strings.TrimPrefix(strings.ToUpper(f), "RCPTMAX=")); err == nil && n > 0 {
				s.rcptMax = n
			}
		}
	}
	if c.cfg.Username != "" {
		if err := cl.auth(sasl.NewPlainClient("", c.cfg.Username, c.cfg.Password)); err != nil {
			return nil, fmt.Errorf("auth as %s at %s: %w", c.cfg.Username, c.cfg.Address, err)
		}
	}
	dialled = true
	return s, nil
}

// peerNode is the peer's node id: the first word of its greeting
// ("220 <node> ESMTP ...").
func peerNode(greeting string) string {
	first, _, _ := strings.Cut(greeting, "\n")
	if f := strings.Fields(first); len(f) > 0 {
		return f[0]
	}
	return ""
}

// checkPeer refuses a peer that is this node, or not the configured one,
// and remembers the id learned from the greeting.
func (c *conn) checkPeer(ctx context.Context, peer string) error {
	if peer == c.f.deps.Node {
		return ErrSelfLoop
	}
	if c.cfg.PeerNode != "" && peer != c.cfg.PeerNode {
		return fmt.Errorf("peer greets as %q, but peer_node is %q: refusing to send", peer, c.cfg.PeerNode)
	}
	c.mu.Lock()
	changed := peer != "" && peer != c.peerNode
	if changed {
		c.peerNode = peer
	}
	c.mu.Unlock()
	if changed {
		c.log.WithField("peer_node", peer).Info("learned the peer's node id from its greeting")
		return c.f.deps.Queue.SetPeerNode(context.WithoutCancel(ctx), c.cfg.Name, peer)
	}
	return nil
}

func (c *conn) tlsConfig() (*tls.Config, error) {
	host, _, _ := net.SplitHostPort(c.cfg.Address)
	cfg := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.cfg.TLSSkipVerify}
	if c.cfg.TLSServerName != "" {
		cfg.ServerName = c.cfg.TLSServerName
	}
	if c.cfg.TLSCA != "" {
		pem, err := os.ReadFile(c.cfg.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("tls_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls_ca %s: no PEM certificate in it", c.cfg.TLSCA)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// send delivers one queued message on s. accepted says the peer answered
// 250: the entry is the acker's to remove. The error is an errConnection
// when the session (or the whole connection) is unusable, nil otherwise: a
// reply to the message is recorded as an attempt, not returned.
func (c *conn) send(ctx context.Context, s *session, e queue.Entry) (accepted bool, err error) {
	start := time.Now()
	q := c.f.deps.Queue
	id := e.Hash.String()
	meta, err := c.f.deps.Archive.Get(ctx, id)
	if err != nil {
		// The queue references an archived message; missing bytes are a
		// local fault, kept visible as a failed attempt.
		return false, c.outcome(ctx, e, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "local: " + err.Error()})
	}
	if s.peer != "" && meta.Trace.Has(s.peer) {
		c.log.WithFields(logrus.Fields{"msg": e.Hash.Short(), "peer_node": s.peer}).Info("loop detected: peer already on the message's path; dropping queue entry")
		c.f.deps.Metrics.forwarded(c.cfg.Name, "loop")
		// Dropped, not acked: the peer never got it, and delivered must
		// not say otherwise.
		if err := q.Drop(context.WithoutCancel(ctx), c.cfg.Name, e.Seq); err != nil {
			return false, errConnection{err}
		}
		return false, nil
	}
	hops := append(append(envelope.Trace(nil), meta.Trace...), envelope.Hop{Node: c.f.deps.Node, Hash: e.Hash, Received: meta.Receipt.Received})
	var head bytes.Buffer
	for _, h := range hops {
		head.WriteString(h.Field())
	}
	rcpts := recipients(meta)
	for len(rcpts) > 0 {
		n := min(len(rcpts), s.rcptMax)
		if err := c.transaction(ctx, s, meta, head.Bytes(), rcpts[:n]); err != nil {
			var se *smtp.SMTPError
			if errors.As(err, &se) {
				// A refused transaction leaves the session usable after RSET.
				if rerr := s.c.reset(); rerr != nil {
					return false, errConnection{fmt.Errorf("reset after %s refused by %s: %w", e.Hash.Short(), c.cfg.Address, rerr)}
				}
				return false, c.outcome(ctx, e, err)
			}
			// Say what failed: go-smtp's errors are bare ("EOF").
			return false, errConnection{fmt.Errorf("send %s to %s: %w", e.Hash.Short(), c.cfg.Address, err)}
		}
		rcpts = rcpts[n:]
	}
	now := time.Now()
	origin := meta.Receipt.Received
	if len(meta.Trace) > 0 {
		origin = meta.Trace[0].Received
	}
	c.mu.Lock()
	c.deferrals = 0
	c.rate.add(now)
	c.mu.Unlock()
	c.f.deps.Metrics.delivered(c.cfg.Name, now.Sub(start), now.Sub(origin))
	c.log.WithFields(logrus.Fields{"msg": e.Hash.Short(), "size": meta.Size, "rcpts": len(meta.Envelope.RcptTo), "code": 250, "duration_ms": now.Sub(start).Milliseconds()}).Debug("message forwarded")
	return true, nil
}

// transaction is one mail transaction with the trace fields in front of
// the archived bytes.
func (c *conn) transaction(ctx context.Context, s *session, meta *archive.Meta, head []byte, rcpts []string) error {
	// Open the bytes before MAIL: once the message has begun, the only
	// way out short of dropping the session is its end, which would hand
	// the peer an empty message to archive. Unreadable bytes are a local
	// fault, a failed attempt like a missing message in send.
	raw, size, err := c.f.deps.Archive.OpenMeta(ctx, meta)
	if err != nil {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
			Message: fmt.Sprintf("local: read archived %s: %v", meta.ID[:12], err)}
	}
	defer raw.Close()
	return s.c.send(mailTxn{
		from: meta.Envelope.MailFrom, rcpts: rcpts,
		utf8: !isASCII(meta.Envelope.MailFrom) || !allASCII(rcpts),
		head: head, body: raw, size: size,
	})
}

// recipients are the envelope recipients to send to; a message archived
// without any (an import) goes to its header recipients, or postmaster.
func recipients(m *archive.Meta) []string {
	if len(m.Envelope.RcptTo) > 0 {
		return m.Envelope.RcptTo
	}
	if r := append(append([]string(nil), m.Headers.To...), m.Headers.Cc...); len(r) > 0 {
		return r
	}
	return []string{"postmaster"}
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func allASCII(list []string) bool {
	for _, s := range list {
		if !isASCII(s) {
			return false
		}
	}
	return true
}
