package listener

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"chainmail/archive"
	"chainmail/internal/config"
	"chainmail/internal/store"
	"chainmail/route"
)

// BenchmarkIngest is a node's DATA path in one process: a listener, the
// router, the archive and the group-committed bbolt file (with fsync
// unless noted), fed 10 KiB messages by plain SMTP clients that, like
// smtp-source, do not pipeline. bench/ingest.sh measures the real binary
// against smtp-sink and Postfix; this is the profile-friendly version
// (go test -bench Ingest -cpuprofile).
func BenchmarkIngest(b *testing.B) {
	for _, c := range []struct {
		name     string
		sessions int
		perConn  bool // one message per connection
		noSync   bool
	}{
		{"sessions=1", 1, false, false},
		{"sessions=32", 32, false, false},
		{"sessions=32/conn-per-message", 32, true, false},
		{"sessions=32/nosync", 32, false, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			addr := startBenchNode(b, c.noSync)
			body := benchBody(10 << 10)
			var next atomic.Int64
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			errs := make(chan error, c.sessions)
			for range c.sessions {
				wg.Go(func() {
					var cl *benchClient
					defer func() {
						if cl != nil {
							cl.close()
						}
					}()
					for {
						n := next.Add(1)
						if n > int64(b.N) {
							return
						}
						if cl == nil {
							var err error
							if cl, err = dialBench(addr); err != nil {
								errs <- err
								return
							}
						}
						if err := cl.send(n, body); err != nil {
							errs <- err
							return
						}
						if c.perConn {
							cl.close()
							cl = nil
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
		})
	}
}

func startBenchNode(b *testing.B, noSync bool) string {
	b.Helper()
	dir := b.TempDir()
	db, err := store.Open(filepath.Join(dir, "chainmail.db"), store.Options{NoSync: noSync})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	arch, err := archive.Open(db)
	if err != nil {
		b.Fatal(err)
	}
	logger := logrus.New()
	logger.SetOutput(io.Discard)
	logger.SetLevel(logrus.WarnLevel)
	router := route.New([]config.Route{{Name: "journal", From: []string{"bench"}, Actions: []string{config.ActionArchive}}},
		route.Deps{Node: "bench", MaxHops: 16, Commit: db, Archive: arch, Stage: arch})
	var cfg config.Listener
	cfg.Defaults()
	cfg.Name, cfg.Address = "bench", "127.0.0.1:0"
	cfg.MaxSessions, cfg.MaxSessionsPerIP = 1000, 1000
	l, err := New(cfg, Deps{
		Node: "bench", Router: router,
		SpoolDir: dir, SpoolThreshold: 1 << 20, // the node's default
		Log: logrus.NewEntry(logger), ShutdownGrace: 5 * time.Second,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	<-l.Ready()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("listener: %v", err)
		}
	})
	return l.Addr().String()
}

// benchBody is a DATA payload shaped like smtp-source's, dot-stuffing
// free, ending with CRLF; send numbers its Message-Id so no two are equal.
func benchBody(size int) []byte {
	var sb strings.Builder
	for i := 0; sb.Len() < size; i++ {
		fmt.Fprintf(&sb, "%d%s\r\n", i%10, strings.Repeat("X", 77))
	}
	return []byte(sb.String())
}

type benchClient struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func dialBench(addr string) (*benchClient, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	cl := &benchClient{c: c, r: bufio.NewReader(c), w: bufio.NewWriter(c)}
	if err := cl.expect("220"); err != nil {
		c.Close()
		return nil, err
	}
	if err := cl.cmd("EHLO bench.invalid", "250"); err != nil {
		c.Close()
		return nil, err
	}
	return cl, nil
}

func (cl *benchClient) close() {
	cl.cmd("QUIT", "221")
	cl.c.Close()
}

// send is one transaction, a command and its reply at a time.
func (cl *benchClient) send(n int64, body []byte) error {
	for _, step := range [][2]string{
		{"MAIL FROM:<foo@bench.invalid>", "250"},
		{"RCPT TO:<bar@bench.invalid>", "250"},
		{"DATA", "354"},
	} {
		if err := cl.cmd(step[0], step[1]); err != nil {
			return err
		}
	}
	fmt.Fprintf(cl.w, "From: <foo@bench.invalid>\r\nTo: <bar@bench.invalid>\r\nSubject: bench %d\r\nMessage-Id: <%d@bench.invalid>\r\n\r\n", n, n)
	cl.w.Write(body)
	return cl.cmd(".", "250")
}

func (cl *benchClient) cmd(line, want string) error {
	cl.w.WriteString(line + "\r\n")
	if err := cl.w.Flush(); err != nil {
		return err
	}
	return cl.expect(want)
}

func (cl *benchClient) expect(want string) error {
	for {
		line, err := cl.r.ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.HasPrefix(line, want) {
			return fmt.Errorf("want %s, got %q", want, line)
		}
		if len(line) < 4 || line[3] != '-' {
			return nil
		}
	}
}
