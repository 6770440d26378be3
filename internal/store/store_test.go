package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"chainmail/internal/testutil"
)

func open(t *testing.T, opts Options) *DB {
	t.Helper()
	path := filepath.Join(t.TempDir(), "chainmail.db")
	d, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Close()
		testutil.CheckBolt(t, path)
	})
	return d
}

func TestGroupCommitSharesTransactions(t *testing.T) {
	var commits, writes atomic.Int64
	d := open(t, Options{OnCommit: func(n int, _ time.Duration) { commits.Add(1); writes.Add(int64(n)) }})
	ctx := context.Background()
	if err := d.Update(ctx, func(tx *bolt.Tx) error { _, err := tx.CreateBucketIfNotExists([]byte("b")); return err }); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	const n = 64
	for i := range n {
		wg.Go(func() {
			for j := range 20 {
				key := fmt.Appendf(nil, "%d-%d", i, j)
				if err := d.Update(ctx, func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put(key, key) }); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	var count int
	d.View(func(tx *bolt.Tx) error { count = tx.Bucket([]byte("b")).Stats().KeyN; return nil })
	if count != n*20 {
		t.Fatalf("%d keys, want %d", count, n*20)
	}
	if writes.Load() != n*20+1 {
		t.Fatalf("OnCommit saw %d writes", writes.Load())
	}
	if commits.Load() >= writes.Load() {
		t.Fatalf("no sharing: %d commits for %d writes", commits.Load(), writes.Load())
	}
}

func TestFailedFunctionLeavesNoTraceAndSparesTheBatch(t *testing.T) {
	d := open(t, Options{})
	ctx := context.Background()
	d.Update(ctx, func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err })
	boom := errors.New("boom")
	var wg sync.WaitGroup
	errs := make([]error, 40)
	for i := range 40 {
		wg.Go(func() {
			errs[i] = d.Update(ctx, func(tx *bolt.Tx) error {
				if err := tx.Bucket([]byte("b")).Put(fmt.Appendf(nil, "k%d", i), []byte("v")); err != nil {
					return err
				}
				if i%7 == 0 {
					return boom
				}
				return nil
			})
		})
	}
	wg.Wait()
	d.View(func(tx *bolt.Tx) error {
		for i := range 40 {
			v := tx.Bucket([]byte("b")).Get(fmt.Appendf(nil, "k%d", i))
			if i%7 == 0 && (v != nil || !errors.Is(errs[i], boom)) {
				t.Errorf("failed write %d: value %q err %v", i, v, errs[i])
			}
			if i%7 != 0 && (v == nil || errs[i] != nil) {
				t.Errorf("good write %d lost: err %v", i, errs[i])
			}
		}
		return nil
	})
}

func TestSecondOpenFailsFast(t *testing.T) {
	path := filepath.Join(t.TempDir(), "chainmail.db")
	d, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	start := time.Now()
	_, err = Open(path, Options{LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("second open hung")
	}
}

func TestUpdateAfterClose(t *testing.T) {
	d, err := Open(filepath.Join(t.TempDir(), "x.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if err := d.Update(context.Background(), func(*bolt.Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("got %v", err)
	}
}
