package archive

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"

	bolt "go.etcd.io/bbolt"
)

// Verification is the outcome of Verify.
type Verification struct {
	Messages int64 `json:"messages"` // messages read back
	Bytes    int64 `json:"bytes"`
	// Damaged lists the ids whose bytes no longer hash to their id, or
	// whose record or bytes are missing, each with what is wrong.
	Damaged []Damage `json:"damaged"`
}

// Damage is one message that failed verification.
type Damage struct {
	ID      string `json:"id"`
	Problem string `json:"problem"`
}

// maxDamageListed bounds the answer; the count is in Messages anyway.
const maxDamageListed = 1000

// Verify reads every archived message back and checks that its bytes hash
// to its id and have the recorded size: the proof a compliance officer
// asks for that nothing changed since it was archived. It reads in short
// transactions (one per chunk), so it runs alongside live traffic;
// progress, when set, is called after each message.
func (s *Store) Verify(ctx context.Context, progress func(done int64)) (Verification, error) {
	var v Verification
	var after []byte
	for {
		// Walk the hash bucket a page of keys at a time, so no read
		// transaction stays open for the whole archive.
		type entry struct {
			hash []byte
			seq  uint64
		}
		var page []entry
		err := s.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketArchive).Bucket(bucketHash).Cursor()
			var k, val []byte
			if after == nil {
				k, val = c.First()
			} else {
				k, val = c.Seek(after)
				if k != nil && string(k) == string(after) {
					k, val = c.Next()
				}
			}
			for ; k != nil && len(page) < 1024; k, val = c.Next() {
				page = append(page, entry{hash: append([]byte(nil), k...), seq: binary.BigEndian.Uint64(val)})
			}
			return nil
		})
		if err != nil {
			return v, fmt.Errorf("archive: verify: %w", err)
		}
		if len(page) == 0 {
			return v, nil
		}
		for _, e := range page {
			if err := ctx.Err(); err != nil {
				return v, err
			}
			id := hex.EncodeToString(e.hash)
			problem, n, err := s.verifyOne(ctx, id, e.seq)
			if err != nil {
				return v, fmt.Errorf("archive: verify %s: %w", id[:12], err)
			}
			v.Messages++
			v.Bytes += n
			if problem != "" && len(v.Damaged) < maxDamageListed {
				v.Damaged = append(v.Damaged, Damage{ID: id, Problem: problem})
			}
			if progress != nil {
				progress(v.Messages)
			}
		}
		after = page[len(page)-1].hash
	}
}

func (s *Store) verifyOne(ctx context.Context, id string, seq uint64) (problem string, n int64, err error) {
	var m *Meta
	s.db.View(func(tx *bolt.Tx) error {
		m, err = getMeta(tx.Bucket(bucketArchive).Bucket(bucketMeta), seq)
		return nil
	})
	if err != nil {
		return "no metadata record: " + err.Error(), 0, nil
	}
	if m.ID != id {
		return fmt.Sprintf("hash index points at the record of %s", m.ID), 0, nil
	}
	h := sha256.New()
	n, err = io.Copy(h, &rawReader{s: s, seq: seq})
	if err != nil {
		return "", n, err
	}
	switch {
	case n != m.Size:
		return fmt.Sprintf("%d bytes stored, %d recorded", n, m.Size), n, nil
	case hex.EncodeToString(h.Sum(nil)) != id:
		return "the stored bytes no longer hash to the id", n, nil
	}
	return "", n, nil
}
