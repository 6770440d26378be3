package balancer

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

func TestReadReply(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, in string
		code     int
		raw      string // "" means the same as in
		err      string
	}{
		{name: "one line", in: "220 mx.example ESMTP\r\n", code: 220},
		{name: "bare code", in: "220\r\n", code: 220},
		{name: "bare LF", in: "220 mx\n", code: 220},
		{name: "multi-line", in: "220-mx.example ESMTP\r\n220-second\r\n220 last\r\n", code: 220},
		{name: "ehlo", in: "250-mx\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n", code: 250},
		{name: "only one reply", in: "220 first\r\n250 next\r\n", code: 220, raw: "220 first\r\n"},
		{name: "421", in: "421 4.3.2 busy\r\n", code: 421},
		{name: "554", in: "554 5.7.1 go away\r\n", code: 554},
		{name: "code changes", in: "220-a\r\n250 b\r\n", err: "changed"},
		{name: "bad first digit", in: "120 x\r\n", err: "malformed"},
		{name: "bad second digit", in: "260 x\r\n", err: "malformed"},
		{name: "letters", in: "abc\r\n", err: "malformed"},
		{name: "short", in: "22\r\n", err: "malformed"},
		{name: "bad separator", in: "220x\r\n", err: "malformed"},
		{name: "no line end", in: "220 never ends", err: "EOF"},
		{name: "cut multi-line", in: "220-a\r\n", err: "EOF"},
		{name: "empty", in: "", err: "EOF"},
		{name: "too long", in: "220 " + strings.Repeat("x", 2000) + "\r\n", err: "too long"},
		{name: "too many lines", in: strings.Repeat("220-x\r\n", 100) + "220 x\r\n", err: "lines"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := readReply(bufio.NewReaderSize(strings.NewReader(tc.in), replyBufSize))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tc.raw
			if want == "" {
				want = tc.in
			}
			if rep.code != tc.code || string(rep.raw) != want {
				t.Fatalf("got %d %q, want %d %q", rep.code, rep.raw, tc.code, want)
			}
		})
	}
}

// FuzzReadReply: any input either fails or yields a reply whose raw bytes
// are a prefix of the input, whose code is valid, and which reads back the
// same.
func FuzzReadReply(f *testing.F) {
	for _, s := range []string{"220 ok\r\n", "220-a\r\n220 b\r\n", "250-x\n250 y\n", "421 4.3.2 busy\r\n", "2", "220-\r\n220\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		rep, err := readReply(bufio.NewReaderSize(bytes.NewReader(in), replyBufSize))
		if err != nil {
			return
		}
		if !bytes.HasPrefix(in, rep.raw) || rep.code < 200 || rep.code > 559 {
			t.Fatalf("reply %d %q from %q", rep.code, rep.raw, in)
		}
		again, err := readReply(bufio.NewReaderSize(bytes.NewReader(rep.raw), replyBufSize))
		if err != nil || again.code != rep.code || !bytes.Equal(again.raw, rep.raw) {
			t.Fatalf("re-read of %q: %d %q %v", rep.raw, again.code, again.raw, err)
		}
	})
}
