package e2e

import (
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"

	"chainmail/internal/testutil"
)

// TestBadInputLimits sends what a broken or hostile client sends, one case
// after the other on one node, and asserts the exact reply, that the
// session goes on (or is closed, where the reply says so), and that the
// archive holds exactly what got a 250 and the spool holds nothing.
func TestBadInputLimits(t *testing.T) {
	t.Parallel()
	cfg, addr := nodeConfig(t, "    max_message_size: 16KiB\n    max_recipients: 3\n")
	n := testutil.StartNode(t, cfg+"store: {spool_threshold: 4KiB}\n")

	big := textMessage("too big", "big@example.com", 600) // ~40 KiB
	if len(big) <= 16<<10 {
		t.Fatalf("test message of %d bytes is not over the limit", len(big))
	}
	okMsg := textMessage("after out-of-order commands", "order@example.com", 3)
	longLine := []byte("Subject: long line\r\n\r\n" + strings.Repeat("x", 3000) + "\r\n")

	cases := []struct {
		name string
		run  func(t *testing.T, c *testutil.Client)
		// stored is what the case had archived (nil: nothing).
		stored []byte
	}{
		{name: "SIZE over the limit in MAIL", run: func(t *testing.T, c *testutil.Client) {
			if caps := ehlo(t, c); !strings.Contains(caps, "\nSIZE 16384\n") {
				t.Fatalf("EHLO does not advertise SIZE 16384:\n%s", caps)
			}
			cmd(t, c, "552 5.3.4 Max message size exceeded", "MAIL FROM:<s@example.com> SIZE=%d", 16<<10+1)
			cmd(t, c, "250 2.0.0 Roger, accepting mail from <s@example.com>", "MAIL FROM:<s@example.com> SIZE=%d", 16<<10)
			cmd(t, c, "250 2.0.0 Session reset", "RSET")
		}},
		{name: "DATA over the limit without SIZE", run: func(t *testing.T, c *testutil.Client) {
			ehlo(t, c)
			cmd(t, c, "250 2.0.0 Roger, accepting mail from <s@example.com>", "MAIL FROM:<s@example.com>")
			cmd(t, c, "250 2.0.0 I'll make sure <r@example.org> gets this", "RCPT TO:<r@example.org>")
			cmd(t, c, "354 Go ahead. End your data with <CR><LF>.<CR><LF>", "DATA")
			if err := c.Raw(append(testutil.DotStuff(big), ".\r\n"...)); err != nil {
				t.Fatal(err)
			}
			r, err := c.Read()
			expect(t, r, err, "552 5.3.4 Maximum message size exceeded")
			cmd(t, c, "250 2.0.0 I have successfully done nothing", "NOOP")
		}},
		{name: "too many recipients", run: func(t *testing.T, c *testutil.Client) {
			ehlo(t, c)
			cmd(t, c, "250 2.0.0 Roger, accepting mail from <s@example.com>", "MAIL FROM:<s@example.com>")
			for i := 1; i <= 3; i++ {
				cmd(t, c, fmt.Sprintf("250 2.0.0 I'll make sure <r%d@example.org> gets this", i), "RCPT TO:<r%d@example.org>", i)
			}
			cmd(t, c, "452 4.5.3 Maximum limit of 3 recipients reached", "RCPT TO:<r4@example.org>")
			cmd(t, c, "250 2.0.0 Session reset", "RSET")
		}},
		{name: "commands out of order", stored: okMsg, run: func(t *testing.T, c *testutil.Client) {
			cmd(t, c, "502 5.5.1 Please introduce yourself first.", "MAIL FROM:<s@example.com>")
			ehlo(t, c)
			cmd(t, c, "502 5.5.1 Missing MAIL FROM command.", "RCPT TO:<r@example.org>")
			cmd(t, c, "502 5.5.1 Missing RCPT TO command.", "DATA")
			cmd(t, c, "250 2.0.0 Roger, accepting mail from <s@example.com>", "MAIL FROM:<s@example.com>")
			cmd(t, c, "502 5.5.1 Missing RCPT TO command.", "DATA")
			// The session goes on: the same connection delivers a message.
			cmd(t, c, "250 2.0.0 I'll make sure <r@example.org> gets this", "RCPT TO:<r@example.org>")
			cmd(t, c, "354 Go ahead. End your data with <CR><LF>.<CR><LF>", "DATA")
			c.Raw(append(testutil.DotStuff(okMsg), ".\r\n"...))
			r, err := c.Read()
			expect(t, r, err, archived(okMsg))
		}},
		{name: "bare LF in DATA", run: func(t *testing.T, c *testutil.Client) {
			ehlo(t, c)
			cmd(t, c, "250 2.0.0 Roger, accepting mail from <s@example.com>", "MAIL FROM:<s@example.com>")
			cmd(t, c, "250 2.0.0 I'll make sure <r@example.org> gets this", "RCPT TO:<r@example.org>")
			cmd(t, c, "354 Go ahead. End your data with <CR><LF>.<CR><LF>", "DATA")
			c.Raw([]byte("Subject: bare LF\r\n\r\nline one\nline two\r\n.\r\n"))
			r, err := c.Read()
			expect(t, r, err, "554 5.6.0 Message contains a bare LF; lines must end in CRLF (RFC 5321 section 2.3.8)")
			cmd(t, c, "250 2.0.0 I have successfully done nothing", "NOOP")
		}},
		{name: "command line too long", run: func(t *testing.T, c *testutil.Client) {
			ehlo(t, c)
			cmd(t, c, "500 5.4.0 Too long line, closing connection", "NOOP %s", strings.Repeat("x", 70000))
			expectClosed(t, c)
		}},
		{name: "long line in DATA is archived", stored: longLine, run: func(t *testing.T, c *testutil.Client) {
			// Past RFC 5322's 998 (and go-smtp's default 2000) but under
			// 64 KiB: real mail does this, and refusing it would lose it.
			ehlo(t, c)
			r, err := c.SendOn("s@example.com", []string{"r@example.org"}, longLine)
			expect(t, r, err, "250 2.0.0 OK: archived as "+testutil.HashOf(longLine))
		}},
	}
	var stored [][]byte
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, addr, "")
			tc.run(t, c)
			if tc.stored != nil {
				stored = append(stored, tc.stored)
			}
			if d, want := n.Digest(), testutil.DigestOf(stored); d != want {
				t.Fatalf("archive %+v, want %+v (exactly the messages that got 250)", d, want)
			}
			expectSpoolEmpty(t, n)
		})
	}
}

// TestBadInputClientGone: a client that stops mid-DATA and disconnects
// leaves nothing behind, and the session's log line says so.
func TestBadInputClientGone(t *testing.T) {
	t.Parallel()
	cfg, addr := nodeConfig(t, "")
	n := testutil.StartNode(t, cfg+"store: {spool_threshold: 4KiB}\n")
	c := dial(t, addr, "")
	ehlo(t, c)
	cmd(t, c, "250 2.0.0 Roger, accepting mail from <gone@example.com>", "MAIL FROM:<gone@example.com>")
	cmd(t, c, "250 2.0.0 I'll make sure <r@example.org> gets this", "RCPT TO:<r@example.org>")
	cmd(t, c, "354 Go ahead. End your data with <CR><LF>.<CR><LF>", "DATA")
	// Far past the 4 KiB spool threshold and go-smtp's 32 KiB reads.
	c.Raw(textMessage("cut short", "cut@example.com", 1500))
	// The node has spooled what it got so far...
	testutil.WaitFor(t, closeBound, "a spool file for the partial message", func() bool { return len(spoolFiles(t, n)) > 0 })
	c.Close()
	// ...and once the client is gone it says so and keeps nothing.
	logHas(t, n, `"message":"client went away during DATA; nothing stored"`, `"from":"gone@example.com"`)
	expectSpoolEmpty(t, n)
	if d := n.Digest(); d.Count != 0 {
		t.Fatalf("archive holds %d messages", d.Count)
	}
}

// TestBadInputEightBitHeaders archives what senders that ignore RFC 2047 or
// use it with legacy charsets send, byte for byte, and finds it again by
// its decoded subject.
func TestBadInputEightBitHeaders(t *testing.T) {
	t.Parallel()
	cfg, addr := nodeConfig(t, "")
	n := testutil.StartNode(t, cfg)
	cases := []struct {
		name, mailParams, subjectField, decoded string
	}{
		{"raw Latin-1 bytes", " BODY=8BITMIME", "Gr\xfc\xdfe aus K\xf6ln", "Grüße aus Köln"},
		{"RFC 2047 Q in ISO-8859-1", "", "=?ISO-8859-1?Q?R=E9sum=E9_=E0_jour?=", "Résumé à jour"},
		{"RFC 2047 Q in windows-1252", "", "=?windows-1252?Q?=93quoted=94_text?=", "“quoted” text"},
		{"RFC 2047 B in UTF-8", "", "=?UTF-8?B?0J/RgNC40LLQtdGCINC80LjRgA==?=", "Привет мир"},
		{"raw UTF-8 with SMTPUTF8", " SMTPUTF8 BODY=8BITMIME", "日本語のテスト", "日本語のテスト"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			msg := []byte(fmt.Sprintf("From: sender@example.com\r\nTo: rcpt@example.org\r\nSubject: %s\r\nMessage-ID: <8bit-%d@example.com>\r\n\r\nbody with 8-bit bytes: \xe9\xe8 and \xc3\xa9\r\n", tc.subjectField, i))
			c := dial(t, addr, "")
			ehlo(t, c)
			cmd(t, c, "250 2.0.0 Roger, accepting mail from <sender@example.com>", "MAIL FROM:<sender@example.com>%s", tc.mailParams)
			cmd(t, c, "250 2.0.0 I'll make sure <rcpt@example.org> gets this", "RCPT TO:<rcpt@example.org>")
			cmd(t, c, "354 Go ahead. End your data with <CR><LF>.<CR><LF>", "DATA")
			c.Raw(append(testutil.DotStuff(msg), ".\r\n"...))
			r, err := c.Read()
			expect(t, r, err, archived(msg))
			if got := n.Raw(testutil.HashOf(msg)); string(got) != string(msg) {
				t.Fatalf("raw bytes differ:\n%q\nwant\n%q", got, msg)
			}
			hits := n.Search(url.Values{"subject": {tc.decoded}})
			if len(hits) != 1 || hits[0].ID != testutil.HashOf(msg) || hits[0].Subject != tc.decoded {
				t.Fatalf("search by decoded subject %q: %+v", tc.decoded, hits)
			}
		})
	}
}

// TestBadInputTimeouts: an idle client and a stalled DATA get 421 4.4.2
// and the connection is closed; nothing is stored.
func TestBadInputTimeouts(t *testing.T) {
	t.Parallel()
	cfg, addr := nodeConfig(t, "    read_timeout: 2s\n    data_timeout: 1s\n")
	n := testutil.StartNode(t, cfg+"store: {spool_threshold: 4KiB}\n")

	// Each case waits for a timeout: they run side by side.
	t.Run("cases", func(t *testing.T) {
		t.Run("idle before EHLO", func(t *testing.T) {
			t.Parallel()
			c := dial(t, addr, "")
			r, err := c.Read()
			expect(t, r, err, "421 4.4.2 Idle timeout, bye bye")
			expectClosed(t, c)
		})
		t.Run("idle in a transaction", func(t *testing.T) {
			t.Parallel()
			c := dial(t, addr, "")
			ehlo(t, c)
			cmd(t, c, "250 2.0.0 Roger, accepting mail from <s@example.com>", "MAIL FROM:<s@example.com>")
			r, err := c.Read()
			expect(t, r, err, "421 4.4.2 Idle timeout, bye bye")
			expectClosed(t, c)
		})
		for _, tc := range []struct {
			name string
			part []byte
		}{
			{"stalled DATA in memory", []byte("Subject: stalled\r\n\r\nhalf a li")},
			{"stalled DATA in the spool", textMessage("stalled big", "stalled@example.com", 1000)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				c := dial(t, addr, "")
				ehlo(t, c)
				cmd(t, c, "250 2.0.0 Roger, accepting mail from <s@example.com>", "MAIL FROM:<s@example.com>")
				cmd(t, c, "250 2.0.0 I'll make sure <r@example.org> gets this", "RCPT TO:<r@example.org>")
				cmd(t, c, "354 Go ahead. End your data with <CR><LF>.<CR><LF>", "DATA")
				c.Raw(tc.part)
				r, err := c.Read()
				expect(t, r, err, "421 4.4.2 Timeout reading message data")
				// 421 says the server closes the channel (RFC 5321 §3.8): what
				// the client sends next must not be read as commands.
				expectClosed(t, c)
				expectSpoolEmpty(t, n)
			})
		}
	})
	if d := n.Digest(); d.Count != 0 {
		t.Fatalf("archive holds %d messages after timeouts", d.Count)
	}
}

// TestBadInputSessionCaps floods the listener past max_sessions and
// max_sessions_per_ip: the surplus gets 421 4.7.0 instead of a greeting,
// and a place frees when a session ends.
func TestBadInputSessionCaps(t *testing.T) {
	t.Parallel()
	cfg, addr := nodeConfig(t, "    max_sessions: 4\n    max_sessions_per_ip: 2\n")
	n := testutil.StartNode(t, cfg)
	const refused = "421 4.7.0 Too many sessions, try again later"

	// flood dials from every address at once and returns the admitted
	// clients; everyone else must get exactly the refusal and be closed.
	flood := func(t *testing.T, locals []string) []*testutil.Client {
		t.Helper()
		var (
			mu       sync.Mutex
			admitted []*testutil.Client
			wg       sync.WaitGroup
			problems []string
		)
		for _, local := range locals {
			wg.Go(func() {
				c, r, err := testutil.Dial(addr, local)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					problems = append(problems, fmt.Sprintf("%s: %v", local, err))
				case r.Code == 220:
					admitted = append(admitted, c)
				case r.String() != refused:
					problems = append(problems, fmt.Sprintf("%s: reply %q, want %q", local, r, refused))
					c.Close()
				default:
					if err := c.WaitClosed(closeBound); err != nil {
						problems = append(problems, fmt.Sprintf("%s: after the refusal: %v", local, err))
					}
					c.Close()
				}
			})
		}
		wg.Wait()
		t.Cleanup(func() {
			for _, c := range admitted {
				c.Close()
			}
		})
		if len(problems) > 0 {
			t.Fatalf("%d of %d connections:\n%s", len(problems), len(locals), strings.Join(problems, "\n"))
		}
		return admitted
	}
	quit := func(t *testing.T, cs []*testutil.Client) {
		for _, c := range cs {
			cmd(t, c, "221 2.0.0 Bye", "QUIT")
			expectClosed(t, c)
		}
	}
	// admitWhenFree retries (with a deadline) until a session from local
	// is admitted: the place of a closed session frees as it ends.
	admitWhenFree := func(t *testing.T, local string) {
		t.Helper()
		testutil.WaitFor(t, closeBound, "a session from "+local+" to be admitted", func() bool {
			c, r, err := testutil.Dial(addr, local)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if r.Code == 220 {
				cmd(t, c, "221 2.0.0 Bye", "QUIT")
				return true
			}
			if r.String() != refused {
				t.Fatalf("reply %q", r)
			}
			return false
		})
	}

	t.Run("per IP", func(t *testing.T) {
		locals := make([]string, 20)
		for i := range locals {
			locals[i] = "127.0.0.1"
		}
		in := flood(t, locals)
		if len(in) != 2 {
			t.Fatalf("%d sessions from one address admitted, want max_sessions_per_ip = 2", len(in))
		}
		// Another address still gets in: the cap is per address.
		other := dial(t, addr, "127.0.0.2")
		cmd(t, other, "221 2.0.0 Bye", "QUIT")
		quit(t, in[:1])
		admitWhenFree(t, "127.0.0.1")
		quit(t, in[1:])
	})
	t.Run("per listener", func(t *testing.T) {
		// A session's place frees just after its connection closes.
		waitSessions(t, n, 0)
		var locals []string
		for i := range 20 {
			locals = append(locals, fmt.Sprintf("127.0.1.%d", i+1))
		}
		in := flood(t, locals)
		if len(in) != 4 {
			t.Fatalf("%d sessions admitted, want max_sessions = 4", len(in))
		}
		quit(t, in[:1])
		admitWhenFree(t, "127.0.2.1")
		quit(t, in[1:])
	})
}

// TestBadInputDeniedAddress: a client outside allow gets 554 5.7.1 at
// connect, before any greeting, and is closed.
func TestBadInputDeniedAddress(t *testing.T) {
	t.Parallel()
	cfg, addr := nodeConfig(t, "    allow: [127.0.0.1/32]\n")
	n := testutil.StartNode(t, cfg)
	c, r, err := testutil.Dial(addr, "127.0.0.2")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expect(t, r, err, "554 5.7.1 Access denied: your address may not use this listener")
	expectClosed(t, c)
	logHas(t, n, `"message":"connection refused: address not allowed"`, `"client":"127.0.0.2:`, `"code":554`)

	ok := dial(t, addr, "127.0.0.1")
	cmd(t, ok, "221 2.0.0 Bye", "QUIT")
}

// TestDataLineOver64KiB: a line past the 64 KiB bound gets one permanent
// reply and the connection is closed; nothing is stored.
func TestDataLineOver64KiB(t *testing.T) {
	t.Parallel()
	cfg, addr := nodeConfig(t, "    max_message_size: 1MiB\n")
	n := testutil.StartNode(t, cfg)
	c := dial(t, addr, "")
	ehlo(t, c)
	cmd(t, c, "250 2.0.0 Roger, accepting mail from <s@example.com>", "MAIL FROM:<s@example.com>")
	cmd(t, c, "250 2.0.0 I'll make sure <r@example.org> gets this", "RCPT TO:<r@example.org>")
	cmd(t, c, "354 Go ahead. End your data with <CR><LF>.<CR><LF>", "DATA")
	c.Raw([]byte("Subject: long line\r\n\r\n" + strings.Repeat("x", 70000) + "\r\n.\r\n"))
	r, err := c.Read()
	// A permanent reply: the message can never pass (a 4xx would have the
	// sender retry it for days), and one reply only.
	expect(t, r, err, "554 5.6.0 Message has a line longer than 65536 bytes; closing connection")
	expectClosed(t, c)
	if d := n.Digest(); d.Count != 0 {
		t.Fatalf("stored %+v", d)
	}
	expectSpoolEmpty(t, n)
}
