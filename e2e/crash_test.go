package e2e

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"chainmail/internal/testutil"
)

// TestCrashUnderLoad kills the node with SIGKILL while 16 clients send,
// restarts it, and checks that every message that got 250 is archived,
// byte for byte, and that the bbolt file is consistent; several times over
// the same data directory. This test is never skipped: it is the proof
// behind "250 means durable".
func TestCrashUnderLoad(t *testing.T) {
	t.Parallel()
	cfg, addr := nodeConfig(t, "")
	// A low spool threshold puts the large messages through spool files,
	// which a crash must not leave behind.
	n := testutil.StartNode(t, cfg+"store: {spool_threshold: 4KiB}\n")
	db := filepath.Join(n.Dir, "data", "chainmail.db")

	const (
		cycles          = 4
		workers         = 16
		perWorker       = 150 // a bound: the kill comes long before
		ackedBeforeKill = 200
	)
	var acked [][]byte // every message that got 250, over all cycles
	attempted := 0
	for cycle := range cycles {
		// One client is half-way through a large message when the node
		// dies: its spool file must not survive the restart.
		stalled := dial(t, addr, "")
		ehlo(t, stalled)
		cmd(t, stalled, "250 2.0.0 Roger, accepting mail from <stalled@example.com>", "MAIL FROM:<stalled@example.com>")
		cmd(t, stalled, "250 2.0.0 I'll make sure <r@example.org> gets this", "RCPT TO:<r@example.org>")
		cmd(t, stalled, "354 Go ahead. End your data with <CR><LF>.<CR><LF>", "DATA")
		stalled.Raw(textMessage("never finished", fmt.Sprintf("stalled-%d@example.com", cycle), 1500))
		testutil.WaitFor(t, closeBound, "the stalled message to reach the spool", func() bool { return len(spoolFiles(t, n)) > 0 })

		got, tried := loadAndKill(t, n, addr, cycle, workers, perWorker, ackedBeforeKill)
		stalled.Close()
		acked = append(acked, got...)
		attempted += tried
		// The file a SIGKILL left behind is consistent before any repair.
		testutil.CheckBolt(t, db)
		n.Restart()

		if left := spoolFiles(t, n); len(left) != 0 {
			t.Fatalf("cycle %d: spool files left after restart: %v", cycle, left)
		}
		if !strings.Contains(n.Output(), "removed spool files of sessions interrupted by a crash") {
			t.Fatalf("cycle %d: the restart does not say it removed the crash's spool files", cycle)
		}
		d := n.Digest()
		if d.Count < len(acked) || d.Count > attempted {
			t.Fatalf("cycle %d: archive holds %d messages; %d got 250 and %d were sent", cycle, d.Count, len(acked), attempted)
		}
		for _, m := range acked {
			id := testutil.HashOf(m)
			var meta struct {
				ID   string `json:"id"`
				Size int64  `json:"size"`
			}
			if s := n.Get("/api/v1/archive/messages/"+id, &meta); s != 200 || meta.ID != id || meta.Size != int64(len(m)) {
				t.Fatalf("cycle %d: message %s got 250 but GET answers %d %+v", cycle, id, s, meta)
			}
		}
		// Raw bytes for a sample of this cycle: every large message and
		// every tenth small one.
		for i, m := range got {
			if len(m) > 4<<10 || i%10 == 0 {
				if raw := n.Raw(testutil.HashOf(m)); !bytes.Equal(raw, m) {
					t.Fatalf("cycle %d: raw bytes of %s differ (%d bytes, want %d)", cycle, testutil.HashOf(m), len(raw), len(m))
				}
			}
		}
		t.Logf("cycle %d: %d acknowledged (%d in all), archive holds %d of %d sent", cycle, len(got), len(acked), d.Count, attempted)
	}
	if err := n.Stop(); err != nil {
		t.Fatalf("clean stop after the crashes: %v", err)
	}
	testutil.CheckBolt(t, db)
}

// loadAndKill runs workers senders until ackedBeforeKill messages got 250,
// then kills the node with SIGKILL while they are still sending. It
// returns the acknowledged messages and how many were sent.
func loadAndKill(t *testing.T, n *testutil.Node, addr string, cycle, workers, perWorker, ackedBeforeKill int) (acked [][]byte, attempted int) {
	t.Helper()
	var (
		mu       sync.Mutex
		killed   atomic.Bool
		acks     atomic.Int64
		tried    atomic.Int64
		running  atomic.Int64
		wg       sync.WaitGroup
		failures []string
	)
	for w := range workers {
		running.Add(1)
		wg.Go(func() {
			defer running.Add(-1)
			for i := range perWorker {
				msg := crashMessage(cycle, w, i)
				tried.Add(1)
				r, err := testutil.Send(addr, "journal@example.com", []string{"archive@example.org"}, msg)
				if err == nil && r.Code == 250 {
					// A 250 read after the kill was sent before it: it
					// counts like any other.
					if r.String() != archived(msg) {
						mu.Lock()
						failures = append(failures, fmt.Sprintf("reply %q, want %q", r, archived(msg)))
						mu.Unlock()
					}
					mu.Lock()
					acked = append(acked, msg)
					mu.Unlock()
					acks.Add(1)
					continue
				}
				if killed.Load() {
					return // the node is gone; so is this sender
				}
				mu.Lock()
				failures = append(failures, fmt.Sprintf("before the kill: %v %v", r, err))
				mu.Unlock()
				return
			}
		})
	}
	deadline := time.Now().Add(60 * time.Second)
	for acks.Load() < int64(ackedBeforeKill) && running.Load() > 0 {
		if time.Now().After(deadline) {
			killed.Store(true)
			n.Kill()
			wg.Wait()
			t.Fatalf("cycle %d: only %d messages acknowledged within 60s: %v", cycle, acks.Load(), failures)
		}
		time.Sleep(5 * time.Millisecond)
	}
	stillSending := running.Load()
	killed.Store(true)
	n.Kill()
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("cycle %d: %d failures, first: %s", cycle, len(failures), failures[0])
	}
	if stillSending == 0 {
		t.Fatalf("cycle %d: every sender had finished before the kill; raise perWorker", cycle)
	}
	return acked, int(tried.Load())
}

// crashMessage is distinct per cycle, worker and sequence number; one in
// eight is large enough to go through a spool file.
func crashMessage(cycle, worker, i int) []byte {
	id := fmt.Sprintf("crash-%d-%d-%d@example.com", cycle, worker, i)
	lines := 2
	if i%8 == 7 {
		lines = 700 // ~45 KiB
	}
	return textMessage(fmt.Sprintf("crash cycle %d worker %d message %d", cycle, worker, i), id, lines)
}
