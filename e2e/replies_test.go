package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chainmail/internal/testutil"
)

// Helpers shared by the e2e tests that assert exact SMTP replies.

// closeBound bounds the wait for a server to close a connection it said it
// would close. It is a deadline for a failure message, not a measurement.
const closeBound = 15 * time.Second

// dial connects (from local, if not empty), asserts the greeting and closes
// the connection at the end of the test.
func dial(t *testing.T, addr, local string) *testutil.Client {
	t.Helper()
	c, r, err := testutil.Dial(addr, local)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	if r.Code != 220 || !strings.HasSuffix(r.Text, "ESMTP Service Ready") {
		t.Fatalf("greeting %q, want 220 … ESMTP Service Ready", r)
	}
	return c
}

// expect fails unless the reply is exactly want ("552 5.3.4 Maximum
// message size exceeded"); a want ending in "…" is a prefix.
func expect(t *testing.T, r testutil.Reply, err error, want string) {
	t.Helper()
	if err != nil {
		t.Fatalf("want %q, got error %v (reply %q)", want, err, r)
	}
	got := r.String()
	if p, ok := strings.CutSuffix(want, "…"); ok {
		if !strings.HasPrefix(got, p) {
			t.Fatalf("reply %q, want %q…", got, p)
		}
		return
	}
	if got != want {
		t.Fatalf("reply %q, want %q", got, want)
	}
}

// cmd sends one command and expects its reply.
func cmd(t *testing.T, c *testutil.Client, want, format string, args ...any) {
	t.Helper()
	r, err := c.Cmd(format, args...)
	expect(t, r, err, want)
}

// ehlo greets and checks that the EHLO reply is a 250.
func ehlo(t *testing.T, c *testutil.Client) string {
	t.Helper()
	r, err := c.Cmd("EHLO client.example")
	if err != nil || r.Code != 250 {
		t.Fatalf("EHLO: %v %v", r, err)
	}
	return r.Text
}

// expectClosed fails unless the server closes the connection without
// another word.
func expectClosed(t *testing.T, c *testutil.Client) {
	t.Helper()
	if err := c.WaitClosed(closeBound); err != nil {
		t.Fatal(err)
	}
}

// archived is the 250 reply to a message that was new to the archive.
func archived(msg []byte) string { return "250 2.0.0 OK: archived as " + testutil.HashOf(msg) }

// spoolFiles lists the node's spool directory.
func spoolFiles(t *testing.T, n *testutil.Node) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(n.Dir, "data", "spool"))
	if err != nil {
		t.Fatalf("spool dir: %v", err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// expectSpoolEmpty waits (with a deadline) for the spool to be empty: a
// failed session removes its file as it ends, just after its reply.
func expectSpoolEmpty(t *testing.T, n *testutil.Node) {
	t.Helper()
	deadline := time.Now().Add(closeBound)
	for {
		left := spoolFiles(t, n)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("spool files left behind: %v", left)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// textMessage is a small CRLF message; bodyLines lines of filler make it
// as large as needed.
func textMessage(subject, id string, bodyLines int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: Sender <sender@example.com>\r\nTo: rcpt@example.org\r\nSubject: %s\r\nMessage-ID: <%s>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n", subject, id)
	for i := range bodyLines {
		fmt.Fprintf(&b, "%s line %05d: the quick brown fox jumps over the lazy dog\r\n", id, i)
	}
	b.WriteString("end\r\n")
	return []byte(b.String())
}

// logHas waits for a node log line that contains every one of parts.
func logHas(t *testing.T, n *testutil.Node, parts ...string) {
	t.Helper()
	testutil.WaitFor(t, closeBound, fmt.Sprintf("a log line with %q", parts), func() bool {
		for _, line := range strings.Split(n.Output(), "\n") {
			all := true
			for _, p := range parts {
				if !strings.Contains(line, p) {
					all = false
					break
				}
			}
			if all {
				return true
			}
		}
		return false
	})
}

// waitSessions waits for the node to count want open SMTP sessions.
func waitSessions(t *testing.T, n *testutil.Node, want int64) {
	t.Helper()
	var got int64
	testutil.WaitFor(t, closeBound, fmt.Sprintf("%d open sessions", want), func() bool {
		var node struct {
			Counters map[string]int64 `json:"counters"`
		}
		if s := n.Get("/api/v1/node", &node); s != 200 {
			t.Fatalf("GET /api/v1/node: HTTP %d", s)
		}
		got = node.Counters["smtp_sessions_active"]
		return got == want
	})
}
