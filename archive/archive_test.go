package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"chainmail/internal/envelope"
	"chainmail/internal/store"
	"chainmail/internal/testutil"
)

func openStore(t testing.TB) (*Store, *store.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "chainmail.db")
	db, err := store.Open(path, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db.Close()
		testutil.CheckBolt(t, path)
	})
	return s, db
}

func item(raw string, from string, rcpt ...string) *Item {
	b := []byte(raw)
	it := &Item{
		Hash:     sha256.Sum256(b),
		Body:     envelope.BodyFromBytes(b),
		Envelope: envelope.Envelope{MailFrom: from, RcptTo: rcpt},
		Receipt:  envelope.Receipt{Node: "a", Listener: "journal", Received: time.Now()},
	}
	Prepare(it)
	return it
}

func put(t testing.TB, s *Store, db *store.DB, it *Item) PutResult {
	t.Helper()
	var res PutResult
	err := db.Update(context.Background(), func(tx *bolt.Tx) error {
		var err error
		res, err = s.PutTx(tx, it)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func msg(i int) string {
	return fmt.Sprintf("From: Sender %d <sender%d@example.com>\r\nTo: rcpt%d@example.org\r\nSubject: message number %d\r\nMessage-ID: <m%d@example.com>\r\nDate: Sun, 22 Nov 2026 01:%02d:00 +0000\r\n\r\nbody %d\r\n", i, i%3, i, i, i, i%60, i)
}

func TestPutDedupeAndMerge(t *testing.T) {
	s, db := openStore(t)
	raw := msg(1)
	r1 := put(t, s, db, item(raw, "j@example.com", "a@example.org"))
	r2 := put(t, s, db, item(raw, "j@example.com", "A@example.org", "bcc@example.net"))
	r3 := put(t, s, db, item(raw, "j@example.com", "bcc@example.net"))
	if !r1.New || r2.New || r3.New || !r2.NewRecipients || r3.NewRecipients || r1.Seq != r2.Seq {
		t.Fatalf("results %+v %+v %+v", r1, r2, r3)
	}
	if st := s.Stats(); st.Messages != 1 || st.Bytes != int64(len(raw)) {
		t.Fatalf("stats %+v", st)
	}
	m, err := s.Get(context.Background(), r1Hash(raw))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Envelope.RcptTo; len(got) != 2 || got[1] != "bcc@example.net" || m.Receipts != 3 {
		t.Fatalf("merged envelope %v receipts %d", got, m.Receipts)
	}
	// The merged recipient is searchable.
	p, err := s.Search(context.Background(), Query{To: "bcc@example.net"})
	if err != nil || len(p.Messages) != 1 {
		t.Fatalf("search merged rcpt: %+v %v", p, err)
	}
}

func r1Hash(raw string) string { h := sha256.Sum256([]byte(raw)); return hex.EncodeToString(h[:]) }

func TestRawIsByteExactAcrossChunks(t *testing.T) {
	s, db := openStore(t)
	var b bytes.Buffer
	b.WriteString("Subject: big\r\n\r\n")
	for b.Len() < 3*chunkSize+1234 {
		fmt.Fprintf(&b, "line %d with some text\r\n", b.Len())
	}
	raw := b.String()
	put(t, s, db, item(raw, "a@b.c", "d@e.f"))
	r, size, err := s.OpenRaw(context.Background(), r1Hash(raw))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	if size != int64(len(raw)) || string(got) != raw {
		t.Fatalf("raw differs: %d bytes, want %d", len(got), len(raw))
	}
	if _, _, err := s.OpenRaw(context.Background(), strings.Repeat("0", 64)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing id: %v", err)
	}
	if _, err := s.Get(context.Background(), "not-a-hash"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("bad id: %v", err)
	}
}

func TestSearchFiltersAndPaging(t *testing.T) {
	s, db := openStore(t)
	for i := range 30 {
		put(t, s, db, item(msg(i), fmt.Sprintf("env%d@example.com", i), fmt.Sprintf("bcc%d@hidden.example", i%2)))
	}
	ctx := context.Background()
	count := func(q Query) int {
		t.Helper()
		n := 0
		for {
			p, err := s.Search(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			n += len(p.Messages)
			for i := 1; i < len(p.Messages); i++ {
				if !p.Messages[i].Received.Before(p.Messages[i-1].Received) && p.Messages[i].Subject > p.Messages[i-1].Subject {
					t.Fatalf("not newest first: %v", p.Messages)
				}
			}
			if p.NextCursor == "" {
				return n
			}
			q.Cursor = p.NextCursor
		}
	}
	cases := []struct {
		name string
		q    Query
		want int
	}{
		{"all", Query{}, 30},
		{"all paged", Query{Limit: 7}, 30},
		{"from address", Query{From: "sender1@example.com", Limit: 3}, 10},
		{"from domain", Query{From: "@example.com"}, 30},
		{"from bare domain", Query{From: "example.com", Limit: 4}, 30},
		{"from substring", Query{From: "sender2"}, 10},
		{"from display name", Query{From: "Sender 7"}, 1},
		{"envelope sender", Query{From: "env5@example.com"}, 1},
		{"to header", Query{To: "rcpt3@example.org"}, 1},
		{"envelope bcc", Query{To: "bcc1@hidden.example", Limit: 2}, 15},
		{"to domain", Query{To: "hidden.example"}, 30},
		{"subject", Query{Subject: "NUMBER 1"}, 11},
		{"message id", Query{MessageID: "<m12@example.com>"}, 1},
		{"message id bare", Query{MessageID: "m12@example.com"}, 1},
		{"after", Query{After: time.Date(2026, 11, 22, 1, 20, 0, 0, time.UTC)}, 10},
		{"before", Query{Before: time.Date(2026, 11, 22, 1, 5, 0, 0, time.UTC)}, 5},
		{"text", Query{Text: "m2"}, 11},
		{"combined", Query{From: "sender0@example.com", Subject: "2"}, 4},
		{"nothing", Query{To: "nobody@nowhere.example"}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := count(tc.q); got != tc.want {
				t.Fatalf("%d hits, want %d", got, tc.want)
			}
		})
	}
	if _, err := s.Search(ctx, Query{Cursor: "zz"}); !errors.Is(err, ErrBadCursor) {
		t.Fatalf("bad cursor: %v", err)
	}
	p, _ := s.Search(ctx, Query{Limit: 1})
	if p.Messages[0].Subject != "message number 29" || p.NextCursor == "" {
		t.Fatalf("newest first: %+v", p)
	}
}

func TestDigestIsSortedHashesWithNewlines(t *testing.T) {
	s, db := openStore(t)
	var hexes []string
	for i := range 20 {
		put(t, s, db, item(msg(i), "a@b.c", "d@e.f"))
		hexes = append(hexes, r1Hash(msg(i)))
	}
	put(t, s, db, item(msg(3), "a@b.c", "x@e.f")) // a duplicate changes nothing
	sort.Strings(hexes)
	want := sha256.Sum256([]byte(strings.Join(hexes, "\n") + "\n"))
	d, err := s.Digest(context.Background())
	if err != nil || d.Count != 20 || d.SHA256 != hex.EncodeToString(want[:]) {
		t.Fatalf("digest %+v %v", d, err)
	}
	put(t, s, db, item(msg(99), "a@b.c", "d@e.f"))
	if d2, _ := s.Digest(context.Background()); d2.Count != 21 || d2.SHA256 == d.SHA256 {
		t.Fatal("digest cache not invalidated")
	}
}

func TestConcurrentDuplicatesStoreOnce(t *testing.T) {
	s, db := openStore(t)
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() { put(t, s, db, item(msg(i%4), "a@b.c", fmt.Sprintf("r%d@x.y", i))) })
	}
	wg.Wait()
	if st := s.Stats(); st.Messages != 4 {
		t.Fatalf("%d messages stored, want 4", st.Messages)
	}
	m, _ := s.Get(context.Background(), r1Hash(msg(0)))
	if len(m.Envelope.RcptTo) != 8 || m.Receipts != 8 {
		t.Fatalf("merged %d rcpts, %d receipts", len(m.Envelope.RcptTo), m.Receipts)
	}
}

func BenchmarkPut10KB(b *testing.B) {
	s, db := openStore(b)
	body := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstu\r\n", 150)
	b.SetBytes(int64(len(body)))
	b.SetParallelism(16)
	var n sync.Mutex
	i := 0
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n.Lock()
			i++
			k := i
			n.Unlock()
			put(b, s, db, item(fmt.Sprintf("Subject: %d\r\n\r\n%s", k, body), "a@b.c", "d@e.f"))
		}
	})
}
