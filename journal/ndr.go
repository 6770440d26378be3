package journal

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// Journal reports that bounced.
//
// When the journaling mailbox refuses a report, Exchange sends the
// non-delivery report to the alternate journaling mailbox, if one is set:
// a delivery status notification (RFC 3464) with the refused report
// attached. Those NDRs are how reports lost during an outage are recovered
// (chainmail import): the report inside is what belongs in the archive,
// sent to the recipient it failed for.
//
//	Content-Type: multipart/report; report-type=delivery-status; boundary=...
//
//	--boundary
//	Content-Type: multipart/alternative ...      the notification for people
//	--boundary
//	Content-Type: message/delivery-status        per-recipient fields (§2.3)
//
//	Reporting-MTA: dns; ex01.contoso.example
//
//	Final-Recipient: rfc822; journal@archive.example
//	Action: failed
//	Status: 5.4.1
//	--boundary
//	Content-Type: message/rfc822                 the report that bounced
//	...

// ErrNotNDR is returned by UnwrapNDR for a message that is not a delivery
// status notification with a journal report attached.
var ErrNotNDR = errors.New("journal: not a non-delivery report of a journal report")

// NDR is a non-delivery report whose returned message is a journal report.
type NDR struct {
	// Report locates the returned journal report in the NDR's bytes.
	Report *Part
	// Recipients are the addresses delivery failed for, as the
	// delivery-status part gives them (Original-Recipient when present,
	// else Final-Recipient): the report's envelope recipients.
	Recipients []string
	// Warnings lists what was odd but did not stop the unwrapping.
	Warnings []error
}

// maxStatusBytes bounds the delivery-status part kept in memory: a few
// hundred bytes per recipient.
const maxStatusBytes = 1 << 20

// UnwrapNDR finds, in the size-byte message r holds, a delivery status
// notification (multipart/report) whose returned message (message/rfc822,
// or a relay's message/global) is a journal report. It returns ErrNotNDR
// for anything else, including an NDR that returned only the report's
// header (text/rfc822-headers): there is nothing to recover from it. Like
// Parse it reads sequentially through small buffers.
func (p Parser) UnwrapNDR(r io.ReaderAt, size int64) (*NDR, error) {
	if size < 0 {
		return nil, errors.New("journal: negative message size")
	}
	p = p.withDefaults()
	hdrBytes, bodyOff, err := readHeaderBlock(io.NewSectionReader(r, 0, size), p.MaxHeaderBytes)
	if err != nil {
		return nil, ErrNotNDR
	}
	h := parseHeader(hdrBytes)
	ct, params := mediaType(h.Get("Content-Type"))
	if ct != "multipart/report" || params["boundary"] == "" {
		return nil, ErrNotNDR
	}
	var (
		status   []byte
		returned []attachment
		ndr      = &NDR{}
	)
	var pending string
	_, err = scanParts(io.NewSectionReader(r, bodyOff, size-bodyOff), bodyOff, params["boundary"],
		scanLimits{MaxHeaderBytes: p.MaxHeaderBytes, MaxParts: p.MaxParts}, maxStatusBytes,
		func(rp *rawPart) (bool, error) {
			ph := parseHeader(rp.Header)
			pending, _ = mediaType(ph.Get("Content-Type"))
			return status == nil && (pending == "message/delivery-status" || pending == "message/global-delivery-status"), nil
		},
		func(rp *rawPart, body []byte) error {
			ph := parseHeader(rp.Header)
			switch pending {
			case "message/delivery-status", "message/global-delivery-status":
				if status == nil && body != nil {
					status = append([]byte{}, body...)
				}
			case "message/rfc822", "message/global":
				returned = append(returned, attachment{body: rp.Body, encoding: transferEncoding(&ph), contentType: pending})
			}
			return nil
		})
	if err != nil {
		return nil, fmt.Errorf("journal: non-delivery report: %w", wrapLimit(err))
	}
	if len(returned) == 0 {
		return nil, ErrNotNDR
	}
	a := returned[0]
	part := &Part{Offset: a.body.Off, Length: a.body.Len, Encoding: a.encoding, ContentType: a.contentType}
	rd, err := part.Open(r)
	if err != nil {
		return nil, fmt.Errorf("journal: non-delivery report: returned message: %w", err)
	}
	inner, _, err := readHeaderBlock(rd, p.MaxHeaderBytes)
	if err != nil {
		return nil, fmt.Errorf("journal: non-delivery report: returned message: %w", wrapLimit(err))
	}
	ih := parseHeader(inner)
	if !IsReport(ih.Map()) {
		return nil, ErrNotNDR
	}
	ndr.Report = part
	ndr.Recipients = statusRecipients(string(status))
	if len(ndr.Recipients) == 0 {
		ndr.Warnings = append(ndr.Warnings, errors.New("journal: non-delivery report: no Final-Recipient in the delivery-status part"))
	}
	return ndr, nil
}

// statusRecipients reads the per-recipient blocks of a delivery-status
// body (RFC 3464 §2.3): for each, Original-Recipient if given, else
// Final-Recipient, without the address type ("rfc822;").
func statusRecipients(body string) []string {
	var out []string
	seen := map[string]bool{}
	for _, block := range strings.Split(strings.ReplaceAll(body, "\r\n", "\n"), "\n\n") {
		var final, original string
		for _, line := range strings.Split(block, "\n") {
			name, value, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "final-recipient":
				final = statusAddress(value)
			case "original-recipient":
				original = statusAddress(value)
			}
		}
		addr := original
		if addr == "" {
			addr = final
		}
		if addr != "" && !seen[strings.ToLower(addr)] {
			seen[strings.ToLower(addr)] = true
			out = append(out, addr)
		}
	}
	return out
}

// statusAddress takes "rfc822; journal@archive.example" to the address;
// other address types (x400, utf-8 with its own encoding) are kept only
// when they look like a mailbox.
func statusAddress(v string) string {
	typ, addr, ok := strings.Cut(v, ";")
	if !ok {
		addr = typ
	}
	addr = strings.Trim(strings.TrimSpace(addr), "<>")
	if addr == "" || !strings.Contains(addr, "@") || strings.ContainsAny(addr, " \t\r\n") {
		return ""
	}
	return addr
}
