package envelope

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// benchMessage is shaped like smtp-source's: a short header section and
// lines of filler, size bytes in all.
func benchMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: <foo@bench.invalid>\r\nTo: <foo@bench.invalid>\r\nDate: Sun, 22 Nov 2026 02:31:14 +0000 (UTC)\r\nMessage-Id: <6d8a.0003.0001@bench.invalid>\r\n\r\n")
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "%d%s\r\n", i%10, strings.Repeat("X", 77))
	}
	return b.Bytes()[: size-2 : size-2]
}

// BenchmarkReceive is the listener's per-message work on a DATA stream
// after go-smtp's dot-unstuffing: trace filter, bare-LF check, SHA-256,
// and the in-memory spool.
func BenchmarkReceive(b *testing.B) {
	for _, size := range []int{10 << 10, 512 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			msg := append(benchMessage(size), "\r\n"...)
			dir := b.TempDir()
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				res, err := Receive(bytes.NewReader(msg), SpoolOptions{Dir: dir, Threshold: 1 << 20})
				if err != nil {
					b.Fatal(err)
				}
				res.Body.Close()
			}
		})
	}
}
