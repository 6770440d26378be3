// Package queue keeps the durable outbound queue of every connection, in
// the node's bbolt file.
//
// An entry is a reference to an archived message (its hash), never a copy
// of its bytes, so a queue of a million entries is tens of megabytes and a
// long peer outage fits. Entries are enqueued inside the same write
// transaction that archives the message (EnqueueTx, called by route), so a
// 250 means "archived and queued". The queue does not deduplicate: route
// queues a message when it is new to the archive, and again when a
// duplicate brings new envelope recipients (the peer deduplicates the
// bytes and merges the envelope). An entry leaves its queue only when the forwarder acks the
// peer's 250 (in batches: one transaction acks many entries, and the
// entries of a batch sit side by side, at the head of the FIFO), when it
// drops it because the peer is already on the message's path (a loop: the peer has it; logged and counted, not
// counted delivered), or, with a positive max_retries, when it moves to
// the connection's dead-letter list, where it stays until an operator
// retries or purges it: nothing is ever silently dropped.
//
// On-disk layout: bucket "queue" holds one bucket per connection name,
// each with:
//
//	ready  seq (8-byte big-endian, per-connection sequence) → JSON Entry   FIFO by arrival
//	dead   seq → JSON Entry                                               dead letters
//	meta   "depth", "dead", "delivered" (8-byte counters), "peer_node"
//
// A seq is never reused, not even after a Purge: the forwarder acks and
// fails entries by seq.
//
// Retry state (attempts, next attempt, last error) lives in the entry and
// persists across restarts. Scheduling is the forwarder's: Due walks the
// ready bucket from its head and returns the entries whose time has come.
package queue
