package archive

import (
	"context"
	"crypto/sha256"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"chainmail/internal/envelope"
)

// benchHead is the header section smtp-source writes.
const benchHead = "From: <foo@bench.invalid>\r\nTo: <foo@bench.invalid>\r\nDate: Sun, 22 Nov 2026 02:31:14 +0000 (UTC)\r\nMessage-Id: <6d8a.0003.0001@bench.invalid>\r\n\r\n"

func BenchmarkParseHeaders(b *testing.B) {
	head := []byte(benchHead + strings.Repeat("X", 1000))
	b.ReportAllocs()
	for b.Loop() {
		ParseHeaders(head)
	}
}

// BenchmarkPut is the archive's share of a commit: PutTx of 10 KiB
// messages from 32 goroutines through the group committer, without fsync
// (the listener benchmark measures it with).
func BenchmarkPut(b *testing.B) {
	s, db := openStore(b)
	body := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n", 128)
	var n atomic.Int64
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for {
				i := n.Add(1)
				if i > int64(b.N) {
					return
				}
				raw := []byte(fmt.Sprintf("From: <foo@bench.invalid>\r\nTo: <bar@bench.invalid>\r\nMessage-Id: <%d.%d@bench.invalid>\r\n\r\n%s", i%97, i, body))
				it := &Item{Hash: sha256.Sum256(raw), Body: envelope.BodyFromBytes(raw),
					Envelope: envelope.Envelope{MailFrom: "foo@bench.invalid", RcptTo: []string{"bar@bench.invalid"}},
					Receipt:  envelope.Receipt{Node: "bench", Listener: "journal", Received: time.Now()}}
				Prepare(it)
				err := db.Update(context.Background(), func(tx *bolt.Tx) error {
					_, err := s.PutTx(tx, it)
					return err
				})
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}
