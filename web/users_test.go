package web

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"chainmail/internal/store"
	"chainmail/internal/testutil"
)

// openUsers opens a users store on a fresh bbolt file at cheap bcrypt cost;
// the file is checked for consistency after the test.
func openUsers(t *testing.T, path string) (*Users, *store.DB) {
	t.Helper()
	db, err := store.Open(path, store.Options{LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	u, err := OpenUsers(db)
	if err != nil {
		t.Fatal(err)
	}
	u.cost = bcrypt.MinCost
	return u, db
}

func TestUsersEnsureAdmin(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "chainmail.db")
	u, db := openUsers(t, path)

	pw, created, err := u.EnsureAdmin()
	if err != nil || !created || len(pw) < 20 {
		t.Fatalf("first EnsureAdmin: %q %v %v", pw, created, err)
	}
	if role, ok := u.Check(AdminUser, pw); !ok || role != RoleAdmin {
		t.Errorf("Check(admin, generated) = %q %v", role, ok)
	}
	for _, c := range []struct{ user, pass string }{
		{AdminUser, "wrong"}, {AdminUser, ""}, {"nobody", pw}, {"", ""}, {AdminUser, pw + "x"},
	} {
		if _, ok := u.Check(c.user, c.pass); ok {
			t.Errorf("Check(%q, %q) accepted", c.user, c.pass)
		}
	}
	again, created, err := u.EnsureAdmin()
	if err != nil || created || again != "" {
		t.Errorf("second EnsureAdmin: %q %v %v, want nothing new", again, created, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	// The password is nowhere in the file; its bcrypt hash is.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(pw)) {
		t.Error("the clear password is in the data file")
	}
	if !bytes.Contains(raw, []byte(`"hash":"$2a$`)) {
		t.Error("no bcrypt hash in the data file")
	}
	testutil.CheckBolt(t, path)

	// A restart keeps the account and does not print a new password.
	u, db = openUsers(t, path)
	if role, ok := u.Check(AdminUser, pw); !ok || role != RoleAdmin {
		t.Errorf("after reopen: %q %v", role, ok)
	}
	if p, created, err := u.EnsureAdmin(); err != nil || created || p != "" {
		t.Errorf("EnsureAdmin after reopen: %q %v %v", p, created, err)
	}
	db.Close()
	testutil.CheckBolt(t, path)
}

func TestUsersConcurrentEnsureAdmin(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "chainmail.db")
	u, db := openUsers(t, path)
	defer func() { db.Close(); testutil.CheckBolt(t, path) }()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var passwords []string
	for range 8 {
		wg.Go(func() {
			pw, created, err := u.EnsureAdmin()
			if err != nil {
				t.Error(err)
			}
			if created {
				mu.Lock()
				passwords = append(passwords, pw)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	// Exactly one password was created, and it is the one that works.
	if len(passwords) != 1 {
		t.Fatalf("%d passwords reported created", len(passwords))
	}
	if _, ok := u.Check(AdminUser, passwords[0]); !ok {
		t.Error("the reported password does not log in")
	}
}

func TestUsersSetPassword(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "chainmail.db")
	u, db := openUsers(t, path)
	defer func() { db.Close(); testutil.CheckBolt(t, path) }()
	ctx := context.Background()
	old, _, err := u.EnsureAdmin()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := u.Check(AdminUser, old); !ok { // now cached
		t.Fatal("generated password refused")
	}
	if err := u.SetPassword(ctx, AdminUser, "a new long password"); err != nil {
		t.Fatal(err)
	}
	if _, ok := u.Check(AdminUser, old); ok {
		t.Error("the old password still works (stale login cache)")
	}
	if _, ok := u.Check(AdminUser, "a new long password"); !ok {
		t.Error("the new password does not work")
	}
	if err := u.SetPassword(ctx, AdminUser, "short"); err == nil {
		t.Error("short password accepted")
	}
	if err := u.SetPassword(ctx, "nobody", "a new long password"); !errors.Is(err, ErrNoUser) {
		t.Errorf("unknown user: %v", err)
	}
}

func TestUsersLoginCache(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "chainmail.db")
	u, db := openUsers(t, path)
	defer func() { db.Close(); testutil.CheckBolt(t, path) }()
	clock := newFakeClock()
	u.now = clock.Now
	pw, _, err := u.EnsureAdmin()
	if err != nil {
		t.Fatal(err)
	}
	u.Check(AdminUser, pw)
	if len(u.cache) != 1 {
		t.Fatalf("cache has %d entries after a success", len(u.cache))
	}
	u.Check(AdminUser, "wrong")
	if len(u.cache) != 1 {
		t.Error("a failure was cached")
	}
	// An expired entry is checked against bcrypt again (and re-cached).
	clock.Add(loginCacheTTL + time.Second)
	if _, ok := u.Check(AdminUser, pw); !ok {
		t.Error("expired cache entry refused a good password")
	}
}
