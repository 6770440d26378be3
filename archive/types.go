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
	Receipt  envelope.Receipt  `json:"receipt"`  // the first receipt on this node
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

// JournalSummary is filled when the message is a journal report.
type JournalSummary struct {
	Format     string      `json:"format"` // "exchange"
	Recipients []Recipient `json:"recipients"`
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
