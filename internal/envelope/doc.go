// Package envelope holds what a node knows about one received message: the
// SMTP envelope, the receipt (who sent it, over which listener, when), the
// X-Chainmail-Trace hops it carried, and its bytes, spooled to memory or to
// a file. It is a leaf shared by listener, route, archive, queue and
// forwarder, and imports nothing of chainmail's.
//
// Invariant: the bytes of a Message are exactly the DATA the client sent
// (dot-unstuffed, CRLF kept) minus chainmail's own trace header fields, and
// Hash is the SHA-256 of those bytes: the message's identity on every node.
package envelope
