package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"chainmail/archive"
	"chainmail/internal/testutil"
)

// writeMbox writes msgs the way 'chainmail archive export' does.
func writeMbox(t testing.TB, msgs [][]byte, sender string) []byte {
	t.Helper()
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	for _, m := range msgs {
		bw.WriteString(mboxSeparator(archive.Summary{From: sender, Received: time.Date(2024, 5, 1, 9, 0, 0, 0, time.UTC)}))
		mw := &mboxrdWriter{w: bw, lineStart: true}
		mw.Write(m)
		if err := mw.finish(); err != nil {
			t.Fatal(err)
		}
		bw.WriteByte('\n')
	}
	bw.Flush()
	return out.Bytes()
}

func split(t testing.TB, mbox []byte, maxSize int) []mboxMessage {
	t.Helper()
	var out []mboxMessage
	if err := splitMbox(bytes.NewReader(mbox), maxSize, func(m mboxMessage) error {
		out = append(out, m)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMboxRoundTrip: what export writes, import reads back byte for byte:
// quoted From lines, blank lines at a message's end, a lone CR.
func TestMboxRoundTrip(t *testing.T) {
	t.Parallel()
	msgs := [][]byte{
		[]byte("From: a@example.com\r\nSubject: one\r\n\r\nbody\r\n"),
		[]byte("Subject: quoting\r\n\r\nFrom the start\r\n>From quoted\r\n>>From twice\r\n >From indented\r\nFrom\r\n"),
		[]byte("Subject: trailing blank lines\r\n\r\nx\r\n\r\n\r\n"),
		[]byte("Subject: lone\rCR\r\n\r\n\r\n"),
		[]byte("Subject: last\r\n\r\nFrom here on\r\n"),
	}
	got := split(t, writeMbox(t, msgs, "alice@example.com"), 1<<20)
	if len(got) != len(msgs) {
		t.Fatalf("%d messages, want %d", len(got), len(msgs))
	}
	for i, m := range got {
		if !bytes.Equal(m.data, msgs[i]) || m.err != nil || m.index != i+1 || m.sender != "alice@example.com" {
			t.Errorf("message %d: %q %v %q, want %q", i+1, m.data, m.err, m.sender, msgs[i])
		}
	}
}

func TestMboxVariants(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		mbox    string
		want    []string
		senders []string
		errs    []bool
	}{
		{"mboxo quoting and MAILER-DAEMON", "From MAILER-DAEMON Thu Jan  1 00:00:00 1970\nSubject: a\n\n>From x\nb\n\nFrom <bob@example.org> Thu Jan  1 00:00:00 1970\nSubject: b\n\nc\n",
			[]string{"Subject: a\r\n\r\nFrom x\r\nb\r\n", "Subject: b\r\n\r\nc\r\n"}, []string{"", "bob@example.org"}, []bool{false, false}},
		{"CRLF mbox", "From a@x Thu Jan  1 00:00:00 1970\r\nSubject: a\r\n\r\nb\r\n\r\nFrom a@x Thu Jan  1 00:00:00 1970\r\nSubject: c\r\n",
			[]string{"Subject: a\r\n\r\nb\r\n", "Subject: c\r\n"}, []string{"a@x", "a@x"}, []bool{false, false}},
		{"From not after a blank line stays", "From a@x date\nSubject: a\n\nline\nFrom not a separator\n",
			[]string{"Subject: a\r\n\r\nline\r\nFrom not a separator\r\n"}, []string{"a@x"}, []bool{false}},
		{"no final newline", "From a@x date\nSubject: a\n\nend", []string{"Subject: a\r\n\r\nend\r\n"}, []string{"a@x"}, []bool{false}},
		{"leading blank lines", "\n\nFrom a@x date\nS: 1\n", []string{"S: 1\r\n"}, []string{"a@x"}, []bool{false}},
		{"too large", "From a@x date\nSubject: " + strings.Repeat("x", 200) + "\n\nFrom b@x date\nS: ok\n", []string{"", "S: ok\r\n"}, []string{"a@x", "b@x"}, []bool{true, false}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := split(t, []byte(tc.mbox), 100)
			if len(got) != len(tc.want) {
				t.Fatalf("%d messages: %+v", len(got), got)
			}
			for i, m := range got {
				if string(m.data) != tc.want[i] || m.sender != tc.senders[i] || (m.err != nil) != tc.errs[i] {
					t.Errorf("message %d: %q %q %v", i+1, m.data, m.sender, m.err)
				}
			}
		})
	}
	if err := splitMbox(strings.NewReader("Subject: not an mbox\n"), 100, func(mboxMessage) error { return nil }); err == nil || !strings.Contains(err.Error(), "not an mbox") {
		t.Errorf("a file that is no mbox: %v", err)
	}
}

func TestToCRLF(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"a\nb\n":     "a\r\nb\r\n",
		"a\r\nb\r\n": "a\r\nb\r\n",
		"a\r\nb":     "a\r\nb\r\n",
		"a\rb\n":     "a\rb\r\n",
		"\n":         "\r\n",
		"a\r":        "a\r\n",
	} {
		if got := string(toCRLF([]byte(in))); got != want {
			t.Errorf("toCRLF(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMaildirAndEMLSources(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	md := filepath.Join(root, "Maildir")
	write := func(p, s string) {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(md, "cur", "1.host:2,S"), "Return-Path: <alice@example.com>\nDelivered-To: bob@example.org\nSubject: cur\n\nx\n")
	write(filepath.Join(md, "new", "2.host"), "X-Original-To: carol@example.org\nDelivered-To: archive@example.org\nSubject: new\n\ny\n")
	write(filepath.Join(md, "tmp", "3.host"), "Subject: in delivery\n\nz\n")
	write(filepath.Join(md, ".Sent", "cur", "4.host:2,S"), "Subject: sent\r\n\r\nw\r\n")
	os.MkdirAll(filepath.Join(md, ".Sent", "new"), 0o755)
	write(filepath.Join(root, "eml", "a.eml"), "Subject: a\n\n1\n")
	write(filepath.Join(root, "eml", "sub", "b.EML"), "Subject: b\r\n\r\n2\r\n")
	write(filepath.Join(root, "eml", "notes.txt"), "not a message")
	write(filepath.Join(root, "eml", ".a.eml.tmp-1"), "partial")

	for path, want := range map[string]string{md: formatMaildir, filepath.Join(root, "eml"): formatEML, filepath.Join(root, "eml", "a.eml"): formatEML} {
		if got, err := detectFormat(path); err != nil || got != want {
			t.Errorf("detectFormat(%s) = %s, %v; want %s", path, got, err, want)
		}
	}
	collect := func(path, format string) []importMsg {
		var out []importMsg
		if err := readSource(context.Background(), path, format, 1<<20, func(m importMsg) error {
			out = append(out, m)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	got := collect(md, formatMaildir)
	var subjects []string
	for _, m := range got {
		subjects = append(subjects, strings.SplitN(string(m.data), "\r\n", 4)[2])
	}
	// Name order: .Sent/cur, cur, new; tmp/ is left alone.
	if len(got) != 3 || !strings.Contains(string(got[0].data), "Subject: sent") {
		t.Fatalf("maildir: %q", subjects)
	}
	if got[1].from != "alice@example.com" || !slices.Equal(got[1].rcpts, []string{"bob@example.org"}) || string(got[1].data) != "Return-Path: <alice@example.com>\r\nDelivered-To: bob@example.org\r\nSubject: cur\r\n\r\nx\r\n" {
		t.Errorf("cur message: %+v", got[1])
	}
	if !slices.Equal(got[2].rcpts, []string{"carol@example.org"}) {
		t.Errorf("X-Original-To is the envelope recipient: %v", got[2].rcpts)
	}
	emls := collect(filepath.Join(root, "eml"), formatEML)
	if len(emls) != 2 || string(emls[0].data) != "Subject: a\r\n\r\n1\r\n" || string(emls[1].data) != "Subject: b\r\n\r\n2\r\n" {
		t.Fatalf("eml folder: %+v", emls)
	}
}

func TestUnwrapNDRForImport(t *testing.T) {
	t.Parallel()
	ndr, err := os.ReadFile("../../journal/testdata/ndr/report-base64.eml")
	if err != nil {
		t.Fatal(err)
	}
	report, _ := os.ReadFile("../../journal/testdata/basic.eml")
	m := importMsg{data: ndr}
	if err := unwrapNDR(&m); err != nil {
		t.Fatal(err)
	}
	if !m.unwrapped || !bytes.Equal(m.data, report) || !slices.Equal(m.rcpts, []string{"journal@archive.example"}) || m.from != "postmaster@contoso.example" {
		t.Fatalf("unwrapped: %v %q %v %q", m.unwrapped, m.data[:40], m.rcpts, m.from)
	}
	plain := importMsg{data: []byte("Content-Type: multipart/report; boundary=x\r\n\r\n--x--\r\n")}
	if err := unwrapNDR(&plain); err != nil || plain.unwrapped {
		t.Fatalf("an NDR without a journal report: %v %v", plain.unwrapped, err)
	}
}

// runImportCLI runs 'chainmail import args…'.
func runImportCLI(t *testing.T, ctx context.Context, args ...string) cliResult {
	t.Helper()
	var out, errb bytes.Buffer
	c := &importCLI{getenv: func(string) string { return "" }, stdout: &out, stderr: &errb, now: time.Now}
	code := c.run(ctx, args)
	return cliResult{code, out.String(), errb.String()}
}

// TestImportOutcomes runs the command against a fake listener: the
// summary counts what was archived and what failed and why; a temporary
// refusal is retried; --state skips what an earlier run delivered.
func TestImportOutcomes(t *testing.T) {
	t.Parallel()
	peer := testutil.StartFakePeer(t, "n1")
	var deferred atomic.Int32
	peer.SetBehaviour(func(c testutil.Call) testutil.Action {
		if c.Step != testutil.StepData {
			return testutil.Action{}
		}
		switch {
		case c.From == "refuse@example.com":
			return testutil.Action{Reply: &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Message refused"}}
		case c.From == "defer@example.com" && deferred.Add(1) == 1:
			return testutil.Action{Reply: &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system storage"}}
		}
		return testutil.Action{}
	})
	dir := t.TempDir()
	var msgs [][]byte
	for i := range 20 {
		msgs = append(msgs, []byte(fmt.Sprintf("Subject: m%d\r\nMessage-ID: <m%d@example.com>\r\n\r\nbody %d\r\n", i, i, i)))
	}
	mbox := filepath.Join(dir, "in.mbox")
	os.WriteFile(mbox, writeMbox(t, msgs, "alice@example.com"), 0o644)
	emls := filepath.Join(dir, "eml")
	os.Mkdir(emls, 0o755)
	os.WriteFile(filepath.Join(emls, "refused.eml"), []byte("Return-Path: <refuse@example.com>\nSubject: no\n\nx\n"), 0o644)
	os.WriteFile(filepath.Join(emls, "deferred.eml"), []byte("Return-Path: <defer@example.com>\nDelivered-To: bob@example.org\nSubject: later\n\ny\n"), 0o644)

	state := filepath.Join(dir, "state")
	r := runImportCLI(t, context.Background(), "--smtp", peer.Addr(), "--state", state, "--concurrency", "3", mbox, emls)
	if r.code != 1 {
		t.Fatalf("exit %d (a failure must fail the command)\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"imported     21\n", "failed       1\n", "refused.eml: 554 5.6.0 Message refused"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, r.stdout)
		}
	}
	acc := peer.Accepted()
	if len(acc) != 21 || deferred.Load() != 2 {
		t.Fatalf("peer accepted %d, deferred %d", len(acc), deferred.Load())
	}
	for _, a := range acc {
		want := []string{defaultImportRcpt}
		if a.From == "defer@example.com" {
			want = []string{"bob@example.org"}
		} else if a.From != "alice@example.com" {
			t.Errorf("sender %s", a.From)
		}
		if !slices.Equal(a.To, want) {
			t.Errorf("recipients %v, want %v", a.To, want)
		}
	}
	// Again with --state: only the refused one is sent.
	r = runImportCLI(t, context.Background(), "--smtp", peer.Addr(), "--state", state, mbox, emls)
	if !strings.Contains(r.stdout, "skipped      21 ") || !strings.Contains(r.stdout, "imported     0\n") || len(peer.Accepted()) != 21 {
		t.Errorf("second run:\n%s\n%s", r.stdout, r.stderr)
	}
}

func TestImportUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{},
		{"--format", "pst", "x"},
		{"--concurrency", "0", "x"},
		{"--smtp", "nohostport", "x"},
		{"--max-size", "lots", "x"},
		{"--smtp-user", "u", "x"},
		{"--rcpt", "not an address", "x"},
	} {
		if r := runImportCLI(t, context.Background(), args...); r.code != 2 {
			t.Errorf("%v: exit %d: %s", args, r.code, r.stderr)
		}
	}
	if r := runImportCLI(t, context.Background(), "/nonexistent/path"); r.code != 1 || !strings.Contains(r.stderr, "no such file") {
		t.Errorf("missing path: %d %s", r.code, r.stderr)
	}
}

// FuzzSplitMbox: no input makes splitMbox panic, and every message it
// yields ends in CRLF and has no bare LF.
func FuzzSplitMbox(f *testing.F) {
	f.Add([]byte("From a@x date\nSubject: a\n\n>From x\n\nFrom b@x date\r\nS: b\r\n"))
	f.Add([]byte("From \n\n\nFrom \r\n>>>From \n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		splitMbox(bytes.NewReader(in), 1<<16, func(m mboxMessage) error {
			if m.err != nil {
				return nil
			}
			if len(m.data) > 0 && !bytes.HasSuffix(m.data, []byte("\r\n")) {
				t.Fatalf("message %d does not end in CRLF: %q", m.index, m.data)
			}
			for i, c := range m.data {
				if c == '\n' && (i == 0 || m.data[i-1] != '\r') {
					t.Fatalf("bare LF in message %d: %q", m.index, m.data)
				}
			}
			return nil
		})
	})
}

// FuzzMboxRoundTrip: any message (CRLF lines, as archived; no CR outside
// a line end, which an LF mbox cannot keep apart from one) survives
// export's mbox writer and import's reader unchanged.
func FuzzMboxRoundTrip(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nFrom y\r\n>From z\r\n"), []byte("\r\n\r\n"))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		clean := func(p []byte) []byte {
			p = bytes.ReplaceAll(p, []byte("\r"), nil)
			return toCRLF(p)
		}
		msgs := [][]byte{clean(a), clean(b)}
		got := split(t, writeMbox(t, msgs, "x@example.com"), 1<<20)
		if len(got) != 2 {
			t.Fatalf("%d messages from %q", len(got), msgs)
		}
		for i := range msgs {
			if !bytes.Equal(got[i].data, msgs[i]) {
				t.Fatalf("message %d: %q, want %q", i, got[i].data, msgs[i])
			}
		}
	})
}

// FuzzMaildirNames: the folder walk takes any file names (as a Maildir
// on a shared disk may hold) without failing or leaving the folder.
func FuzzMaildirNames(f *testing.F) {
	f.Add("1.host:2,S", ".Sent")
	f.Fuzz(func(t *testing.T, name, folder string) {
		if name == "" || strings.ContainsAny(name+folder, "/\x00") || name == "." || name == ".." || folder == "" || folder == "." || folder == ".." {
			return
		}
		root := t.TempDir()
		for _, d := range []string{"cur", "new", filepath.Join(folder, "cur"), filepath.Join(folder, "new")} {
			os.MkdirAll(filepath.Join(root, d), 0o755)
		}
		os.WriteFile(filepath.Join(root, "cur", name), []byte("S: 1\r\n\r\n"), 0o644)
		os.WriteFile(filepath.Join(root, folder, "new", name), []byte("S: 2\r\n\r\n"), 0o644)
		files, err := maildirFiles(root)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range files {
			if !strings.HasPrefix(p, root+string(filepath.Separator)) {
				t.Fatalf("%s outside %s", p, root)
			}
		}
	})
}

func TestImportProgressLine(t *testing.T) {
	t.Parallel()
	start := time.Date(2024, 5, 1, 9, 0, 0, 0, time.UTC)
	p := &importProgress{total: 1000, start: start}
	s := &importSummary{imported: 40, duplicates: 8, skipped: 2, failed: 1, bytes: 500}
	want := "[###############---------------]  50% of 1000 B, 51 messages (40 new, 10 duplicate, 1 failed), 5 msg/s"
	if got := p.line(s, start.Add(10*time.Second)); got != want {
		t.Errorf("line\n%q\nwant\n%q", got, want)
	}
	p.total = 0
	if got := p.line(s, start.Add(10*time.Second)); got != "51 messages (40 new, 10 duplicate, 1 failed), 5 msg/s" {
		t.Errorf("without a total: %q", got)
	}
	var buf bytes.Buffer
	p = &importProgress{w: &buf, on: true, now: func() time.Time { return start }, start: start}
	p.finish(s)
	if !strings.HasPrefix(buf.String(), "\r") || !strings.HasSuffix(buf.String(), "\n") {
		t.Errorf("drawn %q", buf.String())
	}
}
