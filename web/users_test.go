package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/crypto/bcrypt"

	"chainmail/internal/liveconfig"
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

// auditOf reads the audit entries of a store file directly (the web tests
// have no live configuration manager over it).
func auditOf(t *testing.T, db *store.DB) []liveconfig.Entry {
	t.Helper()
	var out []liveconfig.Entry
	err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("audit"))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if bytes.Contains(v, []byte("$2a$")) || bytes.Contains(v, []byte(`"hash"`)) {
				t.Errorf("an audit entry holds a hash: %s", v)
			}
			var e liveconfig.Entry
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			out = append(out, e)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestUsersCreateDeleteList(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "chainmail.db")
	u, db := openUsers(t, path)
	defer func() { db.Close(); testutil.CheckBolt(t, path) }()
	clock := newFakeClock()
	u.now = clock.Now
	ctx := context.WithValue(context.Background(), principalKey{}, Principal{Name: "admin", Role: RoleAdmin, Via: "basic"})
	adminPW, _, err := u.EnsureAdmin()
	if err != nil {
		t.Fatal(err)
	}

	clock.Add(time.Hour)
	acc, err := u.Create(ctx, "viewer", RoleReadOnly, "viewer password 1")
	if err != nil || acc.Name != "viewer" || acc.Role != RoleReadOnly || !acc.Created.Equal(clock.Now()) {
		t.Fatalf("Create: %+v %v", acc, err)
	}
	if role, ok := u.Check("viewer", "viewer password 1"); !ok || role != RoleReadOnly {
		t.Errorf("Check(viewer) = %q %v", role, ok)
	}
	if _, err := u.Create(ctx, "viewer", RoleAdmin, "another password"); !errors.Is(err, ErrUserExists) {
		t.Errorf("Create of a taken name: %v", err)
	}
	var inv *InvalidAccount
	if _, err := u.Create(ctx, "Bad Name", "root", "short"); !errors.As(err, &inv) || len(inv.Fields) != 3 {
		t.Errorf("Create with three bad fields: %v", err)
	}

	list, err := u.List()
	if err != nil || len(list) != 2 || list[0].Name != "admin" || list[1].Name != "viewer" || list[1].Role != RoleReadOnly {
		t.Fatalf("List: %+v %v", list, err)
	}

	// Deleting ends the account at once, cached Basic logins included.
	if err := u.Delete(ctx, "viewer"); err != nil {
		t.Fatal(err)
	}
	if _, ok := u.Check("viewer", "viewer password 1"); ok {
		t.Error("a deleted account still logs in (stale login cache)")
	}
	if err := u.Delete(ctx, "viewer"); !errors.Is(err, ErrNoUser) {
		t.Errorf("Delete of an unknown account: %v", err)
	}

	// The last admin stays; with a second one, either may go, not both.
	if err := u.Delete(ctx, AdminUser); !errors.Is(err, ErrLastAdmin) {
		t.Errorf("Delete of the last admin: %v", err)
	}
	if _, err := u.Create(ctx, "ops", RoleAdmin, "ops password 12"); err != nil {
		t.Fatal(err)
	}
	if err := u.Delete(ctx, AdminUser); err != nil {
		t.Fatalf("Delete of admin beside ops: %v", err)
	}
	if _, ok := u.Check(AdminUser, adminPW); ok {
		t.Error("the deleted admin still logs in")
	}
	if err := u.Delete(ctx, "ops"); !errors.Is(err, ErrLastAdmin) {
		t.Errorf("Delete of the new last admin: %v", err)
	}
	// A restart does not bring "admin" back with a new password.
	if pw, created, err := u.EnsureAdmin(); err != nil || created || pw != "" {
		t.Errorf("EnsureAdmin without an admin account but with ops: %q %v %v", pw, created, err)
	}

	got := auditOf(t, db)
	want := []string{"create users admin (first start)", "create users viewer admin", "delete users viewer admin",
		"create users ops admin", "delete users admin admin"}
	if len(got) != len(want) {
		t.Fatalf("audit has %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i, e := range got {
		if s := e.Action + " " + e.Kind + " " + e.Name + " " + e.By; s != want[i] {
			t.Errorf("audit[%d] = %q, want %q", i, s, want[i])
		}
	}
	if got[1].After.(map[string]any)["role"] != RoleReadOnly || got[2].Before.(map[string]any)["role"] != RoleReadOnly {
		t.Errorf("audit of viewer: %+v %+v", got[1], got[2])
	}
}

func TestUsersLastAdminConcurrentDeletes(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "chainmail.db")
	u, db := openUsers(t, path)
	defer func() { db.Close(); testutil.CheckBolt(t, path) }()
	ctx := context.Background()
	if _, _, err := u.EnsureAdmin(); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Create(ctx, "ops", RoleAdmin, "ops password 12"); err != nil {
		t.Fatal(err)
	}
	// Two admins deleting each other at once (likely in one group
	// commit): exactly one delete goes through.
	errs := make(chan error, 2)
	var wg sync.WaitGroup
	for _, name := range []string{AdminUser, "ops"} {
		wg.Go(func() { errs <- u.Delete(ctx, name) })
	}
	wg.Wait()
	close(errs)
	ok, last := 0, 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrLastAdmin):
			last++
		default:
			t.Error(err)
		}
	}
	list, _ := u.List()
	if ok != 1 || last != 1 || len(list) != 1 || list[0].Role != RoleAdmin {
		t.Errorf("%d deleted, %d refused; left %+v", ok, last, list)
	}
}

func TestUsersValidName(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{"admin", true}, {"jane.doe", true}, {"ops-2", true}, {"a_b", true}, {"jane@example.com", true}, {"7", true},
		{"", false}, {"Admin", false}, {"jane doe", false}, {".hidden", false}, {"-x", false}, {"a/b", false},
		{"a%2fb", false}, {"é", false}, {strings.Repeat("a", maxUserName), true}, {strings.Repeat("a", maxUserName+1), false},
	} {
		if got := validName(c.name) == ""; got != c.ok {
			t.Errorf("validName(%q) ok = %v, want %v (%s)", c.name, got, c.ok, validName(c.name))
		}
	}
}
