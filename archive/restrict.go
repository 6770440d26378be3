package archive

import "strings"

// Bcc privacy. A journal report, and the envelope of a message received
// through a journaling recipe, name recipients the message itself does
// not show: Bcc recipients, the members of expanded lists, forwarding
// targets. Only callers allowed to audit may see them (in the API, the
// admin role). For everyone else the archive shows a message as its own
// header shows it: Restrict is that view of a record, Query.Restricted the
// matching search, and OpenPart serves the original, not the report.

// Restrict returns a copy of m without what its header does not show:
// envelope recipients and journal recipients outside the original's From,
// To and Cc, any recipient reached through a list expansion or a
// forwarding, the encoded sub-addresses, the per-report recipient counts
// and the parser's warnings (which may quote envelope lines). m is not
// modified.
func Restrict(m *Meta) *Meta {
	if m == nil {
		return nil
	}
	c := *m
	shown := shownAddresses(&m.Headers)
	c.Envelope.RcptTo = []string{}
	for _, r := range m.Envelope.RcptTo {
		if shown[strings.ToLower(r)] {
			c.Envelope.RcptTo = append(c.Envelope.RcptTo, r)
		}
	}
	c.EncodedRcptTo = nil
	if m.Journal != nil {
		j := *m.Journal
		j.Recipients = visibleRecipients(m.Journal.Recipients, shown)
		j.Warnings = nil
		j.Reports = make([]ReportRef, len(m.Journal.Reports))
		for i, r := range m.Journal.Reports {
			r.Recipients = 0
			j.Reports[i] = r
		}
		if len(j.Reports) == 0 {
			j.Reports = nil
		}
		j.Restricted = true
		c.Journal = &j
	}
	return &c
}

// shownAddresses is the set of lower-case addresses the header shows.
func shownAddresses(h *Headers) map[string]bool {
	shown := make(map[string]bool, len(h.From)+len(h.To)+len(h.Cc))
	for _, list := range [][]string{h.From, h.To, h.Cc} {
		for _, a := range list {
			shown[strings.ToLower(a)] = true
		}
	}
	return shown
}

// visibleRecipients keeps the journal recipients the header shows,
// reached directly (not through a list or a forwarding) and not as Bcc.
func visibleRecipients(list []Recipient, shown map[string]bool) []Recipient {
	out := []Recipient{}
	for _, r := range list {
		if r.Kind != "bcc" && r.ExpandedFrom == "" && r.ForwardedFrom == "" && shown[strings.ToLower(r.Address)] {
			out = append(out, r)
		}
	}
	return out
}
