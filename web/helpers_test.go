package web

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"chainmail/archive"
)

const (
	adminToken    = "admin-token-0123456789"
	readOnlyToken = "read-only-token-0123456789"
)

// fakeArchive is an in-memory Archive for handler tests.
type fakeArchive struct {
	mu        sync.Mutex
	msgs      map[string][]byte
	lastQuery archive.Query
	searchErr error
	// open, when set, replaces OpenRaw's reader (streaming tests).
	open func(id string, b []byte) io.ReadCloser
}

func newFakeArchive(msgs ...[]byte) *fakeArchive {
	f := &fakeArchive{msgs: map[string][]byte{}}
	for _, m := range msgs {
		f.add(m)
	}
	return f
}

func (f *fakeArchive) add(b []byte) string {
	sum := sha256.Sum256(b)
	id := hex.EncodeToString(sum[:])
	f.mu.Lock()
	f.msgs[id] = b
	f.mu.Unlock()
	return id
}

func (f *fakeArchive) Search(ctx context.Context, q archive.Query) (archive.Page, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastQuery = q
	if f.searchErr != nil {
		return archive.Page{}, f.searchErr
	}
	if q.Cursor == "bogus" {
		return archive.Page{}, archive.ErrBadCursor
	}
	ids := make([]string, 0, len(f.msgs))
	for id := range f.msgs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var p archive.Page
	for _, id := range ids {
		p.Messages = append(p.Messages, archive.Summary{ID: id, Hash: id, Subject: "s", Size: int64(len(f.msgs[id]))})
	}
	return p, nil
}

func (f *fakeArchive) Get(ctx context.Context, id string) (*archive.Meta, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.msgs[id]
	if !ok {
		return nil, archive.ErrNotFound
	}
	return &archive.Meta{ID: id, Hash: id, Size: int64(len(b))}, nil
}

func (f *fakeArchive) OpenRaw(ctx context.Context, id string) (io.ReadCloser, int64, error) {
	f.mu.Lock()
	b, ok := f.msgs[id]
	open := f.open
	f.mu.Unlock()
	if !ok {
		return nil, 0, archive.ErrNotFound
	}
	if open != nil {
		return open(id, b), int64(len(b)), nil
	}
	return io.NopCloser(bytes.NewReader(b)), int64(len(b)), nil
}

// OpenPart serves every message whole, as an ordinary message (journal
// reports are tested over a real archive, journal_test.go).
func (f *fakeArchive) OpenPart(ctx context.Context, id, part string) (io.ReadCloser, archive.PartInfo, error) {
	rc, size, err := f.OpenRaw(ctx, id)
	if err != nil {
		return nil, archive.PartInfo{}, err
	}
	return rc, archive.PartInfo{Part: archive.PartMessage, Size: size, SHA256: id, ContentType: "message/rfc822"}, nil
}

func (f *fakeArchive) Digest(ctx context.Context) (archive.Digest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := make([]string, 0, len(f.msgs))
	for id := range f.msgs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	h := sha256.New()
	for _, id := range ids {
		io.WriteString(h, id+"\n")
	}
	return archive.Digest{Count: len(ids), SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

func (f *fakeArchive) Stats() archive.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	var st archive.Stats
	for _, b := range f.msgs {
		st.Messages++
		st.Bytes += int64(len(b))
	}
	return st
}

// fakeUsers is a UserChecker with one account per role.
type fakeUsers struct{}

func (fakeUsers) Check(user, password string) (string, bool) {
	switch {
	case user == "admin" && password == "right-password":
		return RoleAdmin, true
	case user == "viewer" && password == "viewer-password":
		return RoleReadOnly, true
	}
	return "", false
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newTestServer builds a Server over arch with both token roles and the
// fake accounts; edit adjusts the options first.
func newTestServer(t *testing.T, arch Archive, edit func(*Options)) *Server {
	t.Helper()
	opts := Options{
		Address:        "127.0.0.1:0",
		NodeID:         "a",
		Version:        "test",
		Archive:        arch,
		Registry:       prometheus.NewRegistry(),
		APITokens:      []string{adminToken},
		ReadOnlyTokens: []string{readOnlyToken},
		Users:          fakeUsers{},
	}
	if edit != nil {
		edit(&opts)
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// request is one call through the server's handler.
type request struct {
	method, path string
	token        string // bearer token, if any
	user, pass   string // basic credentials, if user is set
	remote       string // RemoteAddr; default 192.0.2.1:1234
}

func do(t *testing.T, s *Server, rq request) *httptest.ResponseRecorder {
	t.Helper()
	return serve(s, newRequest(rq))
}

func newRequest(rq request) *http.Request {
	if rq.method == "" {
		rq.method = http.MethodGet
	}
	r := httptest.NewRequest(rq.method, rq.path, nil)
	r.RemoteAddr = "192.0.2.1:1234"
	if rq.remote != "" {
		r.RemoteAddr = rq.remote
	}
	if rq.token != "" {
		r.Header.Set("Authorization", "Bearer "+rq.token)
	}
	if rq.user != "" {
		r.SetBasicAuth(rq.user, rq.pass)
	}
	return r
}

// withAuthorization is rq with a literal Authorization header.
func withAuthorization(rq request, h string) *http.Request {
	r := newRequest(rq)
	r.Header.Set("Authorization", h)
	return r
}

func serve(s *Server, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, r)
	return w
}

// errorOf decodes a JSON error answer.
func errorOf(t *testing.T, w *httptest.ResponseRecorder) errorBody {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Fatalf("Content-Type = %q, want JSON; body %q", ct, w.Body.String())
	}
	var e errorBody
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
		t.Fatalf("error body %q: %v", w.Body.String(), err)
	}
	if e.Error == "" {
		t.Fatalf("error body %q has no error", w.Body.String())
	}
	return e
}

var errBoom = errors.New("bolt: /var/lib/chainmail/chainmail.db: disk on fire")
