package web

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/crypto/bcrypt"

	"chainmail/internal/store"
)

// AdminUser is the console account created on the first start.
const AdminUser = "admin"

var bucketUsers = []byte("users")

// Password length bounds: bcrypt reads at most 72 bytes, and a longer
// password would be silently truncated by older implementations.
const (
	minPassword = 12
	maxPassword = 72
)

// ErrNoUser is returned by SetPassword for an unknown account.
var ErrNoUser = errors.New("web: no such user")

// Users are the console accounts, kept in the node's bbolt file (bucket
// "users", see doc.go). Only bcrypt hashes are stored.
type Users struct {
	db   *store.DB
	now  func() time.Time
	cost int
	// dummy is compared against for an unknown user, so the answer takes
	// as long as for a known one and does not reveal which names exist.
	dummy []byte
	// bcrypt costs tens of milliseconds of CPU; sem bounds how many run at
	// once so a burst of logins cannot starve the SMTP sessions.
	sem chan struct{}

	// The cache remembers recent successful checks, so an API client
	// using Basic auth (the CLI exporting thousands of messages) pays one
	// bcrypt, not one per request. Keys are HMACs under a per-process
	// random key: the cache holds nothing a password could be recovered
	// from faster than from the bcrypt hash.
	mu       sync.Mutex
	cacheKey [32]byte
	cache    map[[32]byte]cachedLogin
}

type cachedLogin struct {
	role    string
	expires time.Time
}

const (
	loginCacheTTL  = 5 * time.Minute
	loginCacheSize = 1024
)

// userRecord is the JSON value of users/<name>.
type userRecord struct {
	Hash    string    `json:"hash"`
	Role    string    `json:"role"`
	Created time.Time `json:"created"`
	Changed time.Time `json:"changed"`
}

// OpenUsers creates the users bucket if needed.
func OpenUsers(db *store.DB) (*Users, error) {
	u := &Users{
		db:    db,
		now:   time.Now,
		cost:  bcrypt.DefaultCost,
		sem:   make(chan struct{}, 2),
		cache: map[[32]byte]cachedLogin{},
	}
	if _, err := rand.Read(u.cacheKey[:]); err != nil {
		return nil, fmt.Errorf("web: users: %w", err)
	}
	err := db.Update(context.Background(), func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketUsers)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("web: users: create bucket: %w", err)
	}
	return u, nil
}

// EnsureAdmin creates the admin account with a random password if it does
// not exist yet, and returns that password (created is true) so that the
// caller prints it, once: it is not kept anywhere. If the account exists it
// returns "", false.
func (u *Users) EnsureAdmin() (password string, created bool, err error) {
	if u.exists(AdminUser) {
		return "", false, nil
	}
	// 26 base32 characters, 130 bits: unguessable, and readable aloud.
	password = rand.Text()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), u.cost)
	if err != nil {
		return "", false, fmt.Errorf("web: users: hash admin password: %w", err)
	}
	now := u.now().UTC()
	rec, err := json.Marshal(userRecord{Hash: string(hash), Role: RoleAdmin, Created: now, Changed: now})
	if err != nil {
		return "", false, err
	}
	// The hash is made outside the transaction (it takes tens of
	// milliseconds and would hold up every commit of the node). fn may
	// run more than once (store.Update), so it sets created afresh.
	err = u.db.Update(context.Background(), func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketUsers)
		created = b.Get([]byte(AdminUser)) == nil
		if !created {
			return nil // another start won the race; keep its password
		}
		return b.Put([]byte(AdminUser), rec)
	})
	if err != nil {
		return "", false, fmt.Errorf("web: users: create admin: %w", err)
	}
	if !created {
		return "", false, nil
	}
	return password, true, nil
}

// SetPassword replaces an existing account's password.
func (u *Users) SetPassword(ctx context.Context, user, password string) error {
	if len(password) < minPassword || len(password) > maxPassword {
		return fmt.Errorf("web: users: password must be %d to %d bytes long", minPassword, maxPassword)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), u.cost)
	if err != nil {
		return fmt.Errorf("web: users: hash password: %w", err)
	}
	now := u.now().UTC()
	err = u.db.Update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketUsers)
		v := b.Get([]byte(user))
		if v == nil {
			return ErrNoUser
		}
		var rec userRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("web: users: decode %q: %w", user, err)
		}
		rec.Hash, rec.Changed = string(hash), now
		nv, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return b.Put([]byte(user), nv)
	})
	if err != nil {
		return err
	}
	// Logins cached under the old password must not outlive it.
	u.mu.Lock()
	clear(u.cache)
	u.mu.Unlock()
	return nil
}

// Check verifies a password and returns the account's role.
func (u *Users) Check(user, password string) (role string, ok bool) {
	key := u.cacheKeyOf(user, password)
	now := u.now()
	u.mu.Lock()
	c, hit := u.cache[key]
	u.mu.Unlock()
	if hit && now.Before(c.expires) {
		return c.role, true
	}

	rec, found := u.lookup(user)
	hash := []byte(rec.Hash)
	if !found {
		hash = u.dummyHash()
	}
	u.sem <- struct{}{}
	err := bcrypt.CompareHashAndPassword(hash, []byte(password))
	<-u.sem
	if err != nil || !found {
		return "", false
	}

	u.mu.Lock()
	if len(u.cache) >= loginCacheSize {
		clear(u.cache) // rare: a few accounts, a few clients
	}
	u.cache[key] = cachedLogin{role: rec.Role, expires: now.Add(loginCacheTTL)}
	u.mu.Unlock()
	return rec.Role, true
}

func (u *Users) cacheKeyOf(user, password string) [32]byte {
	m := hmac.New(sha256.New, u.cacheKey[:])
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(password))
	var k [32]byte
	copy(k[:], m.Sum(nil))
	return k
}

// lookup reads an account; the record is decoded inside the transaction
// and so holds no bbolt memory afterwards.
func (u *Users) lookup(user string) (userRecord, bool) {
	var rec userRecord
	found := false
	_ = u.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketUsers).Get([]byte(user))
		if v == nil {
			return nil
		}
		found = json.Unmarshal(v, &rec) == nil
		return nil
	})
	return rec, found
}

func (u *Users) exists(user string) bool {
	_, ok := u.lookup(user)
	return ok
}

// dummyHash is made on first need, at the same cost as real ones.
func (u *Users) dummyHash() []byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.dummy == nil {
		u.dummy, _ = bcrypt.GenerateFromPassword([]byte(rand.Text()), u.cost)
	}
	return u.dummy
}
