package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"chainmail/archive"
	"chainmail/internal/envelope"
	"chainmail/internal/store"
	"chainmail/journal"
	"chainmail/web"
)

const cliReadOnlyToken = "cli-read-only-token-0123456789"

// startJournalAPI serves the real web handlers over a real archive that
// holds msgs, with an admin and a read-only token.
func startJournalAPI(t *testing.T, msgs ...[]byte) string {
	t.Helper()
	db, err := store.Open(filepath.Join(t.TempDir(), "chainmail.db"), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	a, err := archive.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		it := &archive.Item{Hash: sha256.Sum256(m), Body: envelope.BodyFromBytes(m),
			Envelope: envelope.Envelope{MailFrom: "p@contoso.example", RcptTo: []string{"journal@archive.example"}},
			Receipt:  envelope.Receipt{Node: "a", Received: time.Now()}}
		archive.Prepare(it)
		if err := db.Update(context.Background(), func(tx *bolt.Tx) error { _, err := a.PutTx(tx, it); return err }); err != nil {
			t.Fatal(err)
		}
	}
	s, err := web.New(web.Options{Archive: a, APITokens: []string{cliToken}, ReadOnlyTokens: []string{cliReadOnlyToken}, NodeID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestRawJournalParts: 'archive raw' of a journal report writes its
// original (verified against the node's SHA-256 of it) and says so;
// --part report writes the report for the admin and fails for read-only;
// export writes originals unless --part report.
func TestRawJournalParts(t *testing.T) {
	t.Parallel()
	report, err := os.ReadFile("../../journal/testdata/original-base64.eml")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := journal.Parse(report)
	if err != nil {
		t.Fatal(err)
	}
	orig, _ := rep.OriginalBytes(report)
	sum := sha256.Sum256(report)
	id := hex.EncodeToString(sum[:])
	api := startJournalAPI(t, report)
	admin := map[string]string{"CHAINMAIL_API": api, "CHAINMAIL_TOKEN": cliToken}
	viewer := map[string]string{"CHAINMAIL_API": api, "CHAINMAIL_TOKEN": cliReadOnlyToken}

	r := runCLI(t, viewer, "raw", id)
	if r.code != 0 || r.stdout != string(orig) || !strings.Contains(r.stderr, "journal report; this is its original") {
		t.Fatalf("raw: %d %q %s", r.code, r.stdout, r.stderr)
	}
	if r := runCLI(t, admin, "raw", id, "--part", "report"); r.code != 0 || r.stdout != string(report) {
		t.Fatalf("raw --part report: %d %s", r.code, r.stderr)
	}
	if r := runCLI(t, viewer, "raw", id, "--part", "report"); r.code != 1 || !strings.Contains(r.stderr, "403") {
		t.Fatalf("read-only raw --part report: %d %s", r.code, r.stderr)
	}
	if r := runCLI(t, admin, "raw", id, "--part", "all"); r.code != 2 {
		t.Fatalf("raw --part all: %d %s", r.code, r.stderr)
	}

	dir := t.TempDir()
	if r := runCLI(t, viewer, "export", "--format", "eml", "-o", dir); r.code != 0 {
		t.Fatalf("export: %d %s", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, id+".eml")); string(b) != string(orig) {
		t.Fatalf("export wrote %q, want the original", b)
	}
	// A second run finds the original complete and skips it.
	if r := runCLI(t, viewer, "export", "--format", "eml", "-o", dir); r.code != 0 || !strings.Contains(r.stderr, "1 already there") {
		t.Fatalf("export again: %d %s", r.code, r.stderr)
	}
	dir2 := t.TempDir()
	if r := runCLI(t, admin, "export", "--format", "eml", "--part", "report", "-o", dir2); r.code != 0 {
		t.Fatalf("export --part report: %d %s", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(dir2, id+".eml")); string(b) != string(report) {
		t.Fatal("export --part report did not write the report")
	}
}
