package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"chainmail/internal/config"
)

// 'chainmail import' submits messages from files to a running node over
// SMTP, to one of its listeners, exactly as live traffic arrives: the node
// archives each message and forwards it to its peers through its routes,
// in the same transaction, so an import replicates like everything else
// and nothing about it needs a second code path. The archive's dedupe
// makes it idempotent (a message already archived is answered "already
// archived" and stored once), so an interrupted import is resumed by
// running it again; --state skips what a previous run already delivered
// without sending it again.

const importUsage = `usage: chainmail import [flags] PATH...

Submits the messages of .eml files, folders of .eml files, mbox files and
Maildir folders over SMTP to a running node's listener, which archives and
replicates them like live traffic. Importing the same messages twice
changes nothing: the archive stores a message once.

A non-delivery report that returned an Exchange journal report (from the
alternate journaling mailbox) is imported as the journal report it holds,
sent to the recipients it bounced for.

flags:
`

// importOptions are import's flags.
type importOptions struct {
	smtpAddr       string
	format         string
	concurrency    int
	state          string
	rcpt, from     string
	helo           string
	starttls       bool
	tlsSkipVerify  bool
	user, password string
	maxSize        int
	retries        int
	keepNDR        bool
	retryWait      time.Duration
}

// importCLI holds what import takes from its process, so tests give
// their own.
type importCLI struct {
	getenv         func(string) string
	stdout, stderr io.Writer
	progress       bool // draw a progress bar on stderr (a terminal)
	now            func() time.Time
}

func runImport(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := &importCLI{getenv: os.Getenv, stdout: stdout, stderr: stderr, progress: isTerminal(stderr), now: time.Now}
	return c.run(ctx, args)
}

func (c *importCLI) run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("import", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.Usage = func() {
		fmt.Fprint(c.stderr, importUsage)
		fs.PrintDefaults()
	}
	var o importOptions
	var maxSize string
	fs.StringVar(&o.smtpAddr, "smtp", "", "`HOST:PORT` of the node's listener (env CHAINMAIL_SMTP; default 127.0.0.1:2525)")
	fs.StringVar(&o.format, "format", formatAuto, "`FORMAT` of every PATH: eml, mbox, maildir or auto (a folder with cur/ and new/ is a Maildir, other folders hold .eml files, a file starting with \"From \" is an mbox)")
	fs.IntVar(&o.concurrency, "concurrency", 4, "parallel SMTP sessions (`N`)")
	fs.StringVar(&o.state, "state", "", "record delivered messages in `FILE` and skip those it lists, so a rerun sends only the rest")
	fs.StringVar(&o.rcpt, "rcpt", "", "envelope recipient `ADDR` for every message (default: the one the source records — X-Original-To, Delivered-To, an NDR's failed recipient — else import@chainmail.invalid)")
	fs.StringVar(&o.from, "from", "", "envelope sender `ADDR` for every message (default: the mbox From line or Return-Path, else <>)")
	fs.StringVar(&o.helo, "helo", "", "`NAME` to greet with (default: this host's name)")
	fs.BoolVar(&o.starttls, "starttls", false, "use STARTTLS")
	fs.BoolVar(&o.tlsSkipVerify, "tls-skip-verify", false, "with --starttls, do not verify the listener's certificate")
	fs.StringVar(&o.user, "smtp-user", "", "AUTH PLAIN as `USER`, with --smtp-password (env CHAINMAIL_SMTP_PASSWORD)")
	fs.StringVar(&o.password, "smtp-password", "", "`PASSWORD` for --smtp-user")
	fs.StringVar(&maxSize, "max-size", "64MiB", "largest message to read (`SIZE`); larger ones fail")
	fs.IntVar(&o.retries, "retries", 5, "attempts after a temporary (4xx) refusal or a lost connection, with growing waits (`N`)")
	fs.BoolVar(&o.keepNDR, "keep-ndr", false, "import non-delivery reports as they are, not the journal reports inside them")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(c.stderr, "chainmail import: "+format+" (see -h)\n", a...)
		return 2
	}
	paths := fs.Args()
	if len(paths) == 0 {
		return usage("give at least one PATH")
	}
	switch o.format {
	case formatAuto, formatEML, formatMbox, formatMaildir:
	default:
		return usage("--format must be eml, mbox, maildir or auto")
	}
	if o.concurrency < 1 || o.concurrency > 64 {
		return usage("--concurrency must be between 1 and 64")
	}
	if o.retries < 0 {
		return usage("--retries must be >= 0")
	}
	sz, err := config.ParseSize(maxSize)
	if err != nil || sz <= 0 || sz > 1<<30 {
		return usage("--max-size %q: want a size such as 64MiB, at most 1GiB", maxSize)
	}
	o.maxSize = int(sz)
	if o.smtpAddr == "" {
		o.smtpAddr = c.getenv("CHAINMAIL_SMTP")
	}
	if o.smtpAddr == "" {
		o.smtpAddr = "127.0.0.1:2525"
	}
	if _, _, err := net.SplitHostPort(o.smtpAddr); err != nil {
		return usage("--smtp %q: want HOST:PORT", o.smtpAddr)
	}
	if o.password == "" {
		o.password = c.getenv("CHAINMAIL_SMTP_PASSWORD")
	}
	if o.user != "" && o.password == "" {
		return usage("--smtp-user needs --smtp-password")
	}
	if o.rcpt != "" && envelopeAddress(o.rcpt) == "" {
		return usage("--rcpt %q is not an address", o.rcpt)
	}
	if o.from != "" && envelopeAddress(o.from) == "" {
		return usage("--from %q is not an address", o.from)
	}
	if o.helo == "" {
		o.helo, _ = os.Hostname()
		if o.helo == "" {
			o.helo = "localhost"
		}
	}
	if o.retryWait == 0 {
		o.retryWait = time.Second
	}
	formats := make([]string, len(paths))
	for i, p := range paths {
		formats[i] = o.format
		if o.format == formatAuto {
			if formats[i], err = detectFormat(p); err != nil {
				fmt.Fprintf(c.stderr, "chainmail import: %v\n", err)
				return 1
			}
		} else if _, err := os.Stat(p); err != nil {
			fmt.Fprintf(c.stderr, "chainmail import: %v\n", err)
			return 1
		}
	}
	sum, err := c.importAll(ctx, &o, paths, formats)
	sum.print(c.stdout)
	switch {
	case ctx.Err() != nil:
		fmt.Fprintln(c.stderr, "chainmail import: interrupted; run the same command again to resume (what was delivered is not stored twice)")
		return 1
	case err != nil:
		fmt.Fprintf(c.stderr, "chainmail import: %v\n", err)
		return 1
	case sum.failed > 0:
		return 1
	}
	return 0
}

// importSummary counts the outcomes.
type importSummary struct {
	imported, duplicates, skipped, unwrapped, failed int
	bytes                                            int64
	failures                                         []string // "location: reason"
}

// maxListedFailures bounds the failures printed one by one.
const maxListedFailures = 50

func (s *importSummary) print(w io.Writer) {
	fmt.Fprintf(w, "imported     %d\n", s.imported)
	fmt.Fprintf(w, "duplicates   %d (already archived)\n", s.duplicates)
	if s.skipped > 0 {
		fmt.Fprintf(w, "skipped      %d (delivered by an earlier run, per --state)\n", s.skipped)
	}
	if s.unwrapped > 0 {
		fmt.Fprintf(w, "unwrapped    %d (journal reports taken out of non-delivery reports)\n", s.unwrapped)
	}
	fmt.Fprintf(w, "failed       %d\n", s.failed)
	for _, f := range s.failures {
		fmt.Fprintf(w, "  %s\n", f)
	}
	if more := s.failed - len(s.failures); more > 0 {
		fmt.Fprintf(w, "  … and %d more\n", more)
	}
}

type outcome int

const (
	outImported outcome = iota
	outDuplicate
	outFailed
	outSkipped
)

type importResult struct {
	msg    importMsg
	out    outcome
	reason string
}

// importAll reads the sources in order on one goroutine, submits on
// o.concurrency sessions, and counts on this one. Memory holds at most a
// few messages per session.
func (c *importCLI) importAll(ctx context.Context, o *importOptions, paths, formats []string) (*importSummary, error) {
	sum := &importSummary{}
	done, stateFile, err := openState(o.state)
	if err != nil {
		return sum, err
	}
	if stateFile != nil {
		defer stateFile.Close()
	}
	var total int64
	if c.progress {
		for _, p := range paths {
			total += sourceSize(p)
		}
	}
	bar := &importProgress{w: c.stderr, on: c.progress, total: total, now: c.now}
	bar.start = c.now()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan importMsg, o.concurrency*2)
	results := make(chan importResult, o.concurrency*2)
	var readErr error
	go func() {
		defer close(jobs)
		for i, p := range paths {
			err := readSource(ctx, p, formats[i], o.maxSize, func(m importMsg) error {
				if m.err == nil && !o.keepNDR {
					if err := unwrapNDR(&m); err != nil {
						m.err = fmt.Errorf("non-delivery report: %w", err)
					}
				}
				if m.err == nil {
					m.hash()
					if done[m.sum] {
						results <- importResult{msg: m, out: outSkipped}
						return nil
					}
				}
				select {
				case jobs <- m:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			})
			if err != nil {
				if ctx.Err() == nil {
					readErr = fmt.Errorf("%s: %w", p, err)
				}
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for range o.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := &submitter{o: o}
			defer s.close()
			for m := range jobs {
				if ctx.Err() != nil {
					continue // interrupted: neither sent nor failed
				}
				if m.err != nil {
					results <- importResult{msg: m, out: outFailed, reason: m.err.Error()}
					continue
				}
				out, reason := s.submit(ctx, &m)
				results <- importResult{msg: m, out: out, reason: reason}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(results)
	}()
	var stateW *bufio.Writer
	if stateFile != nil {
		stateW = bufio.NewWriter(stateFile)
		defer stateW.Flush()
	}
	for r := range results {
		sum.bytes += r.msg.srcBytes
		if r.msg.unwrapped && (r.out == outImported || r.out == outDuplicate) {
			sum.unwrapped++
		}
		switch r.out {
		case outImported:
			sum.imported++
		case outDuplicate:
			sum.duplicates++
		case outSkipped:
			sum.skipped++
		case outFailed:
			sum.failed++
			if len(sum.failures) < maxListedFailures {
				sum.failures = append(sum.failures, r.msg.loc+": "+r.reason)
			}
		}
		if stateW != nil && (r.out == outImported || r.out == outDuplicate) {
			stateW.WriteString(r.msg.sum + "\n")
			if len(results) == 0 {
				stateW.Flush() // at a lull, so an interrupt loses little
			}
		}
		bar.update(sum)
	}
	bar.finish(sum)
	if stateW != nil {
		if err := stateW.Flush(); err != nil {
			return sum, fmt.Errorf("--state %s: %w", o.state, err)
		}
	}
	return sum, readErr
}

// openState reads the ids a previous run recorded and opens the file to
// append to.
func openState(path string) (map[string]bool, *os.File, error) {
	done := map[string]bool{}
	if path == "" {
		return done, nil, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("--state: %w", err)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if id, err := checkID(strings.TrimSpace(sc.Text())); err == nil {
			done[id] = true
		}
	}
	if err := sc.Err(); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("--state %s: %w", path, err)
	}
	return done, f, nil
}

// defaultImportRcpt receives what has no known recipient: the listener
// needs one, and .invalid (RFC 2606) says plainly that it is none.
const defaultImportRcpt = "import@chainmail.invalid"

// submitter is one SMTP session to the listener, opened when needed and
// reopened after it is lost.
type submitter struct {
	o *importOptions
	c *smtp.Client
}

func (s *submitter) close() {
	if s.c != nil {
		s.c.Quit()
		s.c.Close()
		s.c = nil
	}
}

func (s *submitter) drop() {
	if s.c != nil {
		s.c.Close()
		s.c = nil
	}
}

func (s *submitter) connect(ctx context.Context) error {
	d := net.Dialer{Timeout: 30 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", s.o.smtpAddr)
	if err != nil {
		return err
	}
	var c *smtp.Client
	if s.o.starttls {
		host, _, _ := net.SplitHostPort(s.o.smtpAddr)
		// go-smtp greets and says EHLO itself before STARTTLS.
		if c, err = smtp.NewClientStartTLS(conn, &tls.Config{ServerName: host, InsecureSkipVerify: s.o.tlsSkipVerify}); err != nil {
			conn.Close()
			return fmt.Errorf("STARTTLS: %w", err)
		}
	} else {
		c = smtp.NewClient(conn)
		if err := c.Hello(s.o.helo); err != nil {
			c.Close()
			return err
		}
	}
	c.CommandTimeout = 5 * time.Minute
	c.SubmissionTimeout = 10 * time.Minute
	if s.o.user != "" {
		if err := c.Auth(sasl.NewPlainClient("", s.o.user, s.o.password)); err != nil {
			c.Close()
			return fmt.Errorf("AUTH: %w", err)
		}
	}
	s.c = c
	return nil
}

// submit sends one message, retrying temporary failures. It returns the
// outcome and, for a failure, the reason.
func (s *submitter) submit(ctx context.Context, m *importMsg) (outcome, string) {
	from := m.from
	if s.o.from != "" {
		from = s.o.from
	}
	rcpts := m.rcpts
	if s.o.rcpt != "" {
		rcpts = []string{s.o.rcpt}
	}
	if len(rcpts) == 0 {
		rcpts = []string{defaultImportRcpt}
	}
	wait := s.o.retryWait
	var last string
	for attempt := 0; attempt <= s.o.retries; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return outFailed, "interrupted after: " + last
			case <-time.After(wait):
			}
			wait = min(2*wait, time.Minute)
		}
		if ctx.Err() != nil {
			return outFailed, "interrupted"
		}
		text, err := s.transaction(ctx, from, rcpts, m.data)
		if err == nil {
			if strings.Contains(text, "already archived") {
				return outDuplicate, ""
			}
			return outImported, ""
		}
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			last = fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
			if se.Code == 421 {
				s.drop() // the server closes the session after a 421
			} else if s.c != nil && s.c.Reset() != nil {
				s.drop()
			}
			if se.Code >= 500 {
				return outFailed, last // it can never pass as sent
			}
			continue
		}
		last = err.Error()
		s.drop()
	}
	return outFailed, last
}

// transaction is MAIL, RCPT… and DATA on the session (opened if needed);
// it returns the text of the final 250.
func (s *submitter) transaction(ctx context.Context, from string, rcpts []string, data []byte) (string, error) {
	if s.c == nil {
		if err := s.connect(ctx); err != nil {
			return "", err
		}
	}
	opts := &smtp.MailOptions{Size: int64(len(data))}
	if !isASCII(from) || !allASCII(rcpts) {
		if ok, _ := s.c.Extension("SMTPUTF8"); ok {
			opts.UTF8 = true
		}
	}
	if ok, _ := s.c.Extension("8BITMIME"); ok && !isASCII(string(data)) {
		opts.Body = smtp.Body8BitMIME
	}
	if err := s.c.Mail(from, opts); err != nil {
		return "", err
	}
	for _, r := range rcpts {
		if err := s.c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	w, err := s.c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write(data); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func allASCII(list []string) bool {
	for _, s := range list {
		if !isASCII(s) {
			return false
		}
	}
	return true
}

// importProgress draws a one-line progress bar on a terminal: source
// bytes read against their total, and the counts so far.
type importProgress struct {
	w              io.Writer
	on             bool
	total          int64
	now            func() time.Time
	start, drawnAt time.Time
}

func (p *importProgress) update(s *importSummary) { p.draw(s, false) }
func (p *importProgress) finish(s *importSummary) { p.draw(s, true) }

func (p *importProgress) draw(s *importSummary, final bool) {
	if !p.on {
		return
	}
	now := p.now()
	if !final && now.Sub(p.drawnAt) < 100*time.Millisecond {
		return
	}
	p.drawnAt = now
	end := ""
	if final {
		end = "\n"
	}
	fmt.Fprintf(p.w, "\r%s\x1b[K%s", p.line(s, now), end)
}

func (p *importProgress) line(s *importSummary, now time.Time) string {
	n := s.imported + s.duplicates + s.skipped + s.failed
	rate := 0.0
	if d := now.Sub(p.start).Seconds(); d > 0 {
		rate = float64(n) / d
	}
	counts := fmt.Sprintf("%d messages (%d new, %d duplicate, %d failed), %.0f msg/s", n, s.imported, s.duplicates+s.skipped, s.failed, rate)
	if p.total <= 0 {
		return counts
	}
	frac := min(1, float64(s.bytes)/float64(p.total))
	const width = 30
	filled := int(frac * width)
	return fmt.Sprintf("[%s%s] %3.0f%% of %s, %s", strings.Repeat("#", filled), strings.Repeat("-", width-filled), frac*100, humanSize(p.total), counts)
}
