package journal

import (
	"bytes"
	"errors"
	"fmt"
	"net/mail"
	"net/textproto"
	"runtime"
	"strings"
	"testing"

	gmtextproto "github.com/emersion/go-message/textproto"
)

// buildReport makes a CRLF journal report around attached, for the cases
// that are easier to state as code than as a file.
func buildReport(boundary, envelope, attached string) string {
	return strings.ReplaceAll("From: postmaster@contoso.example\n"+
		"To: journal@archive.example\n"+
		"Subject: journal report\n"+
		"X-MS-Journal-Report:\n"+
		"Content-Type: multipart/mixed; boundary=\""+boundary+"\"\n"+
		"\n"+
		"--"+boundary+"\n"+
		"Content-Type: text/plain\n"+
		"\n"+
		envelope+
		"--"+boundary+"\n"+
		"Content-Type: message/rfc822\n"+
		"\n"+
		attached+"\n"+
		"--"+boundary+"--\n", "\n", "\r\n")
}

const plainOriginal = "From: a@contoso.example\nTo: b@contoso.example\nMessage-ID: <deep@contoso.example>\n\nbody"

// nestReports wraps plainOriginal in n reports.
func nestReports(n int) string {
	msg := plainOriginal
	for i := n; i >= 1; i-- {
		env := fmt.Sprintf("Sender: level%d@contoso.example\nMessage-Id: <level%d@contoso.example>\nTo: j%d@contoso.example\n", i, i, i)
		msg = strings.ReplaceAll(buildReport(fmt.Sprintf("b%d", i), env, msg), "\r\n", "\n")
	}
	return strings.ReplaceAll(msg, "\n", "\r\n")
}

func TestNestingDepth(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		reports   int
		depth     int
		sender    string
		origIsRep bool
	}{
		{reports: 1, depth: 0, sender: "level1@contoso.example"},
		{reports: 5, depth: 4, sender: "level5@contoso.example"},
		// Past the limit the parser stops, and says so: the exposed
		// original is then itself a report.
		{reports: 6, depth: 4, sender: "level5@contoso.example", origIsRep: true},
	} {
		t.Run(fmt.Sprint(tc.reports), func(t *testing.T) {
			msg := []byte(nestReports(tc.reports))
			rep, err := Parse(msg)
			if err != nil {
				t.Fatal(err)
			}
			checkInvariants(t, msg, rep)
			if rep.Depth != tc.depth || rep.Sender != tc.sender {
				t.Errorf("Depth %d Sender %q, want %d %q", rep.Depth, rep.Sender, tc.depth, tc.sender)
			}
			ob, _ := rep.OriginalBytes(msg)
			if got := LooksLikeReport(ob); got != tc.origIsRep {
				t.Errorf("original is a report: %v, want %v", got, tc.origIsRep)
			}
			if tc.origIsRep && (len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0].Error(), "nested deeper than 4")) {
				t.Errorf("warnings = %v, want one about the depth", rep.Warnings)
			}
		})
	}
}

func TestParseTolerates(t *testing.T) {
	t.Parallel()
	env := "Sender: a@contoso.example\nMessage-Id: <x@contoso.example>\nTo: b@contoso.example\n"
	good := buildReport("bb", env, plainOriginal)
	for _, tc := range []struct {
		name     string
		msg      string
		origTail string
		warning  string
	}{
		{
			name:     "no closing delimiter",
			msg:      strings.TrimSuffix(good, "\r\n--bb--\r\n"),
			origTail: "\r\n\r\nbody",
			warning:  "no closing delimiter",
		},
		{
			name:     "transport padding after delimiters",
			msg:      strings.ReplaceAll(good, "--bb\r\n", "--bb  \t\r\n"),
			origTail: "\r\n\r\nbody",
		},
		{
			name:     "a line that only starts like the boundary",
			msg:      strings.Replace(good, "\r\n\r\nbody", "\r\n\r\n--bbx is not a delimiter\r\nbody", 1),
			origTail: "--bbx is not a delimiter\r\nbody",
		},
		{
			name:     "part header without a body",
			msg:      strings.Replace(good, "--bb--", "--bb\r\nContent-Type: text/html\r\n--bb--", 1),
			origTail: "\r\n\r\nbody",
		},
		{
			name:     "empty original",
			msg:      buildReport("bb", env, ""),
			origTail: "",
		},
		{
			name:     "broken Content-Type parameters keep the boundary",
			msg:      strings.Replace(good, `boundary="bb"`, `boundary="bb"; charset=; charset=x`, 1),
			origTail: "\r\n\r\nbody",
		},
		{
			name:     "attached message named .eml",
			msg:      strings.Replace(good, "Content-Type: message/rfc822", "Content-Type: application/octet-stream; name=\"m.eml\"", 1),
			origTail: "\r\n\r\nbody",
			warning:  `not message/rfc822`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := []byte(tc.msg)
			rep, err := Parse(msg)
			if err != nil {
				t.Fatal(err)
			}
			checkInvariants(t, msg, rep)
			ob, err := rep.OriginalBytes(msg)
			if err != nil || !bytes.HasSuffix(ob, []byte(tc.origTail)) || tc.origTail == "" && len(ob) != 0 {
				t.Errorf("original = %q, %v; want suffix %q", tail(ob, 30), err, tc.origTail)
			}
			var want []string
			if tc.warning != "" {
				want = []string{tc.warning}
			}
			checkWarnings(t, rep.Warnings, want)
		})
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	env := "Sender: a@contoso.example\nTo: b@contoso.example\n"
	good := buildReport("bb", env, plainOriginal)
	for _, tc := range []struct {
		name    string
		msg     string
		parser  Parser
		want    string
		tooMuch bool
	}{
		{name: "empty input", msg: "", want: "journal: not a journal report"},
		{name: "no boundary", msg: strings.Replace(good, `; boundary="bb"`, "", 1),
			want: "journal: report header: multipart/mixed without a boundary parameter"},
		{name: "no envelope part", msg: strings.Replace(good, "Content-Type: text/plain", "Content-Type: text/html", 1),
			want: "journal: no envelope part"},
		{name: "envelope says nothing", msg: buildReport("bb", "Hello: world\n", plainOriginal),
			want: "journal: envelope part: no Sender, Message-Id or recipient field"},
		{name: "single part without envelope", msg: "X-MS-Journal-Report:\r\nContent-Type: image/png\r\n\r\nxx",
			want: "journal: report is image/png, not multipart, and has no envelope part"},
		{name: "too many parts", msg: good, parser: Parser{MaxParts: 1},
			want: "journal: report body: more than 1 parts", tooMuch: true},
		{name: "header too long", msg: "X-MS-Journal-Report:\r\nX-Long: " + strings.Repeat("x", 200) + "\r\n\r\n",
			parser: Parser{MaxHeaderBytes: 100}, want: "journal: report header: header longer than 100 bytes", tooMuch: true},
		{name: "envelope too long", msg: buildReport("bb", strings.Repeat("To: b@contoso.example\n", 100), plainOriginal),
			parser: Parser{MaxEnvelopeBytes: 1000}, want: "journal: report body: part 1: body longer than 1000 bytes", tooMuch: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := []byte(tc.msg)
			rep, err := tc.parser.Parse(bytes.NewReader(msg), int64(len(msg)))
			if err == nil {
				t.Fatalf("no error; got %+v", rep)
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("err = %q, want prefix %q", err, tc.want)
			}
			if errors.Is(err, ErrTooLarge) != tc.tooMuch {
				t.Errorf("errors.Is(err, ErrTooLarge) = %v, want %v", !tc.tooMuch, tc.tooMuch)
			}
		})
	}
}

func TestSinglePartReport(t *testing.T) {
	t.Parallel()
	// A report that lost its attachment still names its recipients.
	msg := []byte("X-MS-Journal-Report:\r\nContent-Type: text/plain\r\n\r\nSender: a@contoso.example\r\nBcc: b@contoso.example\r\n")
	rep, err := Parse(msg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Original != nil || len(rep.Recipients) != 1 || rep.Recipients[0].Kind != KindBcc {
		t.Errorf("got Original %v Recipients %+v", rep.Original, rep.Recipients)
	}
	checkWarnings(t, rep.Warnings, []string{"not multipart", "no attached original"})
	if _, err := rep.OriginalBytes(msg); err == nil {
		t.Error("OriginalBytes without an original did not fail")
	}
}

func TestIsReport(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		h    map[string][]string
		want bool
	}{
		{map[string][]string{"X-Ms-Journal-Report": {""}}, true},
		{map[string][]string{"x-ms-journal-report": {""}}, true}, // not canonical
		{map[string][]string{"Content-Identifier": {"ExJournalReport"}}, true},
		{map[string][]string{"Content-Identifer": {" exjournalreport "}}, true},
		{map[string][]string{"Content-Identifier": {"SomethingElse"}}, false},
		{map[string][]string{"X-Ms-Exchange-Organization-Journal-Report": {""}}, true},
		{map[string][]string{"Subject": {"X-MS-Journal-Report"}}, false},
		{nil, false},
	} {
		if got := IsReport(tc.h); got != tc.want {
			t.Errorf("IsReport(%v) = %v, want %v", tc.h, got, tc.want)
		}
	}
	// The header types callers hold are accepted as they are.
	mh := mail.Header{"X-Ms-Journal-Report": {""}}
	th := textproto.MIMEHeader{"Content-Identifier": {"ExJournalReport"}}
	var gh gmtextproto.Header
	gh.Add("X-MS-Journal-Report", "")
	if !IsReport(mh) || !IsReport(th) || !IsReport(gh.Map()) {
		t.Error("IsReport rejected a standard header type")
	}
}

func TestLooksLikeReport(t *testing.T) {
	t.Parallel()
	for _, c := range corpus {
		msg := readCorpus(t, c.file)
		if got, want := LooksLikeReport(msg), c.err == nil; got != want {
			t.Errorf("%s: LooksLikeReport = %v, want %v", c.file, got, want)
		}
	}
	// The marker in the body is not a marker.
	if LooksLikeReport([]byte("Subject: hi\r\n\r\nX-MS-Journal-Report:\r\n")) {
		t.Error("a marker in the body counted")
	}
}

// memReaderAt is an io.ReaderAt over a report that is never handed to the
// parser whole, as a spool file or the archive's chunk store would be.
type memReaderAt struct{ b []byte }

func (m memReaderAt) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(m.b).ReadAt(p, off)
}

func TestParseStreamsLargeReports(t *testing.T) {
	// Not parallel: it measures the heap.
	var body strings.Builder
	line := strings.Repeat("0123456789abcdef", 4) + "\n"
	for body.Len() < 32<<20 {
		body.WriteString(line)
	}
	msg := []byte(buildReport("bb", "Sender: a@contoso.example\nTo: b@contoso.example\n", plainOriginal+"\n"+body.String()))
	src := memReaderAt{msg}

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rep, err := Parser{}.Parse(src, int64(len(msg)))
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Errorf("parsing a %d MiB report allocated %d KiB; it should stream", len(msg)>>20, alloc>>10)
	}
	if rep.Original.Length < 32<<20 {
		t.Errorf("original is %d bytes", rep.Original.Length)
	}
}
