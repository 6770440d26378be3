package queue

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"chainmail/internal/envelope"
	"chainmail/internal/store"
)

// ErrFull is returned by EnqueueTx when a connection's queue is at its
// limit: the sender must keep the message and retry (452 4.3.1).
var ErrFull = errors.New("queue full")

var (
	bucketQueue = []byte("queue")
	bucketReady = []byte("ready")
	bucketDead  = []byte("dead")
	bucketMeta  = []byte("meta")
	// bucketOldHash is the hash index of older stores, removed on Open.
	bucketOldHash = []byte("hash")

	keyDepth     = []byte("depth")
	keyDead      = []byte("dead")
	keyDelivered = []byte("delivered")
	keyPeerNode  = []byte("peer_node")
)

// Entry is one queued reference.
type Entry struct {
	Seq         uint64        `json:"seq"`
	Hash        envelope.Hash `json:"-"`
	HashHex     string        `json:"hash"`
	Enqueued    time.Time     `json:"enqueued"`
	Attempts    int           `json:"attempts"`
	NextAttempt time.Time     `json:"next_attempt"`
	LastError   string        `json:"last_error,omitempty"`
}

// Store is every connection's queue.
type Store struct {
	db *store.DB

	mu     sync.Mutex
	limits map[string]int
	wake   map[string]chan struct{}
}

// Open prepares the queue bucket in db.
func Open(db *store.DB) (*Store, error) {
	err := db.Bolt().Update(func(tx *bolt.Tx) error {
		top, err := tx.CreateBucketIfNotExists(bucketQueue)
		if err != nil {
			return err
		}
		// Stores written before the queue stopped deduplicating have a
		// per-connection hash index that nothing reads or cleans any more.
		return top.ForEachBucket(func(k []byte) error {
			if b := top.Bucket(k); b.Bucket(bucketOldHash) != nil {
				return b.DeleteBucket(bucketOldHash)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("queue: open: %w", err)
	}
	return &Store{db: db, limits: map[string]int{}, wake: map[string]chan struct{}{}}, nil
}

// SetLimit sets a connection's queue_limit (live).
func (s *Store) SetLimit(conn string, limit int) {
	s.mu.Lock()
	s.limits[conn] = limit
	s.mu.Unlock()
}

// Wake returns the channel that gets a token whenever an entry is added to
// conn's queue, after its commit. It never blocks the writer.
func (s *Store) Wake(conn string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wakeLocked(conn)
}

func (s *Store) wakeLocked(conn string) chan struct{} {
	ch, ok := s.wake[conn]
	if !ok {
		ch = make(chan struct{}, 1)
		s.wake[conn] = ch
	}
	return ch
}

func (s *Store) notify(conn string) {
	s.mu.Lock()
	ch := s.wakeLocked(conn)
	s.mu.Unlock()
	select {
	case ch <- struct{}{}:
	default:
	}
}

type connBuckets struct {
	ready, dead, meta *bolt.Bucket
}

func buckets(tx *bolt.Tx, conn string, create bool) (connBuckets, error) {
	top := tx.Bucket(bucketQueue)
	var b *bolt.Bucket
	if create {
		var err error
		if b, err = top.CreateBucketIfNotExists([]byte(conn)); err != nil {
			return connBuckets{}, err
		}
		for _, name := range [][]byte{bucketReady, bucketDead, bucketMeta} {
			if _, err := b.CreateBucketIfNotExists(name); err != nil {
				return connBuckets{}, err
			}
		}
	} else if b = top.Bucket([]byte(conn)); b == nil {
		return connBuckets{}, nil
	}
	return connBuckets{ready: b.Bucket(bucketReady), dead: b.Bucket(bucketDead), meta: b.Bucket(bucketMeta)}, nil
}

// EnqueueTx queues h for conn inside tx. It does not look for h among the
// entries already queued: route calls it only for a message new to the
// archive, or for a duplicate that brought new envelope recipients, which
// the peer must learn whether or not the first copy is still queued (it
// deduplicates the bytes and merges the envelope). An index to skip that
// second entry would cost a randomly placed page per enqueue and per ack
// (docs/BENCHMARKS.md, "Replication (HA)").
func (s *Store) EnqueueTx(tx *bolt.Tx, conn string, h envelope.Hash) error {
	b, err := buckets(tx, conn, true)
	if err != nil {
		return fmt.Errorf("queue %s: %w", conn, err)
	}
	s.mu.Lock()
	limit := s.limits[conn]
	s.mu.Unlock()
	depth := counter(b.meta, keyDepth)
	if limit > 0 && depth >= int64(limit) {
		return fmt.Errorf("queue %s: %d entries, queue_limit %d: %w", conn, depth, limit, ErrFull)
	}
	seq, err := b.ready.NextSequence()
	if err != nil {
		return fmt.Errorf("queue %s: %w", conn, err)
	}
	now := time.Now().UTC()
	e := Entry{Seq: seq, Hash: h, Enqueued: now, NextAttempt: now}
	if err := putEntry(b.ready, &e); err != nil {
		return fmt.Errorf("queue %s: %w", conn, err)
	}
	if err := addCounter(b.meta, keyDepth, 1); err != nil {
		return err
	}
	tx.OnCommit(func() { s.notify(conn) })
	return nil
}

// Due returns up to max entries of conn whose next attempt has come,
// oldest first, skipping those for which busy is true (in flight). It
// examines at most scanMax entries, so a queue whose head is all deferred
// does not cost a full scan per call.
func (s *Store) Due(conn string, now time.Time, max int, busy func(seq uint64) bool) ([]Entry, error) {
	const scanMax = 20000
	var out []Entry
	err := s.db.View(func(tx *bolt.Tx) error {
		b, err := buckets(tx, conn, false)
		if err != nil || b.ready == nil {
			return err
		}
		c := b.ready.Cursor()
		n := 0
		for k, v := c.First(); k != nil && len(out) < max && n < scanMax; k, v = c.Next() {
			n++
			seq := binary.BigEndian.Uint64(k)
			if busy != nil && busy(seq) {
				continue
			}
			e, err := decodeEntry(v)
			if err != nil {
				return fmt.Errorf("queue %s: entry %d: %w", conn, seq, err)
			}
			if e.NextAttempt.After(now) {
				continue
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// NextAttempt returns the earliest future attempt time among the first
// entries of conn's queue (zero when none is deferred).
func (s *Store) NextAttempt(conn string) time.Time {
	var next time.Time
	s.db.View(func(tx *bolt.Tx) error {
		b, _ := buckets(tx, conn, false)
		if b.ready == nil {
			return nil
		}
		now := time.Now()
		c := b.ready.Cursor()
		n := 0
		for k, v := c.First(); k != nil && n < 20000; k, v = c.Next() {
			n++
			if e, err := decodeEntry(v); err == nil && e.NextAttempt.After(now) && (next.IsZero() || e.NextAttempt.Before(next)) {
				next = e.NextAttempt
			}
		}
		return nil
	})
	return next
}

// Ack removes delivered entries, all in one transaction (the forwarder
// acks the 250s of its sessions in batches).
func (s *Store) Ack(ctx context.Context, conn string, seqs ...uint64) error {
	return s.remove(ctx, conn, true, seqs)
}

// Drop removes an entry that must not be sent (the peer is already on
// its path: a loop). Unlike Ack it does not count it delivered.
func (s *Store) Drop(ctx context.Context, conn string, seq uint64) error {
	return s.remove(ctx, conn, false, []uint64{seq})
}

func (s *Store) remove(ctx context.Context, conn string, delivered bool, seqs []uint64) error {
	return s.db.Update(ctx, func(tx *bolt.Tx) error {
		b, err := buckets(tx, conn, true)
		if err != nil {
			return err
		}
		var n int64
		for _, seq := range seqs {
			if b.ready.Get(u64(seq)) == nil {
				continue // purged meanwhile
			}
			if err := b.ready.Delete(u64(seq)); err != nil {
				return err
			}
			n++
		}
		if n == 0 {
			return nil
		}
		if err := addCounter(b.meta, keyDepth, -n); err != nil {
			return err
		}
		if !delivered {
			return nil
		}
		return addCounter(b.meta, keyDelivered, n)
	})
}

// Fail records a failed attempt: the entry is retried at next, or, when
// dead is set, moved to the dead-letter list.
func (s *Store) Fail(ctx context.Context, conn string, seq uint64, reason string, next time.Time, dead bool) error {
	return s.db.Update(ctx, func(tx *bolt.Tx) error {
		b, err := buckets(tx, conn, true)
		if err != nil {
			return err
		}
		v := b.ready.Get(u64(seq))
		if v == nil {
			return nil
		}
		e, err := decodeEntry(v)
		if err != nil {
			return err
		}
		e.Attempts++
		e.LastError = reason
		e.NextAttempt = next.UTC()
		if !dead {
			return putEntry(b.ready, &e)
		}
		if err := b.ready.Delete(u64(seq)); err != nil {
			return err
		}
		if err := putEntry(b.dead, &e); err != nil {
			return err
		}
		if err := addCounter(b.meta, keyDepth, -1); err != nil {
			return err
		}
		return addCounter(b.meta, keyDead, 1)
	})
}

// Retry moves every dead letter of conn back to its queue and makes every
// entry due now. It returns how many entries were revived from the
// dead-letter list.
func (s *Store) Retry(ctx context.Context, conn string) (int, error) {
	revived := 0
	err := s.db.Update(ctx, func(tx *bolt.Tx) error {
		revived = 0
		b, err := buckets(tx, conn, true)
		if err != nil {
			return err
		}
		now := time.Now().UTC()
		var dead []Entry
		if err := b.dead.ForEach(func(k, v []byte) error {
			e, err := decodeEntry(v)
			if err != nil {
				return err
			}
			dead = append(dead, e)
			return nil
		}); err != nil {
			return err
		}
		for _, e := range dead {
			if err := b.dead.Delete(u64(e.Seq)); err != nil {
				return err
			}
			e.Attempts, e.NextAttempt = 0, now
			if err := putEntry(b.ready, &e); err != nil {
				return err
			}
			revived++
		}
		if err := addCounter(b.meta, keyDead, -int64(len(dead))); err != nil {
			return err
		}
		if err := addCounter(b.meta, keyDepth, int64(len(dead))); err != nil {
			return err
		}
		// Deferred entries become due now.
		var deferred []Entry
		c := b.ready.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			e, err := decodeEntry(v)
			if err != nil {
				return err
			}
			if e.NextAttempt.After(now) {
				deferred = append(deferred, e)
			}
		}
		for _, e := range deferred {
			e.NextAttempt = now
			if err := putEntry(b.ready, &e); err != nil {
				return err
			}
		}
		tx.OnCommit(func() { s.notify(conn) })
		return nil
	})
	return revived, err
}

// Purge drops every queued entry and dead letter of conn (the messages stay
// in the archive). It returns how many were dropped.
func (s *Store) Purge(ctx context.Context, conn string) (int, error) {
	dropped := 0
	err := s.db.Update(ctx, func(tx *bolt.Tx) error {
		top := tx.Bucket(bucketQueue)
		b, err := buckets(tx, conn, false)
		if err != nil || b.ready == nil {
			return err
		}
		peer := append([]byte(nil), b.meta.Get(keyPeerNode)...)
		delivered := counter(b.meta, keyDelivered)
		// Sequence numbers are never reused: the forwarder may still
		// hold purged entries (in flight, or handed out), and their Ack
		// or Fail by seq must not land on an entry queued after the
		// purge.
		seq := b.ready.Sequence()
		dropped = b.ready.Stats().KeyN + b.dead.Stats().KeyN
		if err := top.DeleteBucket([]byte(conn)); err != nil {
			return err
		}
		nb, err := buckets(tx, conn, true)
		if err != nil {
			return err
		}
		if err := nb.ready.SetSequence(seq); err != nil {
			return err
		}
		if len(peer) > 0 {
			if err := nb.meta.Put(keyPeerNode, peer); err != nil {
				return err
			}
		}
		return addCounter(nb.meta, keyDelivered, delivered)
	})
	return dropped, err
}

// Stats is a connection's queue at a glance.
type Stats struct {
	Depth     int64     `json:"queue_depth"`
	Dead      int64     `json:"dead_letters"`
	Delivered int64     `json:"delivered"`
	Oldest    time.Time `json:"oldest"` // enqueue time of the head entry; zero when empty
}

// Stats reads conn's counters.
func (s *Store) Stats(conn string) Stats {
	var st Stats
	s.db.View(func(tx *bolt.Tx) error {
		b, _ := buckets(tx, conn, false)
		if b.meta == nil {
			return nil
		}
		st.Depth = counter(b.meta, keyDepth)
		st.Dead = counter(b.meta, keyDead)
		st.Delivered = counter(b.meta, keyDelivered)
		if _, v := b.ready.Cursor().First(); v != nil {
			if e, err := decodeEntry(v); err == nil {
				st.Oldest = e.Enqueued
			}
		}
		return nil
	})
	return st
}

// List returns up to limit entries of conn's queue, or of its dead-letter
// list, oldest first.
func (s *Store) List(conn string, dead bool, limit int) ([]Entry, error) {
	var out []Entry
	err := s.db.View(func(tx *bolt.Tx) error {
		b, err := buckets(tx, conn, false)
		if err != nil || b.ready == nil {
			return err
		}
		src := b.ready
		if dead {
			src = b.dead
		}
		c := src.Cursor()
		for k, v := c.First(); k != nil && len(out) < limit; k, v = c.Next() {
			e, err := decodeEntry(v)
			if err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// Connections lists the connections that have a queue on disk.
func (s *Store) Connections() []string {
	var names []string
	s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketQueue).ForEachBucket(func(k []byte) error {
			names = append(names, string(k))
			return nil
		})
	})
	return names
}

// PeerNode is the node id conn's peer greeted with, as last learned.
func (s *Store) PeerNode(conn string) string {
	var id string
	s.db.View(func(tx *bolt.Tx) error {
		if b, _ := buckets(tx, conn, false); b.meta != nil {
			id = string(b.meta.Get(keyPeerNode))
		}
		return nil
	})
	return id
}

// SetPeerNode persists the node id conn's peer greeted with.
func (s *Store) SetPeerNode(ctx context.Context, conn, node string) error {
	return s.db.Update(ctx, func(tx *bolt.Tx) error {
		b, err := buckets(tx, conn, true)
		if err != nil {
			return err
		}
		return b.meta.Put(keyPeerNode, []byte(node))
	})
}

func putEntry(b *bolt.Bucket, e *Entry) error {
	e.HashHex = e.Hash.String()
	v, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return b.Put(u64(e.Seq), v)
}

func decodeEntry(v []byte) (Entry, error) {
	var e Entry
	if err := json.Unmarshal(v, &e); err != nil {
		return e, err
	}
	h, ok := envelope.ParseHash(e.HashHex)
	if !ok {
		return e, fmt.Errorf("bad hash %q", e.HashHex)
	}
	e.Hash = h
	return e, nil
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func counter(b *bolt.Bucket, key []byte) int64 {
	if v := b.Get(key); len(v) == 8 {
		return int64(binary.BigEndian.Uint64(v))
	}
	return 0
}

func addCounter(b *bolt.Bucket, key []byte, delta int64) error {
	return b.Put(key, u64(uint64(counter(b, key)+delta)))
}
