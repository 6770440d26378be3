package listener

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"

	"chainmail/archive"
	"chainmail/internal/config"
	"chainmail/route"
)

// errSecret is what the fake router fails with for some messages: its text
// must never reach a client.
var errSecret = errors.New("fake router: disk on fire under /var/lib/secret")

// fakeRouter answers by the message hash, so arbitrary input reaches every
// outcome the real router can have: archived, duplicate, queue full, too
// many hops, and an unknown error.
type fakeRouter struct {
	mu   sync.Mutex
	got  []*archive.Item
	keep bool // record delivered items (tests that look at them)
}

func (r *fakeRouter) Deliver(ctx context.Context, listener string, it *archive.Item) (route.Outcome, error) {
	if r.keep {
		r.mu.Lock()
		r.got = append(r.got, it)
		r.mu.Unlock()
	}
	switch it.Hash[0] % 8 {
	case 0:
		return route.Outcome{}, fmt.Errorf("route: forward:peer: %w", route.ErrQueueFull)
	case 1:
		return route.Outcome{}, fmt.Errorf("route: 17 hops: %w", route.ErrTooManyHops)
	case 2:
		return route.Outcome{}, errSecret
	case 3:
		return route.Outcome{Routes: []string{"r"}}, nil
	}
	return route.Outcome{Routes: []string{"r"}, New: true}, nil
}

// testUser logs in on listeners started by startListener.
const testUser, testPassword = "journal", "s3cret"

// startListener runs a real listener on 127.0.0.1:0 until the test ends.
func startListener(tb testing.TB, router Deliverer, edit func(*config.Listener)) *Listener {
	tb.Helper()
	var cfg config.Listener
	cfg.Defaults()
	cfg.Name = "test"
	cfg.Address = "127.0.0.1:0"
	cfg.MaxMessageSize = 64 << 10
	cfg.MaxRecipients = 5
	cfg.ReadTimeout = 10 * time.Second
	cfg.DataTimeout = 10 * time.Second
	cfg.MaxSessions = 1000
	cfg.MaxSessionsPerIP = 1000
	hash, err := bcrypt.GenerateFromPassword([]byte(testPassword), bcrypt.MinCost)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.Auth = &config.ListenerAuth{Users: []config.User{{Name: testUser, PasswordHash: string(hash)}}, AllowInsecure: true}
	if edit != nil {
		edit(&cfg)
	}
	logger := logrus.New()
	logger.SetOutput(io.Discard)
	l, err := New(cfg, Deps{
		Node: "test-node", Router: router,
		SpoolDir: tb.TempDir(), SpoolThreshold: 4 << 10,
		Log: logrus.NewEntry(logger), ShutdownGrace: 5 * time.Second,
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := l.Listen(); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	<-l.Ready()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("listener Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			tb.Errorf("listener did not stop within 30s")
		}
	})
	return l
}
