// Package store opens a node's one bbolt file and runs its group committer.
//
// The archive, the queues and the runtime configuration share one file so
// that one write transaction can archive a message and enqueue it for every
// peer atomically. Update is how everything writes: concurrent callers'
// functions are gathered into one transaction and every caller is answered
// after that transaction's fsync, so a hundred sessions share one fsync
// instead of paying one each. The next transaction starts as soon as the
// previous one is durable, with whatever arrived meanwhile; there is no
// timer to wait out (bbolt's db.Batch waits up to MaxBatchDelay for a batch
// to fill, which caps a journaling node at a few thousand messages a
// second).
//
// If one function of a batch fails, the transaction is rolled back and run
// again without it; the failed caller gets its error and nothing it wrote.
//
// Buckets are created by their owners (archive, queue) in their own Open;
// this package knows none of them.
package store
