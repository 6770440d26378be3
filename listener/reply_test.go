package listener

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/emersion/go-smtp"

	"chainmail/internal/envelope"
	"chainmail/internal/store"
	"chainmail/route"
)

// timeoutError is a net.Error that timed out, as a read past its deadline
// returns from some connection types.
type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout on /var/lib/secret" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

var refRE = regexp.MustCompile(`\(ref ([0-9a-f]{12})\)$`)

// TestReplyFor covers every branch of the one error→reply mapping. A
// journaling MTA may discard a report that got a 5xx, so a condition that
// may pass must be 4xx, and the enhanced code must agree with the reply
// code's class (maddy sent 5.x.x with 4xx codes for years).
func TestReplyFor(t *testing.T) {
	custom := &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "custom refusal"}
	cases := []struct {
		name string
		err  error
		code int
		enh  smtp.EnhancedCode
		msg  string // "" when the message is checked otherwise (the ref)
	}{
		{"SMTPError passes through", custom, 550, smtp.EnhancedCode{5, 7, 1}, "custom refusal"},
		{"wrapped SMTPError passes through unwrapped", fmt.Errorf("route: deliver: %w", custom), 550, smtp.EnhancedCode{5, 7, 1}, "custom refusal"},
		{"data too large", smtp.ErrDataTooLarge, 552, smtp.EnhancedCode{5, 3, 4}, "Maximum message size exceeded"},
		{"bare LF", fmt.Errorf("spool: %w", envelope.ErrBareLF), 554, smtp.EnhancedCode{5, 6, 0}, replyBareLF.Message},
		{"line too long in DATA", fmt.Errorf("spool: %w", smtp.ErrTooLongLine), 554, smtp.EnhancedCode{5, 6, 0}, replyLineTooLong.Message},
		{"too many hops", fmt.Errorf("route: message abc: 17 hops, max_hops is 16: %w", route.ErrTooManyHops), 554, smtp.EnhancedCode{5, 4, 6}, replyLoop.Message},
		{"queue full", fmt.Errorf("route: forward:peer-b: %w", route.ErrQueueFull), 452, smtp.EnhancedCode{4, 3, 1}, replyQueueFull.Message},
		{"ENOSPC wrapped", fmt.Errorf("spool: %w", &os.PathError{Op: "write", Path: "/var/lib/chainmail/spool/data-1.eml", Err: syscall.ENOSPC}), 452, smtp.EnhancedCode{4, 3, 1}, replyDiskFull.Message},
		{"EDQUOT wrapped", fmt.Errorf("archive: commit: %w", syscall.EDQUOT), 452, smtp.EnhancedCode{4, 3, 1}, replyDiskFull.Message},
		{"store closed", fmt.Errorf("archive: put: %w", store.ErrClosed), 421, smtp.EnhancedCode{4, 3, 2}, replyShutdown.Message},
		{"context canceled", fmt.Errorf("store: update: %w", context.Canceled), 421, smtp.EnhancedCode{4, 3, 2}, replyShutdown.Message},
		{"shutting down", errShuttingDown, 421, smtp.EnhancedCode{4, 3, 2}, replyShutdown.Message},
		{"deadline exceeded", fmt.Errorf("read DATA: %w", os.ErrDeadlineExceeded), 421, smtp.EnhancedCode{4, 4, 2}, replyTimeout.Message},
		{"timeout net.Error", &net.OpError{Op: "read", Net: "tcp", Err: timeoutError{}}, 421, smtp.EnhancedCode{4, 4, 2}, replyTimeout.Message},
		{"unknown error", errors.New("open /var/lib/chainmail/chainmail.db: input/output error"), 451, smtp.EnhancedCode{4, 3, 0}, ""},
		{"no route is unknown to the client", fmt.Errorf("route: listener x: %w", route.ErrNoRoute), 451, smtp.EnhancedCode{4, 3, 0}, ""},
		{"unexpected EOF", io.ErrUnexpectedEOF, 451, smtp.EnhancedCode{4, 3, 0}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, ref := replyFor(tc.err)
			if r.Code != tc.code || r.EnhancedCode != tc.enh {
				t.Fatalf("replyFor(%v) = %d %v, want %d %v", tc.err, r.Code, r.EnhancedCode, tc.code, tc.enh)
			}
			checkClass(t, r)
			if tc.msg != "" {
				if r.Message != tc.msg {
					t.Errorf("message %q, want %q", r.Message, tc.msg)
				}
				if ref != "" {
					t.Errorf("a known condition got a ref %q", ref)
				}
				return
			}
			// Unknown: a temporary reply naming a reference that the log
			// line also carries, and nothing of the error's text.
			m := refRE.FindStringSubmatch(r.Message)
			if m == nil || m[1] != ref {
				t.Fatalf("message %q does not end with (ref %s)", r.Message, ref)
			}
			if !strings.HasPrefix(r.Message, "Temporary local problem, try again later") {
				t.Errorf("message %q", r.Message)
			}
			for _, leak := range []string{"/var", "chainmail.db", "error", "route", "EOF"} {
				if strings.Contains(r.Message, leak) {
					t.Errorf("message %q leaks %q from the error", r.Message, leak)
				}
			}
		})
	}
	t.Run("refs differ", func(t *testing.T) {
		_, a := replyFor(errors.New("x"))
		_, b := replyFor(errors.New("x"))
		if a == "" || a == b {
			t.Fatalf("refs %q and %q: each unknown error needs its own", a, b)
		}
	})
}

// TestRepliesClassMatch checks every reply the package declares.
func TestRepliesClassMatch(t *testing.T) {
	for _, r := range []*smtp.SMTPError{
		replyShutdown, replyTooMany, replyDenied, replyQueueFull, replyDiskFull, replyLoop,
		replyBareLF, replyTimeout, replyTLSFirst, replyAuthFirst, replyBadAddress, replyTooBig,
		replyLineTooLong,
	} {
		checkClass(t, r)
	}
}

func checkClass(t *testing.T, r *smtp.SMTPError) {
	t.Helper()
	if r.Code < 200 || r.Code > 599 {
		t.Errorf("%d %v: not a reply code", r.Code, r.EnhancedCode)
		return
	}
	if r.Code/100 == 2 || r.Code/100 == 4 || r.Code/100 == 5 {
		if r.EnhancedCode[0] != r.Code/100 {
			t.Errorf("%d %d.%d.%d %q: enhanced code class differs from the reply's", r.Code,
				r.EnhancedCode[0], r.EnhancedCode[1], r.EnhancedCode[2], r.Message)
		}
	}
	if strings.ContainsAny(r.Message, "\r\n") {
		t.Errorf("%d %q: a reply text must be one line", r.Code, r.Message)
	}
}

func TestClientGone(t *testing.T) {
	for _, tc := range []struct {
		err  error
		gone bool
	}{
		{io.ErrUnexpectedEOF, true},
		{fmt.Errorf("read: %w", net.ErrClosed), true},
		{&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, true},
		{smtp.ErrDataReset, true},
		{envelope.ErrBareLF, false},
		{smtp.ErrDataTooLarge, false},
		{os.ErrDeadlineExceeded, false},
	} {
		if got := clientGone(tc.err); got != tc.gone {
			t.Errorf("clientGone(%v) = %v, want %v", tc.err, got, tc.gone)
		}
	}
}

// TestClosesSession: a reply that says the connection closes must close
// it, and no other reply may.
func TestClosesSession(t *testing.T) {
	for _, tc := range []struct {
		reply  *smtp.SMTPError
		closes bool
	}{
		{replyShutdown, true},
		{replyTimeout, true},
		{replyLineTooLong, true},
		{replyTooMany, true},
		{replyBareLF, false},
		{replyTooBig, false},
		{replyQueueFull, false},
		{replyLoop, false},
		{&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "x"}, false},
	} {
		if got := closesSession(tc.reply); got != tc.closes {
			t.Errorf("closesSession(%d %v) = %v, want %v", tc.reply.Code, tc.reply.EnhancedCode, got, tc.closes)
		}
	}
	for _, r := range []*smtp.SMTPError{replyShutdown, replyTimeout, replyLineTooLong} {
		if r.Code != 421 && !strings.Contains(r.Message, "closing connection") {
			t.Errorf("%d %q closes the connection without saying so", r.Code, r.Message)
		}
	}
}
