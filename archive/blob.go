package archive

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	bolt "go.etcd.io/bbolt"

	"chainmail/internal/envelope"
)

// chunkSize keeps every bbolt value small: a 50 MB message is 200 values,
// not one, so no commit has to find 50 MB of contiguous free pages.
const chunkSize = 256 << 10

// blobStore keeps message bytes. The bbolt implementation is the only one
// today; see the package comment.
type blobStore interface {
	put(tx *bolt.Tx, seq uint64, body *envelope.Body) (int64, error)
	// putPiece stores piece as the chunks from index first on; piece is
	// a whole number of chunks except at the end of the message.
	putPiece(tx *bolt.Tx, seq uint64, first uint32, piece []byte) error
	// drop deletes every chunk of message seq.
	drop(tx *bolt.Tx, seq uint64) error
	// chunk copies chunk i of message seq; nil when past the end.
	chunk(tx *bolt.Tx, seq uint64, i uint32) []byte
}

type boltBlobs struct{}

func blobKey(seq uint64, i uint32) []byte {
	k := make([]byte, 12)
	binary.BigEndian.PutUint64(k, seq)
	binary.BigEndian.PutUint32(k[8:], i)
	return k
}

func (boltBlobs) put(tx *bolt.Tx, seq uint64, body *envelope.Body) (int64, error) {
	b := tx.Bucket(bucketArchive).Bucket(bucketBlob)
	mem := body.Bytes()
	size := body.Size()
	var off int64
	for i := uint32(0); off < size; i++ {
		n := min(size-off, chunkSize)
		// bbolt keeps a reference to each value until the commit. A
		// message in memory is owned by its session until then, so its
		// slices are safe to hand over without a copy.
		var chunk []byte
		if mem != nil {
			chunk = mem[off : off+n]
		} else {
			chunk = make([]byte, n)
			if _, err := body.ReadAt(chunk, off); err != nil && !(err == io.EOF && off+n == size) {
				return off, fmt.Errorf("blob %d: read spool: %w", seq, err)
			}
		}
		if err := b.Put(blobKey(seq, i), chunk); err != nil {
			return off, fmt.Errorf("blob %d chunk %d: %w", seq, i, err)
		}
		off += n
	}
	return off, nil
}

func (boltBlobs) putPiece(tx *bolt.Tx, seq uint64, first uint32, piece []byte) error {
	b := tx.Bucket(bucketArchive).Bucket(bucketBlob)
	for i := first; len(piece) > 0; i++ {
		n := min(len(piece), chunkSize)
		// The caller keeps piece unchanged until the commit.
		if err := b.Put(blobKey(seq, i), piece[:n]); err != nil {
			return fmt.Errorf("blob %d chunk %d: %w", seq, i, err)
		}
		piece = piece[n:]
	}
	return nil
}

func (boltBlobs) drop(tx *bolt.Tx, seq uint64) error {
	b := tx.Bucket(bucketArchive).Bucket(bucketBlob)
	prefix := blobKey(seq, 0)[:8]
	c := b.Cursor()
	// Seek again after every delete: a bbolt cursor may skip a key when
	// the one under it is deleted.
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
		if err := c.Delete(); err != nil {
			return fmt.Errorf("blob %d: %w", seq, err)
		}
	}
	return nil
}

func (boltBlobs) chunk(tx *bolt.Tx, seq uint64, i uint32) []byte {
	v := tx.Bucket(bucketArchive).Bucket(bucketBlob).Get(blobKey(seq, i))
	if v == nil {
		return nil
	}
	return append([]byte(nil), v...)
}

// rawReader streams a message chunk by chunk, each read in its own short
// read transaction, so a slow download never holds one open.
type rawReader struct {
	s    *Store
	seq  uint64
	next uint32
	buf  []byte
	done bool
}

func (r *rawReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.done {
			return 0, io.EOF
		}
		err := r.s.db.View(func(tx *bolt.Tx) error {
			r.buf = r.s.blobs.chunk(tx, r.seq, r.next)
			return nil
		})
		if err != nil {
			return 0, err
		}
		if r.buf == nil {
			r.done = true
			return 0, io.EOF
		}
		r.next++
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *rawReader) Close() error { r.done, r.buf = true, nil; return nil }
