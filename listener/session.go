package listener

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"

	"chainmail/archive"
	"chainmail/internal/config"
	"chainmail/internal/envelope"
	"chainmail/journal"
)

// session is one go-smtp session: from EHLO (or STARTTLS's new EHLO) to
// the end of the connection.
type session struct {
	l        *Listener
	conn     *trackedConn
	smtpConn *smtp.Conn
	helo     string
	tls      string
	authUser string
	from     string
	rcpts    []string
	// encoded are the RCPT TO addresses the subaddress option decoded
	// into rcpts, kept as evidence.
	encoded []string
	// closeAfterReply is set when the reply to a message says the
	// connection closes (a 421, or a line too long for go-smtp's reader to
	// go on). go-smtp writes that reply and then calls Reset, which closes
	// the connection: otherwise go-smtp would keep reading, and the rest of
	// a stalled DATA would be taken for commands.
	closeAfterReply atomic.Bool
	// inData is true from DATA until the reply is written (Reset).
	inData bool
}

func (l *Listener) newSession(c *smtp.Conn) (smtp.Session, error) {
	tc := trackedOf(c.Conn())
	if tc == nil {
		return nil, replyShutdown // cannot happen: every conn comes through the gate
	}
	s := &session{l: l, conn: tc, smtpConn: c, helo: c.Hostname()}
	if st, ok := c.TLSConnectionState(); ok {
		s.tls = tls.VersionName(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite)
	}
	tc.mu.Lock()
	tc.helo = s.helo
	tc.mu.Unlock()
	if l.cfg.Role == config.RoleHA && l.deps.PeerHello != nil {
		l.deps.PeerHello(s.helo)
	}
	return s, nil
}

// trackedOf finds the gate's connection under a TLS layer.
func trackedOf(c net.Conn) *trackedConn {
	for {
		switch v := c.(type) {
		case *trackedConn:
			return v
		case *tls.Conn:
			c = v.NetConn()
		default:
			return nil
		}
	}
}

func (s *session) Reset() {
	s.from, s.rcpts, s.encoded = "", nil, nil
	s.leaveData()
	if s.closeAfterReply.Load() {
		// Under go-smtp's connection lock: close the gate's connection,
		// not the smtp.Conn.
		s.conn.Close()
	}
}

func (s *session) Logout() error {
	s.leaveData()
	return nil
}

// leaveData ends the session's DATA phase. go-smtp calls Reset right after
// writing the reply to DATA, so a stopping listener, which waits for no
// session to be in DATA, never closes a connection before its 250 is out.
func (s *session) leaveData() {
	if s.inData {
		s.inData = false
		s.l.inDATA.Add(-1)
	}
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	cfg := s.l.cfg
	if cfg.TLS != nil && cfg.TLS.Require && s.tls == "" {
		return replyTLSFirst
	}
	if cfg.Auth != nil && cfg.Auth.Required && s.authUser == "" {
		return replyAuthFirst
	}
	if opts != nil && opts.Size > int64(cfg.MaxMessageSize) {
		return replyTooBig
	}
	s.from, s.rcpts, s.encoded = from, nil, nil
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if to == "" || strings.ContainsAny(to, " \t\r\n") {
		return replyBadAddress
	}
	if sa := s.l.cfg.Subaddress; sa != nil {
		// archive+bob=contoso.example@archive.example is archived as sent
		// to bob@contoso.example (Postfix recipient_bcc_maps).
		// A decoded address is sent on to peers as a RCPT TO: one
		// with white space in it stays encoded.
		if rcpt, ok := journal.DecodeMailboxSubaddress(to, sa.Mailbox, sa.Delimiter); ok && !strings.ContainsAny(rcpt, " \t") {
			s.encoded = append(s.encoded, to)
			to = rcpt
		}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	start := time.Now()
	l := s.l
	l.inDATA.Add(1)
	s.inData = true
	log := l.log.WithFields(logrus.Fields{"client": s.conn.remote.String(), "from": s.from, "rcpts": len(s.rcpts)})
	res, err := envelope.Receive(&deadlineReader{r: r, conn: s.smtpConn.Conn(), d: l.cfg.DataTimeout}, envelope.SpoolOptions{
		Dir:        l.deps.SpoolDir,
		Threshold:  l.deps.SpoolThreshold,
		ParseTrace: l.trustsTrace(s),
	})
	if err != nil {
		return s.fail(log, err, 0, time.Since(start))
	}
	defer res.Body.Close()
	log = log.WithFields(logrus.Fields{"msg": res.Hash.Short(), "size": res.Body.Size()})
	if res.BadTrace > 0 {
		log.WithField("bad_trace", res.BadTrace).Warn("unparseable X-Chainmail-Trace fields dropped")
	}
	it := &archive.Item{
		Hash:          res.Hash,
		Body:          res.Body,
		Envelope:      envelope.Envelope{MailFrom: s.from, RcptTo: s.rcpts},
		EncodedRcptTo: s.encoded,
		Trace:         res.Trace,
		Receipt: envelope.Receipt{
			Node: l.deps.Node, Listener: l.cfg.Name,
			ClientIP: s.conn.remote.Addr().String(), ClientPort: int(s.conn.remote.Port()), ProxiedBy: s.conn.proxiedBy,
			Helo: s.helo, TLS: s.tls, AuthUser: s.authUser, Received: start.UTC(),
		},
	}
	archive.Prepare(it)
	deliverStart := time.Now()
	// The delivery outlives a shutdown signal: once DATA is in, the
	// outcome must be known before the client is answered.
	out, err := l.deps.Router.Deliver(context.WithoutCancel(l.ctx), l.cfg.Name, it)
	if err != nil {
		return s.fail(log, err, res.Body.Size(), time.Since(deliverStart))
	}
	result, text := "archived", "OK: archived as "
	if !out.New {
		result, text = "duplicate", "OK: already archived as "
	}
	s.conn.count(res.Body.Size(), true)
	l.deps.Metrics.message(l.cfg.Name, result, res.Body.Size(), time.Since(deliverStart).Seconds())
	log.WithFields(logrus.Fields{
		"code": 250, "result": result, "forwarded": strings.Join(out.Forwarded, ","),
		"routes": strings.Join(out.Routes, ","), "duration_ms": time.Since(start).Milliseconds(),
	}).Info("message accepted")
	// go-smtp sends a returned *SMTPError's code and text as they are, so
	// a 250 can name the message: an administrator can find it by its id.
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: text + res.Hash.String()}
}

// fail logs a message that did not get its 250 and returns the reply.
func (s *session) fail(log *logrus.Entry, err error, size int64, d time.Duration) error {
	s.conn.count(size, false)
	s.l.deps.Metrics.message(s.l.cfg.Name, "rejected", size, d.Seconds())
	reply, ref := replyFor(err)
	if closesSession(reply) {
		s.closeAfterReply.Store(true)
	}
	fields := logrus.Fields{"code": reply.Code, "result": "rejected", "error": err.Error()}
	if ref != "" {
		fields["ref"] = ref
	}
	switch {
	case clientGone(err):
		log.WithFields(fields).Info("client went away during DATA; nothing stored")
	case reply.Code >= 500:
		log.WithFields(fields).Warn("message refused")
	default:
		log.WithFields(fields).Warn("message deferred")
	}
	return reply
}

// AuthMechanisms offers PLAIN and LOGIN when users are configured;
// go-smtp hides them before TLS unless allow_insecure is set.
func (s *session) AuthMechanisms() []string {
	if s.l.cfg.Auth == nil {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	fail := func(user string) error {
		n := s.conn.authFailed()
		log := s.l.log.WithFields(logrus.Fields{"client": s.conn.remote.String(), "user": user, "attempt": n})
		if n < maxAuthFailures {
			log.Warn("authentication failed")
			return smtp.ErrAuthFailed
		}
		// Guessing passwords costs a new connection every few tries, and
		// each is counted against max_sessions_per_ip.
		log.Warn("authentication failed; too many attempts, closing the connection")
		s.conn.closeAfterWrite.Store(true)
		return replyAuthTooMany
	}
	check := func(user, pass string) error {
		if !s.l.checkUser(user, pass) {
			return fail(user)
		}
		s.authUser = user
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return fail(user)
			}
			return check(user, pass)
		}), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (l *Listener) checkUser(user, pass string) bool {
	if l.cfg.Auth == nil {
		return false
	}
	hash := string(l.dummyHash)
	for _, u := range l.cfg.Auth.Users {
		if u.Name == user {
			hash = u.PasswordHash
		}
	}
	// Compare even for unknown users, so timing does not tell which exist.
	ok := bcrypt.CompareHashAndPassword([]byte(hash), []byte(pass)) == nil
	return ok && hash != string(l.dummyHash)
}

// loginServer is the LOGIN SASL mechanism (draft-murchison-sasl-login),
// which go-sasl offers only as a client.
type loginServer struct {
	check func(user, pass string) error
	user  string
	state int
}

func (a *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch a.state {
	case 0:
		a.state = 1
		if len(response) > 0 { // initial response carries the user name
			a.user = string(response)
			a.state = 2
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		a.user = string(response)
		a.state = 2
		return []byte("Password:"), false, nil
	case 2:
		a.state = 3
		return nil, true, a.check(a.user, string(response))
	}
	return nil, true, errors.New("unexpected LOGIN response")
}

// deadlineReader renews the read deadline before every read during DATA,
// so a slow but steady 50 MB upload is fine and a stalled one is not.
//
// Its first error is final. A bufio.Reader in front of it may read again
// after an error (bufio.Reader.WriteTo refills), and renewing the deadline
// then would give a stalled client a second data_timeout.
type deadlineReader struct {
	r    io.Reader
	conn net.Conn
	d    time.Duration
	err  error
}

func (r *deadlineReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	r.conn.SetReadDeadline(time.Now().Add(r.d))
	n, err := r.r.Read(p)
	r.err = err
	return n, err
}
