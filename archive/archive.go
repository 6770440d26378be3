package archive

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	bolt "go.etcd.io/bbolt"

	"chainmail/internal/envelope"
	"chainmail/internal/store"
)

var (
	// ErrNotFound: no message with that id.
	ErrNotFound = errors.New("archive: no such message")
	// ErrBadCursor: a cursor that no Page produced.
	ErrBadCursor = errors.New("archive: bad cursor")
)

var (
	bucketArchive = []byte("archive")
	bucketMeta    = []byte("meta")
	bucketHash    = []byte("hash")
	bucketBlob    = []byte("blob")
	bucketIndex   = []byte("index")
	bucketStats   = []byte("stats")
	bucketStaged  = []byte("staged")
	keyMessages   = []byte("messages")
	keyBytes      = []byte("bytes")
)

// maxReceiptsMerged bounds how many envelope recipients a deduplicated
// message can gather, so a replay storm cannot grow one record forever.
const maxRecipients = 10000

// Store is the archive of one node.
type Store struct {
	db    *store.DB
	blobs blobStore

	digestMu    sync.Mutex
	digestCache Digest // valid while the message count is unchanged: nothing is ever deleted
}

// Open prepares the archive's buckets in db.
func Open(db *store.DB) (*Store, error) {
	s := &Store{db: db, blobs: boltBlobs{}}
	err := db.Bolt().Update(func(tx *bolt.Tx) error {
		top, err := tx.CreateBucketIfNotExists(bucketArchive)
		if err != nil {
			return err
		}
		for _, name := range [][]byte{bucketMeta, bucketHash, bucketBlob, bucketIndex, bucketStats, bucketStaged, bucketOriginal} {
			if _, err := top.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		_, err = s.clearStaged(tx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("archive: open: %w", err)
	}
	return s, nil
}

// Item is one message ready to archive: received, hashed, headers parsed.
type Item struct {
	Hash     envelope.Hash
	Body     *envelope.Body
	Envelope envelope.Envelope
	Receipt  envelope.Receipt
	Trace    envelope.Trace
	Headers  Headers
	Journal  *JournalSummary
	// EncodedRcptTo are the RCPT TO addresses a listener decoded into
	// Envelope.RcptTo (its subaddress option), kept as evidence.
	EncodedRcptTo []string

	staged uint64 // the reserved seq whose chunks Stage wrote; 0: none
}

// Prepare parses what the archive indexes. It runs in the session's
// goroutine, outside the shared write transaction, so parsing never holds
// up other sessions' commits.
func Prepare(it *Item) {
	head := it.Body.Head(maxHeaderBytes)
	it.Headers = ParseHeaders(head)
	prepareJournal(it, head)
}

// PutResult says what PutTx did.
type PutResult struct {
	Seq uint64
	// New is false when the hash was already archived (deduplicated).
	New bool
	// NewRecipients is true when a duplicate brought envelope recipients
	// the record did not have (they were merged).
	NewRecipients bool
}

// PutTx archives it inside tx, or merges it into the record of the same
// hash. It is meant to run inside store.DB.Update; like every such
// function it may run more than once and has no effect outside tx.
func (s *Store) PutTx(tx *bolt.Tx, it *Item) (PutResult, error) {
	top := tx.Bucket(bucketArchive)
	hashes, metas := top.Bucket(bucketHash), top.Bucket(bucketMeta)
	if v := hashes.Get(it.Hash[:]); v != nil {
		seq := binary.BigEndian.Uint64(v)
		added, err := s.merge(top, seq, it)
		if err != nil {
			return PutResult{}, fmt.Errorf("archive: merge %s: %w", it.Hash.Short(), err)
		}
		if it.staged != 0 {
			// Archived by another session while this one staged:
			// the first copy stays, this one goes.
			if err := s.dropStaged(tx, it.staged); err != nil {
				return PutResult{}, fmt.Errorf("archive: merge %s: %w", it.Hash.Short(), err)
			}
		}
		return PutResult{Seq: seq, NewRecipients: added}, nil
	}
	var (
		seq  uint64
		size int64
		err  error
	)
	if it.staged != 0 {
		// The bytes are in already (stage.go); they become a message now.
		seq, size = it.staged, it.Body.Size()
		staged := top.Bucket(bucketStaged)
		if staged.Get(u64(seq)) == nil {
			return PutResult{}, fmt.Errorf("archive: put %s: staged bytes of seq %d are gone", it.Hash.Short(), seq)
		}
		if err := staged.Delete(u64(seq)); err != nil {
			return PutResult{}, fmt.Errorf("archive: put %s: %w", it.Hash.Short(), err)
		}
	} else {
		if seq, err = metas.NextSequence(); err != nil {
			return PutResult{}, fmt.Errorf("archive: put %s: %w", it.Hash.Short(), err)
		}
		if size, err = s.blobs.put(tx, seq, it.Body); err != nil {
			return PutResult{}, fmt.Errorf("archive: put %s: %w", it.Hash.Short(), err)
		}
	}
	if size != it.Body.Size() {
		return PutResult{}, fmt.Errorf("archive: put %s: stored %d of %d bytes", it.Hash.Short(), size, it.Body.Size())
	}
	hexHash := it.Hash.String()
	m := &Meta{
		ID: hexHash, Hash: hexHash, Seq: seq, Size: size,
		Envelope:      envelope.Envelope{MailFrom: it.Envelope.MailFrom, RcptTo: dedupe(nil, it.Envelope.RcptTo)},
		EncodedRcptTo: dedupe(nil, it.EncodedRcptTo),
		Receipt:       it.Receipt, Receipts: 1,
		Origin:  it.Trace.Origin(),
		Trace:   it.Trace,
		Headers: it.Headers,
	}
	if it.Journal != nil {
		// A copy: this function may run again, and groupTx writes to it.
		j := *it.Journal
		m.Journal = &j
	}
	if m.Origin == "" {
		m.Origin = it.Receipt.Node
	}
	grouped, err := groupTx(top, m)
	if err != nil {
		return PutResult{}, fmt.Errorf("archive: put %s: %w", it.Hash.Short(), err)
	}
	if err := putMeta(metas, m); err != nil {
		return PutResult{}, fmt.Errorf("archive: put %s: %w", it.Hash.Short(), err)
	}
	if err := hashes.Put(it.Hash[:], u64(seq)); err != nil {
		return PutResult{}, fmt.Errorf("archive: put %s: %w", it.Hash.Short(), err)
	}
	if !grouped {
		// A grouped report is found through its group's record.
		if err := indexMeta(top.Bucket(bucketIndex), m); err != nil {
			return PutResult{}, fmt.Errorf("archive: index %s: %w", it.Hash.Short(), err)
		}
	}
	stats := top.Bucket(bucketStats)
	if err := addCounter(stats, keyMessages, 1); err != nil {
		return PutResult{}, err
	}
	if err := addCounter(stats, keyBytes, size); err != nil {
		return PutResult{}, err
	}
	return PutResult{Seq: seq, New: true}, nil
}

func (s *Store) merge(top *bolt.Bucket, seq uint64, it *Item) (bool, error) {
	metas := top.Bucket(bucketMeta)
	m, err := getMeta(metas, seq)
	if err != nil {
		return false, err
	}
	before := len(m.Envelope.RcptTo)
	m.Envelope.RcptTo = dedupe(m.Envelope.RcptTo, it.Envelope.RcptTo)
	added := m.Envelope.RcptTo[before:]
	m.EncodedRcptTo = dedupe(m.EncodedRcptTo, it.EncodedRcptTo)
	if it.Journal != nil && m.Journal == nil {
		m.Journal = it.Journal
	}
	m.Receipts++
	if err := putMeta(metas, m); err != nil {
		return false, err
	}
	idx := top.Bucket(bucketIndex)
	post := added
	if m.Journal != nil && m.Journal.GroupedInto != "" {
		// Its group's record stands for it in searches; its envelope
		// (the journaling mailbox) is only evidence.
		post = nil
	}
	for _, r := range post {
		if err := postAddress(idx, 't', r, seq); err != nil {
			return false, err
		}
	}
	return len(added) > 0, nil
}

// dedupe appends to list those of add it does not hold (case-insensitive),
// up to maxRecipients.
func dedupe(list, add []string) []string {
	seen := make(map[string]bool, len(list)+len(add))
	for _, r := range list {
		seen[strings.ToLower(r)] = true
	}
	for _, r := range add {
		if len(list) >= maxRecipients {
			break
		}
		if k := strings.ToLower(r); !seen[k] {
			seen[k] = true
			list = append(list, r)
		}
	}
	return list
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func putMeta(b *bolt.Bucket, m *Meta) error {
	v, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return b.Put(u64(m.Seq), v)
}

func getMeta(b *bolt.Bucket, seq uint64) (*Meta, error) {
	v := b.Get(u64(seq))
	if v == nil {
		return nil, fmt.Errorf("no record for seq %d", seq)
	}
	return decodeMeta(v)
}

func decodeMeta(v []byte) (*Meta, error) {
	m := &Meta{}
	if err := json.Unmarshal(v, m); err != nil {
		return nil, fmt.Errorf("decode record: %w", err)
	}
	return m, nil
}

func addCounter(b *bolt.Bucket, key []byte, delta int64) error {
	var cur int64
	if v := b.Get(key); v != nil {
		cur = int64(binary.BigEndian.Uint64(v))
	}
	return b.Put(key, u64(uint64(cur+delta)))
}

func seqOf(tx *bolt.Tx, id string) (uint64, bool) {
	h, ok := envelope.ParseHash(strings.ToLower(id))
	if !ok {
		return 0, false
	}
	v := tx.Bucket(bucketArchive).Bucket(bucketHash).Get(h[:])
	if v == nil {
		return 0, false
	}
	return binary.BigEndian.Uint64(v), true
}

// Has tells whether a message is archived.
func (s *Store) Has(h envelope.Hash) bool {
	var ok bool
	s.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketArchive).Bucket(bucketHash).Get(h[:]) != nil
		return nil
	})
	return ok
}

// Get returns a message's metadata.
func (s *Store) Get(ctx context.Context, id string) (*Meta, error) {
	var m *Meta
	err := s.db.View(func(tx *bolt.Tx) error {
		seq, ok := seqOf(tx, id)
		if !ok {
			return ErrNotFound
		}
		var err error
		m, err = getMeta(tx.Bucket(bucketArchive).Bucket(bucketMeta), seq)
		return err
	})
	return m, err
}

// GetTx is Get inside a caller's transaction (the forwarder reads the
// envelope and trace to send with).
func (s *Store) GetTx(tx *bolt.Tx, h envelope.Hash) (*Meta, error) {
	seq, ok := seqOf(tx, h.String())
	if !ok {
		return nil, ErrNotFound
	}
	return getMeta(tx.Bucket(bucketArchive).Bucket(bucketMeta), seq)
}

// OpenRaw streams the archived bytes of a message.
func (s *Store) OpenRaw(ctx context.Context, id string) (io.ReadCloser, int64, error) {
	m, err := s.Get(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	return s.OpenMeta(ctx, m)
}

// OpenMeta streams the archived bytes of a message whose metadata the
// caller has just read with Get: OpenRaw without decoding the metadata a
// second time (the forwarder does both for every message it sends).
func (s *Store) OpenMeta(_ context.Context, m *Meta) (io.ReadCloser, int64, error) {
	return &rawReader{s: s, seq: m.Seq}, m.Size, nil
}

// Stats returns the archive's totals.
func (s *Store) Stats() Stats {
	var st Stats
	s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketArchive).Bucket(bucketStats)
		if v := b.Get(keyMessages); v != nil {
			st.Messages = int64(binary.BigEndian.Uint64(v))
		}
		if v := b.Get(keyBytes); v != nil {
			st.Bytes = int64(binary.BigEndian.Uint64(v))
		}
		return nil
	})
	return st
}

// Digest is the SHA-256 over the sorted hex hashes, each followed by "\n".
// The hash bucket's key order is that order, so it is one cursor pass.
func (s *Store) Digest(ctx context.Context) (Digest, error) {
	s.digestMu.Lock()
	defer s.digestMu.Unlock()
	var d Digest
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketArchive).Bucket(bucketHash)
		var n int
		if v := tx.Bucket(bucketArchive).Bucket(bucketStats).Get(keyMessages); v != nil {
			n = int(binary.BigEndian.Uint64(v))
		}
		if n == s.digestCache.Count && s.digestCache.SHA256 != "" {
			d = s.digestCache
			return nil
		}
		sum := sha256.New()
		line := make([]byte, 65)
		line[64] = '\n'
		count := 0
		c := b.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if count%4096 == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			hex.Encode(line, k)
			sum.Write(line)
			count++
		}
		d = Digest{Count: count, SHA256: hex.EncodeToString(sum.Sum(nil))}
		s.digestCache = d
		return nil
	})
	return d, err
}
