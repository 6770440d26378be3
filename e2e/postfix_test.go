package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"chainmail/internal/testutil"
)

// The two Postfix recipes of docs/postfix.md, run with a real Postfix from
// the distribution against a chainmail node. Each Postfix is a throwaway
// instance: its own configuration, queue and log under the test's
// directory, listening on loopback, delivering nowhere but to chainmail
// (and, for the second recipe, to Maildirs under the test's directory).

const postfixCmd = "/usr/sbin/postfix"

// postfixMasterCf lists only the services the recipes use, none chrooted.
const postfixMasterCf = `%s inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
smtp      unix  - - n - - smtp
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
`

// postfixMainCf is what both recipes share: loopback only, no DNS, no
// local delivery, relaying for the loopback clients only.
const postfixMainCf = `compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
mail_owner = postfix
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = postfix.test
mydomain = postfix.test
myorigin = $myhostname
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
local_transport = error:no local delivery here
alias_maps =
alias_database =
smtp_dns_support_level = disabled
smtp_host_lookup = native
biff = no
maillog_file = %[1]s/maillog
maillog_file_prefixes = %[1]s
`

type postfix struct {
	dir   string
	smtpd string // where to submit
}

// startPostfix runs 'postfix -c DIR start' on a fresh instance whose main.cf
// is postfixMainCf plus extra ({{dir}} is the instance's directory), and
// 'postfix -c DIR stop' at the end of the test.
func startPostfix(t *testing.T, extra string) *postfix {
	t.Helper()
	if _, err := os.Stat(postfixCmd); err != nil {
		t.Skipf("Postfix is not installed (scripts/deps.sh installs it): %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("a Postfix instance needs root to start its master")
	}
	pf, err := user.Lookup("postfix")
	if err != nil {
		t.Skipf("no postfix user: %v", err)
	}
	uid, _ := strconv.Atoi(pf.Uid)
	gid, _ := strconv.Atoi(pf.Gid)
	dir := t.TempDir()
	// The Postfix daemons run as the postfix user and must reach the
	// queue: the test's directories are 0700 until opened up.
	for d := dir; d != filepath.Dir(d) && strings.HasPrefix(d, os.TempDir()+"/"); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	for _, d := range []string{"queue", "data", "mail"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chown(filepath.Join(dir, "data"), uid, gid)
	os.Chown(filepath.Join(dir, "mail"), uid, gid)
	p := &postfix{dir: dir, smtpd: testutil.FreeAddr(t, "127.0.0.1")}
	extra = strings.ReplaceAll(extra, "{{dir}}", dir)
	extra = strings.ReplaceAll(extra, "{{uid}}", pf.Uid)
	extra = strings.ReplaceAll(extra, "{{gid}}", pf.Gid)
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("main.cf", fmt.Sprintf(postfixMainCf, dir)+extra)
	write("master.cf", fmt.Sprintf(postfixMasterCf, p.smtpd))
	if out, err := exec.Command(postfixCmd, "-c", dir, "start").CombinedOutput(); err != nil {
		t.Fatalf("postfix start: %v\n%s\n%s", err, out, p.log())
	}
	master := 0
	if b, err := os.ReadFile(filepath.Join(dir, "queue", "pid", "master.pid")); err == nil {
		master, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command(postfixCmd, "-c", dir, "stop").CombinedOutput(); err != nil {
			t.Errorf("postfix stop: %v\n%s", err, out)
		}
		// 'stop' signals the master; wait for it (and so its children)
		// to be gone before the directory is removed.
		deadline := time.Now().Add(20 * time.Second)
		for master > 0 && syscall.Kill(master, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if t.Failed() {
			t.Logf("Postfix log:\n%s", p.log())
		}
	})
	testutil.WaitFor(t, 20*time.Second, "Postfix's smtpd on "+p.smtpd, func() bool {
		c, err := net.DialTimeout("tcp", p.smtpd, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return p
}

func (p *postfix) log() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "maillog"))
	return string(b)
}

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
	if err := os.WriteFile(filepath.Join(p.dir, "recipient_bcc"), []byte("/^(.+)@([^@]+)$/ archive+${1}=${2}@archive.example\n"), 0o644); err != nil {
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
	maildir := filepath.Join(p.dir, "mail", "dave")
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
