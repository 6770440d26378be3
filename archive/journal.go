package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	bolt "go.etcd.io/bbolt"

	"chainmail/journal"
)

// Journal reports. The archive stores a report exactly as received (the
// replication digest is over those bytes) and describes its original
// beside it: Meta.Headers are the original's header fields, so search
// results show the journaled message, and Meta.Journal says where the
// original lies in the report, so it can be served alone (OpenPart).

// Bounds on what one report or one group adds to a record.
const (
	maxJournalRecipients = 100000 // merged over the reports of one original
	maxReportRefs        = 1000   // reports listed on a group's record
	maxJournalWarnings   = 20
)

// prepareJournal fills it.Journal, and replaces it.Headers by the
// original's, when the message is a journal report. head is the start of
// the message. It reads the report through it.Body's ReaderAt, so a report
// spooled to disk is never loaded whole. It never fails: a report it
// cannot read is archived all the same, with warnings saying why.
func prepareJournal(it *Item, head []byte) {
	// Every message passes here: a scan for the word rules out ordinary
	// mail before the header is parsed a second time.
	if !headerMentionsJournal(head) || !journal.LooksLikeReport(head) {
		return
	}
	reportHeaders := it.Headers
	j := &JournalSummary{Format: "exchange", Recipients: []Recipient{}, ReportHeaders: &reportHeaders}
	it.Journal = j
	warn := func(s string) {
		if len(j.Warnings) < maxJournalWarnings {
			j.Warnings = append(j.Warnings, s)
		}
	}
	rep, err := journal.Parser{}.Parse(it.Body, it.Body.Size())
	if err != nil {
		warn(err.Error())
		return
	}
	for _, w := range rep.Warnings {
		warn(w.Error())
	}
	j.Sender, j.OnBehalfOf, j.Subject, j.MessageID = rep.Sender, rep.OnBehalfOf, rep.Subject, rep.MessageID
	j.TNEF, j.Depth = rep.TNEF, rep.Depth
	for _, r := range rep.Recipients {
		if len(j.Recipients) >= maxJournalRecipients {
			warn(fmt.Sprintf("archive: more than %d recipients; the rest are not indexed", maxJournalRecipients))
			break
		}
		j.Recipients = append(j.Recipients, Recipient{
			Address: r.Address, Kind: string(r.Kind), ExpandedFrom: r.ExpandedFrom, ForwardedFrom: r.ForwardedFrom,
		})
	}
	var origHead []byte
	if rep.Original != nil {
		j.Original = toJournalPart(rep.Original)
		origHead, err = measure(it.Body, rep.Original, j.Original, maxHeaderBytes)
		if err != nil {
			warn("archive: reading the original: " + err.Error())
		}
	}
	if rep.Decrypted != nil {
		j.Decrypted = toJournalPart(rep.Decrypted)
		if _, err := measure(it.Body, rep.Decrypted, j.Decrypted, 0); err != nil {
			warn("archive: reading the decrypted copy: " + err.Error())
		}
	}
	hs := Headers{}
	if origHead != nil && isMessageType(j.Original.ContentType) {
		hs = ParseHeaders(origHead)
	}
	// What the original's header lacks (or a TNEF attachment, which has no
	// header) the envelope part says.
	if hs.MessageID == "" {
		hs.MessageID = strings.Trim(strings.TrimSpace(rep.MessageID), "<>")
	}
	if hs.Subject == "" {
		hs.Subject = rep.Subject
	}
	if len(hs.From) == 0 && rep.Sender != "" {
		hs.From = []string{strings.ToLower(rep.Sender)}
	}
	it.Headers = hs
}

// headerMentionsJournal tells whether the header section of a message
// (up to its first empty line) contains "journal" in any case: every
// field that marks a report (X-MS-Journal-Report, Content-Identifier:
// ExJournalReport) does.
func headerMentionsJournal(head []byte) bool {
	const word = "journal"
	if end := bytes.Index(head, []byte("\r\n\r\n")); end >= 0 {
		head = head[:end]
	} else if end := bytes.Index(head, []byte("\n\n")); end >= 0 {
		head = head[:end]
	}
	for i := 0; i+len(word) <= len(head); i++ {
		if head[i]|0x20 != 'j' {
			continue
		}
		j := 1
		for ; j < len(word) && head[i+j]|0x20 == word[j]; j++ {
		}
		if j == len(word) {
			return true
		}
	}
	return false
}

// isMessageType tells whether an attachment's content is a message with a
// header of its own (not a TNEF blob).
func isMessageType(ct string) bool {
	return ct == "" || strings.HasPrefix(ct, "message/") || ct == "application/octet-stream" || ct == "text/plain"
}

func toJournalPart(p *journal.Part) *JournalPart {
	if p == nil {
		return nil
	}
	return &JournalPart{
		Offset: p.Offset, Length: p.Length, Encoding: p.Encoding, Within: toJournalPart(p.Within),
		ContentType: p.ContentType, Filename: p.Filename,
	}
}

func (p *JournalPart) part() *journal.Part {
	if p == nil {
		return nil
	}
	return &journal.Part{
		Offset: p.Offset, Length: p.Length, Encoding: p.Encoding, Within: p.Within.part(),
		ContentType: p.ContentType, Filename: p.Filename,
	}
}

// measure streams a part's content once, through a fixed buffer, to set
// its Size and SHA256, and returns its first keep bytes (its header, for
// the original).
func measure(r io.ReaderAt, p *journal.Part, jp *JournalPart, keep int) ([]byte, error) {
	rd, err := p.Open(r)
	if err != nil {
		return nil, err
	}
	sum := sha256.New()
	hw := &headWriter{max: keep}
	n, err := io.CopyBuffer(io.MultiWriter(sum, hw), rd, make([]byte, 32<<10))
	if err != nil {
		return hw.b, err
	}
	jp.Size, jp.SHA256 = n, hex.EncodeToString(sum.Sum(nil))
	return hw.b, nil
}

// headWriter keeps the first max bytes written to it.
type headWriter struct {
	b   []byte
	max int
}

func (h *headWriter) Write(p []byte) (int, error) {
	if room := h.max - len(h.b); room > 0 {
		h.b = append(h.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// Parts of a message that OpenPart serves.
const (
	PartOriginal  = "original"  // a report's journaled original; the message itself otherwise
	PartReport    = "report"    // the archived bytes, the whole report
	PartDecrypted = "decrypted" // a report's decrypted copy of a protected original
	// PartMessage is what PartInfo.Part says for a message that is not a
	// journal report: its archived bytes, whichever part was asked for.
	PartMessage = "message"
)

// ErrNoPart: the message has no such part (a report whose original could
// not be located, or no decrypted copy).
var ErrNoPart = errors.New("archive: the message has no such part")

// PartInfo describes what OpenPart opened.
type PartInfo struct {
	Part        string // PartOriginal, PartReport, PartDecrypted or PartMessage
	Size        int64
	SHA256      string // of the bytes served
	ContentType string // message/rfc822, or the attachment's type (application/ms-tnef)
}

// OpenPart streams one part of a message (see the Part constants): for a
// journal report the original by default, so that a download does not
// show the report's Bcc recipients and list expansions. Deciding who may
// see the report is the caller's business. The bytes are read chunk by
// chunk; an encoded original is decoded as it streams.
func (s *Store) OpenPart(ctx context.Context, id, part string) (io.ReadCloser, PartInfo, error) {
	m, err := s.Get(ctx, id)
	if err != nil {
		return nil, PartInfo{}, err
	}
	whole := func(name string) (io.ReadCloser, PartInfo, error) {
		return &rawReader{s: s, seq: m.Seq}, PartInfo{Part: name, Size: m.Size, SHA256: m.ID, ContentType: "message/rfc822"}, nil
	}
	if m.Journal == nil {
		return whole(PartMessage)
	}
	var jp *JournalPart
	switch part {
	case PartReport:
		return whole(PartReport)
	case PartOriginal, "":
		part, jp = PartOriginal, m.Journal.Original
	case PartDecrypted:
		jp = m.Journal.Decrypted
	default:
		return nil, PartInfo{}, fmt.Errorf("archive: unknown part %q", part)
	}
	if jp == nil || jp.SHA256 == "" {
		return nil, PartInfo{}, ErrNoPart
	}
	ra := &chunkReaderAt{s: s, seq: m.Seq, size: m.Size}
	rd, err := jp.part().Open(ra)
	if err != nil {
		return nil, PartInfo{}, fmt.Errorf("archive: open %s of %s: %w", part, id[:12], err)
	}
	ct := jp.ContentType
	if isMessageType(ct) {
		ct = "message/rfc822"
	}
	return io.NopCloser(rd), PartInfo{Part: part, Size: jp.Size, SHA256: jp.SHA256, ContentType: ct}, nil
}

// chunkReaderAt reads archived bytes at any offset, each chunk in its own
// short read transaction; it keeps the last chunk read, as parts are read
// sequentially through buffers smaller than a chunk.
type chunkReaderAt struct {
	s    *Store
	seq  uint64
	size int64

	cached uint32
	buf    []byte
}

func (r *chunkReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("archive: negative offset")
	}
	n := 0
	for n < len(p) {
		if off >= r.size {
			return n, io.EOF
		}
		i := uint32(off / chunkSize)
		if r.buf == nil || r.cached != i {
			var c []byte
			if err := r.s.db.View(func(tx *bolt.Tx) error {
				c = r.s.blobs.chunk(tx, r.seq, i)
				return nil
			}); err != nil {
				return n, err
			}
			if c == nil {
				return n, fmt.Errorf("archive: message %d: chunk %d is missing", r.seq, i)
			}
			r.buf, r.cached = c, i
		}
		within := int(off - int64(i)*chunkSize)
		if within >= len(r.buf) {
			return n, fmt.Errorf("archive: message %d: chunk %d is short", r.seq, i)
		}
		k := copy(p[n:], r.buf[within:])
		n += k
		off += int64(k)
	}
	return n, nil
}
