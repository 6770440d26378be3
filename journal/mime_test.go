package journal

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func TestDelimiter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		line        string
		ok, closing bool
	}{
		{"--b\r\n", true, false},
		{"--b\n", true, false},
		{"--b", true, false}, // at the end of input
		{"--b--\r\n", true, true},
		{"--b-- \t\r\n", true, true},
		{"--b \t\r\n", true, false},
		{"--bx\r\n", false, false},
		{"--b-\r\n", false, false},
		{"--b--x\r\n", false, false},
		{"-b\r\n", false, false},
		{" --b\r\n", false, false},
		{"--B\r\n", false, false}, // boundaries are case-sensitive
	} {
		ok, closing := delimiter([]byte(tc.line), "b")
		if ok != tc.ok || closing != tc.closing {
			t.Errorf("delimiter(%q) = %v, %v; want %v, %v", tc.line, ok, closing, tc.ok, tc.closing)
		}
	}
}

// scan runs scanParts over s and returns each part's header and body text.
func scan(t *testing.T, s string) (parts [][2]string, closed bool) {
	t.Helper()
	closed, err := scanParts(strings.NewReader(s), 0, "b", scanLimits{MaxHeaderBytes: 1 << 10, MaxParts: 10}, 1<<20,
		func(*rawPart) (bool, error) { return true, nil },
		func(p *rawPart, body []byte) error {
			if got := s[p.Body.Off:p.Body.end()]; body != nil && got != string(body) {
				t.Errorf("captured %q but span holds %q", body, got)
			}
			parts = append(parts, [2]string{string(p.Header), s[p.Body.Off:p.Body.end()]})
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	return parts, closed
}

func TestScanParts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		in     string
		parts  [][2]string
		closed bool
	}{
		{
			name:   "preamble, two parts, epilogue",
			in:     "preamble\r\n--b\r\nA: 1\r\n\r\none\r\n--b\r\n\r\ntwo\r\n\r\n--b--\r\nepilogue\r\n--b\r\nX: 1\r\n\r\nignored",
			parts:  [][2]string{{"A: 1\r\n", "one"}, {"", "two\r\n"}},
			closed: true,
		},
		{
			name:   "delimiter at the very start, LF only",
			in:     "--b\nA: 1\n\nbody\n--b--",
			parts:  [][2]string{{"A: 1\n", "body"}},
			closed: true,
		},
		{
			name:   "empty body and header-only part",
			in:     "--b\r\nA: 1\r\n\r\n--b\r\nB: 2\r\n--b--\r\n",
			parts:  [][2]string{{"A: 1\r\n", ""}, {"B: 2\r\n", ""}},
			closed: true,
		},
		{
			name:  "unterminated: the last part runs to the end, line break included",
			in:    "--b\r\n\r\nlast\r\n",
			parts: [][2]string{{"", "last\r\n"}},
		},
		{
			name:   "header block ended by a line of spaces",
			in:     "--b\r\nA: 1\r\n  \r\nbody\r\n--b--",
			parts:  [][2]string{{"A: 1\r\n", "body"}},
			closed: true,
		},
		{
			name:  "no delimiter at all",
			in:    "just text\r\n",
			parts: nil,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parts, closed := scan(t, tc.in)
			if !reflect.DeepEqual(parts, tc.parts) || closed != tc.closed {
				t.Errorf("got %q closed=%v\nwant %q closed=%v", parts, closed, tc.parts, tc.closed)
			}
		})
	}
}

func TestScanPartsLongLines(t *testing.T) {
	t.Parallel()
	// Lines longer than the read buffer arrive in fragments; a fragment
	// that happens to start with the delimiter is not a line start.
	long := strings.Repeat("x", readBufSize-1) + "--b\r\n"
	in := "--b\r\n\r\n" + long + "--b--\r\n"
	parts, closed := scan(t, in)
	if len(parts) != 1 || parts[0][1] != strings.TrimSuffix(long, "\r\n") || !closed {
		t.Errorf("got %d parts, closed=%v", len(parts), closed)
	}
	// A delimiter padded past the buffer is still a delimiter.
	in = "--b" + strings.Repeat(" ", readBufSize*2) + "\r\n\r\nbody\r\n--b--"
	parts, closed = scan(t, in)
	if len(parts) != 1 || parts[0][1] != "body" || !closed {
		t.Errorf("padded delimiter: got %q, closed=%v", parts, closed)
	}
}

func TestParseHeaderLiberal(t *testing.T) {
	t.Parallel()
	h := parseHeader([]byte("Subject: a\r\n  folded\r\nno colon here\r\nBad Key: x\r\n: empty\r\nX-Ok:y\nX-Ok: z\n"))
	if got := h.Get("Subject"); got != "a folded" {
		t.Errorf("Subject = %q", got)
	}
	// The first of repeated fields wins, as with go-message's own reader.
	if got := h.Get("X-Ok"); got != "y" || len(h.Values("X-Ok")) != 2 {
		t.Errorf("X-Ok = %q of %q", got, h.Values("X-Ok"))
	}
	if h.Has("Bad Key") || h.Len() != 3 {
		t.Errorf("kept a malformed field: %v", h.Map())
	}
}

func TestMediaType(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, typ, boundary string
	}{
		{"", "text/plain", ""},
		{`multipart/mixed; boundary="a b"`, "multipart/mixed", "a b"},
		{`Multipart/Mixed; BOUNDARY=xyz`, "multipart/mixed", "xyz"},
		{`multipart/mixed; boundary="q"; boundary="q"`, "multipart/mixed", "q"}, // duplicate: rejected by mime
		{`multipart/mixed; foo; boundary=x;`, "multipart/mixed", "x"},
		{`multipart/mixed; xboundary=no`, "multipart/mixed", ""},
		// Invalid UTF-8 before the parameter (found by FuzzParse).
		{"multipart/x; \xbf\xbf boundary=\xbfb", "multipart/x", "\xbfb"},
	} {
		typ, params := mediaType(tc.in)
		if typ != tc.typ || params["boundary"] != tc.boundary {
			t.Errorf("mediaType(%q) = %q, %q", tc.in, typ, params["boundary"])
		}
	}
}

func TestBase64Filter(t *testing.T) {
	t.Parallel()
	rd, err := decoder("base64", strings.NewReader(" aGVs\r\n\tbG8g\n d29y bGQ=\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if _, err := b.ReadFrom(rd); err != nil || b.String() != "hello world" {
		t.Errorf("decoded %q, %v", b.String(), err)
	}
	if _, err := decoder("x-uuencode", nil); err == nil || !strings.Contains(err.Error(), `"x-uuencode"`) {
		t.Errorf("unknown encoding: %v", err)
	}
}
