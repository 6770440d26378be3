package journal

import (
	"fmt"
	"mime"
	"strings"
	"time"
	"unicode/utf8"
)

// Kind is how a recipient was addressed on the journaled message
// (MS-XJRNL §2.1, recipient-p2-type). KindRecipient is used when Exchange
// could not tell, e.g. for recipients of a message that arrived from outside.
type Kind string

// The recipient kinds, lower-case whatever the case in the report.
const (
	KindTo        Kind = "to"
	KindCc        Kind = "cc"
	KindBcc       Kind = "bcc"
	KindRecipient Kind = "recipient"
)

// Recipient is one envelope recipient of the journaled message: a real
// delivery, including the Bcc recipients and the members of expanded lists
// that the message's own header does not show.
type Recipient struct {
	// Address is the recipient's address as the report gives it, with any
	// angle brackets or "smtp:" prefix removed. Exchange gives SMTP
	// addresses; an X.500 legacy DN is passed through unchanged.
	Address string
	Kind    Kind
	// ExpandedFrom is the distribution list whose expansion produced this
	// recipient ("Expanded:"), if any.
	ExpandedFrom string
	// ForwardedFrom is the recipient this one was redirected from, by
	// forwarding or an alternate recipient ("Forwarded:"), if any.
	ForwardedFrom string
}

// Field is one line of the envelope part, unfolded, in report order.
type Field struct {
	Name  string // as written, e.g. "Message-Id"
	Value string // trimmed, unfolded
	Line  int    // 1-based line of the decoded envelope text where it starts
}

// Envelope is the metadata Exchange wrote about the journaled message
// (MS-XJRNL §2.1, the Envelope-Part).
type Envelope struct {
	Sender     string // the SMTP reverse-path; "" for the null sender <>
	OnBehalfOf string // the address the sender sent on behalf of, if any
	Subject    string // decoded to UTF-8
	MessageID  string // as written, normally with its angle brackets
	Label      string // retention label, if any
	Mailbox    string // mailbox owner, if any
	// SentUTC and ReceivedUTC are zero when absent or in an unknown format
	// (a warning then says which).
	SentUTC, ReceivedUTC time.Time
	Recipients           []Recipient
	// Fields holds every field of the envelope part, known or not, so no
	// information in the report is lost to the caller.
	Fields []Field
}

// parseEnvelope reads the decoded text of an envelope part. It never fails on
// a single line: a report with one odd line still names its other
// recipients, and losing those would be worse for an archive than indexing
// them with a warning. Each problem becomes a warning that names its line.
func parseEnvelope(text string) (env Envelope, warns []error) {
	warn := func(line int, format string, args ...any) {
		warns = append(warns, fmt.Errorf("journal: envelope part: line %d: "+format, append([]any{line}, args...)...))
	}
	seen := map[string]int{}
	lastRecipientLine := 0
	for _, lf := range logicalLines(text) {
		name, value, ok := strings.Cut(lf.text, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			warn(lf.line, "not a \"Name: value\" line: %q", clip(lf.text))
			continue
		}
		value = strings.TrimSpace(value)
		env.Fields = append(env.Fields, Field{Name: name, Value: value, Line: lf.line})
		key := fieldKey(name)
		// first reports whether this is the first field of its kind; a
		// repeated one is a generator bug and the first one wins.
		first := func() bool {
			if line, dup := seen[key]; dup {
				warn(lf.line, "second %s field ignored (first on line %d)", name, line)
				return false
			}
			seen[key] = lf.line
			return true
		}
		switch key {
		case "sender":
			if first() {
				env.Sender = cleanAddress(value)
			}
		case "onbehalfof":
			if first() {
				env.OnBehalfOf = cleanAddress(value)
			}
		case "subject":
			if first() {
				env.Subject = decodeWords(value)
			}
		case "messageid":
			if first() {
				env.MessageID = value
			}
		case "label":
			if first() {
				env.Label = value
			}
		case "mailbox":
			if first() {
				env.Mailbox = cleanAddress(value)
			}
		case "sentutc", "receivedutc":
			if !first() {
				continue
			}
			t, ok := parseTime(value)
			if !ok {
				warn(lf.line, "%s: unrecognised time %q", name, clip(value))
				continue
			}
			if key == "sentutc" {
				env.SentUTC = t
			} else {
				env.ReceivedUTC = t
			}
		case "to", "cc", "bcc", "recipient", "recipients":
			kind := Kind(key)
			if key == "recipients" {
				kind = KindRecipient
			}
			before := len(env.Recipients)
			env.Recipients = parseRecipients(env.Recipients, kind, name, value, func(f string, a ...any) { warn(lf.line, f, a...) })
			if len(env.Recipients) > before {
				lastRecipientLine = lf.line
			}
		case "expanded", "forwarded":
			// A redirection on a line of its own: a generator that wrapped
			// the recipient line without folding it. It can only belong to
			// the recipient just before it.
			if lastRecipientLine == 0 || len(env.Recipients) == 0 {
				warn(lf.line, "%s: no recipient line before it", name)
				continue
			}
			warn(lf.line, "%s on a line of its own; applied to the recipient on line %d", name, lastRecipientLine)
			redirect(&env.Recipients[len(env.Recipients)-1], key, cleanAddress(value))
		}
	}
	return env, warns
}

// logicalLine is a field with its continuation lines joined.
type logicalLine struct {
	text string
	line int
}

// logicalLines splits text on CRLF or LF and unfolds continuation lines (a
// line that starts with white space continues the one before, as in RFC 5322
// §2.2.3). Blank lines separate nothing in an envelope part and are skipped.
// A field's pieces are joined once at its end: appending to a string per
// continuation line would make an envelope of many folded lines quadratic.
func logicalLines(text string) []logicalLine {
	var (
		out    []logicalLine
		pieces []string
		first  int
	)
	flush := func() {
		if len(pieces) > 0 {
			out = append(out, logicalLine{text: strings.Join(pieces, " "), line: first})
		}
		pieces = pieces[:0]
	}
	for n, raw := range strings.Split(text, "\n") {
		l := strings.TrimRight(raw, "\r")
		if strings.TrimSpace(l) == "" {
			continue
		}
		if (l[0] == ' ' || l[0] == '\t') && len(pieces) > 0 {
			pieces = append(pieces, strings.TrimSpace(l))
			continue
		}
		flush()
		pieces, first = append(pieces, l), n+1
	}
	flush()
	return out
}

// fieldKey normalises a field name so "Message-ID", "Message-Id" and
// "MessageId", or "On-Behalf-Of" and "OnBehalfOf", compare equal.
func fieldKey(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		if r != '-' && r != '_' && r != ' ' && r != '\t' {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// parseRecipients reads a recipient-specification value:
//
//	addr [, Expanded: list] [, Forwarded: original]
//
// Liberal beyond MS-XJRNL: extra addresses separated by commas become further
// recipients of the same kind (older generators listed several per line).
func parseRecipients(rs []Recipient, kind Kind, name, value string, warn func(string, ...any)) []Recipient {
	own := -1 // index in rs of the last recipient this line added
	for i, tok := range splitList(value) {
		tok = strings.TrimSpace(tok)
		if k, v, ok := strings.Cut(tok, ":"); ok {
			if key := fieldKey(k); key == "expanded" || key == "forwarded" {
				if own < 0 {
					warn("%s: %s before any address", name, strings.TrimSpace(k))
					continue
				}
				redirect(&rs[own], key, cleanAddress(v))
				continue
			}
		}
		addr := cleanAddress(tok)
		if addr == "" {
			if i == 0 || tok != "" {
				warn("%s: empty address", name)
			}
			continue
		}
		if strings.ContainsAny(addr, " \t") {
			warn("%s: address %q contains white space", name, clip(addr))
		}
		rs = append(rs, Recipient{Address: addr, Kind: kind})
		own = len(rs) - 1
	}
	return rs
}

func redirect(r *Recipient, key, from string) {
	if key == "expanded" {
		r.ExpandedFrom = from
	} else {
		r.ForwardedFrom = from
	}
}

// splitList splits on commas that are not inside a quoted string or angle
// brackets, so `"Smith, J" <j@example.com>` stays one item.
func splitList(s string) []string {
	var (
		out   []string
		start int
		quote bool
		angle int
	)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && quote:
			i++
		case c == '"':
			quote = !quote
		case c == '<' && !quote:
			angle++
		case c == '>' && !quote && angle > 0:
			angle--
		case c == ',' && !quote && angle == 0:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// cleanAddress reduces an address as reports write it ("user@example.com",
// "<user@example.com>", "Name <user@example.com>", "SMTP:user@example.com")
// to the bare address. The null reverse-path "<>" becomes "".
func cleanAddress(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '<'); i >= 0 {
		if j := strings.IndexByte(s[i:], '>'); j >= 0 {
			s = strings.TrimSpace(s[i+1 : i+j])
		}
	}
	if len(s) > 5 && strings.EqualFold(s[:5], "smtp:") {
		s = strings.TrimSpace(s[5:])
	}
	return s
}

// decodeWords decodes RFC 2047 encoded words, which some generators use in
// the envelope's Subject although the format expects the part's charset. On
// an unsupported charset the text stays as written.
func decodeWords(s string) string {
	if !strings.Contains(s, "=?") {
		return s
	}
	d, err := new(mime.WordDecoder).DecodeHeader(s)
	if err != nil {
		return s
	}
	return d
}

// timeLayouts are the forms SentUtc and ReceivedUtc have been seen in or
// may plausibly take: MS-XJRNL leaves sent-time-string unspecified, and
// Exchange writes .NET date strings whose shape depends on the server.
var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05.9999999",
	"2006-01-02 15:04:05Z07:00",
	"2006-01-02 15:04:05Z",
	"2006-01-02 15:04:05",
	"1/2/2006 3:04:05 PM",
	"1/2/2006 15:04:05",
	"2.1.2006 15:04:05",
	"02/01/2006 15:04:05",
	time.RFC1123Z,
	time.RFC1123,
	"Mon, 2 Jan 2006 15:04:05 -0700",
	"2 Jan 2006 15:04:05 -0700",
}

// parseTime reads a UTC timestamp; a time without a zone is taken as UTC,
// which the field names promise.
func parseTime(s string) (time.Time, bool) {
	s = strings.TrimSpace(s)
	if i := strings.Index(s, " ("); i > 0 {
		s = s[:i] // a trailing comment such as "(UTC)"
	}
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), true
		}
	}
	return time.Time{}, false
}

// clip shortens s for an error message, never splitting a UTF-8 sequence.
func clip(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// cp1252 maps the bytes 0x80-0x9F of windows-1252 to Unicode; the rest of
// the code page is ISO-8859-1.
var cp1252 = [32]rune{
	'€', 0xFFFD, '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', 0xFFFD, 'Ž', 0xFFFD,
	0xFFFD, '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', 0xFFFD, 'ž', 'Ÿ',
}

// toUTF8 converts the envelope text from its declared charset. Only the
// charsets Exchange uses for envelope parts are converted; addresses are
// ASCII in all of them, so another charset costs at most a garbled Subject
// (ok is then false so the caller can warn).
func toUTF8(b []byte, charset string) (s string, ok bool) {
	switch strings.ToLower(strings.Trim(charset, `" `)) {
	case "", "utf-8", "utf8", "us-ascii", "ascii":
		return strings.ToValidUTF8(string(b), "\uFFFD"), true
	case "iso-8859-1", "iso8859-1", "latin1", "l1", "windows-1252", "cp1252":
		win := strings.Contains(strings.ToLower(charset), "1252")
		var sb strings.Builder
		sb.Grow(len(b))
		for _, c := range b {
			switch {
			case win && c >= 0x80 && c < 0xA0:
				sb.WriteRune(cp1252[c-0x80])
			default:
				sb.WriteRune(rune(c))
			}
		}
		return sb.String(), true
	}
	return strings.ToValidUTF8(string(b), "\uFFFD"), false
}
