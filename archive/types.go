package archive

import (
	"time"

	"chainmail/internal/envelope"
)

// Meta is everything the archive knows about one message besides its bytes.
type Meta struct {
	ID       string            `json:"id"` // the hash in hex: the same on every node
	Hash     string            `json:"hash"`
	Seq      uint64            `json:"seq"` // this node's arrival order
	Size     int64             `json:"size"`
	Envelope envelope.Envelope `json:"envelope"` // recipients merged over every receipt
	// EncodedRcptTo keeps, as evidence, the RCPT TO addresses that a
	// listener's subaddress option decoded into Envelope.RcptTo
	// (archive+bob=contoso.example@archive.example).
	EncodedRcptTo []string         `json:"encoded_rcpt_to,omitempty"`
	Receipt       envelope.Receipt `json:"receipt"` // the first receipt on this node
	// Receipts counts every time the message arrived here (duplicates
	// deduplicated into this one record).
	Receipts int             `json:"receipts"`
	Origin   string          `json:"origin"` // the node that took it from outside the chain
	Trace    envelope.Trace  `json:"trace,omitempty"`
	Headers  Headers         `json:"headers"`
	Journal  *JournalSummary `json:"journal,omitempty"`
}

// Headers are the parsed, decoded header fields the archive indexes.
type Headers struct {
	MessageID string    `json:"message_id"`
	From      []string  `json:"from"`
	To        []string  `json:"to"`
	Cc        []string  `json:"cc,omitempty"`
	Subject   string    `json:"subject"`
	Date      time.Time `json:"date"`
	// FromName and friends keep display names for the console.
	FromDisplay string `json:"from_display,omitempty"`
	// Charset problems or malformed fields noted while parsing.
	Problems []string `json:"problems,omitempty"`
}

// JournalSummary is filled when the message is a journal report (see
// journal.go). The archived bytes are the report; what the summary says
// about the original lets the archive index it and serve it alone.
type JournalSummary struct {
	Format string `json:"format"` // "exchange"
	// From the report's envelope part (MS-XJRNL §2.1).
	Sender     string      `json:"sender,omitempty"`
	OnBehalfOf string      `json:"on_behalf_of,omitempty"`
	Subject    string      `json:"subject,omitempty"`
	MessageID  string      `json:"message_id,omitempty"`
	Recipients []Recipient `json:"recipients"`
	// Original locates the journaled message inside the report; nil when
	// the report carries none that could be found (Warnings says why).
	Original *JournalPart `json:"original,omitempty"`
	// Decrypted locates the decrypted copy of a rights-protected original.
	Decrypted *JournalPart `json:"decrypted,omitempty"`
	TNEF      bool         `json:"tnef,omitempty"`  // the original is TNEF (winmail.dat)
	Depth     int          `json:"depth,omitempty"` // reports unwrapped around the original
	Warnings  []string     `json:"warnings,omitempty"`
	// ReportHeaders are the report's own header fields (Meta.Headers are
	// the original's).
	ReportHeaders *Headers `json:"report_headers,omitempty"`

	// Grouping of the reports of one original (group.go). On the record
	// that stands for the original in search results, Reports lists every
	// report of it, this one first, and Recipients are merged over them.
	// On every later report, GroupedInto names that record.
	Reports     []ReportRef `json:"reports,omitempty"`
	GroupedInto string      `json:"grouped_into,omitempty"`

	// Restricted is set in views for callers who may not see Bcc
	// recipients or list expansions (see Restrict): Recipients then holds
	// only the recipients the original's own header shows.
	Restricted bool `json:"restricted,omitempty"`
}

// JournalPart locates an attachment of a report in the archived bytes
// (journal.Part, stored).
type JournalPart struct {
	// Offset and Length address the archived bytes, or the decoded
	// content of Within when it is set.
	Offset   int64  `json:"offset"`
	Length   int64  `json:"length"`
	Encoding string `json:"encoding,omitempty"` // transfer encoding to undo; "" when the range is the content
	// Within is the encoded part the attachment lies inside (a report
	// nested in a base64 attachment).
	Within      *JournalPart `json:"within,omitempty"`
	ContentType string       `json:"content_type,omitempty"`
	Filename    string       `json:"filename,omitempty"`
	// Size and SHA256 are of the content as served (decoded). The
	// original's SHA-256 is its identity for grouping.
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256,omitempty"`
}

// ReportRef is one journal report of a grouped original: evidence, each
// downloadable by its id.
type ReportRef struct {
	ID         string    `json:"id"`
	Received   time.Time `json:"received"`
	Node       string    `json:"node,omitempty"` // the node that first received it
	Recipients int       `json:"recipients"`     // how many recipients it named
}

// Recipient is one envelope recipient of a journaled original.
type Recipient struct {
	Address       string `json:"address"`
	Kind          string `json:"kind"` // to | cc | bcc | recipient
	ExpandedFrom  string `json:"expanded_from,omitempty"`
	ForwardedFrom string `json:"forwarded_from,omitempty"`
}

// Summary is one search hit, the API contract of DESIGN.md.
type Summary struct {
	ID        string    `json:"id"`
	Hash      string    `json:"hash"`
	MessageID string    `json:"message_id"`
	From      string    `json:"from"`
	To        []string  `json:"to"`
	Subject   string    `json:"subject"`
	Date      time.Time `json:"date"`
	Size      int64     `json:"size"`
	Received  time.Time `json:"received"`
	// Journal reports only: the original the hit stands for, the reports
	// grouped into it, and the recipients merged over them (Bcc and list
	// members only for callers allowed to see them, see Restrict).
	Original   *OriginalRef `json:"original,omitempty"`
	Reports    int          `json:"reports,omitempty"`
	Recipients []Recipient  `json:"recipients,omitempty"` // the first 100
	// RecipientCount is how many recipients there are in all (the
	// message's metadata lists every one).
	RecipientCount int `json:"recipient_count,omitempty"`
}

// OriginalRef names the original of a journal report: what
// /raw serves by default.
type OriginalRef struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Query selects messages; every non-empty field must match.
type Query struct {
	From      string // an address, @domain or domain, or a substring
	To        string // matches To, Cc and every envelope recipient
	Subject   string // case-insensitive substring
	MessageID string // exact, with or without <>
	After     time.Time
	Before    time.Time // on the message's Date, else its receipt time
	Text      string    // free text over the indexed headers
	Limit     int       // default 50, at most 1000
	Cursor    string    // from a previous Page
	// Restricted matches recipients only as Restrict shows them: a caller
	// who may not see Bcc recipients cannot find a message by one either.
	Restricted bool
}

// Page is one page of results, newest first.
type Page struct {
	Messages   []Summary `json:"messages"`
	NextCursor string    `json:"next_cursor"`
}

// Digest summarises an archive: two nodes hold the same messages exactly
// when their digests are equal.
type Digest struct {
	Count  int    `json:"count"`
	SHA256 string `json:"sha256"`
}

// Stats are the archive's totals.
type Stats struct {
	Messages int64 `json:"messages"`
	Bytes    int64 `json:"bytes"`
}
