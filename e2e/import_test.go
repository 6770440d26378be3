package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"chainmail/internal/testutil"
)

// runImport runs the chainmail binary's import command.
func runImport(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testutil.Binary(t), append([]string{"import"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// TestImportMboxTwice imports an mbox of 10000 messages through a node's
// journal listener, then imports it again: the first run archives every
// message, the second changes no count. (TestImportJournalNDRs shows an
// import replicating through a chain.)
func TestImportMboxTwice(t *testing.T) {
	t.Parallel()
	a := newJournalNode(t, "a")
	na := testutil.StartNode(t, a.config(nil))

	const n = 10000
	var msgs [][]byte
	path := filepath.Join(t.TempDir(), "big.mbox")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for i := range n {
		// mboxrd as other tools write it: LF line ends, quoted From lines.
		body := fmt.Sprintf("From: sender%d@example.com\nTo: rcpt%d@example.org\nSubject: import %d\nMessage-ID: <imp-%d@example.com>\nDate: Sun, 22 Nov 2026 10:00:00 +0000\n\nline one\n>From the body\nFrom nowhere, not after a blank line\n.leading dot\n", i, i%50, i, i)
		fmt.Fprintf(w, "From sender%d@example.com Sun Nov 22 10:00:00 2026\n%s\n", i, body)
		msgs = append(msgs, []byte(strings.ReplaceAll(strings.Replace(body, ">From the body", "From the body", 1), "\n", "\r\n")))
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	want := testutil.DigestOf(msgs)

	start := time.Now()
	out, err := runImport(t, "--smtp", a.journal, "--concurrency", "16", path)
	if err != nil || !strings.Contains(out, fmt.Sprintf("imported     %d\n", n)) || !strings.Contains(out, "failed       0\n") {
		t.Fatalf("first import: %v\n%s", err, out)
	}
	t.Logf("first import of %d messages: %s", n, time.Since(start).Round(time.Millisecond))
	if d := na.Digest(); d != want {
		t.Fatalf("digest after import %+v, want %+v (the bytes archived are the messages' CRLF lines)", d, want)
	}

	start = time.Now()
	out, err = runImport(t, "--smtp", a.journal, "--concurrency", "16", path)
	if err != nil || !strings.Contains(out, "imported     0\n") || !strings.Contains(out, fmt.Sprintf("duplicates   %d ", n)) {
		t.Fatalf("second import: %v\n%s", err, out)
	}
	t.Logf("second import: %s", time.Since(start).Round(time.Millisecond))
	if d := na.Digest(); d != want {
		t.Fatalf("after the second import: %+v, want %+v", d, want)
	}
	if hits := na.Search(url.Values{"message_id": {"imp-4321@example.com"}}); len(hits) != 1 || hits[0].Subject != "import 4321" || hits[0].From != "sender4321@example.com" {
		t.Fatalf("an imported message: %+v", hits)
	}
}

// TestImportJournalNDRs: an NDR from Exchange's alternate journaling
// mailbox is imported as the journal report it returned, to the recipients
// it bounced for, and replicates to the chain's other node like live
// traffic; there it is found by the report's Bcc recipient.
func TestImportJournalNDRs(t *testing.T) {
	t.Parallel()
	j, peer := newJournalNode(t, "a"), newJournalNode(t, "b")
	testutil.StartNode(t, j.config(peer))
	n := testutil.StartNode(t, peer.config(j))
	dir := t.TempDir()
	for _, f := range []string{"report.eml", "report-base64.eml"} {
		b := corpusFile(t, filepath.Join("ndr", f))
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := runImport(t, "--smtp", j.journal, dir)
	// Both NDRs return the same report: one is imported, one a duplicate.
	if err != nil || !strings.Contains(out, "imported     1\n") || !strings.Contains(out, "duplicates   1 ") || !strings.Contains(out, "unwrapped    2 ") {
		t.Fatalf("import: %v\n%s", err, out)
	}
	report := corpusFile(t, "basic.eml")
	testutil.WaitFor(t, 20*time.Second, "the report on the other node", func() bool {
		return n.Digest() == testutil.DigestOf([][]byte{report})
	})
	hits := n.Search(url.Values{"to": {"dave@contoso.example"}})
	if len(hits) != 1 || hits[0].ID != testutil.HashOf(report) {
		t.Fatalf("by the report's Bcc recipient: %+v", hits)
	}
	// The recipients of the NDR imported second are merged on the first
	// node and reach this one with the merge.
	var m struct {
		Envelope struct {
			RcptTo []string `json:"rcpt_to"`
		}
	}
	testutil.WaitFor(t, 20*time.Second, "the envelope recipients the NDRs failed for", func() bool {
		n.Get("/api/v1/archive/messages/"+hits[0].ID, &m)
		slices.Sort(m.Envelope.RcptTo)
		return strings.Join(m.Envelope.RcptTo, ",") == "journal2@archive.example,journal@archive.example"
	})
}
