package forwarder

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// smtpClient is the client side of one SMTP session with a peer: only what
// forwarding needs (RFC 5321), with PIPELINING (RFC 2920) and CHUNKING
// (RFC 3030) when the peer offers them. A chainmail peer offers both, and
// then a message costs one write and one wait: MAIL, RCPT and "BDAT <n>
// LAST" with the bytes themselves go out together, and the bytes are sent
// as they are archived, with no dot-stuffing on this side and no
// unstuffing on the peer's. go-smtp's client sends every command on its
// own and stuffs DATA a byte at a time.
//
// A reply other than the expected one is returned as a *smtp.SMTPError
// (go-smtp's type, which the forwarder's outcome reads); an I/O or protocol
// error is returned as it is, and the session is then unusable.
type smtpClient struct {
	conn    net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	timeout time.Duration // for each reply
	// endTimeout is for the reply to the end of a message, which the peer
	// sends only after storing it.
	endTimeout time.Duration
	ext        map[string]string // EHLO keywords (upper case) → parameters
}

// writeBuffer holds a 10 KB message with its commands, so that a common
// message goes out in one write.
const writeBuffer = 32 << 10

func newSMTPClient(conn net.Conn, timeout time.Duration) *smtpClient {
	return &smtpClient{
		conn:       conn,
		r:          bufio.NewReader(conn),
		w:          bufio.NewWriterSize(&deadlineWriter{conn: conn, d: timeout}, writeBuffer),
		timeout:    timeout,
		endTimeout: 2 * timeout,
	}
}

// deadlineWriter gives every write to the connection its own deadline, so
// a peer that stops reading in the middle of a large message fails the
// session after timeout instead of holding the worker.
type deadlineWriter struct {
	conn net.Conn
	d    time.Duration
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	w.conn.SetWriteDeadline(time.Now().Add(w.d))
	return w.conn.Write(p)
}

// reply reads one reply, all its lines, within d. It returns the code and
// the text (lines joined by "\n"); a malformed reply is an error.
func (c *smtpClient) reply(d time.Duration) (int, string, error) {
	c.conn.SetReadDeadline(time.Now().Add(d))
	var text strings.Builder
	code := 0
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return 0, "", err
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 3 || (len(line) > 3 && line[3] != '-' && line[3] != ' ') {
			return 0, "", fmt.Errorf("malformed reply %q", line)
		}
		n, err := strconv.Atoi(line[:3])
		if err != nil || n < 200 || n > 599 || (code != 0 && n != code) {
			return 0, "", fmt.Errorf("malformed reply %q", line)
		}
		code = n
		if text.Len() > 0 {
			text.WriteByte('\n')
		}
		if len(line) > 4 {
			text.WriteString(line[4:])
		}
		if len(line) == 3 || line[3] == ' ' {
			return code, text.String(), nil
		}
	}
}

// expect reads a reply and checks its first digit; any other reply is an
// *smtp.SMTPError.
func (c *smtpClient) expect(class int, d time.Duration) (string, error) {
	code, text, err := c.reply(d)
	if err != nil {
		return "", err
	}
	if code/100 != class {
		return "", replyError(code, text)
	}
	return text, nil
}

// replyError is a refusal as go-smtp's client reports one: the enhanced
// code, when the text starts with one, taken out of the message.
func replyError(code int, text string) *smtp.SMTPError {
	e := &smtp.SMTPError{Code: code, Message: text}
	first, rest, ok := strings.Cut(text, " ")
	if !ok {
		return e
	}
	var ec smtp.EnhancedCode
	parts := strings.Split(first, ".")
	if len(parts) != 3 {
		return e
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return e
		}
		ec[i] = n
	}
	e.EnhancedCode = ec
	// RFC 2034: the enhanced code starts every line.
	e.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	return e
}

// cmd sends one command and reads its reply.
func (c *smtpClient) cmd(class int, line string) (string, error) {
	if err := c.writeLine(line); err != nil {
		return "", err
	}
	if err := c.w.Flush(); err != nil {
		return "", err
	}
	return c.expect(class, c.timeout)
}

func (c *smtpClient) writeLine(line string) error {
	if strings.ContainsAny(line, "\r\n") {
		return fmt.Errorf("smtp command with a line break: %q", line)
	}
	c.w.WriteString(line)
	_, err := c.w.WriteString("\r\n")
	return err
}

// greet reads the greeting and returns its text.
func (c *smtpClient) greet() (string, error) {
	return c.expect(2, c.timeout)
}

// hello says EHLO (HELO if the peer does not know EHLO) and records the
// extensions offered.
func (c *smtpClient) hello(name string) error {
	text, err := c.cmd(2, "EHLO "+name)
	var se *smtp.SMTPError
	if errors.As(err, &se) && (se.Code == 500 || se.Code == 502) {
		c.ext = map[string]string{}
		_, err = c.cmd(2, "HELO "+name)
		return err
	}
	if err != nil {
		return err
	}
	c.ext = map[string]string{}
	lines := strings.Split(text, "\n")
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		c.ext[strings.ToUpper(k)] = v
	}
	return nil
}

// extension says whether the peer offered an EHLO keyword, and its
// parameters.
func (c *smtpClient) extension(name string) (bool, string) {
	v, ok := c.ext[strings.ToUpper(name)]
	return ok, v
}

// startTLS upgrades the session; the caller says EHLO again.
func (c *smtpClient) startTLS(cfg *tls.Config) (*tls.Conn, error) {
	if ok, _ := c.extension("STARTTLS"); !ok {
		return nil, errors.New("the peer does not offer STARTTLS")
	}
	if _, err := c.cmd(2, "STARTTLS"); err != nil {
		return nil, err
	}
	if c.r.Buffered() > 0 {
		// Bytes sent before the handshake would be read as if they had
		// come over TLS (command injection).
		return nil, errors.New("the peer sent data after its STARTTLS reply")
	}
	tc := tls.Client(c.conn, cfg)
	c.conn = tc
	c.r.Reset(tc)
	c.w.Reset(&deadlineWriter{conn: tc, d: c.timeout})
	c.ext = nil
	return tc, nil
}

// auth runs AUTH with a SASL mechanism (RFC 4954).
func (c *smtpClient) auth(a sasl.Client) error {
	mech, resp, err := a.Start()
	if err != nil {
		return err
	}
	line := "AUTH " + mech
	if resp != nil {
		line += " " + encodeSASL(resp)
	}
	if err := c.writeLine(line); err != nil {
		return err
	}
	for {
		if err := c.w.Flush(); err != nil {
			return err
		}
		code, text, err := c.reply(c.timeout)
		if err != nil {
			return err
		}
		switch {
		case code/100 == 2:
			return nil
		case code == 334:
			challenge, err := base64.StdEncoding.DecodeString(text)
			if err != nil {
				c.writeLine("*")
				c.w.Flush()
				c.reply(c.timeout)
				return fmt.Errorf("auth: bad challenge %q: %w", text, err)
			}
			resp, err := a.Next(challenge)
			if err != nil {
				c.writeLine("*")
				c.w.Flush()
				c.reply(c.timeout)
				return err
			}
			if err := c.writeLine(encodeSASL(resp)); err != nil {
				return err
			}
		default:
			return replyError(code, text)
		}
	}
}

func encodeSASL(b []byte) string {
	if len(b) == 0 {
		return "=" // RFC 4954 §4: an empty initial response
	}
	return base64.StdEncoding.EncodeToString(b)
}

// mailTxn is one mail transaction: sender, recipients, options, message.
type mailTxn struct {
	from  string
	rcpts []string
	utf8  bool
	// head goes in front of the body: the trace fields.
	head []byte
	body io.Reader
	size int64 // of body
}

// send runs one mail transaction: MAIL, RCPT for each recipient, and the
// message. A refusal of any of them is returned as *smtp.SMTPError, after
// which the caller resets the session; the message's bytes are sent only
// when every recipient is accepted, or together with the commands when
// that cannot matter (see below). Any other error leaves the session
// unusable.
func (c *smtpClient) send(m mailTxn) error {
	total := int64(len(m.head)) + m.size
	mail := "MAIL FROM:<" + m.from + ">"
	if ok, _ := c.extension("SIZE"); ok {
		mail += " SIZE=" + strconv.FormatInt(total, 10)
	}
	if m.utf8 {
		if ok, _ := c.extension("SMTPUTF8"); ok {
			mail += " SMTPUTF8"
		}
	}
	pipelining, _ := c.extension("PIPELINING")
	chunking, _ := c.extension("CHUNKING")
	if !pipelining {
		if _, err := c.cmd(2, mail); err != nil {
			return err
		}
		for _, r := range m.rcpts {
			if _, err := c.cmd(2, "RCPT TO:<"+r+">"); err != nil {
				return err
			}
		}
		return c.content(m, total, chunking, 0)
	}
	// RFC 2920: the commands go out together and their replies are read
	// in order. With one recipient the message goes with them: if that
	// recipient is refused, the peer refuses the BDAT (or the DATA) as
	// well and, for BDAT, reads the chunk and drops it (RFC 3030 §2), so
	// nothing is stored. With several, a refused recipient must keep the
	// message from the others, as it did before pipelining, so the
	// content waits for every reply.
	if err := c.writeLine(mail); err != nil {
		return err
	}
	for _, r := range m.rcpts {
		if err := c.writeLine("RCPT TO:<" + r + ">"); err != nil {
			return err
		}
	}
	pending := 1 + len(m.rcpts)
	if len(m.rcpts) == 1 {
		return c.content(m, total, chunking, pending)
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	refused, err := c.replies(pending)
	if err != nil {
		return err
	}
	if refused != nil {
		return refused
	}
	return c.content(m, total, chunking, 0)
}

// replies reads n pipelined replies, all of them: err is an I/O or
// protocol error, refused the first reply that was not a 2xx.
func (c *smtpClient) replies(n int) (refused *smtp.SMTPError, err error) {
	for range n {
		code, text, err := c.reply(c.timeout)
		if err != nil {
			return nil, err
		}
		if code/100 != 2 && refused == nil {
			refused = replyError(code, text)
		}
	}
	return refused, nil
}

// content sends the message after pending replies still to be read to the
// commands written before it.
func (c *smtpClient) content(m mailTxn, total int64, chunking bool, pending int) error {
	if chunking {
		if err := c.writeLine("BDAT " + strconv.FormatInt(total, 10) + " LAST"); err != nil {
			return err
		}
		c.w.Write(m.head)
		if n, err := io.CopyN(c.w, m.body, m.size); err != nil {
			// The peer waits for the rest of the chunk: the session
			// cannot go on.
			return fmt.Errorf("read archived message after %d of %d bytes: %w", n, m.size, err)
		}
		if err := c.w.Flush(); err != nil {
			return err
		}
		refused, err := c.replies(pending)
		if err != nil {
			return err
		}
		code, text, err := c.reply(c.endTimeout)
		switch {
		case err != nil:
			return err
		case refused != nil:
			// The peer refused the chunk too, and dropped it.
			return refused
		case code/100 != 2:
			return replyError(code, text)
		}
		return nil
	}
	if err := c.writeLine("DATA"); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	refused, err := c.replies(pending)
	if err != nil {
		return err
	}
	code, text, err := c.reply(c.timeout)
	if err != nil {
		return err
	}
	if refused != nil {
		if code == 354 {
			// A refused sender or recipient and yet the go-ahead: the
			// only way out of DATA is the final dot, which would hand
			// the peer an empty message.
			return fmt.Errorf("peer answered DATA with 354 after refusing the transaction (%v)", refused)
		}
		return refused
	}
	if code != 354 {
		return replyError(code, text)
	}
	// Dot-stuffing (RFC 5321 §4.5.2) by net/textproto: only for peers
	// without CHUNKING.
	dw := textproto.NewWriter(c.w).DotWriter()
	dw.Write(m.head)
	if _, err := io.CopyN(dw, m.body, m.size); err != nil {
		return fmt.Errorf("read archived message: %w", err)
	}
	if err := dw.Close(); err != nil {
		return err
	}
	_, err = c.expect(2, c.endTimeout)
	return err
}

// reset ends a refused transaction (RSET).
func (c *smtpClient) reset() error {
	_, err := c.cmd(2, "RSET")
	return err
}

// quit says QUIT and closes the connection.
func (c *smtpClient) quit() {
	c.cmd(2, "QUIT")
	c.conn.Close()
}

func (c *smtpClient) close() { c.conn.Close() }
