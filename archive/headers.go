package archive

import (
	"bufio"
	"bytes"
	"fmt"
	"net/mail"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset" // RFC 2047 words in any common charset
	gomail "github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// maxHeaderBytes bounds the header section parsed for indexing; the bytes
// past it are archived all the same, just not indexed.
const maxHeaderBytes = 256 << 10

// ParseHeaders decodes the fields the archive indexes from the start of a
// message. It never fails: what cannot be decoded is noted in Problems and
// the message is archived regardless (an archive refuses nothing for its
// looks).
func ParseHeaders(head []byte) Headers {
	var hs Headers
	th, err := readHeader(head)
	if err != nil {
		hs.Problems = append(hs.Problems, "header: "+err.Error())
	}
	h := gomail.Header{Header: message.Header{Header: th}}
	hs.From, hs.FromDisplay = addresses(&h, "From", &hs)
	if len(hs.From) == 0 {
		hs.From, hs.FromDisplay = addresses(&h, "Sender", &hs)
	}
	hs.To, _ = addresses(&h, "To", &hs)
	hs.Cc, _ = addresses(&h, "Cc", &hs)
	subj, err := h.Subject()
	if err != nil {
		hs.Problems = append(hs.Problems, "subject: "+err.Error())
		subj = h.Get("Subject")
	}
	hs.Subject = clean(subj, &hs, "subject")
	if d, ok := parseCommonDate(h.Get("Date")); ok {
		hs.Date = d.UTC()
	} else if h.Has("Date") {
		d, err := h.Date()
		if err != nil {
			// net/mail is more forgiving of the dates seen in the wild.
			if d2, err2 := mail.ParseDate(h.Get("Date")); err2 == nil {
				d = d2
			} else {
				hs.Problems = append(hs.Problems, "date: "+err.Error())
			}
		}
		if !d.IsZero() {
			hs.Date = d.UTC()
		}
	}
	if id, err := h.MessageID(); err == nil && id != "" {
		hs.MessageID = id
	} else if raw := strings.TrimSpace(h.Get("Message-Id")); raw != "" {
		hs.MessageID = clean(strings.Trim(raw, "<>"), &hs, "message-id")
	}
	return hs
}

func readHeader(head []byte) (textproto.Header, error) {
	if len(head) > maxHeaderBytes {
		head = head[:maxHeaderBytes]
	}
	end := bytes.Index(head, []byte("\r\n\r\n"))
	switch {
	case end >= 0:
		head = head[:end+4]
	case bytes.HasPrefix(head, []byte("\r\n")):
		return textproto.Header{}, nil // no header section at all
	default:
		// Truncated or body-less: parse the complete lines we have.
		if i := bytes.LastIndex(head, []byte("\r\n")); i >= 0 {
			head = append(append([]byte(nil), head[:i+2]...), "\r\n"...)
		} else {
			head = append(append([]byte(nil), head...), "\r\n\r\n"...)
		}
	}
	// A buffer the size of the header section: the default 4 KiB was
	// most of this function's allocation.
	h, err := textproto.ReadHeader(bufio.NewReaderSize(bytes.NewReader(head), len(head)))
	if err != nil {
		return h, fmt.Errorf("%w (indexed what parsed)", err)
	}
	return h, nil
}

// commonDateLayout is the RFC 5322 §3.3 date-time that nearly every MTA
// writes. net/mail.ParseDate finds it too, but only after trying dozens of
// layouts, a visible cost at thousands of messages a second.
const commonDateLayout = "Mon, _2 Jan 2006 15:04:05 -0700"

// parseCommonDate parses a Date in commonDateLayout, with or without a
// trailing comment such as "(UTC)"; anything else is left to the full
// parser.
func parseCommonDate(v string) (time.Time, bool) {
	v = strings.TrimSpace(v)
	if i := strings.IndexByte(v, '('); i > 0 && strings.HasSuffix(v, ")") {
		v = strings.TrimRight(v[:i], " \t")
	}
	d, err := time.Parse(commonDateLayout, v)
	return d, err == nil
}

// addresses returns lower-cased addresses (for the index) and the first
// entry's display form.
func addresses(h *gomail.Header, key string, hs *Headers) ([]string, string) {
	if !h.Has(key) {
		return nil, ""
	}
	list, err := h.AddressList(key)
	if err != nil || len(list) == 0 {
		// Fall back to anything that looks like an address, so a
		// malformed From is still findable.
		raw := h.Get(key)
		if err != nil {
			hs.Problems = append(hs.Problems, strings.ToLower(key)+": "+err.Error())
		}
		var out []string
		for _, f := range strings.FieldsFunc(raw, func(r rune) bool { return strings.ContainsRune(" ,;<>\"\t", r) }) {
			if strings.Contains(f, "@") {
				out = append(out, strings.ToLower(clean(f, hs, key)))
			}
		}
		return out, clean(raw, hs, key)
	}
	out := make([]string, 0, len(list))
	for _, a := range list {
		if a.Address != "" {
			out = append(out, strings.ToLower(a.Address))
		}
	}
	display := list[0].Address
	if list[0].Name != "" {
		display = clean(list[0].Name, hs, key) + " <" + list[0].Address + ">"
	}
	return out, display
}

// clean makes a header value valid UTF-8: raw 8-bit bytes from a sender
// that ignored RFC 2047 are read as Latin-1, the commonest case.
func clean(s string, hs *Headers, field string) string {
	if utf8.ValidString(s) {
		return s
	}
	hs.Problems = append(hs.Problems, field+": raw 8-bit bytes read as Latin-1")
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b.WriteRune(rune(s[i]))
		} else {
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}
