package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/mail"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"chainmail/archive"
)

// export writes every message a search finds, page by page and message by
// message: memory stays bounded by one page of hits and one buffer, however
// large the archive.
func (c *archiveCLI) export(ctx context.Context, args []string) error {
	fs := c.newFlagSet("export", "--format mbox|eml -o PATH [filters]")
	var af apiFlags
	var ff filterFlags
	af.register(fs)
	ff.register(fs)
	format := fs.String("format", "", "`mbox` (one mboxrd file, LF line ends) or `eml` (a folder of <id>.eml files, exact bytes)")
	out := fs.String("o", "", "the mbox file, or the folder of .eml files, to write (`PATH`)")
	force := fs.Bool("force", false, "replace an existing mbox file")
	part := fs.String("part", "original", "of a journal report: `original` or report (the whole report, with Bcc recipients; admin only)")
	if _, err := c.parse(fs, args, 0); err != nil {
		return err
	}
	if *part != "original" && *part != "report" {
		fmt.Fprintf(c.stderr, "chainmail archive export: --part must be original or report (see -h)\n")
		return errUsage
	}
	if *format != "mbox" && *format != "eml" {
		fmt.Fprintf(c.stderr, "chainmail archive export: --format must be mbox or eml (see -h)\n")
		return errUsage
	}
	if *out == "" {
		fmt.Fprintf(c.stderr, "chainmail archive export: -o PATH is required (see -h)\n")
		return errUsage
	}
	cl, err := c.client(&af)
	if err != nil {
		return err
	}
	q := ff.values()
	total := int64(-1)
	if c.progress && len(q) == 0 {
		// Without filters the archive's count is the export's size, so
		// the bar can show a fraction.
		if n, err := cl.node(ctx); err == nil {
			total = n.Archive.Messages
		}
	}
	q.Set("limit", "1000")
	bar := &progress{w: c.stderr, on: c.progress, total: total, now: time.Now}
	bar.start = bar.now()

	if *format == "eml" {
		err = exportEML(ctx, cl, q, *out, *part, bar)
	} else {
		err = exportMbox(ctx, cl, q, *out, *part, *force, bar)
	}
	bar.finish()
	fmt.Fprintf(c.stderr, "exported %d messages (%s) to %s", bar.done, humanSize(bar.bytes), *out)
	if bar.skipped > 0 {
		fmt.Fprintf(c.stderr, ", %d already there", bar.skipped)
	}
	fmt.Fprintln(c.stderr)
	if err != nil && *format == "eml" {
		// Also after an interrupt: the files written are complete and kept.
		fmt.Fprintln(c.stderr, "run the same command again to resume: it skips the files already written")
	}
	return err
}

// exportEML writes <id>.eml files with the archived bytes, each through a
// temporary file renamed into place once verified. So a file under its
// final name is complete, and a second run skips what the first one wrote.
func exportEML(ctx context.Context, cl *apiClient, q url.Values, dir, part string, bar *progress) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	// Temporary files of an interrupted run.
	if left, _ := filepath.Glob(filepath.Join(dir, ".*.eml.tmp-*")); len(left) > 0 {
		for _, f := range left {
			os.Remove(f)
		}
	}
	return cl.searchAll(ctx, q, func(m archive.Summary) error {
		id, err := checkID(m.ID) // it becomes a file name: no "../" from a server
		if err != nil {
			return fmt.Errorf("the API listed a bad id: %w", err)
		}
		path := filepath.Join(dir, id+".eml")
		size := m.Size
		if m.Original != nil && part == "original" {
			size = m.Original.Size
		}
		if fi, err := os.Lstat(path); err == nil && fi.Mode().IsRegular() && fi.Size() == size {
			bar.skip()
			return nil
		}
		var n int64
		err = writeFileAtomic(path, func(w io.Writer) error {
			var err error
			if n, _, err = fetchVerified(ctx, cl, id, part, w); err != nil {
				return err
			}
			// An interrupt that came while the message was fetched
			// stops here: what is in place is exactly what was done
			// before it, whatever the timing of the last download.
			return ctx.Err()
		})
		if err != nil {
			return err
		}
		bar.add(n)
		return nil
	})
}

// exportMbox writes one mboxrd file (see mboxrdWriter), replaced into
// place only once complete.
func exportMbox(ctx context.Context, cl *apiClient, q url.Values, path, part string, force bool, bar *progress) error {
	if _, err := os.Lstat(path); err == nil && !force {
		return fmt.Errorf("%s exists; use --force to replace it", path)
	}
	return writeFileAtomic(path, func(f io.Writer) error {
		bw := bufio.NewWriterSize(f, 256<<10)
		err := cl.searchAll(ctx, q, func(m archive.Summary) error {
			id, err := checkID(m.ID)
			if err != nil {
				return fmt.Errorf("the API listed a bad id: %w", err)
			}
			if _, err := io.WriteString(bw, mboxSeparator(m)); err != nil {
				return err
			}
			mw := &mboxrdWriter{w: bw, lineStart: true}
			n, _, err := fetchVerified(ctx, cl, id, part, mw)
			if err != nil {
				return err
			}
			if err := mw.finish(); err != nil {
				return err
			}
			// A blank line ends each message (RFC 4155 §2).
			if err := bw.WriteByte('\n'); err != nil {
				return err
			}
			bar.add(n)
			return nil
		})
		if err != nil {
			return err
		}
		return bw.Flush()
	})
}

// mboxSeparator is the "From " line that starts a message in an mbox
// (RFC 4155): the sender's address, or MAILER-DAEMON when there is none
// usable, and the receipt time in asctime form, UTC.
func mboxSeparator(m archive.Summary) string {
	sender := "MAILER-DAEMON"
	if a, err := mail.ParseAddress(m.From); err == nil && a.Address != "" && !strings.ContainsAny(a.Address, " \t\r\n") {
		sender = a.Address
	}
	t := m.Received
	if t.IsZero() {
		t = m.Date
	}
	return "From " + sender + " " + t.UTC().Format(time.ANSIC) + "\n"
}

// mboxrdWriter writes a message into an mbox in the mboxrd convention:
// CRLF line ends become LF (RFC 4155 §2: an mbox uses the local line
// ending), and a line that starts with zero or more '>' followed by "From "
// gets one more '>', so a reader can undo the quoting exactly. It streams:
// the only state kept between writes is how much of a line's start has
// matched, so a line of a million '>' costs no memory.
type mboxrdWriter struct {
	w *bufio.Writer
	// lineStart: at a line's beginning, still deciding whether to quote.
	lineStart bool
	gt        int  // '>' seen at the line's start, not yet written
	from      int  // bytes of "From " matched after them
	cr        bool // a CR held back to see whether an LF follows
	last      byte // last byte written
}

const fromLine = "From "

func (m *mboxrdWriter) Write(p []byte) (int, error) {
	for i := 0; i < len(p); {
		c := p[i]
		if m.cr {
			m.cr = false
			if c == '\n' {
				m.put('\n')
				m.lineStart = true
				i++
				continue
			}
			m.put('\r') // a lone CR is data
		}
		if m.lineStart {
			switch {
			case c == '>' && m.from == 0:
				m.gt++
				i++
				continue
			case c == fromLine[m.from]:
				m.from++
				i++
				if m.from == len(fromLine) {
					m.putPrefix(true)
				}
				continue
			}
			m.putPrefix(false) // not a From line: write what was held, go on
		}
		switch c {
		case '\r':
			m.cr = true
			i++
		case '\n':
			m.put('\n')
			m.lineStart = true
			i++
		default:
			// Copy up to the next line end in one go.
			j := bytes.IndexAny(p[i:], "\r\n")
			if j < 0 {
				j = len(p) - i
			}
			m.w.Write(p[i : i+j])
			m.last = p[i+j-1]
			i += j
		}
	}
	// bufio.Writer keeps its first error and returns it from every later
	// call; the caller sees it at finish or at the final Flush.
	return len(p), nil
}

func (m *mboxrdWriter) put(c byte) {
	m.w.WriteByte(c)
	m.last = c
}

// putPrefix writes the held '>'s and partial "From ", with one more '>'
// when the line is a From line.
func (m *mboxrdWriter) putPrefix(quote bool) {
	if quote {
		m.put('>')
	}
	for range m.gt {
		m.put('>')
	}
	for i := range m.from {
		m.put(fromLine[i])
	}
	m.gt, m.from, m.lineStart = 0, 0, false
}

// finish writes what is held and ends the message with a newline.
func (m *mboxrdWriter) finish() error {
	if m.lineStart && (m.gt > 0 || m.from > 0) {
		m.putPrefix(false)
	}
	if m.cr {
		m.cr = false
		m.put('\n') // a CR at the very end ends the last line
	}
	if m.last != '\n' {
		m.put('\n')
	}
	// Surface a write error of the underlying buffer now.
	_, err := m.w.Write(nil)
	return err
}

// progress draws a one-line progress bar on a terminal; off, it only
// counts, for the summary line.
type progress struct {
	w              io.Writer
	on             bool
	total          int64 // messages expected, -1 if unknown
	done, skipped  int64
	bytes          int64
	now            func() time.Time
	start, drawnAt time.Time
}

func (p *progress) add(n int64) {
	p.done++
	p.bytes += n
	p.draw(false)
}

func (p *progress) skip() {
	p.skipped++
	p.draw(false)
}

func (p *progress) finish() { p.draw(true) }

// draw redraws the line at most ten times a second.
func (p *progress) draw(final bool) {
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
	// \r returns to the line's start; ESC [K clears what a longer
	// previous line left.
	fmt.Fprintf(p.w, "\r%s\x1b[K%s", p.line(now), end)
}

func (p *progress) line(now time.Time) string {
	n := p.done + p.skipped
	rate := 0.0
	if d := now.Sub(p.start).Seconds(); d > 0 {
		rate = float64(n) / d
	}
	tail := fmt.Sprintf("%s, %.0f msg/s", humanSize(p.bytes), rate)
	if p.total <= 0 {
		return fmt.Sprintf("%d messages, %s", n, tail)
	}
	frac := min(1, float64(n)/float64(p.total))
	const width = 30
	filled := int(frac * width)
	bar := strings.Repeat("#", filled) + strings.Repeat("-", width-filled)
	return fmt.Sprintf("[%s] %3.0f%% %d/%d messages, %s", bar, frac*100, n, p.total, tail)
}
