package web

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"chainmail/archive"
	"chainmail/internal/envelope"
	"chainmail/internal/store"
	"chainmail/internal/testutil"
	"chainmail/journal"
)

// journalArchive is a real archive holding the given messages, for the
// Bcc-privacy tests: what is hidden is decided by the archive's own data.
func journalArchive(t *testing.T, msgs ...[]byte) *archive.Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), "chainmail.db")
	db, err := store.Open(path, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db.Close()
		testutil.CheckBolt(t, path)
	})
	a, err := archive.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		it := &archive.Item{
			Hash:     sha256.Sum256(m),
			Body:     envelope.BodyFromBytes(m),
			Envelope: envelope.Envelope{MailFrom: "postmaster@contoso.example", RcptTo: []string{"journal@archive.example"}},
			Receipt:  envelope.Receipt{Node: "a", Listener: "journal", Received: time.Now()},
		}
		archive.Prepare(it)
		if err := db.Update(context.Background(), func(tx *bolt.Tx) error {
			_, err := a.PutTx(tx, it)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

func corpus(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "journal", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sumHex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestRawPartsByRole: a journal report downloads as its original by
// default, for every role; the report itself (with its Bcc recipients and
// list expansions) only for the admin role; the answer says which.
func TestRawPartsByRole(t *testing.T) {
	t.Parallel()
	report := corpus(t, "expanded-forwarded.eml")
	plain := corpus(t, "not-report.eml")
	rep, err := journal.Parse(report)
	if err != nil {
		t.Fatal(err)
	}
	orig, _ := rep.OriginalBytes(report)
	s := newTestServer(t, journalArchive(t, report, plain), nil)
	repID, plainID := sumHex(report), sumHex(plain)
	raw := func(id string) string { return "/api/v1/archive/messages/" + id + "/raw" }

	cases := []struct {
		name, path, token string
		status            int
		part              string // X-Chainmail-Part
		body              []byte
		etag              string
		param             string // of an error
	}{
		{"original by default, read-only", raw(repID), readOnlyToken, 200, "original", orig, sumHex(orig), ""},
		{"original by default, admin", raw(repID), adminToken, 200, "original", orig, sumHex(orig), ""},
		{"original asked for", raw(repID) + "?part=original", readOnlyToken, 200, "original", orig, sumHex(orig), ""},
		{"report for the admin", raw(repID) + "?part=report", adminToken, 200, "report", report, repID, ""},
		{"report refused to read-only", raw(repID) + "?part=report", readOnlyToken, 403, "", nil, "", "part"},
		{"decrypted copy refused to read-only", raw(repID) + "?part=decrypted", readOnlyToken, 403, "", nil, "", "part"},
		{"no decrypted copy", raw(repID) + "?part=decrypted", adminToken, 404, "", nil, "", "part"},
		{"unknown part", raw(repID) + "?part=everything", adminToken, 400, "", nil, "", "part"},
		{"ordinary message", raw(plainID), readOnlyToken, 200, "message", plain, plainID, ""},
		{"ordinary message, part=report", raw(plainID) + "?part=report", adminToken, 200, "message", plain, plainID, ""},
		{"ordinary message, part=report, read-only", raw(plainID) + "?part=report", readOnlyToken, 403, "", nil, "", "part"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := do(t, s, request{path: tc.path, token: tc.token})
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.status, w.Body)
			}
			if tc.status != 200 {
				if e := errorOf(t, w); e.Param != tc.param {
					t.Errorf("error names %q, want %q: %s", e.Param, tc.param, e.Error)
				}
				return
			}
			if got := w.Header().Get("X-Chainmail-Part"); got != tc.part {
				t.Errorf("X-Chainmail-Part %q, want %q", got, tc.part)
			}
			if w.Body.String() != string(tc.body) {
				t.Errorf("body: %d bytes, want %d", w.Body.Len(), len(tc.body))
			}
			if got := w.Header().Get("ETag"); got != `"`+tc.etag+`"` || sumHex(w.Body.Bytes()) != tc.etag {
				t.Errorf("ETag %s is not the SHA-256 of the body", got)
			}
			if got := w.Header().Get("Content-Length"); got != strconv.Itoa(len(tc.body)) {
				t.Errorf("Content-Length %s", got)
			}
		})
	}
}

// TestMetadataAndSearchHideBcc: for a read-only caller a journal report's
// metadata and search hits show the recipients the original's header
// shows, and searching by a Bcc recipient or list member finds nothing;
// the admin sees and finds everything.
func TestMetadataAndSearchHideBcc(t *testing.T) {
	t.Parallel()
	report := corpus(t, "expanded-forwarded.eml")
	s := newTestServer(t, journalArchive(t, report), nil)
	id := sumHex(report)
	private := []string{"ivan@contoso.example", "audit@contoso.example", "gina@contoso.example", "judy@contoso.example", "henry.fwd@fabrikam.example"}

	w := do(t, s, request{path: "/api/v1/archive/messages/" + id, token: readOnlyToken})
	if w.Code != 200 {
		t.Fatalf("meta: %d %s", w.Code, w.Body)
	}
	for _, a := range private {
		if strings.Contains(w.Body.String(), a) {
			t.Errorf("read-only metadata shows %s:\n%s", a, w.Body)
		}
	}
	var m archive.Meta
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	if m.Journal == nil || !m.Journal.Restricted || m.Headers.Subject != "Quarterly numbers" {
		t.Errorf("read-only metadata: %+v %+v", m.Headers, m.Journal)
	}
	w = do(t, s, request{path: "/api/v1/archive/messages/" + id, token: adminToken})
	for _, a := range private {
		if !strings.Contains(w.Body.String(), a) {
			t.Errorf("admin metadata lacks %s", a)
		}
	}

	for _, a := range private {
		w := do(t, s, request{path: "/api/v1/archive/messages?to=" + a, token: readOnlyToken})
		var p archive.Page
		json.Unmarshal(w.Body.Bytes(), &p)
		if w.Code != 200 || len(p.Messages) != 0 {
			t.Errorf("read-only to=%s: %d %s", a, w.Code, w.Body)
		}
		w = do(t, s, request{path: "/api/v1/archive/messages?to=" + a, token: adminToken})
		json.Unmarshal(w.Body.Bytes(), &p)
		if w.Code != 200 || len(p.Messages) != 1 || p.Messages[0].ID != id {
			t.Errorf("admin to=%s: %d %s", a, w.Code, w.Body)
		}
	}
	w = do(t, s, request{path: "/api/v1/archive/messages?to=sales@contoso.example", token: readOnlyToken})
	for _, a := range private {
		if strings.Contains(w.Body.String(), a) {
			t.Errorf("read-only hit shows %s: %s", a, w.Body)
		}
	}
	if !strings.Contains(w.Body.String(), `"subject":"Quarterly numbers"`) {
		t.Errorf("the hit does not show the original: %s", w.Body)
	}
}

// TestGroupedReportsThroughTheAPI: two reports of one original are one
// hit, and both are listed on its metadata and downloadable by the admin.
func TestGroupedReportsThroughTheAPI(t *testing.T) {
	t.Parallel()
	first := corpus(t, "basic.eml")
	second := []byte(strings.Replace(strings.Replace(string(first), "<jr-0001@", "<jr-0002@", 1),
		"Recipient: erin@contoso.example\r\n", "Bcc: zoe@contoso.example\r\n", 1))
	s := newTestServer(t, journalArchive(t, first, second), nil)
	w := do(t, s, request{path: "/api/v1/archive/messages?to=zoe@contoso.example", token: adminToken})
	var p archive.Page
	json.Unmarshal(w.Body.Bytes(), &p)
	if len(p.Messages) != 1 || p.Messages[0].ID != sumHex(first) || p.Messages[0].Reports != 2 {
		t.Fatalf("search: %s", w.Body)
	}
	w = do(t, s, request{path: "/api/v1/archive/messages/" + sumHex(first), token: adminToken})
	var m archive.Meta
	json.Unmarshal(w.Body.Bytes(), &m)
	if len(m.Journal.Reports) != 2 || m.Journal.Reports[1].ID != sumHex(second) {
		t.Fatalf("reports listed: %+v", m.Journal.Reports)
	}
	for _, r := range m.Journal.Reports {
		w := do(t, s, request{path: "/api/v1/archive/messages/" + r.ID + "/raw?part=report", token: adminToken})
		if w.Code != 200 || sumHex(w.Body.Bytes()) != r.ID {
			t.Errorf("report %s: %d", r.ID[:12], w.Code)
		}
	}
	if w := do(t, s, request{path: "/api/v1/archive/messages?to=zoe@contoso.example", token: readOnlyToken}); strings.Contains(w.Body.String(), sumHex(first)) {
		t.Errorf("a read-only caller finds the message by a Bcc recipient of the second report")
	}
}

// TestReportWithoutOriginal: when no original could be located, the
// default download says so instead of handing out the report.
func TestReportWithoutOriginal(t *testing.T) {
	t.Parallel()
	broken := []byte("From: x@contoso.example\r\nX-MS-Journal-Report:\r\nContent-Type: multipart/mixed\r\nSubject: broken\r\n\r\nBcc: dave@contoso.example\r\n")
	s := newTestServer(t, journalArchive(t, broken), nil)
	w := do(t, s, request{path: "/api/v1/archive/messages/" + sumHex(broken) + "/raw", token: adminToken})
	if w.Code != http.StatusNotFound || errorOf(t, w).Param != "part" {
		t.Fatalf("default part: %d %s", w.Code, w.Body)
	}
	w = do(t, s, request{path: "/api/v1/archive/messages/" + sumHex(broken) + "/raw?part=report", token: adminToken})
	if w.Code != 200 || w.Body.String() != string(broken) {
		t.Fatalf("report: %d", w.Code)
	}
}
