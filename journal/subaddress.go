package journal

import "strings"

// DefaultSubaddressSeparator is Postfix's usual recipient_delimiter.
const DefaultSubaddressSeparator = "+"

// DecodeSubaddress recovers the real recipient from an archive address that
// Postfix's recipient_bcc_maps (or sender_bcc_maps) built with the
// recipient encoded in the extension:
//
//	archive+bob=contoso.example@archive.example  ->  bob@contoso.example
//
// The extension starts after the first separator character in the local
// part; separator is a set of characters, as Postfix's recipient_delimiter
// is since Postfix 2.11, and "" means DefaultSubaddressSeparator. In the
// extension the last "=" stands for the "@": a domain cannot contain "=", but
// a local part can (SRS addresses do), so "a=b=example.org" is a=b@example.org.
//
// rcpt may be written as in an SMTP RCPT command: with angle brackets, a
// source route (RFC 5321 §4.1.2, ignored) or a quoted local part. The result
// is quoted if its local part needs it, and otherwise keeps the case it was
// given in. ok is false when rcpt carries no well-formed encoded recipient;
// the caller then uses rcpt as it is.
func DecodeSubaddress(rcpt, separator string) (addr string, ok bool) {
	if separator == "" {
		separator = DefaultSubaddressSeparator
	}
	local, _, ok := splitRcpt(rcpt)
	if !ok {
		return "", false
	}
	i := strings.IndexAny(local, separator)
	if i < 0 {
		return "", false
	}
	ext := local[i+1:]
	eq := strings.LastIndexByte(ext, '=')
	if eq <= 0 {
		return "", false
	}
	lp, dom := ext[:eq], ext[eq+1:]
	if !validDomain(dom) || strings.ContainsFunc(lp, isControl) {
		return "", false
	}
	if !isDotAtom(lp) {
		lp = quoteLocal(lp)
	}
	return lp + "@" + dom, true
}

// DecodeMailboxSubaddress is DecodeSubaddress for one archive mailbox: it
// decodes rcpt only when rcpt is mailbox's local part, a separator and an
// encoded recipient, at mailbox's domain (both compared without regard to
// case). A listener uses it so that an extension of any other address is
// left alone.
func DecodeMailboxSubaddress(rcpt, mailbox, separator string) (addr string, ok bool) {
	if separator == "" {
		separator = DefaultSubaddressSeparator
	}
	mLocal, mDomain, ok := strings.Cut(mailbox, "@")
	if !ok || mLocal == "" {
		return "", false
	}
	local, domain, ok := splitRcpt(rcpt)
	if !ok || !strings.EqualFold(domain, mDomain) || len(local) <= len(mLocal) ||
		!strings.EqualFold(local[:len(mLocal)], mLocal) || !strings.ContainsRune(separator, rune(local[len(mLocal)])) {
		return "", false
	}
	return DecodeSubaddress(rcpt, separator)
}

// splitRcpt takes an address as written in a RCPT command apart: angle
// brackets and a source route (RFC 5321 §4.1.2) are dropped, a quoted
// local part is unquoted.
func splitRcpt(rcpt string) (local, domain string, ok bool) {
	s := strings.TrimSpace(rcpt)
	if strings.HasPrefix(s, "<") && strings.HasSuffix(s, ">") {
		s = strings.TrimSpace(s[1 : len(s)-1])
	}
	if strings.HasPrefix(s, "@") {
		i := strings.IndexByte(s, ':')
		if i < 0 {
			return "", "", false
		}
		s = s[i+1:]
	}
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || !validDomain(s[at+1:]) {
		return "", "", false
	}
	local, ok = unquoteLocal(s[:at])
	if !ok {
		return "", "", false
	}
	return local, s[at+1:], true
}

// unquoteLocal undoes RFC 5321 quoting of a local part ("a b"@x). An
// unquoted local part is returned as is.
func unquoteLocal(s string) (string, bool) {
	if !strings.HasPrefix(s, `"`) {
		return s, !strings.ContainsAny(s, "\" ") && !strings.ContainsFunc(s, isControl)
	}
	if len(s) < 2 || !strings.HasSuffix(s, `"`) {
		return "", false
	}
	var b strings.Builder
	in := s[1 : len(s)-1]
	for i := 0; i < len(in); i++ {
		c := in[i]
		switch {
		case c == '\\':
			if i+1 == len(in) {
				return "", false
			}
			i++
			b.WriteByte(in[i])
		case c == '"':
			return "", false
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), true
}

func quoteLocal(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}

// isDotAtom reports whether s may stand unquoted as a local part
// (RFC 5322 §3.2.3 dot-atom-text; bytes above 0x7F for RFC 6531 addresses).
func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x80 || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("!#$%&'*+-/=?^_`{|}~.", c) >= 0 {
			continue
		}
		return false
	}
	return true
}

// validDomain accepts a host name or an address literal ("[192.0.2.1]"),
// loosely: it rejects what cannot be a domain, not every unregistered name.
func validDomain(d string) bool {
	if d == "" || len(d) > 255 {
		return false
	}
	if d[0] == '[' {
		return d[len(d)-1] == ']' && len(d) > 2 && !strings.ContainsAny(d[1:len(d)-1], "[]\\ ") &&
			!strings.ContainsFunc(d, isControl)
	}
	if d[0] == '.' || strings.Contains(d, "..") {
		return false
	}
	for i := 0; i < len(d); i++ {
		c := d[i]
		if c >= 0x80 || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' {
			continue
		}
		return false
	}
	return true
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7F }
