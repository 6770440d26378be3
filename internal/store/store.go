package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// ErrLocked means another process holds the data file.
var ErrLocked = errors.New("store is locked by another process")

// ErrClosed is returned by Update after Close.
var ErrClosed = errors.New("store is closed")

// Options tune Open.
type Options struct {
	// LockTimeout bounds the wait for the file lock (bbolt waits forever
	// without one).
	LockTimeout time.Duration
	// NoSync skips fsync: benchmarks of the protocol ceiling only.
	NoSync bool
	// MaxBatch bounds the functions per transaction.
	MaxBatch int
	// OnCommit, when set, observes every committed batch (metrics).
	OnCommit func(size int, d time.Duration)
}

// DB is a node's bbolt file with its group committer.
type DB struct {
	bolt *bolt.DB
	opts Options
	reqs chan *request

	mu     sync.RWMutex // guards closed against sends on reqs
	closed bool
	done   chan struct{}
}

type request struct {
	fn  func(*bolt.Tx) error
	err chan error
}

// Open opens (creating if needed) the bbolt file at path and starts the
// committer; Close stops it.
func Open(path string, opts Options) (*DB, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 512
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	b, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: opts.LockTimeout,
		// The freelist is rebuilt from the file at open instead of being
		// written at every commit: cheaper commits, slower opens.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
		// A large initial mapping avoids remaps, which wait for every
		// open read transaction (a long export) and so stall writers.
		InitialMmapSize: 1 << 30,
		NoSync:          opts.NoSync,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("store: %s: %w (is another chainmail running on this data directory?)", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	d := &DB{bolt: b, opts: opts, reqs: make(chan *request, 4096), done: make(chan struct{})}
	go d.commitLoop()
	return d, nil
}

// Bolt gives the stores read access and bucket setup.
func (d *DB) Bolt() *bolt.DB { return d.bolt }

// Path is the data file.
func (d *DB) Path() string { return d.bolt.Path() }

// View runs a read-only transaction.
func (d *DB) View(fn func(*bolt.Tx) error) error { return d.bolt.View(fn) }

// Update runs fn in a shared write transaction and returns once that
// transaction is durable, or with fn's error (and none of fn's writes).
// fn may run more than once if another function of its batch fails, so it
// must not have effects outside the transaction.
func (d *DB) Update(ctx context.Context, fn func(*bolt.Tx) error) error {
	r := &request{fn: fn, err: make(chan error, 1)}
	d.mu.RLock()
	if d.closed {
		d.mu.RUnlock()
		return ErrClosed
	}
	select {
	case d.reqs <- r:
		d.mu.RUnlock()
	case <-ctx.Done():
		d.mu.RUnlock()
		return ctx.Err()
	}
	// Once queued, the outcome is waited for regardless of ctx: the
	// caller must not answer its client before knowing whether the data is
	// durable.
	return <-r.err
}

func (d *DB) commitLoop() {
	defer close(d.done)
	batch := make([]*request, 0, d.opts.MaxBatch)
	for first := range d.reqs {
		batch = append(batch[:0], first)
	fill:
		for len(batch) < d.opts.MaxBatch {
			select {
			case r, ok := <-d.reqs:
				if !ok {
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		d.commit(batch)
	}
}

// commit runs a batch, retrying without the functions that fail.
func (d *DB) commit(batch []*request) {
	start := time.Now()
	for len(batch) > 0 {
		tx, err := d.bolt.Begin(true)
		if err != nil {
			answer(batch, fmt.Errorf("store: begin: %w", err))
			return
		}
		failed := -1
		var ferr error
		for i, r := range batch {
			if ferr = r.fn(tx); ferr != nil {
				failed = i
				break
			}
		}
		if failed >= 0 {
			tx.Rollback()
			batch[failed].err <- ferr
			batch = append(batch[:failed:failed], batch[failed+1:]...)
			continue
		}
		if err := tx.Commit(); err != nil {
			answer(batch, fmt.Errorf("store: commit batch of %d: %w", len(batch), err))
			return
		}
		if d.opts.OnCommit != nil {
			d.opts.OnCommit(len(batch), time.Since(start))
		}
		answer(batch, nil)
		return
	}
}

func answer(batch []*request, err error) {
	for _, r := range batch {
		r.err <- err
	}
}

// Close stops the committer after the requests already queued are
// committed, then closes the file.
func (d *DB) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	close(d.reqs)
	d.mu.Unlock()
	<-d.done
	if err := d.bolt.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}
