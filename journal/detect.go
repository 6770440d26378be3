package journal

import (
	"bytes"
	"strings"
)

// Header fields that mark a message as a journal report.
const (
	// HeaderJournalReport is set by Exchange 2007 and later and Exchange
	// Online on every journal report; its value is often empty.
	HeaderJournalReport = "X-MS-Journal-Report"
	// headerOrgJournalReport is the organisation-internal twin of
	// X-MS-Journal-Report. It is normally stripped when a report leaves the
	// organisation, but a report relayed inside it may still carry it.
	headerOrgJournalReport = "X-MS-Exchange-Organization-Journal-Report"
	// Exchange 2003 (and 2007 for compatibility) mark reports with
	// "Content-Identifier: ExJournalReport"; some versions misspell the
	// field name, and both spellings occur in real archives.
	headerContentIdentifier  = "Content-Identifier"
	headerContentIdentifer   = "Content-Identifer"
	contentIdentifierJournal = "exjournalreport"
)

// IsReport reports whether a message header marks the message as an
// Exchange envelope journal report. It accepts the map form of a header:
// a net/mail.Header or net/textproto.MIMEHeader can be passed as is, and a
// go-message textproto.Header through its Map method. Field names are
// matched without regard to case, so the map need not be canonical.
func IsReport(h map[string][]string) bool {
	for k, vs := range h {
		if isReportField(k, vs) {
			return true
		}
	}
	return false
}

func isReportField(name string, values []string) bool {
	switch {
	case strings.EqualFold(name, HeaderJournalReport), strings.EqualFold(name, headerOrgJournalReport):
		// Presence is the signal; Exchange writes it with an empty value.
		return true
	case strings.EqualFold(name, headerContentIdentifier), strings.EqualFold(name, headerContentIdentifer):
		for _, v := range values {
			if strings.EqualFold(strings.TrimSpace(v), contentIdentifierJournal) {
				return true
			}
		}
	}
	return false
}

// LooksLikeReport reports whether msg, a whole message, starts with a header
// that marks it as a journal report. It reads only the header, so it is cheap
// enough to call on every message before deciding to Parse.
func LooksLikeReport(msg []byte) bool {
	hdr, _, err := readHeaderBlock(bytes.NewReader(msg), DefaultMaxHeaderBytes)
	if err != nil {
		return false
	}
	h := parseHeader(hdr)
	return IsReport(h.Map())
}
