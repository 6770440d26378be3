package web

import (
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"chainmail/archive"
)

// Search limits of the API contract.
const (
	DefaultLimit = 50
	MaxLimit     = 1000
	// maxParamLen bounds every search parameter: the longest legitimate
	// value (a Message-ID, a cursor) is far shorter.
	maxParamLen = 1000
)

// searchParams are the parameters of GET /api/v1/archive/messages.
var searchParams = []string{"from", "to", "subject", "message_id", "after", "before", "q", "limit", "cursor"}

// ParseQuery turns the query parameters of a search into an archive.Query.
// It is strict, so a typo does not silently widen a search: an unknown or
// repeated parameter, a bad number or date, text that is not UTF-8 or holds
// control characters is an *Error (400) naming the parameter. An empty
// value means the parameter is not given (forms send every field).
func ParseQuery(v url.Values) (archive.Query, error) {
	var q archive.Query
	names := make([]string, 0, len(v))
	for name := range v {
		names = append(names, name)
	}
	sort.Strings(names) // the first error reported does not depend on map order
	for _, name := range names {
		if !isSearchParam(name) {
			return archive.Query{}, badParam(quoteName(name), fmt.Sprintf("unknown parameter (known: %s)", strings.Join(searchParams, ", ")))
		}
		if len(v[name]) > 1 {
			return archive.Query{}, badParam(name, "given more than once")
		}
	}
	text := func(name string) (string, *Error) {
		s := strings.TrimSpace(v.Get(name))
		if len(s) > maxParamLen {
			return "", badParam(name, fmt.Sprintf("longer than %d bytes", maxParamLen))
		}
		if !utf8.ValidString(s) {
			return "", badParam(name, "not valid UTF-8")
		}
		if i := strings.IndexFunc(s, unicode.IsControl); i >= 0 {
			return "", badParam(name, "contains a control character")
		}
		return s, nil
	}
	for _, f := range []struct {
		name string
		dst  *string
	}{
		{"from", &q.From}, {"to", &q.To}, {"subject", &q.Subject},
		{"message_id", &q.MessageID}, {"q", &q.Text}, {"cursor", &q.Cursor},
	} {
		s, err := text(f.name)
		if err != nil {
			return archive.Query{}, err
		}
		*f.dst = s
	}

	q.Limit = DefaultLimit
	if s, err := text("limit"); err != nil {
		return archive.Query{}, err
	} else if s != "" {
		n, perr := strconv.Atoi(s)
		if perr != nil || n < 1 || n > MaxLimit {
			return archive.Query{}, badParam("limit", fmt.Sprintf("must be a whole number from 1 to %d (got %q)", MaxLimit, s))
		}
		q.Limit = n
	}

	for _, f := range []struct {
		name string
		dst  *time.Time
	}{{"after", &q.After}, {"before", &q.Before}} {
		s, err := text(f.name)
		if err != nil {
			return archive.Query{}, err
		}
		if s == "" {
			continue
		}
		t, ok := ParseTime(s)
		if !ok {
			return archive.Query{}, badParam(f.name, fmt.Sprintf("want an RFC 3339 time (2024-05-01T10:00:00Z) or a date (2024-05-01), got %q", s))
		}
		*f.dst = t
	}
	if !q.After.IsZero() && !q.Before.IsZero() && !q.Before.After(q.After) {
		return archive.Query{}, badParam("before", "must be later than after")
	}
	return q, nil
}

// quoteName makes an unknown parameter's name fit to echo: bounded, and
// visible when empty.
func quoteName(name string) string {
	if len(name) > 64 {
		name = name[:64] + "…"
	}
	if strings.TrimSpace(name) == "" {
		return fmt.Sprintf("%q", name)
	}
	return strings.ToValidUTF8(name, "\uFFFD")
}

func isSearchParam(name string) bool {
	for _, p := range searchParams {
		if p == name {
			return true
		}
	}
	return false
}

// ParseTime reads an RFC 3339 time or a YYYY-MM-DD date (midnight UTC). A
// space where the zone offset's '+' belongs is read as '+': an unencoded
// '+' in a query string arrives as a space, and a wrong zone would silently
// move the search window.
func ParseTime(s string) (time.Time, bool) {
	if len(s) == len("2006-01-02") {
		t, err := time.Parse(time.DateOnly, s)
		return t, err == nil
	}
	// RFC 3339 §5.6 allows a lower-case t and z; Go's layout does not.
	s = strings.ToUpper(s)
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, true
	}
	if i := strings.LastIndexByte(s, ' '); i > len("2006-01-02") {
		if t, err := time.Parse(time.RFC3339Nano, s[:i]+"+"+s[i+1:]); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}
