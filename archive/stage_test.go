package archive

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"chainmail/internal/envelope"
	"chainmail/internal/store"
	"chainmail/internal/testutil"
)

// bigItem is a spooled (file-backed) message of about size bytes, as the
// listener hands over a large DATA.
func bigItem(t *testing.T, size int, tag string) *Item {
	t.Helper()
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: big@example.com\r\nTo: archive@example.org\r\nSubject: %s\r\nMessage-ID: <%s@example.com>\r\n\r\n", tag, tag)
	for b.Len() < size {
		fmt.Fprintf(&b, "%s line %d of a large message\r\n", tag, b.Len())
	}
	res, err := envelope.Receive(&b, envelope.SpoolOptions{Dir: t.TempDir(), Threshold: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if res.Body.Bytes() != nil {
		t.Fatal("body not spooled")
	}
	t.Cleanup(func() { res.Body.Close() })
	it := &Item{Hash: res.Hash, Body: res.Body, Envelope: envelope.Envelope{MailFrom: "j@example.com", RcptTo: []string{"a@example.org"}},
		Receipt: envelope.Receipt{Node: "a", Listener: "journal", Received: time.Now()}}
	Prepare(it)
	return it
}

// blobKeys counts the chunks of message seq, and of all messages.
func blobKeys(t *testing.T, db *store.DB, seq uint64) (mine, all int) {
	t.Helper()
	db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketArchive).Bucket(bucketBlob).ForEach(func(k, _ []byte) error {
			all++
			if binary.BigEndian.Uint64(k) == seq {
				mine++
			}
			return nil
		})
	})
	return mine, all
}

func stagedCount(t *testing.T, db *store.DB) int {
	t.Helper()
	n := 0
	db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketArchive).Bucket(bucketStaged).Stats().KeyN
		return nil
	})
	return n
}

func readRaw(t *testing.T, s *Store, h envelope.Hash) []byte {
	t.Helper()
	r, _, err := s.OpenRaw(context.Background(), h.String())
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestStagedMessageIsByteExact(t *testing.T) {
	s, db := openStore(t)
	it := bigItem(t, 2*stagePiece+3*chunkSize+777, "big")
	if err := s.Stage(context.Background(), it); err != nil {
		t.Fatal(err)
	}
	if it.staged == 0 || stagedCount(t, db) != 1 {
		t.Fatalf("not staged: seq %d, staged records %d", it.staged, stagedCount(t, db))
	}
	if s.Has(it.Hash) {
		t.Fatal("a staged message is visible before its archiving transaction")
	}
	res := put(t, s, db, it)
	if !res.New || res.Seq != it.staged {
		t.Fatalf("put %+v, staged seq %d", res, it.staged)
	}
	want, _ := io.ReadAll(it.Body.Reader())
	if got := readRaw(t, s, it.Hash); !bytes.Equal(got, want) {
		t.Fatalf("raw differs: %d bytes, want %d", len(got), len(want))
	}
	if st := s.Stats(); st.Messages != 1 || st.Bytes != it.Body.Size() {
		t.Fatalf("stats %+v", st)
	}
	if stagedCount(t, db) != 0 {
		t.Fatal("staged record left after the put")
	}
	if p, err := s.Search(context.Background(), Query{MessageID: "big@example.com"}); err != nil || len(p.Messages) != 1 {
		t.Fatalf("search: %+v %v", p, err)
	}
}

func TestSmallMessagesAreNotStaged(t *testing.T) {
	s, db := openStore(t)
	it := bigItem(t, stagePiece-4096, "medium")
	if err := s.Stage(context.Background(), it); err != nil || it.staged != 0 {
		t.Fatalf("staged %d, %v", it.staged, err)
	}
	put(t, s, db, it)
	want, _ := io.ReadAll(it.Body.Reader())
	if !bytes.Equal(readRaw(t, s, it.Hash), want) {
		t.Fatal("raw differs")
	}
}

func TestStagedDuplicateKeepsTheFirstCopy(t *testing.T) {
	s, db := openStore(t)
	a := bigItem(t, stagePiece+chunkSize, "dup")
	b := &Item{Hash: a.Hash, Body: a.Body, Envelope: envelope.Envelope{MailFrom: "j@example.com", RcptTo: []string{"b@example.org"}},
		Receipt: a.Receipt, Headers: a.Headers}
	// Both sessions stage before either archives: the race Has cannot see.
	for _, it := range []*Item{a, b} {
		if err := s.Stage(context.Background(), it); err != nil {
			t.Fatal(err)
		}
	}
	if a.staged == b.staged {
		t.Fatal("two staged copies share a seq")
	}
	ra, rb := put(t, s, db, a), put(t, s, db, b)
	if !ra.New || rb.New || !rb.NewRecipients || rb.Seq != a.staged {
		t.Fatalf("results %+v %+v", ra, rb)
	}
	chunks := int((a.Body.Size() + chunkSize - 1) / chunkSize)
	if mine, all := blobKeys(t, db, b.staged); mine != 0 || all != chunks {
		t.Fatalf("second copy's chunks left: %d of %d", mine, all)
	}
	if stagedCount(t, db) != 0 {
		t.Fatal("staged record left")
	}
	// Once archived, the same bytes are not staged at all.
	c := &Item{Hash: a.Hash, Body: a.Body, Envelope: a.Envelope, Receipt: a.Receipt}
	if err := s.Stage(context.Background(), c); err != nil || c.staged != 0 {
		t.Fatalf("staged an archived message: %d %v", c.staged, err)
	}
}

func TestUnstageAndOpenClearWhatNeverGotItsReply(t *testing.T) {
	path := filepath.Join(t.TempDir(), "chainmail.db")
	db, err := store.Open(path, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(db)
	if err != nil {
		t.Fatal(err)
	}
	kept := item(msg(1), "j@example.com", "a@example.org")
	put(t, s, db, kept)
	failed, crashed := bigItem(t, stagePiece+1, "failed"), bigItem(t, 2*stagePiece+1, "crashed")
	for _, it := range []*Item{failed, crashed} {
		if err := s.Stage(context.Background(), it); err != nil {
			t.Fatal(err)
		}
	}
	// The archiving transaction of one failed: its bytes go at once.
	seq := failed.staged
	s.Unstage(failed)
	if mine, _ := blobKeys(t, db, seq); mine != 0 || failed.staged != 0 {
		t.Fatalf("unstage left %d chunks", mine)
	}
	// The node dies before the other's: the next Open clears it.
	seq = crashed.staged
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if db, err = store.Open(path, store.Options{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		db.Close()
		testutil.CheckBolt(t, path)
	}()
	if s, err = Open(db); err != nil {
		t.Fatal(err)
	}
	if mine, all := blobKeys(t, db, seq); mine != 0 || all != 1 || stagedCount(t, db) != 0 {
		t.Fatalf("after reopen: %d staged chunks, %d chunks in all, %d records", mine, all, stagedCount(t, db))
	}
	if got := readRaw(t, s, kept.Hash); !strings.HasPrefix(string(got), "From: Sender 1") {
		t.Fatal("the archived message was touched")
	}
	if s.Stats().Messages != 1 {
		t.Fatal("stats changed")
	}
}
