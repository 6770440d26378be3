package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/mail"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"chainmail/journal"
)

// The sources 'chainmail import' reads: .eml files, mbox files and Maildir
// folders. Each yields messages as the bytes to submit (CRLF line ends,
// ending in CRLF, as DATA carries them) and, when the source knows it, the
// envelope they were delivered with.

// importMsg is one message read from a source.
type importMsg struct {
	loc   string   // where it came from: a path, or path:N for an mbox's Nth message
	data  []byte   // what to send
	from  string   // envelope sender; "" for <>
	rcpts []string // envelope recipients when the source knows them
	sum   string   // SHA-256 of data, hex: the id the archive will give it
	// unwrapped is set when data is a journal report taken out of a
	// non-delivery report.
	unwrapped bool
	err       error // the message could not be read; it counts as failed
	srcBytes  int64 // source bytes it took, for the progress bar
}

// Source formats.
const (
	formatAuto    = "auto"
	formatEML     = "eml"
	formatMbox    = "mbox"
	formatMaildir = "maildir"
)

// detectFormat picks a path's format: a folder with cur/ and new/ is a
// Maildir, any other folder holds .eml files; a file that starts with
// "From " is an mbox, any other file one message.
func detectFormat(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if fi.IsDir() {
		if isMaildir(path) {
			return formatMaildir, nil
		}
		return formatEML, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 5)
	n, _ := io.ReadFull(f, head)
	if string(head[:n]) == "From " {
		return formatMbox, nil
	}
	return formatEML, nil
}

func isMaildir(dir string) bool {
	for _, sub := range []string{"cur", "new"} {
		if fi, err := os.Stat(filepath.Join(dir, sub)); err != nil || !fi.IsDir() {
			return false
		}
	}
	return true
}

// sourceSize is the number of bytes path holds (for the progress bar).
func sourceSize(path string) int64 {
	var total int64
	filepath.WalkDir(path, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				total += fi.Size()
			}
		}
		return nil
	})
	return total
}

// readSource reads every message of path in the given format (not auto)
// and hands each to emit, in order. It stops at emit's first error or
// when ctx ends.
func readSource(ctx context.Context, path, format string, maxSize int, emit func(importMsg) error) error {
	switch format {
	case formatMbox:
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		return splitMbox(f, maxSize, func(m mboxMessage) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			im := importMsg{loc: fmt.Sprintf("%s:%d", path, m.index), data: m.data, from: m.sender, srcBytes: m.srcBytes, err: m.err}
			if im.err == nil && len(im.data) == 0 {
				im.err = errors.New("empty message")
			}
			return emit(im)
		})
	case formatMaildir:
		files, err := maildirFiles(path)
		if err != nil {
			return err
		}
		return emitFiles(ctx, files, maxSize, emit)
	case formatEML:
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return emitFiles(ctx, []string{path}, maxSize, emit)
		}
		var files []string
		err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.Type().IsRegular() && strings.EqualFold(filepath.Ext(p), ".eml") && !strings.HasPrefix(d.Name(), ".") {
				files = append(files, p)
			}
			return nil
		})
		if err != nil {
			return err
		}
		return emitFiles(ctx, files, maxSize, emit)
	}
	return fmt.Errorf("unknown format %q", format)
}

// maildirFiles lists the messages of a Maildir, and of its Maildir++
// sub-folders (".Sent", ".Archive.2024"), in name order. tmp/ holds
// deliveries in progress and is left alone.
func maildirFiles(root string) ([]string, error) {
	var files []string
	dirs := []string{root}
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), ".") && e.Name() != "." && e.Name() != ".." && isMaildir(filepath.Join(root, e.Name())) {
			dirs = append(dirs, filepath.Join(root, e.Name()))
		}
	}
	for _, d := range dirs {
		for _, sub := range []string{"cur", "new"} {
			entries, err := os.ReadDir(filepath.Join(d, sub))
			if err != nil {
				return nil, err
			}
			for _, e := range entries {
				if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") {
					files = append(files, filepath.Join(d, sub, e.Name()))
				}
			}
		}
	}
	sort.Strings(files)
	return files, nil
}

// emitFiles reads each file as one message.
func emitFiles(ctx context.Context, files []string, maxSize int, emit func(importMsg) error) error {
	for _, p := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		im := importMsg{loc: p}
		f, err := os.Open(p)
		if err != nil {
			im.err = err
		} else {
			b, err := io.ReadAll(io.LimitReader(f, int64(maxSize)+1))
			f.Close()
			im.srcBytes = int64(len(b))
			switch {
			case err != nil:
				im.err = err
			case len(b) > maxSize:
				im.err = fmt.Errorf("larger than --max-size (%d bytes)", maxSize)
			case len(b) == 0:
				im.err = errors.New("empty file")
			default:
				im.data = toCRLF(b)
				im.from, im.rcpts = headerEnvelope(im.data)
			}
		}
		if err := emit(im); err != nil {
			return err
		}
	}
	return nil
}

// toCRLF makes every line end in CRLF, the message end in CRLF too, and
// leaves the rest as it is: a lone CR stays. Without a bare LF the slice
// is returned as it is (plus a final CRLF if it lacks one).
func toCRLF(b []byte) []byte {
	bare := 0
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			bare++
		}
	}
	if bare > 0 {
		out := make([]byte, 0, len(b)+bare+2)
		for i, c := range b {
			if c == '\n' && (i == 0 || b[i-1] != '\r') {
				out = append(out, '\r')
			}
			out = append(out, c)
		}
		b = out
	}
	if !bytes.HasSuffix(b, []byte("\r\n")) {
		if bytes.HasSuffix(b, []byte("\r")) {
			b = append(b, '\n')
		} else {
			b = append(b, '\r', '\n')
		}
	}
	return b
}

// headerEnvelope is the envelope a delivered message's header records:
// Return-Path for the sender, X-Original-To or else Delivered-To for the
// recipient (what a delivery agent adds to a message in a mailbox).
func headerEnvelope(msg []byte) (from string, rcpts []string) {
	end := bytes.Index(msg, []byte("\r\n\r\n"))
	if end < 0 || end > 1<<20 {
		return "", nil
	}
	m, err := mail.ReadMessage(bytes.NewReader(msg[:end+4]))
	if err != nil {
		return "", nil
	}
	if rp := strings.TrimSpace(m.Header.Get("Return-Path")); rp != "" {
		from = envelopeAddress(rp)
	}
	for _, key := range []string{"X-Original-To", "Delivered-To"} {
		if a := envelopeAddress(m.Header.Get(key)); a != "" {
			return from, []string{a}
		}
	}
	return from, nil
}

// envelopeAddress takes "<a@b>" or "a@b" to "a@b"; anything that cannot
// be an SMTP path gives "".
func envelopeAddress(v string) string {
	v = strings.TrimSpace(v)
	v = strings.TrimSuffix(strings.TrimPrefix(v, "<"), ">")
	if v == "" || strings.ContainsAny(v, " \t\r\n<>,;\"") || strings.Count(v, "@") != 1 {
		return ""
	}
	return v
}

// unwrapNDR replaces a non-delivery report that carries a journal report
// (Exchange's alternate journaling mailbox) by that report, sent to the
// recipients it bounced for. Other messages are left as they are.
func unwrapNDR(m *importMsg) error {
	if m.err != nil || !bytes.Contains(m.data[:min(len(m.data), 64<<10)], []byte("multipart/report")) {
		return nil
	}
	ndr, err := journal.Parser{}.UnwrapNDR(bytes.NewReader(m.data), int64(len(m.data)))
	if errors.Is(err, journal.ErrNotNDR) {
		return nil
	}
	if err != nil {
		return err
	}
	inner, err := ndr.Report.Bytes(m.data)
	if err != nil {
		return err
	}
	m.data = toCRLF(bytes.Clone(inner))
	m.unwrapped = true
	m.rcpts = ndr.Recipients
	m.from = ""
	if from, err := mail.ReadMessage(bytes.NewReader(m.data)); err == nil {
		if a, err := mail.ParseAddress(from.Header.Get("From")); err == nil {
			m.from = envelopeAddress(a.Address)
		}
	}
	return nil
}

func (m *importMsg) hash() {
	s := sha256.Sum256(m.data)
	m.sum = hex.EncodeToString(s[:])
}

// mboxMessage is one message of an mbox.
type mboxMessage struct {
	index    int    // 1-based
	data     []byte // unquoted, CRLF
	sender   string // from the "From " line; "" for MAILER-DAEMON
	srcBytes int64
	err      error
}

// splitMbox reads an mbox (RFC 4155) and calls fn for each message. A
// "From " line at the start of the file or after an empty line starts a
// message; the empty line before it belongs to the separator, not to the
// message. Lines matching ^>+From lose one '>' (mboxrd, which also reads
// mboxo's quoted "From " lines right). LF line ends become CRLF: the bytes
// of a message in an mbox are not the bytes it arrived with, only the
// same lines. A message past maxSize is reported with an error and
// skipped. Memory holds one message at most.
func splitMbox(r io.Reader, maxSize int, fn func(mboxMessage) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var (
		cur       mboxMessage
		inMsg     bool
		heldBlank bool // an empty line, held: it may precede a separator
		atStart   = true
		skipLine  bool // the rest of a separator line longer than the buffer
		lastCR    bool // the previous fragment ended in CR
		index     int
		lineNo    int
	)
	flush := func() error {
		if !inMsg {
			return nil
		}
		m := cur
		if m.err == nil && len(m.data) > 0 && !bytes.HasSuffix(m.data, []byte("\r\n")) {
			m.data = append(m.data, '\r', '\n')
		}
		return fn(m)
	}
	add := func(p []byte) {
		if cur.err != nil {
			return
		}
		if len(cur.data)+countCRLF(p) > maxSize {
			cur.err = fmt.Errorf("larger than --max-size (%d bytes)", maxSize)
			cur.data = nil
			return
		}
		for i, c := range p {
			if c == '\n' && !((i > 0 && p[i-1] == '\r') || (i == 0 && lastCR)) {
				cur.data = append(cur.data, '\r')
			}
			cur.data = append(cur.data, c)
		}
	}
	for {
		frag, err := br.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull && err != io.EOF {
			return err
		}
		if len(frag) == 0 && err == io.EOF {
			break
		}
		lineStart := atStart
		atStart = frag[len(frag)-1] == '\n'
		if inMsg {
			cur.srcBytes += int64(len(frag))
		}
		if lineStart {
			lineNo++
		}
		if skipLine {
			skipLine = !atStart
			lastCR = false
			continue
		}
		if lineStart {
			if bytes.HasPrefix(frag, []byte("From ")) && (!inMsg || heldBlank) {
				if err := flush(); err != nil {
					return err
				}
				index++
				cur = mboxMessage{index: index, sender: mboxSender(frag), srcBytes: int64(len(frag))}
				inMsg, heldBlank, skipLine, lastCR = true, false, !atStart, false
				continue
			}
			blank := atStart && (len(frag) == 1 || (len(frag) == 2 && frag[0] == '\r'))
			if !inMsg && blank {
				continue // empty lines before the first message
			}
			if !inMsg {
				return fmt.Errorf("line %d: not an mbox: a message must start with a \"From \" line", lineNo)
			}
			if heldBlank {
				add([]byte("\r\n"))
				heldBlank = false
			}
			if blank {
				heldBlank = true
				continue
			}
			if i := bytes.IndexFunc(frag, func(r rune) bool { return r != '>' }); i > 0 && bytes.HasPrefix(frag[i:], []byte("From ")) {
				frag = frag[1:] // mboxrd: one '>' less
			}
		}
		add(frag)
		lastCR = frag[len(frag)-1] == '\r'
	}
	// The empty line after the last message is the file's, not its.
	return flush()
}

// countCRLF is the length p will have with its bare LFs made CRLF.
func countCRLF(p []byte) int {
	return len(p) + bytes.Count(p, []byte("\n")) - bytes.Count(p, []byte("\r\n"))
}

// mboxSender is the address of a "From sender date" line; MAILER-DAEMON,
// the null sender, gives "".
func mboxSender(line []byte) string {
	f := strings.Fields(string(line[len("From "):]))
	if len(f) == 0 || strings.EqualFold(f[0], "MAILER-DAEMON") {
		return ""
	}
	return envelopeAddress(f[0])
}
