package archive

import (
	"context"
	"fmt"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func TestVerifyFindsDamage(t *testing.T) {
	s, db := openStore(t)
	for i := range 30 {
		put(t, s, db, item(msg(i), "a@b.c", "d@e.f"))
	}
	v, err := s.Verify(context.Background(), nil)
	if err != nil || v.Messages != 30 || len(v.Damaged) != 0 || v.Bytes == 0 {
		t.Fatalf("intact archive: %+v %v", v, err)
	}
	// Flip a byte of one message's stored bytes, and truncate another.
	bad1, bad2 := r1Hash(msg(7)), r1Hash(msg(21))
	m1, _ := s.Get(context.Background(), bad1)
	m2, _ := s.Get(context.Background(), bad2)
	db.Bolt().Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketArchive).Bucket(bucketBlob)
		k := blobKey(m1.Seq, 0)
		v := append([]byte(nil), b.Get(k)...)
		v[len(v)-3] ^= 0x20
		b.Put(k, v)
		k = blobKey(m2.Seq, 0)
		return b.Put(k, append([]byte(nil), b.Get(k)[:10]...))
	})
	calls := int64(0)
	v, err = s.Verify(context.Background(), func(n int64) { calls = n })
	if err != nil || v.Messages != 30 || calls != 30 || len(v.Damaged) != 2 {
		t.Fatalf("damaged archive: %+v %v", v, err)
	}
	got := fmt.Sprint(v.Damaged)
	for _, id := range []string{bad1, bad2} {
		if !strings.Contains(got, id) {
			t.Errorf("%s not reported: %s", id[:12], got)
		}
	}
}
