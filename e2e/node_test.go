package e2e

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"chainmail/internal/testutil"
)

// nodeConfig is a one-node configuration on fresh loopback ports.
func nodeConfig(t *testing.T, extra string) (cfg, smtpAddr string) {
	smtpAddr = testutil.FreeAddr(t, "127.0.0.1")
	web := testutil.FreeAddr(t, "127.0.0.1")
	cfg = fmt.Sprintf(`node: n1
data_dir: {{dir}}/data
listeners:
  - name: journal
    address: %s
%sroutes:
  - {name: journal, from: [journal], actions: [archive]}
web: {address: %s, api_tokens: [%s]}
log: {level: debug, format: json}
`, smtpAddr, extra, web, testutil.Token)
	return cfg, smtpAddr
}

func need(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Skipf("%s is not installed (make test installs it)", tool)
	}
	return p
}

// TestEndToEndSwaksAndSmtplib sends with two real clients and checks through
// the API what an administrator would: counts, digest, search, raw bytes.
func TestEndToEndSwaksAndSmtplib(t *testing.T) {
	swaks := need(t, "swaks")
	python := need(t, "python3")
	cfg, addr := nodeConfig(t, "")
	n := testutil.StartNode(t, cfg)
	host, port, _ := strings.Cut(addr, ":")

	var sent [][]byte
	for i := range 3 {
		msg := []byte(fmt.Sprintf("From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: swaks %d =?UTF-8?Q?caf=C3=A9?=\r\nMessage-ID: <swaks-%d@example.com>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nline one\r\n.leading dot\r\nend\r\n", i, i))
		file := filepath.Join(t.TempDir(), "msg.eml")
		// swaks ends DATA with CRLF.CRLF itself: the file holds the
		// message without its last CRLF, so what is archived is msg.
		os.WriteFile(file, bytes.TrimSuffix(msg, []byte("\r\n")), 0o600)
		out, err := exec.Command(swaks, "--server", host, "--port", port, "--from", "journal@example.com",
			"--to", "bob@example.org,bcc-hidden@example.net", "--data", "@"+file).CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("250 2.0.0 OK: archived as "+testutil.HashOf(msg))) {
			t.Fatalf("swaks: %v\n%s", err, out)
		}
		sent = append(sent, msg)
	}
	pyMsg := []byte("From: carol@example.com\r\nTo: dave@example.org\r\nSubject: smtplib\r\nMessage-ID: <py-1@example.com>\r\n\r\nhello from python\r\n")
	script := fmt.Sprintf(`
import smtplib, sys
msg = %q.encode()
s = smtplib.SMTP(%q, %s, timeout=10)
s.ehlo("py.example")
code, text = s.docmd("MAIL", "FROM:<carol@example.com>")
assert code == 250, (code, text)
code, text = s.docmd("RCPT", "TO:<dave@example.org>")
assert code == 250, (code, text)
code, text = s.data(msg)
print(code, text.decode())
s.quit()
`, string(pyMsg), host, port)
	out, err := exec.Command(python, "-c", script).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "250 ") {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	sent = append(sent, pyMsg)

	if d, want := n.Digest(), testutil.DigestOf(sent); d != want {
		t.Fatalf("digest %+v, want %+v", d, want)
	}
	for _, m := range sent {
		if got := n.Raw(testutil.HashOf(m)); !bytes.Equal(got, m) {
			t.Fatalf("raw bytes differ:\n%q\nwant\n%q", got, m)
		}
	}
	hits := n.Search(url.Values{"to": {"bcc-hidden@example.net"}})
	if len(hits) != 3 {
		t.Fatalf("search by envelope Bcc: %d hits", len(hits))
	}
	if hits := n.Search(url.Values{"subject": {"café"}}); len(hits) != 3 || !strings.Contains(hits[0].Subject, "swaks 2 café") {
		t.Fatalf("search by decoded subject: %+v", hits)
	}
	if hits := n.Search(url.Values{"message_id": {"py-1@example.com"}}); len(hits) != 1 || hits[0].From != "carol@example.com" {
		t.Fatalf("search by message id: %+v", hits)
	}
	// Sending the same message again stores nothing new.
	if r, err := testutil.Send(addr, "x@example.com", []string{"y@example.com"}, pyMsg); err != nil || r.Code != 250 || !strings.Contains(r.Text, "already archived") {
		t.Fatalf("resend: %v %v", r, err)
	}
	if d := n.Digest(); d.Count != 4 {
		t.Fatalf("count after resend = %d", d.Count)
	}
	if err := n.Stop(); err != nil {
		t.Fatalf("clean stop: %v", err)
	}
	testutil.CheckBolt(t, filepath.Join(n.Dir, "data", "chainmail.db"))
}

// TestArchiveVerifyCLI: `chainmail archive verify` reads the archive back
// through a running node and finds it intact.
func TestArchiveVerifyCLI(t *testing.T) {
	t.Parallel()
	cfg, addr := nodeConfig(t, "")
	n := testutil.StartNode(t, cfg)
	for i := range 5 {
		m := []byte(fmt.Sprintf("Subject: verify %d\r\n\r\n%s\r\n", i, strings.Repeat("line\r\n", i*1000)))
		if r, err := testutil.Send(addr, "a@example.com", []string{"b@example.org"}, m); err != nil || r.Code != 250 {
			t.Fatalf("send: %v %v", r, err)
		}
	}
	out, err := exec.Command(testutil.Binary(t), "archive", "verify", "--api", n.API, "--token", testutil.Token).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "messages  5") || !strings.Contains(string(out), "damaged   0") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
}
