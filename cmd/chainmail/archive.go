package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/term"

	"chainmail/archive"
	"chainmail/internal/envelope"
)

const archiveUsage = `usage: chainmail archive <command> [flags]

commands:
  search  [filters] [--all] [--json]          find messages, newest first
  show    ID [--json]                         a message's metadata
  raw     ID [--part P] [-o FILE]             a message's exact archived bytes; of a
                                              journal report its original, unless
                                              --part report (admin only)
  digest  [--json]                            message count and archive digest
  export  --format mbox|eml -o PATH [filters] write messages to an mbox file or
                                              a folder of <id>.eml files
  verify  [--json]                            read every message back against its id
                                              (admin; exit 1 if any is damaged)

Every command talks to a running node's API and takes
  --api URL        (env CHAINMAIL_API, default http://127.0.0.1:8090)
  --token TOKEN    (env CHAINMAIL_TOKEN), or
  --user NAME --password PASSWORD (env CHAINMAIL_PASSWORD) for a console account

Run 'chainmail archive <command> -h' for a command's flags.
Exit status: 0 done, 1 failed, 2 usage error.
`

const defaultAPI = "http://127.0.0.1:8090"

// runArchive is 'chainmail archive'.
func runArchive(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := &archiveCLI{
		getenv: os.Getenv, stdout: stdout, stderr: stderr,
		progress: isTerminal(stderr), loc: time.Local,
	}
	return c.run(ctx, args)
}

// archiveCLI holds what the archive commands take from their process, so
// tests give their own.
type archiveCLI struct {
	getenv         func(string) string
	stdout, stderr io.Writer
	// progress draws a progress bar on stderr during an export: only when
	// stderr is a terminal, so logs and pipes get no control characters.
	progress bool
	// loc is the time zone of the table's dates.
	loc *time.Location
}

// errUsage marks a command-line mistake (exit 2); its text is already
// printed.
var errUsage = errors.New("usage")

func (c *archiveCLI) run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, archiveUsage)
		return 2
	}
	cmds := map[string]func(context.Context, []string) error{
		"search": c.search, "show": c.show, "raw": c.raw, "digest": c.digest, "export": c.export, "verify": c.verify,
	}
	name := args[0]
	if name == "-h" || name == "-help" || name == "--help" || name == "help" {
		fmt.Fprint(c.stdout, archiveUsage)
		return 0
	}
	fn, ok := cmds[name]
	if !ok {
		fmt.Fprintf(c.stderr, "chainmail archive: unknown command %q\n\n%s", name, archiveUsage)
		return 2
	}
	err := fn(ctx, args[1:])
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case ctx.Err() != nil:
		fmt.Fprintf(c.stderr, "chainmail archive %s: interrupted\n", name)
		return 1
	}
	fmt.Fprintf(c.stderr, "chainmail archive %s: %v\n", name, err)
	return 1
}

// apiFlags are the connection flags every command takes.
type apiFlags struct{ api, token, user, password string }

func (a *apiFlags) register(fs *flag.FlagSet) {
	// Defaults from the environment are applied after parsing, so -h never
	// prints a token or password.
	fs.StringVar(&a.api, "api", "", "node API `URL` (env CHAINMAIL_API; default "+defaultAPI+")")
	fs.StringVar(&a.token, "token", "", "API bearer `TOKEN` (env CHAINMAIL_TOKEN)")
	fs.StringVar(&a.user, "user", "admin", "console account `NAME` for HTTP Basic, with --password")
	fs.StringVar(&a.password, "password", "", "console account `PASSWORD` (env CHAINMAIL_PASSWORD)")
}

func (c *archiveCLI) client(a *apiFlags) (*apiClient, error) {
	or := func(v, env, def string) string {
		if v != "" {
			return v
		}
		if e := c.getenv(env); e != "" {
			return e
		}
		return def
	}
	return newAPIClient(or(a.api, "CHAINMAIL_API", defaultAPI), or(a.token, "CHAINMAIL_TOKEN", ""),
		a.user, or(a.password, "CHAINMAIL_PASSWORD", ""))
}

// filterFlags are the search filters of search and export.
type filterFlags struct{ from, to, subject, messageID, after, before, text string }

func (f *filterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.from, "from", "", "sender: an `address`, @domain, domain or part of one")
	fs.StringVar(&f.to, "to", "", "recipient (To, Cc or envelope): an `address`, @domain, domain or part of one")
	fs.StringVar(&f.subject, "subject", "", "`text` in the subject (case-insensitive)")
	fs.StringVar(&f.messageID, "message-id", "", "exact Message-ID, with or without <>")
	fs.StringVar(&f.after, "after", "", "messages dated on or after `TIME` (RFC 3339 or YYYY-MM-DD)")
	fs.StringVar(&f.before, "before", "", "messages dated before `TIME` (RFC 3339 or YYYY-MM-DD)")
	fs.StringVar(&f.text, "q", "", "free `text` over the indexed headers")
}

func (f *filterFlags) values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{
		"from": f.from, "to": f.to, "subject": f.subject, "message_id": f.messageID,
		"after": f.after, "before": f.before, "q": f.text,
	} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}

// newFlagSet makes a command's flag set whose -h prints to stdout.
func (c *archiveCLI) newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("archive "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(c.stdout, "usage: chainmail archive %s %s\n\nflags:\n", name, synopsis)
		fs.SetOutput(c.stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return fs
}

// parse parses flags and checks the count of positionals.
func (c *archiveCLI) parse(fs *flag.FlagSet, args []string, positionals int) ([]string, error) {
	pos, err := c.parseFlags(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) != positionals {
		want := "no arguments"
		if positionals == 1 {
			want = "one message ID"
		}
		fmt.Fprintf(c.stderr, "chainmail %s: want %s, got %d (see -h)\n", fs.Name(), want, len(pos))
		return nil, errUsage
	}
	return pos, nil
}

// parseFlags parses flags that may come before, after or between the
// positional arguments (the flag package stops at the first positional)
// and returns the positionals.
func (c *archiveCLI) parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			fmt.Fprintf(c.stderr, "chainmail %s: %v (see -h)\n", fs.Name(), err)
			return nil, errUsage
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func (c *archiveCLI) search(ctx context.Context, args []string) error {
	fs := c.newFlagSet("search", "[filters] [--all] [--json]")
	var af apiFlags
	var ff filterFlags
	af.register(fs)
	ff.register(fs)
	limit := fs.Int("limit", 50, "hits per page (1-1000)")
	cursor := fs.String("cursor", "", "continue from the `CURSOR` a previous page printed")
	all := fs.Bool("all", false, "follow the cursors to the last hit")
	asJSON := fs.Bool("json", false, "print the API's JSON instead of a table")
	if _, err := c.parse(fs, args, 0); err != nil {
		return err
	}
	cl, err := c.client(&af)
	if err != nil {
		return err
	}
	q := ff.values()
	q.Set("limit", fmt.Sprint(*limit))
	if *cursor != "" {
		q.Set("cursor", *cursor)
	}

	if !*all {
		p, err := cl.search(ctx, q)
		if err != nil {
			return err
		}
		if *asJSON {
			return writeIndented(c.stdout, p)
		}
		c.tableHeader()
		for _, m := range p.Messages {
			c.tableRow(m)
		}
		if p.NextCursor != "" {
			fmt.Fprintf(c.stderr, "more hits: add --cursor %s (or --all)\n", p.NextCursor)
		}
		return nil
	}

	// --all streams: rows (or JSON elements) are printed page by page, so
	// a search over the whole archive does not gather it in memory.
	n := 0
	if *asJSON {
		fmt.Fprint(c.stdout, "{\"messages\":[")
	} else {
		c.tableHeader()
	}
	err = cl.searchAll(ctx, q, func(m archive.Summary) error {
		if *asJSON {
			b, err := json.Marshal(m)
			if err != nil {
				return err
			}
			if n > 0 {
				fmt.Fprint(c.stdout, ",")
			}
			fmt.Fprintf(c.stdout, "\n  %s", b)
		} else {
			c.tableRow(m)
		}
		n++
		return nil
	})
	if *asJSON {
		fmt.Fprint(c.stdout, "\n],\"next_cursor\":\"\"}\n")
	}
	return err
}

// The table has fixed columns so that it can be printed page by page.
const tableFormat = "%-16s  %-28s  %-40s  %7s  %s\n"

func (c *archiveCLI) tableHeader() {
	fmt.Fprintf(c.stdout, tableFormat, "DATE", "FROM", "SUBJECT", "SIZE", "ID")
}

func (c *archiveCLI) tableRow(m archive.Summary) {
	date := m.Date
	if date.IsZero() {
		date = m.Received
	}
	fmt.Fprintf(c.stdout, tableFormat, date.In(c.loc).Format("2006-01-02 15:04"),
		fit(m.From, 28), fit(m.Subject, 40), humanSize(m.Size), printable(m.ID))
}

// printable replaces control characters: header text comes from senders,
// and escape sequences must not reach the operator's terminal.
func printable(s string) string {
	s = strings.ToValidUTF8(s, "?")
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return ' '
		}
		return r
	}, s)
}

// fit makes s printable and at most n runes long.
func fit(s string, n int) string {
	s = printable(s)
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

func humanSize(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f K", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f M", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f G", float64(n)/(1<<30))
}

func writeIndented(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (c *archiveCLI) show(ctx context.Context, args []string) error {
	fs := c.newFlagSet("show", "ID [--json]")
	var af apiFlags
	af.register(fs)
	asJSON := fs.Bool("json", false, "print the API's JSON")
	pos, err := c.parse(fs, args, 1)
	if err != nil {
		return err
	}
	cl, err := c.client(&af)
	if err != nil {
		return err
	}
	raw, err := cl.message(ctx, pos[0])
	if err != nil {
		return err
	}
	if *asJSON {
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return err
		}
		return writeIndented(c.stdout, v)
	}
	var m archive.Meta
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("decode message: %w", err)
	}
	c.printMeta(&m)
	return nil
}

func (c *archiveCLI) printMeta(m *archive.Meta) {
	line := func(k, v string) {
		if v != "" {
			fmt.Fprintf(c.stdout, "%-12s %s\n", k+":", printable(v))
		}
	}
	list := func(v []string) string { return strings.Join(v, ", ") }
	when := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.In(c.loc).Format(time.RFC3339)
	}
	line("id", m.ID)
	line("size", fmt.Sprintf("%d bytes", m.Size))
	line("message-id", m.Headers.MessageID)
	line("date", when(m.Headers.Date))
	line("from", list(m.Headers.From))
	line("to", list(m.Headers.To))
	line("cc", list(m.Headers.Cc))
	line("subject", m.Headers.Subject)
	line("mail from", "<"+m.Envelope.MailFrom+">")
	line("rcpt to", list(m.Envelope.RcptTo))
	r := m.Receipt
	recv := when(r.Received)
	if r.Node != "" {
		recv += fmt.Sprintf(" by node %s, listener %s", r.Node, r.Listener)
	}
	if r.ClientIP != "" {
		recv += fmt.Sprintf(", from %s port %d (HELO %s)", r.ClientIP, r.ClientPort, r.Helo)
	}
	if r.ProxiedBy != "" {
		recv += ", via " + r.ProxiedBy
	}
	if r.TLS != "" {
		recv += ", " + r.TLS
	}
	if r.AuthUser != "" {
		recv += ", auth " + r.AuthUser
	}
	line("received", recv)
	if m.Receipts > 1 {
		line("receipts", fmt.Sprintf("%d (duplicates merged)", m.Receipts))
	}
	line("origin", m.Origin)
	for _, t := range m.Trace {
		line("trace", t.Value())
	}
	for _, e := range m.EncodedRcptTo {
		line("encoded rcpt", e)
	}
	if j := m.Journal; j != nil {
		desc := fmt.Sprintf("%s report, %d recipients", j.Format, len(j.Recipients))
		if j.Restricted {
			desc += " shown (Bcc recipients and list members are for the admin role)"
		}
		line("journal", desc)
		if o := j.Original; o != nil {
			line("  original", fmt.Sprintf("%s, %d bytes, sha256 %s", o.ContentType, o.Size, o.SHA256))
		}
		if j.Decrypted != nil {
			line("  decrypted", fmt.Sprintf("%d bytes (archive raw --part decrypted)", j.Decrypted.Size))
		}
		if j.TNEF {
			line("  tnef", "the original is TNEF (winmail.dat), not decoded")
		}
		if j.GroupedInto != "" {
			line("  grouped", "into "+j.GroupedInto+", which search shows for this original")
		}
		for _, r := range j.Reports {
			line("  report", r.ID)
		}
		for _, w := range j.Warnings {
			line("  warning", w)
		}
		for _, r := range j.Recipients {
			s := r.Kind + " " + r.Address
			if r.ExpandedFrom != "" {
				s += " (expanded from " + r.ExpandedFrom + ")"
			}
			if r.ForwardedFrom != "" {
				s += " (forwarded from " + r.ForwardedFrom + ")"
			}
			line("  recipient", s)
		}
	}
	for _, p := range m.Headers.Problems {
		line("problem", p)
	}
}

func (c *archiveCLI) raw(ctx context.Context, args []string) error {
	fs := c.newFlagSet("raw", "ID [--part original|report|decrypted] [-o FILE]")
	var af apiFlags
	af.register(fs)
	out := fs.String("o", "", "write to `FILE` instead of stdout (replaced only once complete)")
	part := fs.String("part", "", "of a journal report: `original` (the default), report (the whole report, with Bcc recipients; admin only) or decrypted")
	pos, err := c.parse(fs, args, 1)
	if err != nil {
		return err
	}
	id, err := checkID(pos[0])
	if err != nil {
		fmt.Fprintf(c.stderr, "chainmail archive raw: %v\n", err)
		return errUsage
	}
	switch *part {
	case "", "original", "report", "decrypted":
	default:
		fmt.Fprintf(c.stderr, "chainmail archive raw: --part must be original, report or decrypted\n")
		return errUsage
	}
	cl, err := c.client(&af)
	if err != nil {
		return err
	}
	var served string
	fetch := func(w io.Writer) error {
		var err error
		_, served, err = fetchVerified(ctx, cl, id, *part, w)
		return err
	}
	if *out == "" {
		err = fetch(c.stdout)
	} else {
		err = writeFileAtomic(*out, fetch)
	}
	if err == nil && served == "original" && *part == "" {
		fmt.Fprintf(c.stderr, "chainmail archive raw: %s is a journal report; this is its original (--part report for the report)\n", id)
	}
	return err
}

// checkID accepts a message id (64 hex digits) and returns it in lower
// case. Ids from the API are checked too before they name a file.
func checkID(s string) (string, error) {
	h, ok := envelope.ParseHash(s)
	if !ok {
		return "", fmt.Errorf("%q is not a message id (64 hexadecimal digits)", s)
	}
	return h.String(), nil
}

// fetchVerified copies a message's bytes, or the asked part of a journal
// report, to w and checks them against their SHA-256 (the id, or the
// part's, which the node sends as ETag): what reaches the operator is
// exactly what was archived, or the command fails. It returns the part
// the node served.
func fetchVerified(ctx context.Context, cl *apiClient, id, part string, w io.Writer) (int64, string, error) {
	d, err := cl.raw(ctx, id, part)
	if err != nil {
		return 0, "", err
	}
	defer d.body.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), d.body)
	if err != nil {
		return n, d.part, fmt.Errorf("download %s: %w", id, err)
	}
	if d.size >= 0 && n != d.size {
		return n, d.part, fmt.Errorf("download %s: got %d bytes, the node announced %d", id, n, d.size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.sum {
		return n, d.part, fmt.Errorf("download %s: the bytes hash to %s, want %s", id, got, d.sum)
	}
	return n, d.part, nil
}

// writeFileAtomic writes path through a temporary file in the same folder
// and renames it into place only when fill succeeded, so an interrupted or
// failed write never leaves a partial file under the final name.
func writeFileAtomic(path string, fill func(io.Writer) error) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = fill(f); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func (c *archiveCLI) digest(ctx context.Context, args []string) error {
	fs := c.newFlagSet("digest", "[--json]")
	var af apiFlags
	af.register(fs)
	asJSON := fs.Bool("json", false, "print the API's JSON")
	if _, err := c.parse(fs, args, 0); err != nil {
		return err
	}
	cl, err := c.client(&af)
	if err != nil {
		return err
	}
	d, err := cl.digest(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeIndented(c.stdout, d)
	}
	fmt.Fprintf(c.stdout, "messages  %d\nsha256    %s\n", d.Count, d.SHA256)
	return nil
}

func (c *archiveCLI) verify(ctx context.Context, args []string) error {
	fs := c.newFlagSet("verify", "[--json]")
	var af apiFlags
	af.register(fs)
	asJSON := fs.Bool("json", false, "print the API's JSON")
	if _, err := c.parse(fs, args, 0); err != nil {
		return err
	}
	cl, err := c.client(&af)
	if err != nil {
		return err
	}
	// The node reads its whole archive before it answers.
	cl.http.Transport.(*http.Transport).ResponseHeaderTimeout = 0
	var v archive.Verification
	if err := cl.getJSON(ctx, "/api/v1/archive/verify", nil, &v); err != nil {
		return err
	}
	if *asJSON {
		if err := writeIndented(c.stdout, v); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(c.stdout, "messages  %d\nbytes     %d\ndamaged   %d\n", v.Messages, v.Bytes, len(v.Damaged))
		for _, d := range v.Damaged {
			fmt.Fprintf(c.stdout, "  %s  %s\n", d.ID, d.Problem)
		}
	}
	if len(v.Damaged) > 0 {
		return fmt.Errorf("%d damaged messages", len(v.Damaged))
	}
	return nil
}

// isTerminal tells whether w is a terminal (for the progress bar).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
