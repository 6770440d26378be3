package archive

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"

	bolt "go.etcd.io/bbolt"
)

// Large messages are written ahead of the transaction that archives them.
//
// A bbolt transaction keeps every value put and every page it dirties in
// memory until its commit, so archiving a 50 MB message in one costs over
// 100 MB of heap (its chunks read back from the spool, then bbolt's page
// buffers) and makes every message sharing that commit wait for 50 MB of
// writes. Stage writes the chunks of a message larger than stagePiece in
// transactions of stagePiece bytes each, under a sequence number reserved
// for it in the meta bucket and recorded in the staged bucket; PutTx then
// adds only the metadata, hash and index entries and clears the record, so
// the message exists (and its client gets 250) only once that last
// transaction is durable. A crash in between leaves staged chunks and no
// metadata: Open deletes them.

// stagePiece is the most message bytes one staging transaction holds.
const stagePiece = 8 * chunkSize

// Stage writes the bytes of a large message ahead of PutTx (see above).
// It does nothing for a message of at most stagePiece bytes, or one
// already archived (PutTx merges those without writing bytes). After a
// successful Stage, the caller must either commit PutTx of it or call
// Unstage.
func (s *Store) Stage(ctx context.Context, it *Item) error {
	size := it.Body.Size()
	if size <= stagePiece || it.staged != 0 || s.Has(it.Hash) {
		return nil
	}
	buf := make([]byte, stagePiece) // reused: each piece is committed before the next is read
	var seq uint64
	for off := int64(0); off < size; off += stagePiece {
		piece := buf[:min(size-off, stagePiece)]
		if _, err := it.Body.ReadAt(piece, off); err != nil && !(err == io.EOF && off+int64(len(piece)) == size) {
			s.unstage(seq)
			return fmt.Errorf("archive: stage %s: read spool: %w", it.Hash.Short(), err)
		}
		first := uint32(off / chunkSize)
		var got uint64
		err := s.db.Update(ctx, func(tx *bolt.Tx) error {
			// This function may run again in a new transaction: only
			// a committed reservation counts.
			got = seq
			top := tx.Bucket(bucketArchive)
			if got == 0 {
				var err error
				if got, err = top.Bucket(bucketMeta).NextSequence(); err != nil {
					return err
				}
				if err := top.Bucket(bucketStaged).Put(u64(got), it.Hash[:]); err != nil {
					return err
				}
			}
			return s.blobs.putPiece(tx, got, first, piece)
		})
		if err != nil {
			s.unstage(seq)
			return fmt.Errorf("archive: stage %s at byte %d: %w", it.Hash.Short(), off, err)
		}
		seq = got
	}
	it.staged = seq
	return nil
}

// Unstage deletes what Stage wrote for a message whose archiving
// transaction failed. It is best effort: what it cannot delete, the next
// Open does.
func (s *Store) Unstage(it *Item) {
	s.unstage(it.staged)
	it.staged = 0
}

func (s *Store) unstage(seq uint64) {
	if seq == 0 {
		return
	}
	s.db.Update(context.Background(), func(tx *bolt.Tx) error {
		return s.dropStaged(tx, seq)
	})
}

// dropStaged deletes the chunks and the record of a staged message; it
// touches nothing unless seq is still recorded as staged, so it can never
// delete an archived message's bytes.
func (s *Store) dropStaged(tx *bolt.Tx, seq uint64) error {
	staged := tx.Bucket(bucketArchive).Bucket(bucketStaged)
	if staged.Get(u64(seq)) == nil {
		return nil
	}
	if err := s.blobs.drop(tx, seq); err != nil {
		return err
	}
	return staged.Delete(u64(seq))
}

// clearStaged deletes every staged message: at Open, all of them belong to
// sessions that never got their 250.
func (s *Store) clearStaged(tx *bolt.Tx) (int, error) {
	var seqs [][]byte
	c := tx.Bucket(bucketArchive).Bucket(bucketStaged).Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		seqs = append(seqs, bytes.Clone(k))
	}
	for _, k := range seqs {
		seq := binary.BigEndian.Uint64(k)
		if err := s.dropStaged(tx, seq); err != nil {
			return 0, fmt.Errorf("archive: clear staged message %d: %w", seq, err)
		}
	}
	return len(seqs), nil
}
