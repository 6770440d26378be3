// Package archive is the node's durable, deduplicated, searchable message
// store, inside the node's one bbolt file.
//
// Invariants
//   - A message's id is the SHA-256 of its bytes (see envelope): the same on
//     every node, so an auditor can fetch one message from any of them.
//   - The bytes are stored exactly as received, never rewritten; no header
//     is added. What the node knows about a receipt is metadata beside them.
//   - Archiving is idempotent: a hash already present is not stored again;
//     its envelope recipients are merged into the existing record.
//   - Nothing is ever deleted.
//   - PutTx runs inside the caller's write transaction (store.DB.Update),
//     so archiving a message and queueing it for peers commit together.
//     A message larger than stagePiece has its bytes written first by
//     Stage, in transactions of bounded size, so no transaction holds a
//     whole large message in memory; it exists only once PutTx commits.
//   - A journal report is archived as received like any message; Prepare
//     parses it (package journal) outside the transaction. Its record's
//     Headers are the original's, its Journal says where the original lies
//     in the report and lists every envelope recipient (journal.go).
//   - Every report of one original is its own record, counted in the
//     digest; search shows the original once, as the record of its first
//     report, with the recipients merged over all of them (group.go).
//   - Callers who may not see Bcc recipients get Restrict's view, search
//     with Query.Restricted and are served the original (restrict.go).
//
// On-disk layout (bucket "archive" holds the others; integers are 8-byte
// big-endian so byte order is numeric order):
//
//	meta   seq → JSON Meta                    arrival order; newest first is a reverse cursor
//	hash   sha256 (32 bytes) → seq            dedupe and lookup by id; key order is the digest's order
//	blob   seq ‖ chunk index (4 bytes) → ≤256 KiB of the message
//	index  kind byte ‖ term ‖ 0x00 ‖ seq → "" search postings (kinds below)
//	stats  "messages", "bytes" → counters
//	staged seq → sha256                       a large message's chunks written ahead of its
//	                                          metadata (stage.go); cleared by PutTx, or by Open
//	                                          after a crash
//	original  sha256 of a journaled original (32 bytes) → seq of its group's record (group.go)
//
// Index kinds: 'f' From address, 'F' From domain, 't' recipient address
// (To, Cc, envelope RCPT TO, journal recipients with their expanded-from
// lists and forwarded-from addresses), 'T' recipient domain, 'm'
// Message-ID. Terms are lower-case. For a journal report the header terms
// are the original's. A report grouped into an earlier record (its
// Meta.Journal.GroupedInto is set) has no postings of its own: the
// recipients it adds are posted under the group's record.
//
// Records written before journal reports were understood have no
// Journal.Original; they are neither grouped nor regrouped.
//
// Message bytes sit behind the small blobStore interface so that a
// segment-file store can replace the bbolt chunks for archives larger than
// one comfortable bbolt file, without touching the callers.
package archive
