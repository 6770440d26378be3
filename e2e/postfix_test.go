package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"chainmail/internal/testutil"
)

// The two Postfix recipes of docs/postfix.md, run with a real Postfix from
// the distribution against a chainmail node. Each Postfix is a throwaway
// instance: its own configuration, queue and log under the test's
// directory, listening on loopback, delivering nowhere but to chainmail
// (and, for the second recipe, to Maildirs under the test's directory).

// postfix is a throwaway Postfix (testutil.StartPostfix) whose smtpd takes
// the test's submissions.
type postfix struct {
	*testutil.Postfix
	smtpd string // where to submit
}

// startPostfix starts an instance whose main.cf gets extra ({{dir}},
// {{uid}}, {{gid}} as testutil.PostfixConfig says), with no local delivery
// and a mail/ directory for Maildirs.
func startPostfix(t *testing.T, extra string) *postfix {
	t.Helper()
	p := &postfix{smtpd: testutil.FreeAddr(t, "127.0.0.1")}
	p.Postfix = testutil.StartPostfix(t, testutil.PostfixConfig{
		Services: p.smtpd + " inet n - n - - smtpd\n",
		Main:     "local_transport = error:no local delivery here\n" + extra,
		Dirs:     []string{"mail"},
		Wait:     p.smtpd,
	})
	return p
}

func (p *postfix) log() string { return p.Log() }

// submit hands Postfix a message for bob (To) and dave (Bcc: an envelope
// recipient the header does not name).
func (p *postfix) submit(t *testing.T, msg []byte) {
	t.Helper()
	r, err := testutil.Send(p.smtpd, "alice@contoso.example", []string{"bob@contoso.example", "dave@contoso.example"}, msg)
	if err != nil || r.Code != 250 {
		t.Fatalf("submit to Postfix: %v %v\n%s", r, err, p.log())
	}
}

// postfixMessage names no Bcc recipient: dave is only in the envelope.
func postfixMessage(id string) []byte {
	return []byte("From: Alice <alice@contoso.example>\r\nTo: Bob <bob@contoso.example>\r\nSubject: " + id + "\r\n" +
		"Message-ID: <" + id + "@contoso.example>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nThe numbers are in.\r\n")
}

type archivedMeta struct {
	ID       string
	Envelope struct {
		RcptTo []string `json:"rcpt_to"`
	}
	EncodedRcptTo []string `json:"encoded_rcpt_to"`
}

// waitArchived waits for the message with that Message-ID and returns its
// record and archived bytes.
func waitArchived(t *testing.T, n *testutil.Node, p *postfix, msgID string) (archivedMeta, []byte) {
	t.Helper()
	var hits []testutil.Hit
	deadline := time.Now().Add(30 * time.Second)
	for {
		hits = n.Search(url.Values{"message_id": {msgID}})
		if len(hits) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never reached chainmail; Postfix log:\n%s", msgID, p.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	var m archivedMeta
	if s := n.Get("/api/v1/archive/messages/"+hits[0].ID, &m); s != 200 {
		t.Fatalf("metadata: %d", s)
	}
	return m, n.Raw(hits[0].ID)
}

// checkNoBccInHeader: what Postfix relayed keeps Bcc recipients out of the
// header; an SMTP delivery adds no X-Original-To or Delivered-To.
func checkNoBccInHeader(t *testing.T, raw []byte) {
	t.Helper()
	head, _, _ := bytes.Cut(raw, []byte("\r\n\r\n"))
	for _, bad := range []string{"dave@", "\r\nBcc:", "\r\nX-Original-To:", "\r\nDelivered-To:"} {
		if bytes.Contains(append([]byte("\r\n"), head...), []byte(bad)) {
			t.Errorf("the archived header contains %q:\n%s", bad, head)
		}
	}
}

func postfixNode(t *testing.T) (*testutil.Node, string) {
	j := newJournalNode(t, "a")
	return testutil.StartNode(t, j.config(nil)), j.journal
}

// TestPostfixAlwaysBcc is the first recipe: always_bcc adds the archive
// address to every message, and everything goes to chainmail, so the
// message arrives with all its envelope recipients — Bcc ones included —
// in RCPT TO, and is found by its Bcc recipient.
func TestPostfixAlwaysBcc(t *testing.T) {
	t.Parallel()
	n, listener := postfixNode(t)
	host, port, _ := net.SplitHostPort(listener)
	p := startPostfix(t, fmt.Sprintf(`always_bcc = archive@archive.example
relayhost = [%[1]s]:%[2]s
default_transport = smtp:[%[1]s]:%[2]s
relay_transport = smtp:[%[1]s]:%[2]s
`, host, port))
	p.submit(t, postfixMessage("recipe-1"))
	m, raw := waitArchived(t, n, p, "recipe-1@contoso.example")
	for _, want := range []string{"bob@contoso.example", "dave@contoso.example", "archive@archive.example"} {
		if !slices.Contains(m.Envelope.RcptTo, want) {
			t.Errorf("envelope %v lacks %s", m.Envelope.RcptTo, want)
		}
	}
	if hits := n.Search(url.Values{"to": {"dave@contoso.example"}}); len(hits) != 1 || hits[0].ID != m.ID {
		t.Errorf("by the Bcc recipient: %+v", hits)
	}
	if len(m.EncodedRcptTo) != 0 {
		t.Errorf("nothing was sub-addressed, yet: %v", m.EncodedRcptTo)
	}
	checkNoBccInHeader(t, raw)
}

// TestPostfixRecipientBccSubaddress is the second recipe:
// recipient_bcc_maps sends, for each recipient, a copy to
// archive+<local>=<domain>@archive.example; only archive.example goes to
// chainmail, whose listener decodes the sub-addresses into the envelope.
// The recipients' own copies go to Maildirs by Postfix's virtual(8), which
// records each in X-Original-To; importing a Maildir gives chainmail that
// recipient as the envelope.
func TestPostfixRecipientBccSubaddress(t *testing.T) {
	t.Parallel()
	n, listener := postfixNode(t)
	host, port, _ := net.SplitHostPort(listener)
	p := startPostfix(t, fmt.Sprintf(`recipient_bcc_maps = regexp:{{dir}}/recipient_bcc
recipient_delimiter = +
transport_maps = inline:{ archive.example=smtp:[%[1]s]:%[2]s }
default_transport = discard:not journaled in this test
relay_transport = discard:not journaled in this test
virtual_mailbox_domains = contoso.example
virtual_mailbox_base = {{dir}}/mail
virtual_mailbox_maps = inline:{ bob@contoso.example=bob/, dave@contoso.example=dave/ }
virtual_uid_maps = static:{{uid}}
virtual_gid_maps = static:{{gid}}
`, host, port))
	// One archive copy per recipient, the recipient encoded in the
	// extension; the last "=" stands for the "@".
	if err := os.WriteFile(filepath.Join(p.Dir, "recipient_bcc"), []byte("/^(.+)@([^@]+)$/ archive+${1}=${2}@archive.example\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.submit(t, postfixMessage("recipe-2"))
	m, raw := waitArchived(t, n, p, "recipe-2@contoso.example")
	// Postfix may send the two copies in one transaction or two; either
	// way the archive holds one record with both decoded recipients.
	testutil.WaitFor(t, 20*time.Second, "both archive copies", func() bool {
		n.Get("/api/v1/archive/messages/"+m.ID, &m)
		return len(m.EncodedRcptTo) == 2
	})
	slices.Sort(m.Envelope.RcptTo)
	slices.Sort(m.EncodedRcptTo)
	if !slices.Equal(m.Envelope.RcptTo, []string{"bob@contoso.example", "dave@contoso.example"}) ||
		!slices.Equal(m.EncodedRcptTo, []string{"archive+bob=contoso.example@archive.example", "archive+dave=contoso.example@archive.example"}) {
		t.Errorf("envelope %v, encoded %v", m.Envelope.RcptTo, m.EncodedRcptTo)
	}
	if hits := n.Search(url.Values{"to": {"dave@contoso.example"}}); len(hits) != 1 || hits[0].ID != m.ID {
		t.Errorf("by the Bcc recipient: %+v", hits)
	}
	checkNoBccInHeader(t, raw)

	// dave's own copy, as Postfix's virtual(8) delivered it, names him in
	// X-Original-To: imported, that is its envelope recipient.
	maildir := filepath.Join(p.Dir, "mail", "dave")
	testutil.WaitFor(t, 20*time.Second, "the Maildir delivery", func() bool {
		files, _ := maildirFiles(maildir)
		return len(files) == 1
	})
	files, _ := maildirFiles(maildir)
	copyBytes, _ := os.ReadFile(files[0])
	if !bytes.Contains(copyBytes, []byte("X-Original-To: dave@contoso.example\n")) {
		t.Fatalf("Postfix's Maildir copy has no X-Original-To:\n%s", copyBytes)
	}
	out, err := runImport(t, "--smtp", listener, maildir)
	if err != nil || !strings.Contains(out, "imported     1\n") {
		t.Fatalf("import of dave's Maildir: %v\n%s", err, out)
	}
	hits := n.Search(url.Values{"to": {"dave@contoso.example"}})
	if len(hits) != 2 {
		t.Fatalf("after the import: %+v", hits)
	}
	var imported archivedMeta
	for _, h := range hits {
		if h.ID != m.ID {
			n.Get("/api/v1/archive/messages/"+h.ID, &imported)
		}
	}
	if !slices.Equal(imported.Envelope.RcptTo, []string{"dave@contoso.example"}) {
		t.Errorf("the Maildir copy's envelope %v, want its X-Original-To", imported.Envelope.RcptTo)
	}
	// The mailbox copy is not the archive copy: its bytes gained
	// Delivered-To, X-Original-To and Return-Path, so it is its own record.
	var d struct{ Count int }
	b, _ := json.Marshal(n.Digest())
	json.Unmarshal(b, &d)
	if d.Count != 2 {
		t.Errorf("%d messages archived, want the journal copy and the imported mailbox copy", d.Count)
	}
}

// maildirFiles lists the messages in a Maildir's new/ and cur/.
func maildirFiles(dir string) ([]string, error) {
	var out []string
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			continue
		}
		for _, e := range entries {
			out = append(out, filepath.Join(dir, sub, e.Name()))
		}
	}
	return out, nil
}
