package journal

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// corpusCase is what the parser must find in one file of testdata/.
type corpusCase struct {
	file string
	err  error // for files that are not reports

	sender, onBehalfOf, subject, messageID, label, mailbox string
	sent, received                                         time.Time
	rcpts                                                  []Recipient

	origMsgID string // Message-ID in the original's own header; "" to skip (TNEF)
	origTail  string // how the original's bytes end
	encoding  string // Original.Encoding
	within    bool   // Original lies inside an encoded part
	decrypted string // Message-ID of the decrypted copy, if one is attached
	tnef      bool
	outer     []string // MessageID of each outer envelope, outermost first
	warnings  []string // a substring of each expected warning, in order
}

func rc(kind Kind, addr string) Recipient { return Recipient{Address: addr, Kind: kind} }

func rcExp(kind Kind, addr, list string) Recipient {
	return Recipient{Address: addr, Kind: kind, ExpandedFrom: list}
}

func rcFwd(kind Kind, addr, from string) Recipient {
	return Recipient{Address: addr, Kind: kind, ForwardedFrom: from}
}

const aliceTail = "\r\n-- \r\nAlice"

var corpus = []corpusCase{
	{
		file: "basic.eml", sender: "alice@contoso.example", subject: "Quarterly numbers",
		messageID: "<orig-0001@contoso.example>",
		rcpts: []Recipient{rc(KindTo, "bob@contoso.example"), rc(KindCc, "carol@fabrikam.example"),
			rc(KindBcc, "dave@contoso.example"), rc(KindRecipient, "erin@contoso.example")},
		origMsgID: "<orig-0001@contoso.example>", origTail: aliceTail,
	},
	{
		// Message-Id before Subject, and every optional field.
		file: "all-fields.eml", sender: "alice@contoso.example", onBehalfOf: "frank@contoso.example",
		subject: "Board minutes", messageID: "<orig-0002@contoso.example>",
		label: "Legal Hold 7 Years", mailbox: "frank@contoso.example",
		sent:      time.Date(2025, 3, 3, 10, 14, 59, 0, time.UTC),
		received:  time.Date(2025, 3, 3, 10, 15, 1, 0, time.UTC),
		rcpts:     []Recipient{rc(KindTo, "bob@contoso.example")},
		origMsgID: "<orig-0002@contoso.example>", origTail: aliceTail,
	},
	{
		file: "expanded-forwarded.eml", sender: "alice@contoso.example", subject: "Price list",
		messageID: "<orig-0003@contoso.example>",
		rcpts: []Recipient{
			rcExp(KindTo, "bob@contoso.example", "sales@contoso.example"),
			rcExp(KindTo, "gina@contoso.example", "sales@contoso.example"),
			rcFwd(KindCc, "henry.fwd@fabrikam.example", "henry@contoso.example"),
			rcExp(KindBcc, "ivan@contoso.example", "audit@contoso.example"),
			rcFwd(KindRecipient, "judy@contoso.example", "judith@contoso.example"),
		},
		origMsgID: "<orig-0003@contoso.example>", origTail: aliceTail,
	},
	{
		// Exchange Online: "Content-Transfer-Encoding: binary" on the
		// message/rfc822 part, an 8-bit original and a UTF-8 envelope.
		file: "exo-binary.eml", sender: "renee@contoso.example", subject: "Résumé",
		messageID: "<orig-0004@DM6PR01MB0001.prod.contoso.example>",
		rcpts:     []Recipient{rc(KindTo, "bob@contoso.example")},
		origMsgID: "<orig-0004@DM6PR01MB0001.prod.contoso.example>",
		origTail:  "ünïcödé, sent as 8-bit.\r\nA line mentioning --_004_jr_exo_ mid-line is content.",
	},
	{
		file: "decrypted.eml", sender: "alice@contoso.example", subject: "Protected",
		messageID: "<orig-0005@contoso.example>", rcpts: []Recipient{rc(KindTo, "bob@contoso.example")},
		origMsgID: "<orig-0005@contoso.example>", origTail: "\r\n--_rpmsg_--",
		decrypted: "<orig-0005@contoso.example>",
	},
	{
		// The original is the TNEF attachment itself.
		file: "tnef-attachment.eml", sender: "kim@contoso.example", subject: "Old client",
		messageID: "<orig-0006@contoso.example>", rcpts: []Recipient{rc(KindTo, "bob@contoso.example")},
		origTail: "stand-inwinmail body stand-in", encoding: "base64", tnef: true,
	},
	{
		// A message/rfc822 original whose content is winmail.dat.
		file: "tnef-original.eml", sender: "kim@contoso.example", subject: "Rich text",
		messageID: "<orig-0007@contoso.example>", rcpts: []Recipient{rc(KindTo, "bob@contoso.example")},
		origMsgID: "<orig-0007@contoso.example>", origTail: "--_inner_--", tnef: true,
	},
	{
		// Three reports deep: the innermost envelope describes the original.
		file: "nested.eml", sender: "alice@contoso.example", subject: "Quarterly numbers",
		messageID: "<orig-0008@contoso.example>",
		rcpts:     []Recipient{rc(KindTo, "bob@contoso.example"), rc(KindBcc, "dave@contoso.example")},
		origMsgID: "<orig-0008@contoso.example>", origTail: aliceTail,
		outer: []string{"<jr-0008b@ex02.contoso.example>", "<jr-0008c@ex03.contoso.example>"},
	},
	{
		// The nested report is base64 inside the outer one: the original is a
		// slice of the decoded attachment, not of the outer report.
		file: "nested-base64.eml", sender: "alice@contoso.example", subject: "Quarterly numbers",
		messageID: "<orig-0009@contoso.example>",
		rcpts:     []Recipient{rc(KindTo, "bob@contoso.example"), rc(KindCc, "carol@fabrikam.example")},
		origMsgID: "<orig-0009@contoso.example>", origTail: aliceTail, within: true,
		outer: []string{"<jr-0009b@ex02.contoso.example>"},
	},
	{
		// Exchange 2003: Content-Identifier, no Subject line, a quoted-
		// printable ISO-8859-1 envelope with a soft line break, a preamble,
		// and a blank line closing the original.
		file: "legacy-content-identifier.eml", sender: "alice@contoso.example",
		messageID: "<orig-0010@contoso.example>",
		rcpts: []Recipient{rc(KindTo, "bob@contoso.example"), rc(KindTo, "cafe@contoso.example"),
			rc(KindCc, "carol@fabrikam.example")},
		origMsgID: "<orig-0010@contoso.example>", origTail: aliceTail + "\r\n",
	},
	{
		file: "legacy-misspelled.eml", sender: "alice@contoso.example", subject: "Quarterly numbers",
		messageID: "<orig-0011@contoso.example>", rcpts: []Recipient{rc(KindTo, "bob@contoso.example")},
		origMsgID: "<orig-0011@contoso.example>", origTail: aliceTail,
	},
	{
		file: "lf-only.eml", sender: "alice@contoso.example", subject: "Quarterly numbers",
		messageID: "<orig-0012@contoso.example>",
		rcpts:     []Recipient{rc(KindTo, "bob@contoso.example"), rc(KindBcc, "dave@contoso.example")},
		origMsgID: "<orig-0012@contoso.example>", origTail: "\n-- \nAlice",
	},
	{file: "not-report.eml", err: ErrNotReport},
	{
		file: "original-qp.eml", sender: "alice@contoso.example", subject: "Quarterly numbers",
		messageID: "<orig-0014@contoso.example>", rcpts: []Recipient{rc(KindTo, "bob@contoso.example")},
		origMsgID: "<orig-0014@contoso.example>", origTail: aliceTail, encoding: "quoted-printable",
	},
	{
		file: "original-base64.eml", sender: "alice@contoso.example", subject: "Quarterly numbers",
		messageID: "<orig-0015@contoso.example>", rcpts: []Recipient{rc(KindTo, "bob@contoso.example")},
		origMsgID: "<orig-0015@contoso.example>", origTail: aliceTail + "\r\n", encoding: "base64",
	},
	{
		// Lower-case marker, base64 envelope inside multipart/alternative,
		// folded lines, odd spacing and case, prefixed and bracketed
		// addresses, a redirection on its own line, a broken line, unknown
		// fields, several addresses on one line.
		file: "liberal.eml", sender: "alice@contoso.example",
		subject: "A subject that was folded across two lines", messageID: "<orig-0016@contoso.example>",
		rcpts: []Recipient{
			rc(KindTo, "bob@contoso.example"),
			rcExp(KindCc, "carol@fabrikam.example", "team@contoso.example"),
			rc(KindBcc, "dave@contoso.example"),
			rcFwd(KindRecipient, "erin@contoso.example", "erin.old@contoso.example"),
			rcExp(KindTo, "frank@contoso.example", "managers@contoso.example"),
			rc(KindRecipient, "gina@contoso.example"),
			rc(KindRecipient, "henry@contoso.example"),
		},
		origMsgID: "<orig-0016@contoso.example>", origTail: aliceTail,
		warnings: []string{
			"journal: envelope part: line 11: Expanded on a line of its own",
			`journal: envelope part: line 12: not a "Name: value" line: "this line has no colon"`,
		},
	},
}

func readCorpus(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCorpusComplete keeps the table and testdata/ in step.
func TestCorpusComplete(t *testing.T) {
	files, err := filepath.Glob("testdata/*.eml")
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, c := range corpus {
		have[c.file] = true
	}
	for _, f := range files {
		if !have[filepath.Base(f)] {
			t.Errorf("%s has no entry in the corpus table", f)
		}
	}
}

func TestParseCorpus(t *testing.T) {
	for _, c := range corpus {
		t.Run(strings.TrimSuffix(c.file, ".eml"), func(t *testing.T) {
			t.Parallel()
			msg := readCorpus(t, c.file)
			orig := bytes.Clone(msg)
			rep, err := Parse(msg)
			if !bytes.Equal(msg, orig) {
				t.Fatal("Parse modified its input")
			}
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("err = %v, want %v", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			checkInvariants(t, msg, rep)

			got := []struct {
				name      string
				got, want any
			}{
				{"Sender", rep.Sender, c.sender},
				{"OnBehalfOf", rep.OnBehalfOf, c.onBehalfOf},
				{"Subject", rep.Subject, c.subject},
				{"MessageID", rep.MessageID, c.messageID},
				{"Label", rep.Label, c.label},
				{"Mailbox", rep.Mailbox, c.mailbox},
				{"SentUTC", rep.SentUTC, c.sent},
				{"ReceivedUTC", rep.ReceivedUTC, c.received},
				{"TNEF", rep.TNEF, c.tnef},
				{"Depth", rep.Depth, len(c.outer)},
				{"Original.Encoding", rep.Original.Encoding, c.encoding},
				{"Original.Within set", rep.Original.Within != nil, c.within},
				{"Decrypted set", rep.Decrypted != nil, c.decrypted != ""},
			}
			for _, g := range got {
				if !reflect.DeepEqual(g.got, g.want) {
					t.Errorf("%s = %#v, want %#v", g.name, g.got, g.want)
				}
			}
			if !reflect.DeepEqual(rep.Recipients, c.rcpts) {
				t.Errorf("Recipients:\n got %+v\nwant %+v", rep.Recipients, c.rcpts)
			}
			var outer []string
			for _, e := range rep.Outer {
				outer = append(outer, e.MessageID)
			}
			if !reflect.DeepEqual(outer, c.outer) {
				t.Errorf("Outer message ids = %q, want %q", outer, c.outer)
			}
			checkWarnings(t, rep.Warnings, c.warnings)

			ob, err := rep.OriginalBytes(msg)
			if err != nil {
				t.Fatalf("OriginalBytes: %v", err)
			}
			if !bytes.HasSuffix(ob, []byte(c.origTail)) {
				t.Errorf("original ends %q, want suffix %q", tail(ob, 40), c.origTail)
			}
			if c.origMsgID != "" {
				if got := headerOf(t, ob).Get("Message-Id"); got != c.origMsgID {
					t.Errorf("original's Message-Id = %q, want %q", got, c.origMsgID)
				}
			}
			if c.encoding == "" && !c.within {
				// Served as a slice of the report, not a copy.
				if &ob[0] != &msg[rep.Original.Offset] {
					t.Error("a raw original is not a subslice of the report")
				}
			}
			if c.decrypted != "" {
				db, err := rep.Decrypted.Bytes(msg)
				if err != nil {
					t.Fatalf("Decrypted.Bytes: %v", err)
				}
				if got := headerOf(t, db).Get("Message-Id"); got != c.decrypted {
					t.Errorf("decrypted copy's Message-Id = %q, want %q", got, c.decrypted)
				}
				if bytes.Equal(db, ob) {
					t.Error("decrypted copy is the original")
				}
			}
		})
	}
}

func checkWarnings(t *testing.T, got []error, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d warnings, want %d: %v", len(got), len(want), got)
		return
	}
	for i, w := range want {
		if !strings.Contains(got[i].Error(), w) {
			t.Errorf("warning %d = %q, want it to contain %q", i, got[i], w)
		}
	}
}

func headerOf(t *testing.T, msg []byte) interface{ Get(string) string } {
	t.Helper()
	hdr, _, err := readHeaderBlock(bytes.NewReader(msg), DefaultMaxHeaderBytes)
	if err != nil {
		t.Fatalf("reading header: %v", err)
	}
	h := parseHeader(hdr)
	return &h
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// checkInvariants asserts what doc.go promises of every parsed report. The
// fuzz target runs it on every input that parses.
func checkInvariants(t testing.TB, msg []byte, rep *Report) {
	t.Helper()
	if rep.Depth != len(rep.Outer) {
		t.Errorf("Depth %d but %d outer envelopes", rep.Depth, len(rep.Outer))
	}
	if rep.Depth > DefaultMaxDepth {
		t.Errorf("Depth %d beyond the limit %d", rep.Depth, DefaultMaxDepth)
	}
	for _, p := range []*Part{rep.Original, rep.Decrypted} {
		if p == nil {
			continue
		}
		if p.Offset < 0 || p.Length < 0 {
			t.Fatalf("negative part position %+v", p)
		}
		chain := 0
		for q := p; q.Within != nil; q = q.Within {
			if chain++; chain > DefaultMaxDepth {
				t.Fatalf("Within chain longer than %d", DefaultMaxDepth)
			}
		}
		if p.Raw() {
			end := p.Offset + p.Length
			if end > int64(len(msg)) {
				t.Fatalf("raw part %d+%d beyond the %d-byte report", p.Offset, p.Length, len(msg))
			}
			// What follows a raw part is the line break and delimiter that
			// end it, or the end of the input.
			rest := msg[end:]
			if len(rest) > 0 && !bytes.HasPrefix(rest, []byte("\r\n--")) && !bytes.HasPrefix(rest, []byte("\n--")) &&
				!bytes.HasPrefix(rest, []byte("--")) {
				t.Errorf("raw part is followed by %q, not a delimiter", rest[:min(len(rest), 20)])
			}
		}
		b, berr := p.Bytes(msg)
		rd, oerr := p.Open(bytes.NewReader(msg))
		if oerr != nil {
			if berr == nil {
				t.Errorf("Open failed (%v) where Bytes did not", oerr)
			}
			continue
		}
		s, serr := io.ReadAll(rd)
		if (berr == nil) != (serr == nil) || berr == nil && !bytes.Equal(b, s) {
			t.Errorf("Bytes and Open disagree: %v / %v", berr, serr)
		}
	}
	for _, w := range rep.Warnings {
		if !strings.HasPrefix(w.Error(), "journal: ") {
			t.Errorf("warning without the package prefix: %q", w)
		}
	}
}
