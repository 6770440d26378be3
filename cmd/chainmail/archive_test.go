package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"chainmail/archive"
	"chainmail/web"
)

const cliToken = "cli-test-token-0123456789"

// cliArchive is an in-memory web.Archive with cursor paging, so the CLI is
// tested against the real API handlers.
type cliArchive struct {
	mu    sync.Mutex
	msgs  map[string][]byte
	meta  map[string]archive.Summary
	raws  atomic.Int64 // OpenRaw calls
	order []string     // newest first
	// corrupt makes OpenRaw serve other bytes than the id's.
	corrupt bool
	// onRaw, when set, runs before each OpenRaw (interrupt tests).
	onRaw func(n int64)
}

func newCLIArchive() *cliArchive {
	return &cliArchive{msgs: map[string][]byte{}, meta: map[string]archive.Summary{}}
}

func (a *cliArchive) add(b []byte, from, subject string, date time.Time) string {
	sum := sha256.Sum256(b)
	id := hex.EncodeToString(sum[:])
	a.mu.Lock()
	defer a.mu.Unlock()
	a.msgs[id] = b
	a.meta[id] = archive.Summary{ID: id, Hash: id, From: from, Subject: subject, Date: date,
		Received: date.Add(time.Second), Size: int64(len(b)), To: []string{"j@example.com"}}
	a.order = append([]string{id}, a.order...)
	return id
}

func (a *cliArchive) Search(ctx context.Context, q archive.Query) (archive.Page, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	start := 0
	if q.Cursor != "" {
		n, err := strconv.Atoi(q.Cursor)
		if err != nil {
			return archive.Page{}, archive.ErrBadCursor
		}
		start = n
	}
	p := archive.Page{Messages: []archive.Summary{}}
	i := start
	for ; i < len(a.order) && len(p.Messages) < q.Limit; i++ {
		m := a.meta[a.order[i]]
		if q.Subject != "" && !strings.Contains(strings.ToLower(m.Subject), strings.ToLower(q.Subject)) {
			continue
		}
		p.Messages = append(p.Messages, m)
	}
	if i < len(a.order) {
		p.NextCursor = strconv.Itoa(i)
	}
	return p, nil
}

func (a *cliArchive) Get(ctx context.Context, id string) (*archive.Meta, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.meta[id]
	if !ok {
		return nil, archive.ErrNotFound
	}
	m := &archive.Meta{ID: id, Hash: id, Size: s.Size, Receipts: 2, Origin: "a"}
	m.Headers.Subject, m.Headers.From, m.Headers.Date = s.Subject, []string{s.From}, s.Date
	m.Envelope.MailFrom, m.Envelope.RcptTo = "bounce@example.com", []string{"j@example.com"}
	m.Receipt.Node, m.Receipt.Listener, m.Receipt.ClientIP, m.Receipt.Received = "a", "journal", "192.0.2.7", s.Received
	return m, nil
}

func (a *cliArchive) OpenRaw(ctx context.Context, id string) (io.ReadCloser, int64, error) {
	n := a.raws.Add(1)
	a.mu.Lock()
	onRaw := a.onRaw
	a.mu.Unlock()
	if onRaw != nil {
		onRaw(n)
	}
	a.mu.Lock()
	b, ok := a.msgs[id]
	corrupt := a.corrupt
	a.mu.Unlock()
	if !ok {
		return nil, 0, archive.ErrNotFound
	}
	if corrupt {
		b = bytes.ToUpper(b)
	}
	return io.NopCloser(bytes.NewReader(b)), int64(len(b)), nil
}

// OpenPart serves every message whole: the fake holds no journal reports
// (TestRawJournalParts uses a real archive).
func (a *cliArchive) OpenPart(ctx context.Context, id, part string) (io.ReadCloser, archive.PartInfo, error) {
	rc, size, err := a.OpenRaw(ctx, id)
	if err != nil {
		return nil, archive.PartInfo{}, err
	}
	return rc, archive.PartInfo{Part: archive.PartMessage, Size: size, SHA256: id, ContentType: "message/rfc822"}, nil
}

func (a *cliArchive) Digest(ctx context.Context) (archive.Digest, error) {
	return archive.Digest{Count: len(a.msgs), SHA256: strings.Repeat("ab", 32)}, nil
}

func (a *cliArchive) Stats() archive.Stats {
	return archive.Stats{Messages: int64(len(a.msgs))}
}

type cliUsers struct{}

func (cliUsers) Check(user, password string) (string, bool) {
	return web.RoleAdmin, user == "admin" && password == "the-admin-password"
}

// startAPI serves the real web handlers over arch.
func startAPI(t *testing.T, arch *cliArchive) string {
	t.Helper()
	s, err := web.New(web.Options{Archive: arch, APITokens: []string{cliToken}, Users: cliUsers{}, NodeID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return srv.URL
}

type cliResult struct {
	code           int
	stdout, stderr string
}

// runCLI runs 'chainmail archive args…' with env as its environment.
func runCLI(t *testing.T, env map[string]string, args ...string) cliResult {
	t.Helper()
	return runCLIContext(t, context.Background(), env, args...)
}

func runCLIContext(t *testing.T, ctx context.Context, env map[string]string, args ...string) cliResult {
	t.Helper()
	var out, errb bytes.Buffer
	c := &archiveCLI{
		getenv: func(k string) string { return env[k] },
		stdout: &out, stderr: &errb, loc: time.UTC,
	}
	code := c.run(ctx, args)
	return cliResult{code, out.String(), errb.String()}
}

func day(d int) time.Time { return time.Date(2024, 5, d, 9, 30, 0, 0, time.UTC) }

func TestArchiveSearchTable(t *testing.T) {
	t.Parallel()
	arch := newCLIArchive()
	arch.add([]byte("Subject: one\r\n\r\n1\r\n"), "Alice <alice@example.com>", "one", day(1))
	id2 := arch.add([]byte("Subject: two\r\n\r\n2\r\n"), "bob@example.com", "evil \x1b[31mred\x1b[0m subject that is far too long for its column", day(2))
	api := startAPI(t, arch)

	r := runCLI(t, nil, "search", "--api", api, "--token", cliToken)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "DATE") {
		t.Fatalf("table:\n%s", r.stdout)
	}
	want := "2024-05-02 09:30  bob@example.com               evil  [31mred [0m subject that is far t…     19 B  " + id2
	if lines[1] != want {
		t.Errorf("row\n%q\nwant\n%q", lines[1], want)
	}
	if strings.Contains(r.stdout, "\x1b") {
		t.Error("an escape sequence from a header reached the terminal")
	}

	// --json is the API's page.
	r = runCLI(t, map[string]string{"CHAINMAIL_API": api, "CHAINMAIL_TOKEN": cliToken}, "search", "--json", "--subject", "ONE")
	var p archive.Page
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil || r.code != 0 || len(p.Messages) != 1 || p.Messages[0].Subject != "one" {
		t.Errorf("search --json: %d %v %s %s", r.code, err, r.stdout, r.stderr)
	}
}

func TestArchiveSearchAllFollowsCursors(t *testing.T) {
	t.Parallel()
	arch := newCLIArchive()
	for i := range 7 {
		arch.add([]byte("Subject: m"+strconv.Itoa(i)+"\r\n\r\nx\r\n"), "a@example.com", "m"+strconv.Itoa(i), day(i+1))
	}
	api := startAPI(t, arch)
	env := map[string]string{"CHAINMAIL_API": api, "CHAINMAIL_TOKEN": cliToken}

	r := runCLI(t, env, "search", "--limit", "3")
	if r.code != 0 || strings.Count(r.stdout, "\n") != 4 || !strings.Contains(r.stderr, "--cursor 3") {
		t.Errorf("one page: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, env, "search", "--limit", "3", "--cursor", "3")
	if r.code != 0 || !strings.Contains(r.stdout, " m3 ") || strings.Contains(r.stdout, " m6 ") {
		t.Errorf("second page:\n%s%s", r.stdout, r.stderr)
	}
	r = runCLI(t, env, "search", "--all", "--limit", "3")
	if r.code != 0 || strings.Count(r.stdout, "\n") != 8 {
		t.Errorf("--all: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, env, "search", "--all", "--json", "--limit", "2")
	var p archive.Page
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil || len(p.Messages) != 7 || p.Messages[0].Subject != "m6" {
		t.Errorf("--all --json: %v %d\n%s", err, len(p.Messages), r.stdout)
	}
	// An empty result is still valid JSON.
	r = runCLI(t, env, "search", "--all", "--json", "--subject", "nothing")
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil || len(p.Messages) != 0 {
		t.Errorf("empty --all --json: %v %s", err, r.stdout)
	}
}

func TestArchiveShowDigestAndErrors(t *testing.T) {
	t.Parallel()
	arch := newCLIArchive()
	id := arch.add([]byte("Subject: hello\r\n\r\nbody\r\n"), "alice@example.com", "hello", day(3))
	api := startAPI(t, arch)
	env := map[string]string{"CHAINMAIL_API": api, "CHAINMAIL_TOKEN": cliToken}

	r := runCLI(t, env, "show", id)
	for _, want := range []string{"id:          " + id, "subject:     hello", "mail from:   <bounce@example.com>",
		"received:    2024-05-03T09:30:01Z by node a, listener journal, from 192.0.2.7", "receipts:    2 (duplicates merged)"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("show lacks %q:\n%s", want, r.stdout)
		}
	}
	// Flags may follow the ID.
	r = runCLI(t, env, "show", id, "--json")
	var m map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil || m["id"] != id {
		t.Errorf("show --json: %v %s", err, r.stdout)
	}

	r = runCLI(t, env, "digest")
	if r.code != 0 || r.stdout != "messages  1\nsha256    "+strings.Repeat("ab", 32)+"\n" {
		t.Errorf("digest: %q", r.stdout)
	}
	r = runCLI(t, env, "digest", "--json")
	if !strings.Contains(r.stdout, `"count": 1`) || !strings.Contains(r.stdout, `"sha256"`) {
		t.Errorf("digest --json: %s", r.stdout)
	}

	// Failures exit 1 with the API's reason.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"show", strings.Repeat("0", 64)}, "404 Not Found: id: no such message"},
		{[]string{"search", "--after", "last tuesday"}, "400 Bad Request: after: want an RFC 3339 time"},
		{[]string{"digest", "--token", "wrong-token-0123456789"}, "401 Unauthorized: invalid token"},
		{[]string{"digest", "--api", "http://127.0.0.1:1"}, "connection refused"},
	} {
		r := runCLI(t, env, tc.args...)
		if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want 1 and %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

func TestArchiveAuthChoices(t *testing.T) {
	t.Parallel()
	arch := newCLIArchive()
	api := startAPI(t, arch)
	r := runCLI(t, map[string]string{"CHAINMAIL_API": api}, "digest")
	if r.code != 1 || !strings.Contains(r.stderr, "give --token") {
		t.Errorf("no credentials: %d %q", r.code, r.stderr)
	}
	r = runCLI(t, map[string]string{"CHAINMAIL_API": api, "CHAINMAIL_PASSWORD": "the-admin-password"}, "digest")
	if r.code != 0 {
		t.Errorf("password from the environment: %d %q", r.code, r.stderr)
	}
	r = runCLI(t, nil, "digest", "--api", api, "--user", "admin", "--password", "the-admin-password")
	if r.code != 0 {
		t.Errorf("--user/--password: %d %q", r.code, r.stderr)
	}
	r = runCLI(t, nil, "digest", "--api", "ftp://x")
	if r.code != 1 || !strings.Contains(r.stderr, "want a URL") {
		t.Errorf("bad --api: %d %q", r.code, r.stderr)
	}
}

func TestArchiveRawExactAndVerified(t *testing.T) {
	t.Parallel()
	msg := []byte("From: a@example.com\r\nSubject: x\r\n\r\n\xff\x00 bare\nlf\r\nFrom me\r\nno final newline")
	arch := newCLIArchive()
	id := arch.add(msg, "a@example.com", "x", day(1))
	api := startAPI(t, arch)
	env := map[string]string{"CHAINMAIL_API": api, "CHAINMAIL_TOKEN": cliToken}

	r := runCLI(t, env, "raw", id)
	if r.code != 0 || r.stdout != string(msg) {
		t.Errorf("raw to stdout: %d, %q", r.code, r.stdout)
	}
	out := filepath.Join(t.TempDir(), "m.eml")
	r = runCLI(t, env, "raw", "-o", out, strings.ToUpper(id))
	if got, err := os.ReadFile(out); r.code != 0 || err != nil || !bytes.Equal(got, msg) {
		t.Errorf("raw -o: %d %v %q", r.code, err, r.stderr)
	}

	// Bytes that do not hash to the id are refused, and no file appears.
	arch.mu.Lock()
	arch.corrupt = true
	arch.mu.Unlock()
	bad := filepath.Join(t.TempDir(), "bad.eml")
	r = runCLI(t, env, "raw", id, "-o", bad)
	if r.code != 1 || !strings.Contains(r.stderr, "the bytes hash to") {
		t.Errorf("corrupt raw: %d %q", r.code, r.stderr)
	}
	if entries, _ := os.ReadDir(filepath.Dir(bad)); len(entries) != 0 {
		t.Errorf("a failed raw -o left %v", entries)
	}
}

func TestArchiveUsage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		code int
		out  string // in stdout when code is 0, else in stderr
	}{
		{nil, 2, "usage: chainmail archive"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"-h"}, 0, "export"},
		{[]string{"show"}, 2, "want one message ID"},
		{[]string{"show", "a", "b"}, 2, "want one message ID"},
		{[]string{"raw", "not-an-id"}, 2, "is not a message id"},
		{[]string{"search", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"search", "--limit", "x"}, 2, "invalid value"},
		{[]string{"export", "-o", "x"}, 2, "--format must be mbox or eml"},
		{[]string{"export", "--format", "eml"}, 2, "-o PATH is required"},
		{[]string{"digest", "extra"}, 2, "want no arguments"},
	} {
		r := runCLI(t, nil, tc.args...)
		text := r.stderr
		if tc.code == 0 {
			text = r.stdout
		}
		if r.code != tc.code || !strings.Contains(text, tc.out) {
			t.Errorf("%v: exit %d, want %d with %q; stdout %q stderr %q", tc.args, r.code, tc.code, tc.out, r.stdout, r.stderr)
		}
	}
	// -h lists every flag of a command on stdout, and exits 0.
	for cmd, flags := range map[string][]string{
		"search": {"-api", "-token", "-user", "-password", "-from", "-to", "-subject", "-message-id", "-after", "-before", "-q", "-limit", "-cursor", "-all", "-json"},
		"show":   {"-api", "-token", "-json"},
		"raw":    {"-api", "-o"},
		"digest": {"-api", "-json"},
		"export": {"-api", "-format", "-o", "-force", "-from", "-q"},
	} {
		r := runCLI(t, map[string]string{"CHAINMAIL_TOKEN": "secret-token-value"}, cmd, "-h")
		if r.code != 0 {
			t.Errorf("%s -h: exit %d", cmd, r.code)
		}
		for _, f := range flags {
			if !regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(f) + `\b`).MatchString(r.stdout) {
				t.Errorf("%s -h lacks %s:\n%s", cmd, f, r.stdout)
			}
		}
		if strings.Contains(r.stdout, "secret-token-value") {
			t.Errorf("%s -h printed the token from the environment", cmd)
		}
	}
}

// readMboxrd parses an mboxrd file back into messages (LF line ends), as a
// mail reader would: split at "From " lines, drop the blank line before
// each, and remove one '>' from quoted From lines.
func readMboxrd(t *testing.T, b []byte) (seps []string, msgs []string) {
	t.Helper()
	quoted := regexp.MustCompile(`^>+From `)
	var cur []string
	flush := func() {
		if cur == nil {
			return
		}
		if len(cur) == 0 || cur[len(cur)-1] != "" {
			t.Fatalf("message does not end with a blank line: %q", cur)
		}
		msgs = append(msgs, strings.Join(cur[:len(cur)-1], "\n")+"\n")
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "From ") {
			flush()
			seps = append(seps, line)
			cur = []string{}
			continue
		}
		if quoted.MatchString(line) {
			line = line[1:]
		}
		cur = append(cur, line)
	}
	flush()
	return seps, msgs
}

func TestArchiveExportMbox(t *testing.T) {
	t.Parallel()
	bodies := []string{
		"From: a@example.com\r\nSubject: quoting\r\n\r\nFrom the start\r\n>From once\r\n>>From twice\r\nFrom\r\nFromage\r\n From indented\r\n",
		"Subject: no final newline\r\n\r\nlast line From x",
		"Subject: bare\n\nlf only\nFrom here\n",
		"Subject: cr\r\n\r\nlone\rcr\r\n",
	}
	arch := newCLIArchive()
	for i, b := range bodies {
		arch.add([]byte(b), "Sender <s"+strconv.Itoa(i)+"@example.com>", "m", day(i+1))
	}
	api := startAPI(t, arch)
	env := map[string]string{"CHAINMAIL_API": api, "CHAINMAIL_TOKEN": cliToken}
	out := filepath.Join(t.TempDir(), "archive.mbox")

	r := runCLI(t, env, "export", "--format", "mbox", "-o", out)
	if r.code != 0 {
		t.Fatalf("export: %d %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "exported 4 messages") || strings.Contains(r.stderr, "\r") {
		t.Errorf("summary %q (and no progress bar off a terminal)", r.stderr)
	}
	got, _ := os.ReadFile(out)
	if bytes.Contains(got, []byte("\r\n")) {
		t.Error("CRLF left in the mbox")
	}
	for _, q := range []string{"\n>From the start\n", "\n>>From once\n", "\n>>>From twice\n", "\nFrom\n", "\nFromage\n", "\n From indented\n", "\n>From here\n"} {
		if !bytes.Contains(got, []byte(q)) {
			t.Errorf("mbox lacks %q:\n%s", q, got)
		}
	}
	seps, msgs := readMboxrd(t, got)
	if len(msgs) != len(bodies) {
		t.Fatalf("%d messages read back, want %d:\n%s", len(msgs), len(bodies), got)
	}
	for i, m := range msgs {
		// Newest first: message i is bodies[len-1-i].
		orig := strings.ReplaceAll(bodies[len(bodies)-1-i], "\r\n", "\n")
		if !strings.HasSuffix(orig, "\n") {
			orig += "\n"
		}
		if m != orig {
			t.Errorf("message %d read back\n%q\nwant\n%q", i, m, orig)
		}
	}
	if want := "From s3@example.com Sat May  4 09:30:01 2024"; seps[0] != want {
		t.Errorf("separator %q, want %q", seps[0], want)
	}

	// An existing mbox is kept unless --force.
	r = runCLI(t, env, "export", "--format", "mbox", "-o", out, "--subject", "x")
	if r.code != 1 || !strings.Contains(r.stderr, "--force") {
		t.Errorf("overwrite without --force: %d %q", r.code, r.stderr)
	}
	r = runCLI(t, env, "export", "--format", "mbox", "-o", out, "--force", "--subject", "nothing")
	if got, _ := os.ReadFile(out); r.code != 0 || len(got) != 0 {
		t.Errorf("--force with no hits: %d, %d bytes", r.code, len(got))
	}
}

func TestArchiveExportEMLResumes(t *testing.T) {
	t.Parallel()
	arch := newCLIArchive()
	var ids []string
	for i := range 5 {
		ids = append(ids, arch.add([]byte("Subject: "+strconv.Itoa(i)+"\r\n\r\nbody "+strings.Repeat("x", i*100)+"\r\n"), "a@example.com", "s", day(i+1)))
	}
	api := startAPI(t, arch)
	env := map[string]string{"CHAINMAIL_API": api, "CHAINMAIL_TOKEN": cliToken}
	dir := filepath.Join(t.TempDir(), "eml")

	r := runCLI(t, env, "export", "--format", "eml", "-o", dir)
	if r.code != 0 || !strings.Contains(r.stderr, "exported 5 messages") {
		t.Fatalf("export: %d %q", r.code, r.stderr)
	}
	for _, id := range ids {
		got, err := os.ReadFile(filepath.Join(dir, id+".eml"))
		if err != nil || !bytes.Equal(got, arch.msgs[id]) {
			t.Errorf("%s.eml: %v", id, err)
		}
	}

	// An interrupted run leaves a missing file, a truncated one (as a
	// crash could) and a temporary file; the next run repairs exactly that.
	os.Remove(filepath.Join(dir, ids[0]+".eml"))
	os.WriteFile(filepath.Join(dir, ids[1]+".eml"), []byte("Subj"), 0o600)
	stale := filepath.Join(dir, "."+ids[2]+".eml.tmp-123")
	os.WriteFile(stale, []byte("partial"), 0o600)
	before := arch.raws.Load()
	r = runCLI(t, env, "export", "--format", "eml", "-o", dir)
	if r.code != 0 || !strings.Contains(r.stderr, "exported 2 messages") || !strings.Contains(r.stderr, "3 already there") {
		t.Errorf("resume: %d %q", r.code, r.stderr)
	}
	if n := arch.raws.Load() - before; n != 2 {
		t.Errorf("resume downloaded %d messages, want 2", n)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Error("stale temporary file kept")
	}
	entries, _ := os.ReadDir(dir)
	names := []string{}
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if len(names) != 5 {
		t.Errorf("folder holds %v", names)
	}
	for _, id := range ids[:2] {
		if got, _ := os.ReadFile(filepath.Join(dir, id+".eml")); !bytes.Equal(got, arch.msgs[id]) {
			t.Errorf("%s.eml not repaired", id)
		}
	}

	// A failed download stops the export with a hint to resume.
	arch.mu.Lock()
	arch.corrupt = true
	arch.mu.Unlock()
	r = runCLI(t, env, "export", "--format", "eml", "-o", filepath.Join(t.TempDir(), "other"))
	if r.code != 1 || !strings.Contains(r.stderr, "run the same command again to resume") {
		t.Errorf("failed export: %d %q", r.code, r.stderr)
	}
}

func TestArchiveMboxrdWriterChunking(t *testing.T) {
	t.Parallel()
	in := []byte("From a\r\n>From b\r\n>>>From c\r\n>Fro\r\n>>\r\nFrom\r\r\nx\ry\r\nFrom ")
	want := "" +
		">From a\n>>From b\n>>>>From c\n>Fro\n>>\nFrom\r\nx\ry\n>From \n"
	// Every way of splitting the input into two writes gives the same
	// output: the writer's state carries across writes.
	for cut := 0; cut <= len(in); cut++ {
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		m := &mboxrdWriter{w: bw, lineStart: true}
		m.Write(in[:cut])
		m.Write(in[cut:])
		if err := m.finish(); err != nil {
			t.Fatal(err)
		}
		bw.Flush()
		if buf.String() != want {
			t.Fatalf("cut at %d:\n%q\nwant\n%q", cut, buf.String(), want)
		}
	}
	// Byte by byte, too.
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	m := &mboxrdWriter{w: bw, lineStart: true}
	for i := range in {
		m.Write(in[i : i+1])
	}
	m.finish()
	bw.Flush()
	if buf.String() != want {
		t.Errorf("byte by byte:\n%q", buf.String())
	}
}

func TestArchiveProgressLine(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	now := time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC)
	p := &progress{w: &buf, on: true, total: 4, now: func() time.Time { return now }, start: now.Add(-2 * time.Second)}
	p.add(3 << 20)
	p.skip()
	p.finish()
	out := buf.String()
	if !strings.HasPrefix(out, "\r[") || !strings.Contains(out, "\r[###############---------------]  50% 2/4 messages") {
		t.Errorf("progress output %q", out)
	}
	if !strings.Contains(out, "3.0 M, 1 msg/s") || !strings.HasSuffix(out, "\x1b[K\n") {
		t.Errorf("progress output %q", out)
	}
	// Off a terminal nothing is drawn.
	buf.Reset()
	p = &progress{w: &buf, total: -1, now: time.Now}
	p.add(1)
	p.finish()
	if buf.Len() != 0 {
		t.Errorf("progress drawn off a terminal: %q", buf.String())
	}
}

func TestClientPathPrefixAndForeignErrors(t *testing.T) {
	t.Parallel()
	// A node behind a reverse proxy under /chainmail/, whose proxy answers
	// an error page of its own.
	var paths []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.EscapedPath())
		mu.Unlock()
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		io.WriteString(w, "<html>upstream down</html>")
	}))
	defer srv.Close()
	c, err := newAPIClient(srv.URL+"/chainmail/", "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.digest(context.Background())
	var ae *apiError
	if !errors.As(err, &ae) || ae.Status != http.StatusBadGateway || ae.Msg != "Bad Gateway" {
		t.Errorf("error %v", err)
	}
	c.message(context.Background(), "a/b")
	mu.Lock()
	defer mu.Unlock()
	if len(paths) != 2 || paths[0] != "/chainmail/api/v1/archive/digest" || paths[1] != "/chainmail/api/v1/archive/messages/a%2Fb" {
		t.Errorf("paths %q", paths)
	}
}

func TestArchiveExportInterrupted(t *testing.T) {
	t.Parallel()
	arch := newCLIArchive()
	for i := range 6 {
		arch.add([]byte("Subject: "+strconv.Itoa(i)+"\r\n\r\nbody\r\n"), "a@example.com", "s", day(i+1))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Ctrl-C arrives while the third message is being fetched.
	arch.onRaw = func(n int64) {
		if n == 3 {
			cancel()
		}
	}
	api := startAPI(t, arch)
	env := map[string]string{"CHAINMAIL_API": api, "CHAINMAIL_TOKEN": cliToken}
	tmp := t.TempDir()

	dir := filepath.Join(tmp, "eml")
	r := runCLIContext(t, ctx, env, "export", "--format", "eml", "-o", dir)
	if r.code != 1 || !strings.Contains(r.stderr, "interrupted") || !strings.Contains(r.stderr, "run the same command again") {
		t.Errorf("interrupted eml export: %d %q", r.code, r.stderr)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("after the interrupt the folder holds %d entries, want the 2 complete files", len(entries))
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary file %s left", e.Name())
		}
	}
	arch.mu.Lock()
	arch.onRaw = nil
	arch.mu.Unlock()
	r = runCLI(t, env, "export", "--format", "eml", "-o", dir)
	if r.code != 0 || !strings.Contains(r.stderr, "exported 4 messages") || !strings.Contains(r.stderr, "2 already there") {
		t.Errorf("resumed export: %d %q", r.code, r.stderr)
	}

	// An interrupted mbox export leaves nothing behind.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	arch.mu.Lock()
	base := arch.raws.Load()
	arch.onRaw = func(n int64) {
		if n == base+3 {
			cancel2()
		}
	}
	arch.mu.Unlock()
	mdir := filepath.Join(tmp, "mbox")
	os.Mkdir(mdir, 0o750)
	r = runCLIContext(t, ctx2, env, "export", "--format", "mbox", "-o", filepath.Join(mdir, "a.mbox"))
	if r.code != 1 {
		t.Errorf("interrupted mbox export: %d %q", r.code, r.stderr)
	}
	if entries, _ := os.ReadDir(mdir); len(entries) != 0 {
		t.Errorf("interrupted mbox export left %v", entries)
	}
}
