package journal

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"

	"github.com/emersion/go-message/textproto"
)

// This file is the small MIME reader the package needs. It differs from a
// general MIME library in one way that matters here: it reports where every
// part's body lies in the input, byte for byte, so the archive can serve an
// attached original as a slice of what it stored. It reads sequentially
// through a fixed buffer and never holds a part's body in memory unless asked
// to capture it.

// errTooLarge marks a limit being exceeded, as opposed to malformed input.
var errTooLarge = errors.New("too large")

// span is a byte range [Off, Off+Len) of some source.
type span struct {
	Off, Len int64
}

func (s span) end() int64 { return s.Off + s.Len }

// lineReader hands out the lines of r with the offset at which each starts.
// A line longer than the buffer comes back in fragments; only the first
// fragment has atStart set, which is what boundary matching needs: a
// delimiter is only ever recognised at the start of a line (RFC 2046 §5.1.1).
type lineReader struct {
	br      *bufio.Reader
	off     int64 // offset of the next byte to be returned
	atStart bool  // the next fragment starts a line
}

// readBufSize bounds the memory a scan uses whatever the input size.
const readBufSize = 32 << 10

func newLineReader(r io.Reader, base int64) *lineReader {
	size := readBufSize
	// Most reports are a few KiB: a buffer sized to a small input saves
	// allocating the full one for each of the several reads of a parse.
	if s, ok := r.(interface{ Size() int64 }); ok && s.Size() < int64(size) {
		size = max(int(s.Size()), 16)
	}
	return &lineReader{br: bufio.NewReaderSize(r, size), off: base, atStart: true}
}

// next returns the next line or line fragment. The slice is valid only until
// the following call. At the end of input it returns io.EOF with no data.
func (lr *lineReader) next() (frag []byte, start int64, atStart bool, err error) {
	frag, err = lr.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		err = nil
	}
	if err == io.EOF && len(frag) > 0 {
		err = nil
	}
	start, atStart = lr.off, lr.atStart
	lr.off += int64(len(frag))
	lr.atStart = len(frag) > 0 && frag[len(frag)-1] == '\n'
	return frag, start, atStart, err
}

// eolLen is the length of the line break that ends frag: 2 for CRLF, 1 for a
// bare LF, 0 when frag does not end a line.
func eolLen(frag []byte) int64 {
	n := len(frag)
	switch {
	case n >= 2 && frag[n-2] == '\r' && frag[n-1] == '\n':
		return 2
	case n >= 1 && frag[n-1] == '\n':
		return 1
	}
	return 0
}

// isBlank reports whether frag is an empty line (CRLF or LF alone). Some
// generators put spaces on the line that ends a header block; RFC 5322 does
// not allow it, but a line of only white space cannot be a header field, so
// it ends the header here too.
func isBlank(frag []byte) bool {
	return len(bytes.Trim(frag, " \t\r\n")) == 0 && eolLen(frag) > 0
}

// delimiter reports whether line (a whole line or the first fragment of one)
// is a boundary delimiter for boundary, and whether it is the closing one.
// RFC 2046 §5.1.1: "--" boundary, "--" for the close, then optional
// transport padding (linear white space) before the line break.
func delimiter(line []byte, boundary string) (ok, closing bool) {
	if len(line) < 2+len(boundary) || line[0] != '-' || line[1] != '-' ||
		string(line[2:2+len(boundary)]) != boundary {
		return false, false
	}
	rest := line[2+len(boundary):]
	if bytes.HasPrefix(rest, []byte("--")) {
		closing = true
		rest = rest[2:]
	}
	if len(bytes.Trim(rest, " \t\r\n")) != 0 {
		// "--boundaryX" is a different boundary, not this one.
		return false, false
	}
	return true, closing
}

// rawPart is one body part of a multipart entity as found by scanParts.
type rawPart struct {
	Index  int    // 1-based position in the multipart
	Header []byte // the header block as received, without the blank line
	Body   span   // the body; the line break before the next delimiter belongs to the delimiter
}

// scanLimits bound the work one scan may do on untrusted input.
type scanLimits struct {
	MaxHeaderBytes int
	MaxParts       int
}

// scanParts walks the multipart body that r yields (its first byte at offset
// base) and calls visit with each part's header as soon as the header is
// read; visit returns whether it wants the part's body captured (at most
// maxCapture bytes, else errTooLarge). done is then called with the part, its
// captured body, if any, and its body span. It reports whether the closing
// delimiter was seen; a missing one is tolerated, the last part then runs to
// the end of the input.
func scanParts(r io.Reader, base int64, boundary string, lim scanLimits, maxCapture int,
	visit func(p *rawPart) (capture bool, err error),
	done func(p *rawPart, body []byte) error) (closed bool, err error) {
	if boundary == "" {
		return false, errors.New("empty boundary")
	}
	const (
		preamble = iota
		header
		body
	)
	var (
		lr       = newLineReader(r, base)
		state    = preamble
		cur      rawPart
		hdr      []byte
		capture  bool
		captured []byte
		prevEOL  int64 // line break length of the last whole line read in the body
		parts    int
	)
	finish := func(delimStart int64) error {
		if state == preamble {
			return nil
		}
		if state == header {
			// No blank line: the part is all header and has no body.
			cur.Header = append([]byte(nil), hdr...)
			cur.Body = span{Off: delimStart, Len: 0}
			if _, err := visit(&cur); err != nil {
				return err
			}
			return done(&cur, nil)
		}
		end := delimStart - prevEOL
		if end < cur.Body.Off {
			end = cur.Body.Off
		}
		cur.Body.Len = end - cur.Body.Off
		if capture {
			keep := int(cur.Body.Len)
			if keep > len(captured) {
				keep = len(captured)
			}
			captured = captured[:keep]
		}
		return done(&cur, captured)
	}
	for {
		frag, start, atStart, rerr := lr.next()
		if rerr == io.EOF {
			if state == body {
				prevEOL = 0 // no delimiter follows: the last line break is content
			}
			return false, finish(lr.off)
		}
		if rerr != nil {
			return false, rerr
		}
		if atStart {
			if ok, closing := delimiter(frag, boundary); ok {
				if err := finish(start); err != nil {
					return false, err
				}
				if closing {
					return true, nil
				}
				parts++
				if parts > lim.MaxParts {
					return false, fmt.Errorf("more than %d parts: %w", lim.MaxParts, errTooLarge)
				}
				state, cur, hdr, capture, captured, prevEOL = header, rawPart{Index: parts}, hdr[:0], false, nil, 0
				if frag[len(frag)-1] != '\n' {
					// Padding longer than the buffer: skip the rest of the line.
					if err := skipLine(lr); err != nil {
						return false, finish(lr.off)
					}
				}
				continue
			}
		}
		switch state {
		case header:
			if atStart && isBlank(frag) {
				cur.Header = append([]byte(nil), hdr...)
				cur.Body = span{Off: start + int64(len(frag))}
				c, err := visit(&cur)
				if err != nil {
					return false, err
				}
				state, capture = body, c
				continue
			}
			if len(hdr)+len(frag) > lim.MaxHeaderBytes {
				return false, fmt.Errorf("part %d: header longer than %d bytes: %w", cur.Index, lim.MaxHeaderBytes, errTooLarge)
			}
			hdr = append(hdr, frag...)
		case body:
			if capture {
				if len(captured)+len(frag) > maxCapture {
					return false, fmt.Errorf("part %d: body longer than %d bytes: %w", cur.Index, maxCapture, errTooLarge)
				}
				captured = append(captured, frag...)
			}
			prevEOL = eolLen(frag)
		}
	}
}

// skipLine discards the rest of the current line.
func skipLine(lr *lineReader) error {
	for {
		frag, _, _, err := lr.next()
		if err != nil {
			return err
		}
		if frag[len(frag)-1] == '\n' {
			return nil
		}
	}
}

// readHeaderBlock reads the header block at the start of r. It returns the
// header bytes (without the blank line) and the offset, relative to the start
// of r, at which the body begins. Input with no blank line is all header and
// has an empty body at its end.
func readHeaderBlock(r io.Reader, maxBytes int) (hdr []byte, bodyOff int64, err error) {
	lr := newLineReader(r, 0)
	for {
		frag, start, atStart, err := lr.next()
		if err == io.EOF {
			return hdr, lr.off, nil
		}
		if err != nil {
			return nil, 0, err
		}
		if atStart && isBlank(frag) {
			return hdr, start + int64(len(frag)), nil
		}
		if len(hdr)+len(frag) > maxBytes {
			return nil, 0, fmt.Errorf("header longer than %d bytes: %w", maxBytes, errTooLarge)
		}
		hdr = append(hdr, frag...)
	}
}

// parseHeader turns a header block into fields. It is deliberately more
// forgiving than a conforming parser: a line that is neither a field nor a
// continuation is skipped rather than failing the message, because a report
// whose header has one broken line still names its recipients.
func parseHeader(b []byte) textproto.Header {
	type field struct{ k, v string }
	var (
		fields     []field
		key        string
		val        strings.Builder
		have       bool
		flushField = func() {
			if have {
				fields = append(fields, field{key, val.String()})
			}
			have = false
		}
	)
	for len(b) > 0 {
		var line []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			line, b = b, nil
		}
		line = bytes.TrimRight(line, "\r")
		if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
			if have {
				if t := bytes.Trim(line, " \t"); len(t) > 0 {
					if val.Len() > 0 {
						val.WriteByte(' ')
					}
					val.Write(t)
				}
			}
			continue
		}
		flushField()
		i := bytes.IndexByte(line, ':')
		if i <= 0 {
			continue
		}
		k := bytes.Trim(line[:i], " \t")
		if len(k) == 0 || !validKey(k) {
			continue
		}
		key, have = string(k), true
		val.Reset()
		val.Write(bytes.Trim(line[i+1:], " \t"))
	}
	flushField()
	// go-message's Header keeps fields newest-first and Get returns the
	// last one added; adding in reverse makes Get return the first field
	// in message order, as for a header read by textproto.ReadHeader.
	var h textproto.Header
	for i := len(fields) - 1; i >= 0; i-- {
		h.Add(fields[i].k, fields[i].v)
	}
	return h
}

func validKey(k []byte) bool {
	for _, c := range k {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}

// mediaType parses a Content-Type value, defaulting to text/plain (RFC 2045
// §5.2). It is liberal where mime.ParseMediaType is strict: a value with a
// broken parameter still yields its type and, because a multipart without
// its boundary cannot be read at all, a best-effort boundary.
func mediaType(v string) (typ string, params map[string]string) {
	if strings.TrimSpace(v) == "" {
		return "text/plain", map[string]string{}
	}
	t, p, err := mime.ParseMediaType(v)
	if err == nil {
		return t, p
	}
	t, _, _ = strings.Cut(v, ";")
	t = strings.ToLower(strings.TrimSpace(t))
	p = map[string]string{}
	if b := looseParam(v, "boundary"); b != "" {
		p["boundary"] = b
	}
	if c := looseParam(v, "charset"); c != "" {
		p["charset"] = strings.ToLower(c)
	}
	if n := looseParam(v, "name"); n != "" {
		p["name"] = n
	}
	return t, p
}

// looseParam finds name=value in a parameter list that mime.ParseMediaType
// rejected (duplicate or malformed parameters are common in the wild).
func looseParam(v, name string) string {
	lv := asciiLower(v) // same length as v, so indexes carry over
	for from := 0; ; {
		i := strings.Index(lv[from:], name)
		if i < 0 {
			return ""
		}
		i += from
		from = i + len(name)
		if i > 0 && !strings.ContainsRune("; \t", rune(lv[i-1])) {
			continue
		}
		rest := strings.TrimLeft(v[from:], " \t")
		if !strings.HasPrefix(rest, "=") {
			continue
		}
		rest = strings.TrimLeft(rest[1:], " \t")
		if strings.HasPrefix(rest, `"`) {
			if j := strings.IndexByte(rest[1:], '"'); j >= 0 {
				return rest[1 : 1+j]
			}
			return strings.TrimSpace(rest[1:])
		}
		if j := strings.IndexAny(rest, "; \t"); j >= 0 {
			rest = rest[:j]
		}
		return rest
	}
}

// asciiLower lower-cases ASCII letters only. Unlike strings.ToLower it
// never changes the length of its input (which invalid UTF-8 would).
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// filename is the attachment's name from Content-Disposition or, failing
// that, the older Content-Type name parameter.
func filename(h *textproto.Header, ctParams map[string]string) string {
	if d := h.Get("Content-Disposition"); d != "" {
		if _, p, err := mime.ParseMediaType(d); err == nil && p["filename"] != "" {
			return p["filename"]
		}
		if f := looseParam(d, "filename"); f != "" {
			return f
		}
	}
	return ctParams["name"]
}

// transferEncoding normalises Content-Transfer-Encoding: "" for the
// identity encodings (7bit, 8bit, binary, absent), whose bodies are the
// content itself, else the lower-cased token.
func transferEncoding(h *textproto.Header) string {
	e := strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding")))
	switch e {
	case "", "7bit", "8bit", "binary":
		return ""
	}
	return e
}
