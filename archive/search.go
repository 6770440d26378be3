package archive

import (
	"bytes"
	"context"
	"encoding/binary"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

const (
	// maxHitRecipients bounds the journal recipients one search hit lists.
	maxHitRecipients = 100
	defaultLimit     = 50
	maxLimit         = 1000
	// scanBudget bounds the records one request examines, so a search that
	// matches nothing in a large archive answers in bounded time with a
	// cursor to continue from rather than holding a read transaction for
	// a full scan.
	scanBudget = 50000
)

// Index kinds (see the package comment).
const (
	kindFrom       = 'f'
	kindFromDomain = 'F'
	kindRcpt       = 't'
	kindRcptDomain = 'T'
	kindMessageID  = 'm'
)

func postingKey(kind byte, term string, seq uint64) []byte {
	k := make([]byte, 0, 1+len(term)+1+8)
	k = append(k, kind)
	k = append(k, term...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

func postAddress(idx *bolt.Bucket, kind byte, addr string, seq uint64) error {
	addr = strings.ToLower(strings.TrimSpace(addr))
	if addr == "" || strings.IndexByte(addr, 0) >= 0 {
		return nil
	}
	if err := idx.Put(postingKey(kind, addr, seq), nil); err != nil {
		return err
	}
	if _, dom, ok := strings.Cut(addr, "@"); ok && dom != "" {
		return idx.Put(postingKey(kind-'a'+'A', dom, seq), nil)
	}
	return nil
}

func indexMeta(idx *bolt.Bucket, m *Meta) error {
	seen := map[string]bool{}
	post := func(kind byte, a string) error {
		key := string(kind) + strings.ToLower(a)
		if seen[key] {
			return nil
		}
		seen[key] = true
		return postAddress(idx, kind, a, m.Seq)
	}
	for _, a := range append(append([]string(nil), m.Headers.From...), m.Envelope.MailFrom) {
		if err := post(kindFrom, a); err != nil {
			return err
		}
	}
	rcpts := append(append(append([]string(nil), m.Headers.To...), m.Headers.Cc...), m.Envelope.RcptTo...)
	if m.Journal != nil {
		for _, r := range m.Journal.Recipients {
			rcpts = append(rcpts, r.Address, r.ExpandedFrom, r.ForwardedFrom)
		}
	}
	for _, a := range rcpts {
		if err := post(kindRcpt, a); err != nil {
			return err
		}
	}
	if id := strings.ToLower(m.Headers.MessageID); id != "" && strings.IndexByte(id, 0) < 0 {
		return idx.Put(postingKey(kindMessageID, id, m.Seq), nil)
	}
	return nil
}

// Search returns one page of matching messages, newest first.
func (s *Store) Search(ctx context.Context, q Query) (Page, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = defaultLimit
	}
	limit = min(limit, maxLimit)
	below := uint64(1<<64 - 1) // exclusive upper bound on seq
	if q.Cursor != "" {
		c, err := strconv.ParseUint(q.Cursor, 10, 64)
		if err != nil || c == 0 {
			return Page{}, ErrBadCursor
		}
		below = c
	}
	m := newMatcher(q)
	page := Page{Messages: []Summary{}}
	err := s.db.View(func(tx *bolt.Tx) error {
		top := tx.Bucket(bucketArchive)
		metas := top.Bucket(bucketMeta)
		next := m.candidates(top, below)
		for examined := 1; ; examined++ {
			if examined%1024 == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			seq, v, ok := next()
			if !ok {
				return nil
			}
			if v == nil {
				v = metas.Get(u64(seq))
			}
			if v != nil {
				meta, err := decodeMeta(v)
				if err != nil {
					return err
				}
				// A report grouped into an earlier one's record is
				// found as that record (group.go).
				grouped := meta.Journal != nil && meta.Journal.GroupedInto != ""
				if !grouped && m.match(meta) {
					page.Messages = append(page.Messages, summarize(meta, q.Restricted))
				}
			}
			if len(page.Messages) == limit {
				if _, _, more := next(); more {
					page.NextCursor = strconv.FormatUint(seq, 10)
				}
				return nil
			}
			if examined >= scanBudget {
				// A page not filled within budget still answers, with
				// the place to continue from.
				page.NextCursor = strconv.FormatUint(seq, 10)
				return nil
			}
		}
	})
	return page, err
}

func summarize(m *Meta, restricted bool) Summary {
	s := Summary{
		ID: m.ID, Hash: m.Hash, MessageID: m.Headers.MessageID, Subject: m.Headers.Subject,
		To: m.Headers.To, Date: m.Headers.Date, Size: m.Size, Received: m.Receipt.Received,
	}
	if j := m.Journal; j != nil {
		if o := j.Original; o != nil && o.SHA256 != "" {
			s.Original = &OriginalRef{SHA256: o.SHA256, Size: o.Size}
		}
		s.Reports = len(j.Reports)
		s.Recipients = j.Recipients
		if restricted {
			s.Recipients = visibleRecipients(j.Recipients, shownAddresses(&m.Headers))
		}
		// A report can name tens of thousands (an expanded list); a hit
		// shows the first ones and the count, the record has them all.
		s.RecipientCount = len(s.Recipients)
		if len(s.Recipients) > maxHitRecipients {
			s.Recipients = s.Recipients[:maxHitRecipients]
		}
	}
	if m.Headers.FromDisplay != "" {
		s.From = m.Headers.FromDisplay
	} else if len(m.Headers.From) > 0 {
		s.From = m.Headers.From[0]
	} else {
		s.From = m.Envelope.MailFrom
	}
	if s.To == nil {
		s.To = []string{}
	}
	return s
}

type matcher struct {
	restricted           bool
	from, to, subj, text string
	fromKind, toKind     byte // the index to drive the search with, or 0
	fromTerm, toTerm     string
	msgID                string
	after, before        time.Time
}

func newMatcher(q Query) *matcher {
	m := &matcher{after: q.After, before: q.Before, restricted: q.Restricted}
	m.from = strings.ToLower(strings.TrimSpace(q.From))
	m.to = strings.ToLower(strings.TrimSpace(q.To))
	m.subj = strings.ToLower(strings.TrimSpace(q.Subject))
	m.text = strings.ToLower(strings.TrimSpace(q.Text))
	m.msgID = strings.ToLower(strings.Trim(strings.TrimSpace(q.MessageID), "<>"))
	m.fromKind, m.fromTerm = addressTerm(m.from, kindFrom)
	m.toKind, m.toTerm = addressTerm(m.to, kindRcpt)
	return m
}

// addressTerm picks the index for an address filter: a full address, an
// @domain or a bare domain use the index; anything else is a substring
// matched while scanning.
func addressTerm(f string, kind byte) (byte, string) {
	switch {
	case f == "":
		return 0, ""
	case strings.HasPrefix(f, "@"):
		return kind - 'a' + 'A', f[1:]
	case strings.Contains(f, "@"):
		return kind, f
	case strings.Contains(f, ".") && !strings.ContainsAny(f, " "):
		return kind - 'a' + 'A', f
	}
	return 0, ""
}

// candidates yields seqs below the bound, newest first, from the most
// selective index available, or every record.
func (m *matcher) candidates(top *bolt.Bucket, below uint64) func() (uint64, []byte, bool) {
	switch {
	case m.msgID != "":
		return postings(top.Bucket(bucketIndex), kindMessageID, m.msgID, below)
	case m.fromKind != 0:
		return postings(top.Bucket(bucketIndex), m.fromKind, m.fromTerm, below)
	case m.toKind != 0:
		return postings(top.Bucket(bucketIndex), m.toKind, m.toTerm, below)
	}
	c := top.Bucket(bucketMeta).Cursor()
	var k, v []byte
	started := false
	return func() (uint64, []byte, bool) {
		if !started {
			started = true
			k, v = c.Seek(u64(below))
			if k == nil {
				k, v = c.Last()
			}
			for k != nil && binary.BigEndian.Uint64(k) >= below {
				k, v = c.Prev()
			}
		} else {
			k, v = c.Prev()
		}
		if k == nil {
			return 0, nil, false
		}
		return binary.BigEndian.Uint64(k), v, true
	}
}

func postings(idx *bolt.Bucket, kind byte, term string, below uint64) func() (uint64, []byte, bool) {
	prefix := append(append([]byte{kind}, term...), 0)
	c := idx.Cursor()
	var k []byte
	started := false
	return func() (uint64, []byte, bool) {
		if !started {
			started = true
			start := binary.BigEndian.AppendUint64(append([]byte(nil), prefix...), below)
			k, _ = c.Seek(start)
			if k == nil {
				k, _ = c.Last()
			}
			for k != nil && bytes.HasPrefix(k, prefix) && binary.BigEndian.Uint64(k[len(prefix):]) >= below {
				k, _ = c.Prev()
			}
			if k != nil && !bytes.HasPrefix(k, prefix) {
				k, _ = c.Prev()
			}
		} else {
			k, _ = c.Prev()
		}
		if k == nil || !bytes.HasPrefix(k, prefix) || len(k) != len(prefix)+8 {
			return 0, nil, false
		}
		return binary.BigEndian.Uint64(k[len(prefix):]), nil, true
	}
}

func (m *matcher) match(meta *Meta) bool {
	if m.msgID != "" && strings.ToLower(meta.Headers.MessageID) != m.msgID {
		return false
	}
	if m.from != "" && !anyMatch(m.from, append(append([]string(nil), meta.Headers.From...), meta.Envelope.MailFrom, meta.Headers.FromDisplay)) {
		return false
	}
	if m.to != "" && !anyMatch(m.to, m.recipientsOf(meta)) {
		return false
	}
	if m.subj != "" && !strings.Contains(strings.ToLower(meta.Headers.Subject), m.subj) {
		return false
	}
	if !m.after.IsZero() || !m.before.IsZero() {
		t := meta.Headers.Date
		if t.IsZero() {
			t = meta.Receipt.Received
		}
		if !m.after.IsZero() && t.Before(m.after) {
			return false
		}
		if !m.before.IsZero() && !t.Before(m.before) {
			return false
		}
	}
	if m.text != "" {
		hay := append(m.recipientsOf(meta), meta.Headers.Subject, meta.Headers.MessageID, meta.Headers.FromDisplay, meta.Envelope.MailFrom)
		hay = append(hay, meta.Headers.From...)
		if !anyMatch(m.text, hay) {
			return false
		}
	}
	return true
}

// recipientsOf lists what a recipient filter matches: every recipient the
// archive knows of, or, for a restricted query, those the header shows.
func (m *matcher) recipientsOf(meta *Meta) []string {
	if m.restricted {
		return append(append([]string(nil), meta.Headers.To...), meta.Headers.Cc...)
	}
	out := append(append(append([]string(nil), meta.Headers.To...), meta.Headers.Cc...), meta.Envelope.RcptTo...)
	if meta.Journal != nil {
		for _, r := range meta.Journal.Recipients {
			out = append(out, r.Address, r.ExpandedFrom, r.ForwardedFrom)
		}
	}
	return out
}

// anyMatch: an address filter matches an address exactly, its domain
// (@domain or bare domain), or as a substring.
func anyMatch(f string, list []string) bool {
	for _, s := range list {
		if s != "" && strings.Contains(strings.ToLower(s), f) {
			return true
		}
	}
	return false
}
