package journal

import (
	"strings"
	"testing"
)

func TestDecodeSubaddress(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		rcpt, sep string
		want      string
		ok        bool
	}{
		{"archive+bob=contoso.example@archive.example", "", "bob@contoso.example", true},
		{"<archive+bob=contoso.example@archive.example>", "+", "bob@contoso.example", true},
		{" <archive+Bob.Smith=Contoso.Example@archive.example> ", "+", "Bob.Smith@Contoso.Example", true},
		// The extension keeps later separators: they belong to the recipient.
		{"archive+bob+lists=contoso.example@archive.example", "+", "bob+lists@contoso.example", true},
		// The last "=" is the "@"; earlier ones are the local part's (SRS).
		{"archive+SRS0=HHH=TT=example.org=alice=fwd.example@archive.example", "+", "SRS0=HHH=TT=example.org=alice@fwd.example", true},
		// recipient_delimiter may list several characters.
		{"archive-bob=contoso.example@archive.example", "+-", "bob@contoso.example", true},
		{"archive-bob=contoso.example@archive.example", "+", "", false},
		// A source route is ignored (RFC 5321 §4.1.2).
		{"<@relay.example:archive+bob=contoso.example@archive.example>", "+", "bob@contoso.example", true},
		// Quoted local parts, in and out.
		{`"archive+bob=contoso.example"@archive.example`, "+", "bob@contoso.example", true},
		{`"archive+john doe=contoso.example"@archive.example`, "+", `"john doe"@contoso.example`, true},
		{`"archive+a\"b=contoso.example"@archive.example`, "+", `"a\"b"@contoso.example`, true},
		{"archive+.bob=contoso.example@archive.example", "+", `".bob"@contoso.example`, true},
		{"archive+bob=[192.0.2.1]@archive.example", "+", "bob@[192.0.2.1]", true},
		{"archive+bob=bücher.example@archive.example", "+", "bob@bücher.example", true},
		// Nothing encoded, or nothing well-formed.
		{"archive@archive.example", "+", "", false},
		{"archive+bob@archive.example", "+", "", false},
		{"archive+=contoso.example@archive.example", "+", "", false},
		{"archive+bob=@archive.example", "+", "", false},
		{"archive+bob=con toso.example@archive.example", "+", "", false},
		{"archive+bob=..example@archive.example", "+", "", false},
		{"archive+bob=contoso.example", "+", "", false},
		{"archive+bob=contoso.example@", "+", "", false},
		{`"archive+bob=contoso.example@archive.example`, "+", "", false},
		{"archive+b\x01b=contoso.example@archive.example", "+", "", false},
		{"<@relay.example", "+", "", false},
		{"", "", "", false},
	} {
		got, ok := DecodeSubaddress(tc.rcpt, tc.sep)
		if got != tc.want || ok != tc.ok {
			t.Errorf("DecodeSubaddress(%q, %q) = %q, %v; want %q, %v", tc.rcpt, tc.sep, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzDecodeSubaddress(f *testing.F) {
	for _, s := range []string{
		"archive+bob=contoso.example@archive.example",
		`"archive+a\"b=contoso.example"@archive.example`,
		"<@r:archive+x=y@z>",
	} {
		f.Add(s, "+")
	}
	f.Fuzz(func(t *testing.T, rcpt, sep string) {
		// Decoding for one mailbox is decoding, restricted.
		if a, ok := DecodeMailboxSubaddress(rcpt, "archive@archive.example", sep); ok {
			if b, ok2 := DecodeSubaddress(rcpt, sep); !ok2 || a != b {
				t.Fatalf("DecodeMailboxSubaddress(%q, %q) = %q, DecodeSubaddress = %q, %v", rcpt, sep, a, b, ok2)
			}
		}
		addr, ok := DecodeSubaddress(rcpt, sep)
		if !ok {
			if addr != "" {
				t.Fatalf("not ok but returned %q", addr)
			}
			return
		}
		// A decoded address is itself well-formed: one unquoted "@"
		// before a valid domain.
		at := strings.LastIndexByte(addr, '@')
		if at <= 0 || !validDomain(addr[at+1:]) {
			t.Fatalf("DecodeSubaddress(%q, %q) = %q: not an address", rcpt, sep, addr)
		}
		if _, ok := unquoteLocal(addr[:at]); !ok && !isDotAtom(addr[:at]) {
			t.Fatalf("DecodeSubaddress(%q, %q) = %q: bad local part", rcpt, sep, addr)
		}
	})
}

func TestDecodeMailboxSubaddress(t *testing.T) {
	t.Parallel()
	const mbox = "archive@archive.example"
	for _, tc := range []struct {
		rcpt, sep string
		want      string
		ok        bool
	}{
		{"archive+bob=contoso.example@archive.example", "", "bob@contoso.example", true},
		{"<Archive+bob=contoso.example@ARCHIVE.example>", "+", "bob@contoso.example", true},
		{"archive-bob=contoso.example@archive.example", "+-", "bob@contoso.example", true},
		// The mailbox itself, another mailbox, another domain: as they are.
		{"archive@archive.example", "+", "", false},
		{"archivist+bob=contoso.example@archive.example", "+", "", false},
		{"archiv+bob=contoso.example@archive.example", "+", "", false},
		{"archive+bob=contoso.example@elsewhere.example", "+", "", false},
		{"bob+archive=contoso.example@archive.example", "+", "", false},
		{"archive+bob@archive.example", "+", "", false},
	} {
		got, ok := DecodeMailboxSubaddress(tc.rcpt, mbox, tc.sep)
		if got != tc.want || ok != tc.ok {
			t.Errorf("DecodeMailboxSubaddress(%q, %q) = %q, %v; want %q, %v", tc.rcpt, tc.sep, got, ok, tc.want, tc.ok)
		}
	}
}
