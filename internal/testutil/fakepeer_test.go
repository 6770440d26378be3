package testutil

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func sendTo(t *testing.T, addr, rcpt string, msg []byte) error {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.CommandTimeout = 10 * time.Second
	if err := c.Hello("test"); err != nil {
		return err
	}
	if err := c.Mail("from@example.org", nil); err != nil {
		return err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func TestFakePeerGreetsAndRecordsExactBytes(t *testing.T) {
	t.Parallel()
	p := StartFakePeer(t, "node-b")
	cl, greet, err := Dial(p.Addr(), "")
	if err != nil {
		t.Fatal(err)
	}
	cl.Close()
	if greet.Code != 220 || !strings.HasPrefix(greet.Text, "node-b ESMTP") {
		t.Fatalf("greeting %v, want 220 node-b ESMTP …", greet)
	}
	msg := []byte("Subject: x\r\n\r\n.leading dot\r\nbody\r\n")
	if err := sendTo(t, p.Addr(), "r@example.org", msg); err != nil {
		t.Fatal(err)
	}
	got := p.Accepted()
	if len(got) != 1 || !bytes.Equal(got[0].Data, msg) || got[0].From != "from@example.org" || got[0].To[0] != "r@example.org" {
		t.Fatalf("accepted %+v", got)
	}
	if p.Sessions() != 1 || p.MailSessions() != 1 || p.Mails() != 1 {
		t.Fatalf("sessions %d, with mail %d, mails %d", p.Sessions(), p.MailSessions(), p.Mails())
	}
}

func TestFakePeerBehaviours(t *testing.T) {
	t.Parallel()
	msg := []byte("Subject: y\r\n\r\n" + strings.Repeat("0123456789", 100) + "\r\n")
	tests := []struct {
		name    string
		act     Action
		step    Step
		code    int // expected SMTP code; 0 for a network error
		outcome Outcome
	}{
		{"4xx at MAIL", Action{Reply: &smtp.SMTPError{Code: 451, Message: "later"}}, StepMail, 451, ""},
		{"5xx at RCPT", Action{Reply: &smtp.SMTPError{Code: 550, Message: "no"}}, StepRcpt, 550, ""},
		{"5xx at DATA", Action{Reply: &smtp.SMTPError{Code: 554, Message: "no"}}, StepData, 554, Rejected},
		{"slow DATA", Action{Delay: 50 * time.Millisecond}, StepData, 250, Accepted},
		{"hang up at RCPT", Action{Hangup: true}, StepRcpt, 0, ""},
		{"hang up mid-DATA", Action{Hangup: true, HangupAfter: 100}, StepData, 0, HungUp},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := StartFakePeer(t, "b")
			p.SetBehaviour(func(c Call) Action {
				if c.Step == tt.step {
					return tt.act
				}
				return Action{}
			})
			err := sendTo(t, p.Addr(), "r@example.org", msg)
			var se *smtp.SMTPError
			switch {
			case tt.code == 250 && err != nil:
				t.Fatalf("send: %v", err)
			case tt.code != 250 && tt.code != 0 && (!errors.As(err, &se) || se.Code != tt.code):
				t.Fatalf("send: %v, want %d", err, tt.code)
			case tt.code == 0 && (err == nil || errors.As(err, &se)):
				t.Fatalf("send: %v, want a network error", err)
			}
			rec := p.Received()
			if tt.outcome == "" {
				if len(rec) != 0 {
					t.Fatalf("recorded %+v", rec)
				}
				return
			}
			if len(rec) != 1 || rec[0].Outcome != tt.outcome {
				t.Fatalf("recorded %+v, want one %s", rec, tt.outcome)
			}
			if tt.outcome == HungUp && len(rec[0].Data) != tt.act.HangupAfter {
				t.Fatalf("read %d bytes before hanging up, want %d", len(rec[0].Data), tt.act.HangupAfter)
			}
		})
	}
}

func TestFakePeerHoldReleasedByDown(t *testing.T) {
	t.Parallel()
	p := StartFakePeer(t, "b")
	hold := make(chan struct{}) // never released: Down must end it
	p.SetBehaviour(func(c Call) Action { return Action{Hold: hold} })
	errc := make(chan error, 1)
	go func() { errc <- sendTo(t, p.Addr(), "r@example.org", []byte("Subject: z\r\n\r\nz\r\n")) }()
	WaitFor(t, 10*time.Second, "a held MAIL", func() bool { return p.Mails() == 1 })
	p.Down()
	if err := <-errc; err == nil {
		t.Fatal("a held transaction succeeded after Down")
	}
	if p.Open() != 0 {
		t.Fatalf("%d connections open after Down", p.Open())
	}
}

func TestFakePeerDownRefusesAndUpReturnsOnSamePort(t *testing.T) {
	t.Parallel()
	p := StartFakePeer(t, "b")
	addr := p.Addr()
	p.Down()
	if c, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		c.Close()
		t.Fatal("connected to a peer that is down")
	}
	p.SetNode("c")
	p.Up()
	if p.Addr() != addr {
		t.Fatalf("address changed: %s → %s", addr, p.Addr())
	}
	cl, greet, err := Dial(addr, "")
	if err != nil {
		t.Fatal(err)
	}
	cl.Close()
	if !strings.HasPrefix(greet.Text, "c ") {
		t.Fatalf("greeting after Up %v, want node c", greet)
	}
}
