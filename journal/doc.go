// Package journal understands journal traffic, so that the archive can index
// every real recipient of a journaled message: the Bcc recipients, the
// members of expanded distribution lists and the forwarded ones, none of
// which the message's own header shows.
//
// It is a leaf: it imports only the standard library and go-message, and
// knows nothing of storage. The archive calls it with the bytes of each
// received message.
//
// # Exchange envelope journal reports
//
// Exchange (2007 and later, and Exchange Online) delivers each journaled
// message wrapped in a journal report, specified by [MS-XJRNL] "Journal
// Record Message File Format":
//
//	Content-Type: multipart/mixed; boundary=...
//	X-MS-Journal-Report:
//
//	--boundary
//	Content-Type: text/plain; charset=...        the envelope part (§2.1)
//
//	Sender: alice@contoso.example
//	Subject: ...                                  Subject and Message-ID
//	Message-ID: <...>                             in either order (§2.1)
//	To: bob@contoso.example
//	Bcc: dave@contoso.example, Expanded: list@contoso.example
//	--boundary
//	Content-Type: message/rfc822                  the original, unaltered
//
//	...the journaled message...
//	--boundary
//	Content-Type: message/rfc822                  optional decrypted copy
//	...
//	--boundary--
//
// A report is recognised by its X-MS-Journal-Report header field, or by the
// older "Content-Identifier: ExJournalReport" of Exchange 2003 (also in its
// misspelled form Content-Identifer); see IsReport and LooksLikeReport.
//
// The envelope part (§2.1, Envelope-Part) holds "Name: value" lines:
// Sender, an optional On-Behalf-Of, Subject and Message-ID, and optionally
// Label, Mailbox, SentUtc and ReceivedUtc, then one recipient-specification
// per recipient: To, Cc, Bcc or Recipient, followed by ", Expanded: <list>"
// when a distribution list was expanded to reach it, or ", Forwarded:
// <original>" when it was redirected. Parsing is liberal, because a report
// that is slightly off still names recipients the archive must not lose:
// names match without regard to case or hyphens, lines may be folded and end
// in CRLF or LF, the part may be quoted-printable or base64, unknown fields
// are kept in Envelope.Fields, and a line that cannot be read becomes a
// warning naming its line ("journal: envelope part: line 3: ...") rather than
// an error.
//
// The attachments: the first message/rfc822 part is the original. When
// journal report decryption is on, Exchange attaches a second message, the
// decrypted copy of a rights-protected original; nothing in the format marks
// it but its place, so the second attached message is Report.Decrypted. A
// relay that re-typed the original as application/octet-stream named
// "*.eml" is accepted, with a warning. Exchange
// Online labels the original "Content-Transfer-Encoding: binary"; that and
// 7bit/8bit are identity encodings, so the original is then a slice of the
// report. An original sent base64 or quoted-printable is located as well and
// decoded on request. A TNEF original (application/ms-tnef or winmail.dat, as
// the attachment or inside the original) sets Report.TNEF; TNEF is not
// decoded. A report whose original is itself a report, as when one journal
// mailbox's traffic is journaled again, is unwrapped to Parser.MaxDepth (4)
// levels; Report then describes the innermost original, and Report.Outer the
// envelopes around it.
//
// # Locating the original without a copy
//
// Part gives an attachment's position in the report: when Part.Raw is true,
// report[Offset:Offset+Length] is the attached message exactly as received,
// so the archive can serve it as a slice of the bytes it stored. Otherwise
// Part.Encoding names the transfer encoding to undo, Part.Within names the
// encoded part it lies inside (a report nested in an encoded attachment),
// and Part.Open or Report.OriginalBytes decode it. Per RFC 2046 §5.1.1 the
// line break before a boundary delimiter belongs to the delimiter, so it is
// not part of the original.
//
// Parser.Parse reads through an io.ReaderAt, sequentially and through a
// small buffer, so a 50 MiB report spooled to disk or kept in archive chunks
// need not be loaded into memory; only header blocks and the envelope part
// are held. Limits (Parser fields) bound the work any input can cause.
//
// # Errors and warnings
//
// Parse fails only when nothing trustworthy can be read: ErrNotReport for
// ordinary mail, and otherwise an error saying what was wrong ("journal:
// report header: multipart/mixed without a boundary parameter"), wrapping
// ErrTooLarge when a Parser limit was hit. Everything it could read past is
// in Report.Warnings. Either way the message itself is archived as received:
// a parse failure costs recipient indexing, never the message, and must not
// turn into a rejection, which a journaling server may answer by dropping
// the report.
//
// Offsets address the bytes that were parsed. Parse the bytes the archive
// stores (after chainmail's trace headers are removed, DESIGN.md), not the
// bytes on the wire, or the offsets will not match what is served.
//
// # Reports that bounced
//
// A report the journaling mailbox refused comes back, as a non-delivery
// report, to Exchange's alternate journaling mailbox. UnwrapNDR finds the
// report inside such an NDR, and the recipients it failed for, so that
// chainmail import can archive what should have arrived.
//
// # Postfix sub-address journaling
//
// With Postfix, recipient_bcc_maps can send a copy of each message to an
// archive address carrying the real recipient in its extension,
// archive+bob=contoso.example@archive.example. DecodeSubaddress recovers
// bob@contoso.example from the envelope recipient; DecodeMailboxSubaddress
// does so only for the extensions of one archive mailbox.
//
// # Invariants
//
//   - The input is never modified, re-encoded or normalised: the archive's
//     bytes stay as received, and every Part addresses those same bytes.
//   - A raw Part's range lies inside the input, and the bytes after it are
//     the line break and boundary delimiter that ended it (or the input's
//     end, for an unterminated multipart).
//   - No input makes the package panic, and no input makes it use memory
//     beyond the Parser limits, except decoding a report nested in an
//     encoded attachment, which takes at most that attachment's size.
//   - The package has no mutable package-level state; a Parser may be used
//     from many goroutines.
//
// [MS-XJRNL]: https://learn.microsoft.com/en-us/openspecs/exchange_server_protocols/ms-xjrnl/
package journal
