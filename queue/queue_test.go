package queue

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"chainmail/internal/envelope"
	"chainmail/internal/store"
	"chainmail/internal/testutil"
)

func open(t *testing.T) (*Store, *store.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "q.db")
	db, err := store.Open(path, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	q, err := Open(db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db.Close()
		testutil.CheckBolt(t, path)
	})
	return q, db
}

func h(i int) envelope.Hash { return sha256.Sum256(fmt.Appendf(nil, "m%d", i)) }

func enqueue(t *testing.T, q *Store, db *store.DB, conn string, i int) error {
	t.Helper()
	return db.Update(context.Background(), func(tx *bolt.Tx) error { return q.EnqueueTx(tx, conn, h(i)) })
}

func TestFIFOAndLimited(t *testing.T) {
	q, db := open(t)
	q.SetLimit("b", 5)
	wake := q.Wake("b")
	for i := range 5 {
		if err := enqueue(t, q, db, "b", i); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-wake:
	default:
		t.Fatal("no wake-up after enqueue")
	}
	// The limit holds for a message already queued too: the queue does
	// not deduplicate (route queues a message only when it is new to the
	// archive or brings new recipients).
	if err := enqueue(t, q, db, "b", 3); !errors.Is(err, ErrFull) {
		t.Fatalf("over the limit, a queued message: %v", err)
	}
	if err := enqueue(t, q, db, "b", 99); !errors.Is(err, ErrFull) {
		t.Fatalf("over the limit: %v", err)
	}
	due, _ := q.Due("b", time.Now(), 10, nil)
	if len(due) != 5 || due[0].Hash != h(0) || due[4].Hash != h(4) {
		t.Fatalf("due = %+v", due)
	}
	due, _ = q.Due("b", time.Now(), 10, func(seq uint64) bool { return seq <= 2 })
	if len(due) != 3 || due[0].Hash != h(2) {
		t.Fatalf("busy not skipped: %+v", due)
	}
	if st := q.Stats("b"); st.Depth != 5 || st.Oldest.IsZero() {
		t.Fatalf("stats %+v", st)
	}
}

func TestAckFailDeadRetryPurge(t *testing.T) {
	q, db := open(t)
	ctx := context.Background()
	for i := range 4 {
		enqueue(t, q, db, "b", i)
	}
	due, _ := q.Due("b", time.Now(), 10, nil)
	if err := q.Ack(ctx, "b", due[0].Seq); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	q.Fail(ctx, "b", due[1].Seq, "451 try later", later, false)
	q.Fail(ctx, "b", due[2].Seq, "550 no", time.Now(), true)
	st := q.Stats("b")
	if st.Depth != 2 || st.Dead != 1 || st.Delivered != 1 {
		t.Fatalf("stats %+v", st)
	}
	now, _ := q.Due("b", time.Now(), 10, nil)
	if len(now) != 1 || now[0].Hash != h(3) {
		t.Fatalf("deferred entry still due: %+v", now)
	}
	if na := q.NextAttempt("b"); !na.Equal(later.UTC().Round(0)) && na.Sub(later).Abs() > time.Millisecond {
		t.Fatalf("next attempt %v, want %v", na, later)
	}
	dead, _ := q.List("b", true, 10)
	if len(dead) != 1 || dead[0].LastError != "550 no" || dead[0].Attempts != 1 {
		t.Fatalf("dead letters %+v", dead)
	}
	n, err := q.Retry(ctx, "b")
	if err != nil || n != 1 {
		t.Fatalf("retry: %d %v", n, err)
	}
	all, _ := q.Due("b", time.Now(), 10, nil)
	if len(all) != 3 {
		t.Fatalf("after retry %d due", len(all))
	}
	q.SetPeerNode(ctx, "b", "node-b")
	dropped, err := q.Purge(ctx, "b")
	if err != nil || dropped != 3 {
		t.Fatalf("purge %d %v", dropped, err)
	}
	if st := q.Stats("b"); st.Depth != 0 || st.Delivered != 1 || q.PeerNode("b") != "node-b" {
		t.Fatalf("after purge %+v peer %q", st, q.PeerNode("b"))
	}
}

func TestStatePersistsAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	db, _ := store.Open(path, store.Options{})
	q, _ := Open(db)
	for i := range 3 {
		db.Update(context.Background(), func(tx *bolt.Tx) error { return q.EnqueueTx(tx, "b", h(i)) })
	}
	due, _ := q.Due("b", time.Now(), 1, nil)
	q.Fail(context.Background(), "b", due[0].Seq, "421 busy", time.Now().Add(time.Minute), false)
	db.Close()
	db, _ = store.Open(path, store.Options{})
	defer db.Close()
	q, _ = Open(db)
	list, _ := q.List("b", false, 10)
	if len(list) != 3 || list[0].Attempts != 1 || list[0].LastError != "421 busy" || q.Stats("b").Depth != 3 {
		t.Fatalf("after reopen %+v", list)
	}
}

func TestAckManyInOneTransaction(t *testing.T) {
	q, db := open(t)
	ctx := context.Background()
	for i := range 5 {
		enqueue(t, q, db, "b", i)
	}
	due, _ := q.Due("b", time.Now(), 10, nil)
	// An entry purged meanwhile (here: already acked) is skipped, not
	// counted twice.
	if err := q.Ack(ctx, "b", due[0].Seq); err != nil {
		t.Fatal(err)
	}
	if err := q.Ack(ctx, "b", due[0].Seq, due[1].Seq, due[3].Seq); err != nil {
		t.Fatal(err)
	}
	if st := q.Stats("b"); st.Depth != 2 || st.Delivered != 3 {
		t.Fatalf("stats %+v", st)
	}
	left, _ := q.Due("b", time.Now(), 10, nil)
	if len(left) != 2 || left[0].Hash != h(2) || left[1].Hash != h(4) {
		t.Fatalf("left %+v", left)
	}
	// An acked message can be queued again (a duplicate that brought new
	// recipients: the peer must learn them).
	enqueue(t, q, db, "b", 1)
	if st := q.Stats("b"); st.Depth != 3 {
		t.Fatalf("re-enqueue after ack: %+v", st)
	}
}

// A store from before the queue stopped deduplicating loses its hash
// index on Open; its entries stay queued.
func TestOpenDropsTheOldHashIndex(t *testing.T) {
	q, db := open(t)
	for i := range 2 {
		enqueue(t, q, db, "b", i)
	}
	err := db.Bolt().Update(func(tx *bolt.Tx) error {
		old, err := tx.Bucket(bucketQueue).Bucket([]byte("b")).CreateBucket(bucketOldHash)
		if err != nil {
			return err
		}
		k := h(0)
		return old.Put(k[:], []byte{0, 0, 0, 0, 0, 0, 0, 1})
	})
	if err != nil {
		t.Fatal(err)
	}
	if q, err = Open(db); err != nil {
		t.Fatal(err)
	}
	db.Bolt().View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketQueue).Bucket([]byte("b")).Bucket(bucketOldHash) != nil {
			t.Error("the old hash index is still there")
		}
		return nil
	})
	if st := q.Stats("b"); st.Depth != 2 {
		t.Fatalf("after reopen: %+v", st)
	}
}
