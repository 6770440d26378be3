package archive

import (
	"net/mail"
	"strings"
	"testing"
	"time"
)

func TestParseHeaders(t *testing.T) {
	cases := []struct {
		name, raw string
		check     func(t *testing.T, h Headers)
	}{
		{"plain", "From: Alice <Alice@Example.COM>\r\nTo: b@x.org, \"C\" <c@y.org>\r\nCc: d@z.org\r\nSubject: hello\r\nDate: Sun, 22 Nov 2026 10:00:00 +0100\r\nMessage-ID: <abc@host>\r\n\r\nbody",
			func(t *testing.T, h Headers) {
				if h.From[0] != "alice@example.com" || h.FromDisplay != "Alice <Alice@Example.COM>" || len(h.To) != 2 || h.Cc[0] != "d@z.org" ||
					h.Subject != "hello" || h.MessageID != "abc@host" || !h.Date.Equal(time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)) {
					t.Fatalf("%+v", h)
				}
			}},
		{"rfc2047 utf-8 and latin1", "From: =?ISO-8859-1?Q?Andr=E9?= <andre@example.com>\r\nSubject: =?UTF-8?B?0J/RgNC40LLQtdGC?= =?iso-8859-15?q?=A4uro?=\r\n\r\n",
			func(t *testing.T, h Headers) {
				if h.Subject != "Привет€uro" || !strings.HasPrefix(h.FromDisplay, "André") {
					t.Fatalf("%q %q", h.Subject, h.FromDisplay)
				}
			}},
		{"windows-1252 and koi8-r", "Subject: =?windows-1252?Q?=93quoted=94?= =?koi8-r?B?8NLJ18XU?=\r\n\r\n",
			func(t *testing.T, h Headers) {
				if h.Subject != "“quoted”Привет" {
					t.Fatalf("%q", h.Subject)
				}
			}},
		{"raw 8-bit", "From: b\xe9b <bob@example.com>\r\nSubject: caf\xe9\r\n\r\n",
			func(t *testing.T, h Headers) {
				if h.Subject != "café" || len(h.Problems) == 0 {
					t.Fatalf("%q %v", h.Subject, h.Problems)
				}
			}},
		{"malformed from", "From: not an address, bob at example\r\nSender: <real@example.com>\r\n\r\n",
			func(t *testing.T, h Headers) {
				if len(h.Problems) == 0 {
					t.Fatalf("%+v", h)
				}
			}},
		{"no header", "\r\njust a body\r\n", func(t *testing.T, h Headers) {
			if h.Subject != "" || len(h.From) != 0 {
				t.Fatalf("%+v", h)
			}
		}},
		{"truncated", "Subject: cut\r\nFrom: a@b.c\r\nX-Long: aaa", func(t *testing.T, h Headers) {
			if h.Subject != "cut" || h.From[0] != "a@b.c" {
				t.Fatalf("%+v", h)
			}
		}},
		{"odd date", "Date: 22 Nov 2026 10:00 GMT\r\n\r\n", func(t *testing.T, h Headers) {
			if h.Date.IsZero() {
				t.Fatalf("%+v", h)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { tc.check(t, ParseHeaders([]byte(tc.raw))) })
	}
}

func TestParseCommonDateAgreesWithNetMail(t *testing.T) {
	for _, v := range []string{
		"Sun, 22 Nov 2026 02:31:14 +0000 (UTC)",
		"Sun, 22 Nov 2026 02:31:14 +0000",
		"Mon, 2 Nov 2026 10:00:00 -0800",
		"Mon,  2 Nov 2026 10:00:00 +0530 (IST)",
		"  Tue, 03 Nov 2026 23:59:59 +1400  ",
		"Wed, 4 Nov 2026 10:00:00 +0100 (CET) ",
	} {
		got, ok := parseCommonDate(v)
		want, err := mail.ParseDate(v)
		if !ok || err != nil || !got.Equal(want) {
			t.Errorf("%q: fast %v %v, net/mail %v %v", v, got, ok, want, err)
		}
	}
	// Other forms go to the full parser.
	for _, v := range []string{"", "22 Nov 2026 10:00 GMT", "Sun, 22 Nov 2026 02:31 +0000", "Sun, 22 Nov 2026 02:31:14 GMT", "yesterday"} {
		if _, ok := parseCommonDate(v); ok {
			t.Errorf("%q taken by the fast path", v)
		}
	}
}

func FuzzParseCommonDate(f *testing.F) {
	f.Add("Sun, 22 Nov 2026 02:31:14 +0000 (UTC)")
	f.Add("Mon, 2 Nov 2026 10:00:00 -0800")
	f.Fuzz(func(t *testing.T, v string) {
		got, ok := parseCommonDate(v)
		if !ok {
			return
		}
		if want, err := mail.ParseDate(v); err == nil && !got.Equal(want) {
			t.Fatalf("%q: fast %v, net/mail %v", v, got, want)
		}
	})
}

func FuzzParseHeaders(f *testing.F) {
	f.Add([]byte("From: =?UTF-8?B?0J/RgNC40LLQtdGC?= <a@b.c>\r\nSubject: x\r\n\r\n"))
	f.Add([]byte("To: \"a\\\" <b@c>, <d@e>;\r\nDate: nope\r\n\r\n"))
	f.Add([]byte("Subject: =?x-unknown?q?abc?=\r\n \r\n"))
	f.Fuzz(func(t *testing.T, head []byte) {
		h := ParseHeaders(head)
		for _, s := range append(append(h.From, h.To...), h.Subject, h.MessageID, h.FromDisplay) {
			if !utf8Valid(s) {
				t.Fatalf("invalid UTF-8 %q", s)
			}
		}
	})
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }
