package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"chainmail/internal/envelope"
	"chainmail/journal"
)

func corpusFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "journal", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func readPart(t testing.TB, s *Store, id, part string) ([]byte, PartInfo) {
	t.Helper()
	rc, info, err := s.OpenPart(context.Background(), id, part)
	if err != nil {
		t.Fatalf("OpenPart(%s, %q): %v", id[:12], part, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b, info
}

func ids(p Page) []string {
	var out []string
	for _, m := range p.Messages {
		out = append(out, m.ID)
	}
	return out
}

// TestJournalCorpus archives every report of journal/testdata and checks
// what an auditor relies on: the original's header is what search shows,
// every envelope recipient finds the message (Bcc, list members, the lists,
// forwarding), a restricted caller finds it only by what the header shows,
// and the original is served alone, exactly.
func TestJournalCorpus(t *testing.T) {
	cases := []struct {
		file        string
		subject     string   // the original's, shown in search results
		find        []string // to= filters that find it
		hidden      []string // ... but not for a restricted caller
		shown       []string // to= filters a restricted caller may use
		encoding    string
		tnef        bool
		decrypted   bool
		contentType string // of the original as served
	}{
		{file: "basic.eml", subject: "Quarterly numbers",
			find:   []string{"bob@contoso.example", "carol@fabrikam.example", "dave@contoso.example", "erin@contoso.example"},
			hidden: []string{"dave@contoso.example", "erin@contoso.example"},
			shown:  []string{"bob@contoso.example", "carol@fabrikam.example"}},
		{file: "all-fields.eml", subject: "Quarterly numbers", find: []string{"bob@contoso.example"}},
		{file: "expanded-forwarded.eml", subject: "Quarterly numbers",
			find: []string{"bob@contoso.example", "gina@contoso.example", "sales@contoso.example", "ivan@contoso.example",
				"audit@contoso.example", "henry.fwd@fabrikam.example", "henry@contoso.example", "judy@contoso.example", "judith@contoso.example"},
			hidden: []string{"bob@contoso.example", "gina@contoso.example", "ivan@contoso.example", "audit@contoso.example", "henry.fwd@fabrikam.example", "judy@contoso.example"},
			shown:  []string{"sales@contoso.example", "carol@fabrikam.example"}},
		{file: "exo-binary.eml", subject: "Résumé"},
		{file: "decrypted.eml", subject: "Protected", decrypted: true, find: []string{"bob@contoso.example"}},
		{file: "legacy-content-identifier.eml"},
		{file: "legacy-misspelled.eml"},
		{file: "liberal.eml"},
		{file: "lf-only.eml"},
		{file: "nested.eml"},
		{file: "nested-base64.eml", encoding: ""},
		{file: "original-base64.eml", encoding: "base64"},
		{file: "original-qp.eml", encoding: "quoted-printable"},
		{file: "tnef-attachment.eml", tnef: true, contentType: "application/ms-tnef"},
		{file: "tnef-original.eml", tnef: true},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			t.Parallel()
			s, db := openStore(t)
			raw := corpusFile(t, tc.file)
			rep, err := journal.Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			orig, err := rep.OriginalBytes(raw)
			if err != nil {
				t.Fatal(err)
			}
			it := item(string(raw), "postmaster@contoso.example", "journal@archive.example")
			put(t, s, db, it)
			id := it.Hash.String()
			m, err := s.Get(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			j := m.Journal
			if j == nil || j.Format != "exchange" || j.Original == nil {
				t.Fatalf("journal summary: %+v", j)
			}
			if j.Original.SHA256 != hexSum(orig) || j.Original.Size != int64(len(orig)) {
				t.Errorf("original identity %s/%d, want %s/%d", j.Original.SHA256, j.Original.Size, hexSum(orig), len(orig))
			}
			if j.TNEF != tc.tnef || (j.Decrypted != nil) != tc.decrypted || len(j.Recipients) != len(rep.Recipients) {
				t.Errorf("tnef %v decrypted %v recipients %d: %+v", j.TNEF, j.Decrypted != nil, len(j.Recipients), j)
			}
			if tc.encoding != "" && j.Original.Encoding != tc.encoding {
				t.Errorf("encoding %q, want %q", j.Original.Encoding, tc.encoding)
			}
			if j.Sender != rep.Sender || j.MessageID != rep.MessageID || j.ReportHeaders == nil {
				t.Errorf("envelope fields: %+v", j)
			}
			wantID := strings.Trim(rep.MessageID, "<>")
			if m.Headers.MessageID != wantID {
				t.Errorf("indexed Message-ID %q, want the original's %q", m.Headers.MessageID, wantID)
			}
			if tc.subject != "" && m.Headers.Subject != tc.subject {
				t.Errorf("indexed subject %q, want the original's %q", m.Headers.Subject, tc.subject)
			}
			// Search shows the original.
			p, err := s.Search(context.Background(), Query{MessageID: wantID})
			if err != nil || len(p.Messages) != 1 || p.Messages[0].ID != id {
				t.Fatalf("search by the original's Message-ID: %+v %v", p, err)
			}
			hit := p.Messages[0]
			if hit.Subject != m.Headers.Subject || hit.Original == nil || hit.Original.SHA256 != j.Original.SHA256 || hit.Reports != 1 {
				t.Errorf("hit: %+v", hit)
			}
			for _, to := range tc.find {
				if p, _ := s.Search(context.Background(), Query{To: to}); !slices.Equal(ids(p), []string{id}) {
					t.Errorf("to=%s finds %v", to, ids(p))
				}
			}
			for _, to := range tc.hidden {
				if p, _ := s.Search(context.Background(), Query{To: to, Restricted: true}); len(p.Messages) != 0 {
					t.Errorf("restricted to=%s finds %v", to, ids(p))
				}
			}
			for _, to := range tc.shown {
				if p, _ := s.Search(context.Background(), Query{To: to, Restricted: true}); !slices.Equal(ids(p), []string{id}) {
					t.Errorf("restricted to=%s finds %v", to, ids(p))
				}
			}
			// The original alone by default, the report on request.
			got, info := readPart(t, s, id, "")
			if !bytes.Equal(got, orig) || info.Part != PartOriginal || info.SHA256 != hexSum(orig) || info.Size != int64(len(orig)) {
				t.Errorf("original: part %+v, %d bytes (want %d)", info, len(got), len(orig))
			}
			wantCT := tc.contentType
			if wantCT == "" {
				wantCT = "message/rfc822"
			}
			if info.ContentType != wantCT {
				t.Errorf("content type %q, want %q", info.ContentType, wantCT)
			}
			if got, info := readPart(t, s, id, PartReport); !bytes.Equal(got, raw) || info.Part != PartReport || info.SHA256 != id {
				t.Errorf("report: %+v", info)
			}
			if tc.decrypted {
				dec, err := rep.Decrypted.Bytes(raw)
				if err != nil {
					t.Fatal(err)
				}
				if got, _ := readPart(t, s, id, PartDecrypted); !bytes.Equal(got, dec) {
					t.Errorf("decrypted copy differs")
				}
			} else if _, _, err := s.OpenPart(context.Background(), id, PartDecrypted); !errors.Is(err, ErrNoPart) {
				t.Errorf("decrypted part of a report without one: %v", err)
			}
		})
	}
}

// TestOrdinaryMessageParts: a message that is not a report is its own
// original; every part is its archived bytes.
func TestOrdinaryMessageParts(t *testing.T) {
	s, db := openStore(t)
	raw := corpusFile(t, "not-report.eml")
	it := item(string(raw), "a@example.com", "b@example.com")
	put(t, s, db, it)
	if it.Journal != nil {
		t.Fatalf("not a report, yet: %+v", it.Journal)
	}
	for _, part := range []string{"", PartOriginal, PartReport} {
		got, info := readPart(t, s, it.Hash.String(), part)
		if !bytes.Equal(got, raw) || info.Part != PartMessage || info.SHA256 != it.Hash.String() {
			t.Errorf("part %q: %+v", part, info)
		}
	}
}

// TestBrokenReportIsArchivedWithWarnings: a message marked as a report
// that cannot be read is archived as received, with the reason, and has no
// original to serve.
func TestBrokenReportIsArchivedWithWarnings(t *testing.T) {
	s, db := openStore(t)
	raw := "From: x@example.com\r\nX-MS-Journal-Report:\r\nContent-Type: multipart/mixed\r\nSubject: broken\r\n\r\nno boundary\r\n"
	it := item(raw, "x@example.com", "journal@archive.example")
	if res := put(t, s, db, it); !res.New {
		t.Fatal("not archived")
	}
	m, err := s.Get(context.Background(), it.Hash.String())
	if err != nil {
		t.Fatal(err)
	}
	if m.Journal == nil || len(m.Journal.Warnings) == 0 || m.Journal.Original != nil || m.Headers.Subject != "broken" {
		t.Fatalf("record: %+v %+v", m.Headers, m.Journal)
	}
	if _, _, err := s.OpenPart(context.Background(), m.ID, ""); !errors.Is(err, ErrNoPart) {
		t.Fatalf("original of a broken report: %v", err)
	}
	if got, _ := readPart(t, s, m.ID, PartReport); string(got) != raw {
		t.Fatal("report bytes differ")
	}
}

// secondReport rewrites basic.eml's envelope part and report header so the
// report differs while its original stays byte for byte the same: what
// split delivery or a second journal rule produces.
func secondReport(t testing.TB, extra string) []byte {
	raw := string(corpusFile(t, "basic.eml"))
	raw = strings.Replace(raw, "<jr-0001@ex01.contoso.example>", "<jr-0001b@ex02.contoso.example>", 1)
	raw = strings.Replace(raw, "Recipient: erin@contoso.example\r\n", extra, 1)
	return []byte(raw)
}

// TestGroupingReportsOfOneOriginal: several reports of one original are
// one hit with the merged recipients; each report stays a record of its
// own (in the digest, downloadable, listed on the group's record).
func TestGroupingReportsOfOneOriginal(t *testing.T) {
	s, db := openStore(t)
	ctx := context.Background()
	first := corpusFile(t, "basic.eml")
	second := secondReport(t, "Bcc: zed@contoso.example, Expanded: legal@contoso.example\r\n")
	third := secondReport(t, "To: yann@contoso.example\r\n")
	var items []*Item
	for _, raw := range [][]byte{first, second, third} {
		it := item(string(raw), "postmaster@contoso.example", "journal@archive.example")
		if res := put(t, s, db, it); !res.New {
			t.Fatal("a report was taken for a duplicate")
		}
		items = append(items, it)
	}
	head := items[0].Hash.String()
	if d, _ := s.Digest(ctx); d.Count != 3 {
		t.Fatalf("digest counts %d records, want every report", d.Count)
	}
	p, err := s.Search(ctx, Query{})
	if err != nil || !slices.Equal(ids(p), []string{head}) {
		t.Fatalf("search: %v %v", ids(p), err)
	}
	if p.Messages[0].Reports != 3 || len(p.Messages[0].Recipients) != 6 {
		t.Errorf("hit: %+v", p.Messages[0])
	}
	for _, to := range []string{"dave@contoso.example", "zed@contoso.example", "legal@contoso.example", "yann@contoso.example", "erin@contoso.example"} {
		if p, _ := s.Search(ctx, Query{To: to}); !slices.Equal(ids(p), []string{head}) {
			t.Errorf("to=%s finds %v, want the group's record", to, ids(p))
		}
	}
	if p, _ := s.Search(ctx, Query{To: "zed@contoso.example", Restricted: true}); len(p.Messages) != 0 {
		t.Errorf("a merged Bcc recipient is found by a restricted caller")
	}
	m, err := s.Get(ctx, head)
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, r := range m.Journal.Reports {
		listed = append(listed, r.ID)
	}
	want := []string{head, items[1].Hash.String(), items[2].Hash.String()}
	if !slices.Equal(listed, want) {
		t.Fatalf("reports listed %v, want %v", listed, want)
	}
	for _, it := range items[1:] {
		g, err := s.Get(ctx, it.Hash.String())
		if err != nil || g.Journal.GroupedInto != head {
			t.Fatalf("later report: %+v %v", g.Journal, err)
		}
		if got, _ := readPart(t, s, g.ID, PartReport); !bytes.Equal(got, it.Body.Bytes()) {
			t.Errorf("report %s not downloadable as received", g.ID[:12])
		}
	}
	// A report received again merges into its own record, and the group
	// is unchanged.
	again := item(string(second), "postmaster@contoso.example", "journal2@archive.example")
	if res := put(t, s, db, again); res.New || !res.NewRecipients {
		t.Fatalf("duplicate report: %+v", res)
	}
	if p, _ := s.Search(ctx, Query{}); !slices.Equal(ids(p), []string{head}) {
		t.Fatalf("after a duplicate: %v", ids(p))
	}
	if m2, _ := s.Get(ctx, head); len(m2.Journal.Reports) != 3 {
		t.Fatalf("duplicate listed as a new report: %+v", m2.Journal.Reports)
	}
}

// TestGroupingSurvivesRolledBackTransaction: PutTx may run again after its
// transaction rolled back; the item must not carry what the first run did.
func TestGroupingSurvivesRolledBackTransaction(t *testing.T) {
	s, db := openStore(t)
	ctx := context.Background()
	first := item(string(corpusFile(t, "basic.eml")), "p@contoso.example", "j@archive.example")
	put(t, s, db, first)
	second := item(string(secondReport(t, "")), "p@contoso.example", "j@archive.example")
	before := *second.Journal
	errRollback := errors.New("rollback")
	err := db.Update(ctx, func(tx *bolt.Tx) error {
		if _, err := s.PutTx(tx, second); err != nil {
			return err
		}
		return errRollback
	})
	if !errors.Is(err, errRollback) {
		t.Fatal(err)
	}
	if second.Journal.GroupedInto != before.GroupedInto || len(second.Journal.Reports) != len(before.Reports) {
		t.Fatalf("PutTx changed the item's journal summary: %+v", second.Journal)
	}
	put(t, s, db, second)
	m, _ := s.Get(ctx, first.Hash.String())
	if len(m.Journal.Reports) != 2 {
		t.Fatalf("reports after a rolled-back try: %+v", m.Journal.Reports)
	}
}

func envelopeOf(from string, rcpts ...string) envelope.Envelope {
	return envelope.Envelope{MailFrom: from, RcptTo: rcpts}
}

func TestRestrict(t *testing.T) {
	m := &Meta{
		ID:            "x",
		Headers:       Headers{From: []string{"alice@contoso.example"}, To: []string{"bob@contoso.example"}, Cc: []string{"carol@fabrikam.example"}},
		Envelope:      envelopeOf("alice@contoso.example", "bob@contoso.example", "dave@contoso.example", "archive@archive.example"),
		EncodedRcptTo: []string{"archive+dave=contoso.example@archive.example"},
		Journal: &JournalSummary{
			Recipients: []Recipient{
				{Address: "bob@contoso.example", Kind: "to"},
				{Address: "Carol@Fabrikam.example", Kind: "cc"},
				{Address: "dave@contoso.example", Kind: "bcc"},
				{Address: "gina@contoso.example", Kind: "to", ExpandedFrom: "sales@contoso.example"},
				{Address: "bob@contoso.example", Kind: "to", ExpandedFrom: "sales@contoso.example"},
				{Address: "henry@fabrikam.example", Kind: "cc", ForwardedFrom: "carol@fabrikam.example"},
				{Address: "erin@contoso.example", Kind: "recipient"},
			},
			Reports:  []ReportRef{{ID: "x", Recipients: 7}},
			Warnings: []string{"journal: envelope part: line 9: not a \"Name: value\" line: \"Bcc dave\""},
		},
	}
	r := Restrict(m)
	if !slices.Equal(r.Envelope.RcptTo, []string{"bob@contoso.example"}) || r.EncodedRcptTo != nil {
		t.Errorf("envelope: %+v %v", r.Envelope, r.EncodedRcptTo)
	}
	var got []string
	for _, rc := range r.Journal.Recipients {
		got = append(got, rc.Address)
	}
	if !slices.Equal(got, []string{"bob@contoso.example", "Carol@Fabrikam.example"}) {
		t.Errorf("recipients shown: %v", got)
	}
	if !r.Journal.Restricted || r.Journal.Warnings != nil || r.Journal.Reports[0].Recipients != 0 {
		t.Errorf("journal: %+v", r.Journal)
	}
	if len(m.Journal.Recipients) != 7 || len(m.Envelope.RcptTo) != 3 || m.Journal.Reports[0].Recipients != 7 || m.Journal.Restricted {
		t.Error("Restrict modified its argument")
	}
}

// TestLargeReportIsNotReadIntoMemory: Prepare parses a report spooled to
// disk through its ReaderAt; a 24 MB report costs a few buffers, not its
// size. The original, crossing many chunks at an odd offset, is served
// exactly from the store.
func TestLargeReportIsNotReadIntoMemory(t *testing.T) {
	s, db := openStore(t)
	var orig bytes.Buffer
	orig.WriteString("From: alice@contoso.example\r\nTo: bob@contoso.example\r\nSubject: big one\r\nMessage-ID: <big@contoso.example>\r\n\r\n")
	line := strings.Repeat("0123456789", 9) + "abcdefg\r\n" // 99 bytes: lines straddle chunk ends
	for orig.Len() < 24<<20 {
		orig.WriteString(line)
	}
	var rep bytes.Buffer
	rep.WriteString("From: postmaster@contoso.example\r\nTo: journal@archive.example\r\nSubject: big one\r\n" +
		"X-MS-Journal-Report:\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n" +
		"Sender: alice@contoso.example\r\nSubject: big one\r\nMessage-Id: <big@contoso.example>\r\nTo: bob@contoso.example\r\nBcc: dave@contoso.example\r\n\r\n" +
		"--b\r\nContent-Type: message/rfc822\r\n\r\n")
	rep.Write(orig.Bytes())
	rep.WriteString("\r\n--b--\r\n")
	res, err := envelope.Receive(bytes.NewReader(rep.Bytes()), envelope.SpoolOptions{Dir: t.TempDir(), Threshold: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.Body.Bytes() != nil {
		t.Fatal("the test wants a spooled body")
	}
	it := &Item{Hash: res.Hash, Body: res.Body, Envelope: envelopeOf("p@contoso.example", "journal@archive.example")}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	Prepare(it)
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
		t.Errorf("Prepare allocated %d MiB for a %d MiB report", alloc>>20, rep.Len()>>20)
	}
	if it.Journal == nil || it.Journal.Original == nil || it.Journal.Original.SHA256 != hexSum(orig.Bytes()) || it.Headers.Subject != "big one" {
		t.Fatalf("journal: %+v", it.Journal)
	}
	put(t, s, db, it)
	got, info := readPart(t, s, it.Hash.String(), "")
	if !bytes.Equal(got, orig.Bytes()) || info.Size != int64(orig.Len()) {
		t.Fatalf("original: %d bytes, want %d", len(got), orig.Len())
	}
}

func TestHeaderMentionsJournal(t *testing.T) {
	for head, want := range map[string]bool{
		"X-MS-Journal-Report:\r\n\r\n":                true,
		"x-ms-journal-report:\r\n\r\n":                true,
		"Content-Identifer: ExJOURNALReport\r\n\r\n":  true,
		"Subject: hi\r\n\r\nX-MS-Journal-Report:\r\n": false, // in the body
		"Subject: journa\r\n\r\n":                     false,
		"Subject: hi\nX-MS-Journal-Report:\n\nbody\n": true,
		"": false,
	} {
		if got := headerMentionsJournal([]byte(head)); got != want {
			t.Errorf("headerMentionsJournal(%q) = %v", head, got)
		}
	}
}

// TestHitListsAtMostSomeRecipients: a report naming thousands of
// recipients (an expanded list) makes a small search hit; the record keeps
// them all.
func TestHitListsAtMostSomeRecipients(t *testing.T) {
	s, db := openStore(t)
	var env strings.Builder
	for i := range 3000 {
		fmt.Fprintf(&env, "To: m%d@contoso.example, Expanded: all@contoso.example\r\n", i)
	}
	raw := strings.Replace(string(corpusFile(t, "basic.eml")), "Recipient: erin@contoso.example\r\n", env.String(), 1)
	it := item(raw, "p@contoso.example", "j@archive.example")
	put(t, s, db, it)
	p, err := s.Search(context.Background(), Query{To: "m2999@contoso.example"})
	if err != nil || len(p.Messages) != 1 {
		t.Fatalf("search: %v %v", p, err)
	}
	if h := p.Messages[0]; len(h.Recipients) != maxHitRecipients || h.RecipientCount != 3003 {
		t.Fatalf("hit lists %d of %d recipients", len(h.Recipients), h.RecipientCount)
	}
	if m, _ := s.Get(context.Background(), it.Hash.String()); len(m.Journal.Recipients) != 3003 {
		t.Fatalf("record keeps %d", len(m.Journal.Recipients))
	}
}
