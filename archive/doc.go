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
//
// Index kinds: 'f' From address, 'F' From domain, 't' recipient address
// (To, Cc, envelope RCPT TO, journal recipients), 'T' recipient domain,
// 'm' Message-ID. Terms are lower-case.
//
// Message bytes sit behind the small blobStore interface so that a
// segment-file store can replace the bbolt chunks for archives larger than
// one comfortable bbolt file, without touching the callers.
package archive
