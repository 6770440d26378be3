package listener

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/emersion/go-smtp"

	"chainmail/internal/envelope"
	"chainmail/internal/store"
	"chainmail/route"
)

// Replies chainmail gives. Journaling MTAs (Exchange above all) send a
// rejected report to an alternate mailbox where it is easily lost, so a 5xx
// is only for what can never succeed; every condition that may pass is 4xx.
var (
	replyShutdown    = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service shutting down, try again later"}
	replyTooMany     = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many sessions, try again later"}
	replyDenied      = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Access denied: your address may not use this listener"}
	replyQueueFull   = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system storage: outbound queue full, try again later"}
	replyDiskFull    = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system storage, try again later"}
	replyLoop        = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 4, 6}, Message: "Routing loop detected: too many hops"}
	replyBareLF      = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Message contains a bare LF; lines must end in CRLF (RFC 5321 section 2.3.8)"}
	replyTimeout     = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Timeout reading message data"}
	replyTLSFirst    = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	replyAuthFirst   = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	replyAuthTooMany = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many failed authentication attempts, closing connection"}
	replyBadAddress  = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
	replyTooBig      = smtp.ErrDataTooLarge // 552 5.3.4
	// go-smtp's reader fails for good on a line past its MaxLineLength
	// (maxLineLength) and closes the session. The message can never pass,
	// so the reply is permanent.
	replyLineTooLong = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Message has a line longer than 65536 bytes; closing connection"}
)

// maxAuthFailures is how many failed AUTH attempts a connection gets; the
// last is answered replyAuthTooMany and the connection closes.
const maxAuthFailures = 3

// replyFor turns an error from receiving or delivering a message into the
// reply the client gets. Unknown errors become a temporary 451 4.3.0 with a
// reference that also goes into the log line, never a 5xx and never the
// error's text.
func replyFor(err error) (reply *smtp.SMTPError, ref string) {
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &se):
		return se, ""
	case errors.Is(err, envelope.ErrBareLF):
		return replyBareLF, ""
	case errors.Is(err, smtp.ErrTooLongLine):
		return replyLineTooLong, ""
	case errors.Is(err, route.ErrTooManyHops):
		return replyLoop, ""
	case errors.Is(err, route.ErrQueueFull):
		return replyQueueFull, ""
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return replyDiskFull, ""
	case errors.Is(err, store.ErrClosed), errors.Is(err, context.Canceled), errors.Is(err, errShuttingDown):
		return replyShutdown, ""
	case errors.Is(err, os.ErrDeadlineExceeded), isTimeout(err):
		return replyTimeout, ""
	}
	ref = newRef()
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary local problem, try again later (ref " + ref + ")"}, ref
}

var errShuttingDown = errors.New("listener is shutting down")

// closesSession tells whether the connection must close once reply is
// sent: a 421 says so (RFC 5321 §3.8), and after a line too long go-smtp
// can read nothing more.
func closesSession(reply *smtp.SMTPError) bool {
	return reply.Code == 421 || reply == replyLineTooLong
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// clientGone tells whether err means the client went away mid-DATA (no one
// to answer).
func clientGone(err error) bool {
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, smtp.ErrDataReset)
}

func newRef() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
