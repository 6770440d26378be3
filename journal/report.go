package journal

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-message/textproto"
)

// Defaults for the zero Parser. They bound the memory and work of one parse
// of untrusted input without limiting real reports: an envelope part naming
// 50,000 recipients is about 3 MiB.
const (
	DefaultMaxDepth         = 4
	DefaultMaxHeaderBytes   = 1 << 20
	DefaultMaxEnvelopeBytes = 8 << 20
	DefaultMaxParts         = 1000
)

// ErrNotReport is returned by Parse for a message whose header does not mark
// it as a journal report (see IsReport). Such a message is ordinary mail and
// is archived as it is.
var ErrNotReport = errors.New("journal: not a journal report")

// ErrTooLarge is wrapped by errors for input that exceeds a Parser limit.
var ErrTooLarge = errors.New("journal: input exceeds a parser limit")

// Parser parses journal reports. The zero value uses the Default limits;
// a Parser holds no state between calls and may be shared.
type Parser struct {
	// MaxDepth is how many reports nested inside one another are unwrapped
	// to reach the innermost original (0 means DefaultMaxDepth).
	MaxDepth int
	// MaxHeaderBytes bounds any one header block (0: DefaultMaxHeaderBytes).
	MaxHeaderBytes int
	// MaxEnvelopeBytes bounds the envelope part (0: DefaultMaxEnvelopeBytes).
	MaxEnvelopeBytes int
	// MaxParts bounds the parts of any one multipart (0: DefaultMaxParts).
	MaxParts int
}

func (p Parser) withDefaults() Parser {
	if p.MaxDepth <= 0 {
		p.MaxDepth = DefaultMaxDepth
	}
	if p.MaxHeaderBytes <= 0 {
		p.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if p.MaxEnvelopeBytes <= 0 {
		p.MaxEnvelopeBytes = DefaultMaxEnvelopeBytes
	}
	if p.MaxParts <= 0 {
		p.MaxParts = DefaultMaxParts
	}
	return p
}

// Report is a parsed journal report.
type Report struct {
	// Envelope describes Original. For nested reports it is the innermost
	// report's envelope, the one written about the original message.
	Envelope
	// Original locates the journaled message. It is nil only for a report
	// that carries no original (a warning then says so).
	Original *Part
	// Decrypted locates the decrypted copy of an IRM-protected original
	// that Exchange attaches after it when journal report decryption is on,
	// or is nil.
	Decrypted *Part
	// TNEF is set when the original is in Microsoft's TNEF (winmail.dat)
	// form, as an attachment of the report or as the original's body. The
	// package does not decode TNEF; Original still locates the bytes.
	TNEF bool
	// Depth is the number of reports unwrapped around the original: 0 for a
	// report that attaches the original itself.
	Depth int
	// Outer holds the envelopes of the enclosing reports, outermost first;
	// len(Outer) == Depth.
	Outer []Envelope
	// Warnings lists what was odd but did not stop the parse, each saying
	// where. The archive should log them with the message.
	Warnings []error
}

// Part locates an attachment of a report: a body's bytes within the report.
type Part struct {
	// Offset and Length give the attachment's body. When Within is nil they
	// are positions in the report's bytes as passed to Parse.
	Offset, Length int64
	// Encoding is the Content-Transfer-Encoding that must be undone to get
	// the content ("base64", "quoted-printable", ...), or "" when the byte
	// range is the content itself (7bit, 8bit, binary or none).
	Encoding string
	// Within is set when the part lies inside the decoded content of another
	// part (a report nested in an encoded attachment): Offset and Length are
	// then positions in Within's decoded content.
	Within *Part
	// ContentType is the attachment's media type, lower-case, such as
	// "message/rfc822" or "application/ms-tnef".
	ContentType string
	// Filename is the attachment's file name, if it has one.
	Filename string
}

// Raw reports whether the part is a plain slice of the report's bytes, so
// the archive can serve it without decoding or copying.
func (p *Part) Raw() bool { return p.Encoding == "" && p.Within == nil }

// Open returns the part's decoded content, reading the report from r (the
// same bytes that were parsed, as an io.ReaderAt). It streams: memory use
// does not grow with the part's size.
func (p *Part) Open(r io.ReaderAt) (io.Reader, error) {
	return p.open(r, 0)
}

func (p *Part) open(r io.ReaderAt, depth int) (io.Reader, error) {
	if p.Offset < 0 || p.Length < 0 {
		return nil, fmt.Errorf("journal: part at %d+%d: negative position", p.Offset, p.Length)
	}
	var body io.Reader
	if p.Within == nil {
		body = io.NewSectionReader(r, p.Offset, p.Length)
	} else {
		if depth > DefaultMaxDepth*2 {
			return nil, errors.New("journal: part nested too deeply")
		}
		outer, err := p.Within.open(r, depth+1)
		if err != nil {
			return nil, err
		}
		if n, err := io.CopyN(io.Discard, outer, p.Offset); err != nil {
			return nil, fmt.Errorf("journal: part at %d+%d: its container ends at %d: %w", p.Offset, p.Length, n, err)
		}
		body = io.LimitReader(outer, p.Length)
	}
	return decoder(p.Encoding, body)
}

// Bytes returns the part's content from msg, the report's bytes. For a Raw
// part it is a subslice of msg, shared, not copied: the caller must not
// modify it. Otherwise it is decoded into a new slice.
func (p *Part) Bytes(msg []byte) ([]byte, error) {
	if p.Raw() {
		if p.Offset < 0 || p.Length < 0 || p.Offset > int64(len(msg)) || p.Length > int64(len(msg))-p.Offset {
			return nil, fmt.Errorf("journal: part at %d+%d lies outside the %d-byte report", p.Offset, p.Length, len(msg))
		}
		return msg[p.Offset : p.Offset+p.Length : p.Offset+p.Length], nil
	}
	rd, err := p.Open(bytes.NewReader(msg))
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(rd)
	if err != nil {
		return nil, fmt.Errorf("journal: decoding %s part: %w", p.Encoding, err)
	}
	return b, nil
}

// OriginalBytes returns the journaled message from msg, the report's bytes
// as parsed. See Part.Bytes for when the result shares msg's memory.
func (r *Report) OriginalBytes(msg []byte) ([]byte, error) {
	if r.Original == nil {
		return nil, errors.New("journal: report carries no original message")
	}
	return r.Original.Bytes(msg)
}

// Parse parses msg, a whole message as received, as a journal report. It
// returns ErrNotReport for ordinary mail. msg is only read.
func Parse(msg []byte) (*Report, error) {
	return Parser{}.Parse(bytes.NewReader(msg), int64(len(msg)))
}

// Parse parses the size-byte message that r holds. Reading through an
// io.ReaderAt lets the archive parse a report from a spool file or its
// chunk store without holding it in memory: the parser reads sequentially
// through a small buffer and keeps only header blocks and the envelope part.
// The one exception is a report nested inside an encoded attachment, which
// is decoded into memory to be parsed.
func (p Parser) Parse(r io.ReaderAt, size int64) (*Report, error) {
	if size < 0 {
		return nil, errors.New("journal: negative message size")
	}
	p = p.withDefaults()
	return p.parse(r, size, 0, nil, 0)
}

// level is what one report in a (possibly nested) chain yields.
type level struct {
	env       Envelope
	original  *Part
	decrypted *Part
	tnef      bool
	warns     []error
}

// parse parses the report that src holds. Offsets it records are shifted by
// base and made relative to within, so that they address the outermost
// report's bytes whatever level they were found at.
func (p Parser) parse(src io.ReaderAt, size, base int64, within *Part, depth int) (*Report, error) {
	lv, err := p.parseLevel(src, size, base, within)
	if err != nil {
		return nil, err
	}
	rep := &Report{Envelope: lv.env, Original: lv.original, Decrypted: lv.decrypted, TNEF: lv.tnef, Warnings: lv.warns}
	if rep.Original == nil || rep.TNEF {
		return rep, nil
	}
	info, err := p.inspect(src, size, base, rep.Original)
	if err != nil {
		rep.Warnings = append(rep.Warnings, fmt.Errorf("journal: original message: %w", err))
		return rep, nil
	}
	rep.TNEF = info.tnef
	if !info.report {
		return rep, nil
	}
	if depth+1 > p.MaxDepth {
		rep.Warnings = append(rep.Warnings, fmt.Errorf("journal: reports nested deeper than %d; the original exposed is itself a report", p.MaxDepth))
		return rep, nil
	}
	inner, err := p.parseNested(src, size, base, rep.Original, depth+1)
	if err != nil {
		rep.Warnings = append(rep.Warnings, fmt.Errorf("journal: nested report at depth %d, kept as the original: %w", depth+1, err))
		return rep, nil
	}
	inner.Outer = append([]Envelope{rep.Envelope}, inner.Outer...)
	inner.Warnings = append(rep.Warnings, inner.Warnings...)
	return inner, nil
}

// parseNested parses the report that orig (found in src) contains.
func (p Parser) parseNested(src io.ReaderAt, size, base int64, orig *Part, depth int) (*Report, error) {
	local := orig.Offset - base
	var (
		inner *Report
		err   error
	)
	if orig.Encoding == "" {
		// Unencoded: the nested report is a slice of src, so its parts are
		// slices too and keep the same frame of reference.
		if local < 0 || local > size || orig.Length > size-local {
			return nil, errors.New("part lies outside its container")
		}
		inner, err = p.parse(io.NewSectionReader(src, local, orig.Length), orig.Length, orig.Offset, orig.Within, depth)
	} else {
		rd, oerr := (&Part{Offset: local, Length: orig.Length, Encoding: orig.Encoding}).Open(src)
		if oerr != nil {
			return nil, oerr
		}
		buf, rerr := io.ReadAll(rd)
		if rerr != nil {
			return nil, fmt.Errorf("decoding %s: %w", orig.Encoding, rerr)
		}
		container := *orig
		inner, err = p.parse(bytes.NewReader(buf), int64(len(buf)), 0, &container, depth)
	}
	if err != nil {
		return nil, err
	}
	inner.Depth++
	return inner, nil
}

// parseLevel parses one report: its header, its envelope part and which of
// its attachments are the original and the decrypted copy.
func (p Parser) parseLevel(src io.ReaderAt, size, base int64, within *Part) (*level, error) {
	hdrBytes, bodyOff, err := readHeaderBlock(io.NewSectionReader(src, 0, size), p.MaxHeaderBytes)
	if err != nil {
		return nil, fmt.Errorf("journal: report header: %w", wrapLimit(err))
	}
	h := parseHeader(hdrBytes)
	if !IsReport(h.Map()) {
		return nil, ErrNotReport
	}
	lv := &level{}
	ct, params := mediaType(h.Get("Content-Type"))
	body := span{Off: bodyOff, Len: size - bodyOff}
	w := walker{p: p, src: src}
	if strings.HasPrefix(ct, "multipart/") {
		if params["boundary"] == "" {
			return nil, fmt.Errorf("journal: report header: %s without a boundary parameter", ct)
		}
		if err := w.walk(body, params["boundary"], 0); err != nil {
			return nil, err
		}
	} else {
		// A single-part report cannot attach the original, but its body
		// may still be the envelope; keep what it says.
		w.consider(&h, body, 0)
		if w.envelope == nil {
			return nil, fmt.Errorf("journal: report is %s, not multipart, and has no envelope part", ct)
		}
		lv.warns = append(lv.warns, fmt.Errorf("journal: report is %s, not multipart", ct))
	}
	lv.warns = append(lv.warns, w.warns...)
	if w.envelope == nil {
		return nil, errors.New("journal: no envelope part (no text/plain part in the report)")
	}
	env, warns, err := p.envelope(src, w.envelope)
	if err != nil {
		return nil, err
	}
	lv.env = env
	lv.warns = append(lv.warns, warns...)
	if env.Sender == "" && env.MessageID == "" && len(env.Recipients) == 0 {
		return nil, errors.New("journal: envelope part: no Sender, Message-Id or recipient field")
	}
	if len(env.Recipients) == 0 {
		lv.warns = append(lv.warns, errors.New("journal: envelope part: no recipient lines"))
	}

	place := func(a *attachment) *Part {
		return &Part{
			Offset: base + a.body.Off, Length: a.body.Len, Encoding: a.encoding,
			Within: within, ContentType: a.contentType, Filename: a.filename,
		}
	}
	switch {
	case len(w.messages) > 0:
		lv.original = place(&w.messages[0])
		if len(w.messages) > 1 {
			lv.decrypted = place(&w.messages[1])
		}
		if len(w.messages) > 2 {
			lv.warns = append(lv.warns, fmt.Errorf("journal: %d attached messages; only the first two (original and decrypted copy) are used", len(w.messages)))
		}
	case w.tnef != nil:
		lv.original, lv.tnef = place(w.tnef), true
	case w.eml != nil:
		lv.original = place(w.eml)
		lv.warns = append(lv.warns, fmt.Errorf("journal: original attached as %s %q, not message/rfc822", w.eml.contentType, w.eml.filename))
	default:
		lv.warns = append(lv.warns, errors.New("journal: no attached original message"))
	}
	return lv, nil
}

// envelope decodes and parses the envelope part.
func (p Parser) envelope(src io.ReaderAt, a *attachment) (Envelope, []error, error) {
	var warns []error
	raw := a.captured
	if raw == nil {
		// Found inside a nested multipart, where bodies are not captured.
		if a.body.Len > int64(p.MaxEnvelopeBytes) {
			return Envelope{}, nil, fmt.Errorf("journal: envelope part: longer than %d bytes: %w", p.MaxEnvelopeBytes, ErrTooLarge)
		}
		raw = make([]byte, a.body.Len)
		if _, err := src.ReadAt(raw, a.body.Off); err != nil {
			return Envelope{}, nil, fmt.Errorf("journal: envelope part: reading: %w", err)
		}
	}
	text := raw
	if a.encoding != "" {
		dec, err := decoder(a.encoding, bytes.NewReader(raw))
		if err != nil {
			return Envelope{}, nil, fmt.Errorf("journal: envelope part: %w", err)
		}
		text, err = io.ReadAll(dec)
		if err != nil {
			// Keep what decoded: the fields before the damage are sound.
			warns = append(warns, fmt.Errorf("journal: envelope part: decoding %s: %w", a.encoding, err))
		}
	}
	s, ok := toUTF8(text, a.charset)
	if !ok {
		warns = append(warns, fmt.Errorf("journal: envelope part: charset %q not supported; non-ASCII text may be garbled", a.charset))
	}
	env, lineWarns := parseEnvelope(s)
	return env, append(warns, lineWarns...), nil
}

// attachment is a body part of interest found while walking a report.
type attachment struct {
	body        span
	encoding    string
	contentType string
	filename    string
	charset     string
	captured    []byte // the envelope body, when captured during the scan
}

// walker finds the envelope part and the attachments of one report,
// descending into nested multiparts (a multipart/alternative envelope, or
// attachments wrapped by a relay) but never into an attached message.
type walker struct {
	p        Parser
	src      io.ReaderAt
	envelope *attachment
	messages []attachment
	tnef     *attachment
	eml      *attachment
	warns    []error
}

// maxMultipartNesting bounds multiparts inside multiparts within one report.
const maxMultipartNesting = 8

func (w *walker) walk(body span, boundary string, nesting int) error {
	type sub struct {
		body     span
		boundary string
	}
	var subs []sub
	var pending textproto.Header
	closed, err := scanParts(io.NewSectionReader(w.src, body.Off, body.Len), body.Off, boundary,
		scanLimits{MaxHeaderBytes: w.p.MaxHeaderBytes, MaxParts: w.p.MaxParts}, w.p.MaxEnvelopeBytes,
		func(rp *rawPart) (bool, error) {
			pending = parseHeader(rp.Header)
			// Capture only the first text/plain part: the envelope.
			ct, _ := mediaType(pending.Get("Content-Type"))
			return w.envelope == nil && ct == "text/plain" && !isAttachment(&pending), nil
		},
		func(rp *rawPart, captured []byte) error {
			ct, params := mediaType(pending.Get("Content-Type"))
			if strings.HasPrefix(ct, "multipart/") {
				if nesting+1 >= maxMultipartNesting || params["boundary"] == "" {
					w.warns = append(w.warns, fmt.Errorf("journal: part %d: %s skipped (too deep or no boundary)", rp.Index, ct))
					return nil
				}
				subs = append(subs, sub{rp.Body, params["boundary"]})
				return nil
			}
			a := w.consider(&pending, rp.Body, rp.Index)
			if a != nil && a == w.envelope && captured != nil {
				a.captured = append([]byte{}, captured...)
			}
			return nil
		})
	if err != nil {
		return fmt.Errorf("journal: report body: %w", wrapLimit(err))
	}
	if !closed {
		w.warns = append(w.warns, fmt.Errorf("journal: multipart with boundary %q has no closing delimiter", clip(boundary)))
	}
	for _, s := range subs {
		if err := w.walk(s.body, s.boundary, nesting+1); err != nil {
			return err
		}
	}
	return nil
}

// consider classifies one leaf part and records it if it matters. It
// returns the record it made, if any.
func (w *walker) consider(h *textproto.Header, body span, index int) *attachment {
	ct, params := mediaType(h.Get("Content-Type"))
	a := attachment{body: body, encoding: transferEncoding(h), contentType: ct,
		filename: filename(h, params), charset: params["charset"]}
	fn := strings.ToLower(a.filename)
	switch {
	case ct == "message/rfc822" || ct == "message/global":
		w.messages = append(w.messages, a)
		return &w.messages[len(w.messages)-1]
	case isTNEFType(ct) || fn == "winmail.dat":
		if w.tnef == nil {
			w.tnef = &a
			return w.tnef
		}
	case ct == "text/plain" && w.envelope == nil && !isAttachment(h):
		w.envelope = &a
		return w.envelope
	case strings.HasSuffix(fn, ".eml") && w.eml == nil:
		w.eml = &a
		return w.eml
	}
	return nil
}

func isTNEFType(ct string) bool {
	return ct == "application/ms-tnef" || ct == "application/vnd.ms-tnef"
}

// isAttachment reports an explicit "attachment" disposition: a text file
// attached to the report is not its envelope.
func isAttachment(h *textproto.Header) bool {
	d, _, _ := strings.Cut(h.Get("Content-Disposition"), ";")
	return strings.EqualFold(strings.TrimSpace(d), "attachment")
}

func wrapLimit(err error) error {
	if errors.Is(err, errTooLarge) {
		return fmt.Errorf("%w (%w)", err, ErrTooLarge)
	}
	return err
}
