package web

import (
	"errors"
	"net/url"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

func TestParseTime(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"2024-05-01", time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC), true},
		{"2024-05-01T10:20:30Z", time.Date(2024, 5, 1, 10, 20, 30, 0, time.UTC), true},
		{"2024-05-01t10:20:30z", time.Date(2024, 5, 1, 10, 20, 30, 0, time.UTC), true},
		{"2024-05-01T10:20:30.5+02:00", time.Date(2024, 5, 1, 8, 20, 30, 5e8, time.UTC), true},
		// An unencoded '+' arrives as a space.
		{"2024-05-01T10:20:30 02:00", time.Date(2024, 5, 1, 8, 20, 30, 0, time.UTC), true},
		{"2024-05-01T10:20:30-07:00", time.Date(2024, 5, 1, 17, 20, 30, 0, time.UTC), true},
		{"2024-5-1", time.Time{}, false},
		{"2024-05-01 10:20:30", time.Time{}, false},
		{"2024-05-01T10:20:30", time.Time{}, false}, // no zone: ambiguous
		{"1714557600", time.Time{}, false},
		{"", time.Time{}, false},
	}
	for _, tt := range tests {
		got, ok := ParseTime(tt.in)
		if ok != tt.ok || !got.Equal(tt.want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseQueryEmptyMeansUnset(t *testing.T) {
	t.Parallel()
	// A form submits every field; empty ones must not filter.
	v, _ := url.ParseQuery("from=&to=&subject=&message_id=&after=&before=&q=&limit=&cursor=")
	q, err := ParseQuery(v)
	if err != nil {
		t.Fatal(err)
	}
	if q.From != "" || !q.After.IsZero() || q.Limit != DefaultLimit || q.Cursor != "" {
		t.Errorf("query %+v", q)
	}
	q, err = ParseQuery(url.Values{"subject": {"  padded  "}})
	if err != nil || q.Subject != "padded" {
		t.Errorf("trimmed subject %q, %v", q.Subject, err)
	}
}

// FuzzParseQuery feeds arbitrary query strings (untrusted input) to the
// parser: it must not panic, and what it accepts must be within bounds.
func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{
		"", "from=a%40b&limit=10", "after=2024-05-01&before=2024-05-02T00:00:00Z",
		"limit=0", "q=%ff", "subject=a&subject=b", "cursor=123&x=1",
		"before=2024-05-01T10:00:00 02:00", "after=2024-05-01t10:00:00z",
		"from=%00", "limit=99999999999999999999",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, err := ParseQuery(v)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Status != 400 || e.Param == "" {
				t.Fatalf("error %v is not a 400 naming a parameter", err)
			}
			return
		}
		if q.Limit < 1 || q.Limit > MaxLimit {
			t.Fatalf("limit %d accepted", q.Limit)
		}
		if !q.After.IsZero() && !q.Before.IsZero() && !q.Before.After(q.After) {
			t.Fatalf("window %v..%v accepted", q.After, q.Before)
		}
		for _, s := range []string{q.From, q.To, q.Subject, q.MessageID, q.Text, q.Cursor} {
			if len(s) > maxParamLen || !utf8.ValidString(s) {
				t.Fatalf("value %q accepted", s)
			}
			for _, r := range s {
				if unicode.IsControl(r) {
					t.Fatalf("control character in %q accepted", s)
				}
			}
		}
	})
}
