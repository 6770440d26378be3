package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"chainmail/archive"
)

// A message with everything a byte-exact path can get wrong: CRLF, a bare
// LF and CR, 8-bit and NUL bytes, a dot line, no final newline.
var tricky = []byte("From: a@example.com\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\nline\r\n.\r\nbare\nlf\rcr \xff\x00\xe9t\xc3\xa9\r\nFrom here\r\nend")

func TestSearch(t *testing.T) {
	t.Parallel()
	arch := newFakeArchive(tricky, []byte("Subject: two\r\n\r\nx\r\n"))
	s := newTestServer(t, arch, nil)

	w := do(t, s, request{path: "/api/v1/archive/messages?from=a%40example.com&to=b&subject=Caf%C3%A9&message_id=%3Cx%40y%3E&after=2024-05-01&before=2024-05-02T10:00:00%2B02:00&q=hello&limit=10&cursor=42", token: readOnlyToken})
	if w.Code != http.StatusOK {
		t.Fatalf("search: %d %s", w.Code, w.Body)
	}
	want := archive.Query{
		From: "a@example.com", To: "b", Subject: "Café", MessageID: "<x@y>",
		After:  time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC),
		Before: time.Date(2024, 5, 2, 8, 0, 0, 0, time.UTC),
		Text:   "hello", Limit: 10, Cursor: "42",
		Restricted: true, // a read-only caller
	}
	got := arch.lastQuery
	if !got.After.Equal(want.After) || !got.Before.Equal(want.Before) {
		t.Errorf("times %v %v, want %v %v", got.After, got.Before, want.After, want.Before)
	}
	got.After, got.Before, want.After, want.Before = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if got != want {
		t.Errorf("query %+v, want %+v", got, want)
	}

	// The JSON shape of DESIGN.md.
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(w.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	if _, ok := raw["messages"]; !ok || len(raw) != 2 {
		t.Errorf("search keys %v", raw)
	}
	if string(raw["next_cursor"]) != `""` {
		t.Errorf("next_cursor %s", raw["next_cursor"])
	}
	var hits []map[string]any
	json.Unmarshal(raw["messages"], &hits)
	if len(hits) != 2 {
		t.Fatalf("hits %d", len(hits))
	}
	for _, k := range []string{"id", "hash", "message_id", "from", "to", "subject", "date", "size", "received"} {
		if _, ok := hits[0][k]; !ok {
			t.Errorf("hit lacks %q: %v", k, hits[0])
		}
	}

	// Defaults, and an empty result is [] rather than null.
	empty := newFakeArchive()
	s2 := newTestServer(t, empty, nil)
	w = do(t, s2, request{path: "/api/v1/archive/messages", token: adminToken})
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"messages":[]`) {
		t.Errorf("empty search: %d %s", w.Code, w.Body)
	}
	if empty.lastQuery.Limit != DefaultLimit {
		t.Errorf("default limit %d", empty.lastQuery.Limit)
	}

	// A cursor the store does not know is the caller's mistake.
	w = do(t, s, request{path: "/api/v1/archive/messages?cursor=bogus", token: adminToken})
	if w.Code != http.StatusBadRequest || errorOf(t, w).Param != "cursor" {
		t.Errorf("bad cursor: %d %s", w.Code, w.Body)
	}
}

func TestSearchBadParameters(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, newFakeArchive(), nil)
	tests := []struct{ query, param string }{
		{"limit=0", "limit"},
		{"limit=1001", "limit"},
		{"limit=ten", "limit"},
		{"limit=-1", "limit"},
		{"after=yesterday", "after"},
		{"after=2024-13-01", "after"},
		{"before=2024-05-01T25:00:00Z", "before"},
		{"after=2024-05-02&before=2024-05-01", "before"},
		{"after=2024-05-01&before=2024-05-01", "before"},
		{"form=x", "form"},
		{"subject=a&subject=b", "subject"},
		{"subject=%ff%fe", "subject"},
		{"from=a%00b", "from"},
		{"q=" + strings.Repeat("x", maxParamLen+1), "q"},
	}
	for _, tt := range tests {
		w := do(t, s, request{path: "/api/v1/archive/messages?" + tt.query, token: adminToken})
		if w.Code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", tt.query, w.Code)
			continue
		}
		e := errorOf(t, w)
		if e.Param != tt.param || !strings.HasPrefix(e.Error, tt.param+": ") {
			t.Errorf("%s: error %+v, want it to name %q", tt.query, e, tt.param)
		}
	}
}

func TestMessage(t *testing.T) {
	t.Parallel()
	arch := newFakeArchive()
	id := arch.add(tricky)
	s := newTestServer(t, arch, nil)

	w := do(t, s, request{path: "/api/v1/archive/messages/" + strings.ToUpper(id), token: readOnlyToken})
	if w.Code != http.StatusOK {
		t.Fatalf("get: %d %s", w.Code, w.Body)
	}
	var m archive.Meta
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil || m.ID != id || m.Size != int64(len(tricky)) {
		t.Errorf("meta %+v %v", m, err)
	}
	for path, want := range map[string]int{
		"/api/v1/archive/messages/" + strings.Repeat("0", 64):          http.StatusNotFound,
		"/api/v1/archive/messages/nothex":                              http.StatusBadRequest,
		"/api/v1/archive/messages/" + strings.Repeat("0", 64) + "/raw": http.StatusNotFound,
		"/api/v1/archive/messages/" + id[:10] + "/raw":                 http.StatusBadRequest,
	} {
		w := do(t, s, request{path: path, token: adminToken})
		if w.Code != want || errorOf(t, w).Param != "id" {
			t.Errorf("%s: %d %s, want %d naming id", path, w.Code, w.Body, want)
		}
	}
}

func TestRawExactBytesAndHeaders(t *testing.T) {
	t.Parallel()
	arch := newFakeArchive()
	id := arch.add(tricky)
	big := bytes.Repeat([]byte("0123456789abcdef\r\n"), 300_000) // ~5 MB
	bigID := arch.add(big)
	s := newTestServer(t, arch, nil)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	for _, tc := range []struct {
		id   string
		body []byte
	}{{id, tricky}, {bigID, big}} {
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/archive/messages/"+tc.id+"/raw", nil)
		req.Header.Set("Authorization", "Bearer "+readOnlyToken)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("raw: %d %v", resp.StatusCode, err)
		}
		if !bytes.Equal(got, tc.body) {
			t.Errorf("raw bytes differ: %d bytes, want %d", len(got), len(tc.body))
		}
		for k, want := range map[string]string{
			"Content-Type":           "message/rfc822",
			"Content-Disposition":    `attachment; filename="` + tc.id + `.eml"`,
			"X-Content-Type-Options": "nosniff",
			"ETag":                   `"` + tc.id + `"`,
		} {
			if got := resp.Header.Get(k); got != want {
				t.Errorf("%s = %q, want %q", k, got, want)
			}
		}
		if resp.ContentLength != int64(len(tc.body)) {
			t.Errorf("Content-Length %d, want %d", resp.ContentLength, len(tc.body))
		}
	}

	// HEAD has the headers and no body.
	w := do(t, s, request{method: "HEAD", path: "/api/v1/archive/messages/" + id + "/raw", token: adminToken})
	if w.Code != 200 || w.Body.Len() != 0 || w.Header().Get("Content-Length") != strconv.Itoa(len(tricky)) {
		t.Errorf("HEAD: %d, %d body bytes, length %q", w.Code, w.Body.Len(), w.Header().Get("Content-Length"))
	}
}

// gateReader yields its first chunk, then waits for the gate before the
// rest: the client seeing the first chunk proves the server streams.
type gateReader struct {
	first, rest []byte
	gate        chan struct{}
}

func (g *gateReader) Read(p []byte) (int, error) {
	if len(g.first) > 0 {
		n := copy(p, g.first)
		g.first = g.first[n:]
		return n, nil
	}
	<-g.gate
	if len(g.rest) == 0 {
		return 0, io.EOF
	}
	n := copy(p, g.rest)
	g.rest = g.rest[n:]
	return n, nil
}

func (g *gateReader) Close() error { return nil }

func TestRawStreams(t *testing.T) {
	t.Parallel()
	arch := newFakeArchive()
	msg := bytes.Repeat([]byte("x"), 1<<20)
	id := arch.add(msg)
	gate := make(chan struct{})
	arch.open = func(_ string, b []byte) io.ReadCloser {
		return &gateReader{first: b[:64<<10], rest: b[64<<10:], gate: gate}
	}
	s := newTestServer(t, arch, nil)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	req, _ := http.NewRequest("GET", srv.URL+"/api/v1/archive/messages/"+id+"/raw", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, 32<<10)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatalf("first chunk before the store finished: %v", err)
	}
	close(gate)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || len(first)+len(rest) != len(msg) {
		t.Errorf("rest: %d bytes, %v", len(rest), err)
	}
}

// shortReader ends before the size the store announced.
type shortReader struct{ io.Reader }

func (shortReader) Close() error { return nil }

func TestRawShortReadCutsConnection(t *testing.T) {
	t.Parallel()
	arch := newFakeArchive()
	id := arch.add(bytes.Repeat([]byte("y"), 100_000))
	arch.open = func(_ string, b []byte) io.ReadCloser { return shortReader{bytes.NewReader(b[:50_000])} }
	s := newTestServer(t, arch, nil)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/api/v1/archive/messages/"+id+"/raw", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short body read: %v, want unexpected EOF (never a clean end)", err)
	}
}

func TestDigestShape(t *testing.T) {
	t.Parallel()
	arch := newFakeArchive(tricky, []byte("b"))
	s := newTestServer(t, arch, nil)
	w := do(t, s, request{path: "/api/v1/archive/digest", token: readOnlyToken})
	if w.Code != 200 {
		t.Fatalf("digest: %d", w.Code)
	}
	var raw map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	want, _ := arch.Digest(context.Background())
	if len(raw) != 2 || raw["count"] != float64(2) || raw["sha256"] != want.SHA256 {
		t.Errorf("digest %v, want {count:2 sha256:%s}", raw, want.SHA256)
	}
}

func TestInternalErrorsDoNotLeak(t *testing.T) {
	t.Parallel()
	arch := newFakeArchive()
	arch.searchErr = errBoom
	s := newTestServer(t, arch, nil)
	w := do(t, s, request{path: "/api/v1/archive/messages", token: adminToken})
	if w.Code != http.StatusInternalServerError {
		t.Fatalf("status %d", w.Code)
	}
	if strings.Contains(w.Body.String(), "disk on fire") || strings.Contains(w.Body.String(), "/var/lib") {
		t.Errorf("internal error leaked: %s", w.Body)
	}
	var e errorBody
	json.Unmarshal(w.Body.Bytes(), &e)
	if e.Ref == "" {
		t.Errorf("no reference id: %s", w.Body)
	}
}
