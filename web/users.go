package web

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/crypto/bcrypt"

	"chainmail/internal/liveconfig"
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

// maxUserName bounds an account name; names are also path segments of
// the API and the console, and appear in logs and the audit log.
const maxUserName = 64

// AuditKindUsers is the kind of the audit entries of account changes.
const AuditKindUsers = "users"

var (
	// ErrNoUser: no account of that name.
	ErrNoUser = errors.New("web: no such user")
	// ErrUserExists: Create with a name that is taken.
	ErrUserExists = errors.New("web: user exists")
	// ErrLastAdmin: Delete of the only account with the admin role,
	// which would leave nobody able to manage the node from the console.
	ErrLastAdmin = errors.New("web: the last admin account cannot be deleted")
	// ErrLastAdminRole: SetRole taking the admin role from the only
	// account that has it, for the same reason.
	ErrLastAdminRole = errors.New("web: the last admin account cannot lose the admin role")
)

// InvalidAccount is an account change that failed validation; Fields maps
// "name", "role" or "password" to what is wrong with it (every problem at
// once).
type InvalidAccount struct {
	Fields map[string]string
}

func (e *InvalidAccount) Error() string {
	keys := make([]string, 0, len(e.Fields))
	for k := range e.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + ": " + e.Fields[k]
	}
	return "web: invalid account: " + strings.Join(parts, "; ")
}

// Account is what List shows of an account: never its hash.
type Account struct {
	Name    string    `json:"name"`
	Role    string    `json:"role"`
	Created time.Time `json:"created"`
	// Changed is when the password was last set.
	Changed time.Time `json:"changed"`
}

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
	// gen counts the changes that emptied the cache. A Check that read an
	// account before a change and finished after it must not cache what
	// it found (the old password, a deleted account).
	gen uint64
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

// EnsureAdmin creates the admin account with a random password when there
// are no accounts at all (the first start), and returns that password
// (created is true) so that the caller prints it, once: it is not kept
// anywhere. Otherwise it returns "", false — also when "admin" was deleted
// after another admin account was made, which a restart must not undo.
func (u *Users) EnsureAdmin() (password string, created bool, err error) {
	if u.any() {
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
		k, _ := b.Cursor().First()
		created = k == nil
		if !created {
			return nil // another start won the race; keep its password
		}
		if err := b.Put([]byte(AdminUser), rec); err != nil {
			return err
		}
		return liveconfig.Record(tx, liveconfig.Entry{At: now, By: "(first start)", Action: "create",
			Kind: AuditKindUsers, Name: AdminUser, After: accountAudit(AdminUser, RoleAdmin)})
	})
	if err != nil {
		return "", false, fmt.Errorf("web: users: create admin: %w", err)
	}
	if !created {
		return "", false, nil
	}
	return password, true, nil
}

// validName reports what is wrong with an account name, or "". Names are
// lower-case so that "Admin" and "admin" cannot be two accounts, and are
// safe as a URL path segment and in a log line.
func validName(name string) string {
	switch {
	case name == "":
		return "required"
	case len(name) > maxUserName:
		return fmt.Sprintf("at most %d characters", maxUserName)
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || i > 0 && (r == '.' || r == '_' || r == '-' || r == '@')
		if !ok {
			return "lower-case letters, digits and . _ - @, starting with a letter or digit"
		}
	}
	return ""
}

func validRole(role string) string {
	if role != RoleAdmin && role != RoleReadOnly {
		return fmt.Sprintf("must be %s or %s", RoleAdmin, RoleReadOnly)
	}
	return ""
}

func validPassword(password string) string {
	if len(password) < minPassword || len(password) > maxPassword {
		return fmt.Sprintf("must be %d to %d bytes long (got %d)", minPassword, maxPassword, len(password))
	}
	return ""
}

// validateAccount checks a new account's fields and returns every problem,
// keyed by field, or nil.
func validateAccount(name, role, password string) *InvalidAccount {
	f := map[string]string{}
	for key, msg := range map[string]string{"name": validName(name), "role": validRole(role), "password": validPassword(password)} {
		if msg != "" {
			f[key] = msg
		}
	}
	if len(f) == 0 {
		return nil
	}
	return &InvalidAccount{Fields: f}
}

// accountAudit is what the audit log keeps of an account: never a hash.
func accountAudit(name, role string) map[string]any {
	return map[string]any{"name": name, "role": role}
}

// Create adds an account. The caller in ctx (PrincipalFrom) is recorded as
// its author in the audit log, in the same transaction.
func (u *Users) Create(ctx context.Context, name, role, password string) (Account, error) {
	if inv := validateAccount(name, role, password); inv != nil {
		return Account{}, inv
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), u.cost)
	if err != nil {
		return Account{}, fmt.Errorf("web: users: hash password: %w", err)
	}
	now := u.now().UTC()
	rec, err := json.Marshal(userRecord{Hash: string(hash), Role: role, Created: now, Changed: now})
	if err != nil {
		return Account{}, err
	}
	err = u.db.Update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketUsers)
		if b.Get([]byte(name)) != nil {
			return ErrUserExists
		}
		if err := b.Put([]byte(name), rec); err != nil {
			return err
		}
		return liveconfig.Record(tx, liveconfig.Entry{At: now, By: principalName(ctx), Action: "create",
			Kind: AuditKindUsers, Name: name, After: accountAudit(name, role)})
	})
	if err != nil {
		if errors.Is(err, ErrUserExists) {
			return Account{}, err
		}
		return Account{}, fmt.Errorf("web: users: create %q: %w", name, err)
	}
	return Account{Name: name, Role: role, Created: now, Changed: now}, nil
}

// Delete removes an account, unless it is the last with the admin role
// (ErrLastAdmin). The count is made in the deleting transaction, so two
// admins deleting each other at once cannot both succeed.
func (u *Users) Delete(ctx context.Context, name string) error {
	now := u.now().UTC()
	err := u.db.Update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketUsers)
		rec, err := decodeUser(name, b.Get([]byte(name)))
		if err != nil {
			return err
		}
		if rec.Role == RoleAdmin && adminCount(b) <= 1 {
			return ErrLastAdmin
		}
		if err := b.Delete([]byte(name)); err != nil {
			return err
		}
		return liveconfig.Record(tx, liveconfig.Entry{At: now, By: principalName(ctx), Action: "delete",
			Kind: AuditKindUsers, Name: name, Before: accountAudit(name, rec.Role)})
	})
	if err != nil {
		if errors.Is(err, ErrNoUser) || errors.Is(err, ErrLastAdmin) {
			return err
		}
		return fmt.Errorf("web: users: delete %q: %w", name, err)
	}
	u.forgetLogins()
	return nil
}

// adminCount is how many accounts have the admin role; it is read inside
// the transaction that would remove one, so two concurrent removals cannot
// both pass.
func adminCount(b *bolt.Bucket) int {
	n := 0
	b.ForEach(func(k, v []byte) error {
		if r, err := decodeUser(string(k), v); err == nil && r.Role == RoleAdmin {
			n++
		}
		return nil
	})
	return n
}

// SetRole gives an existing account another role. Taking the admin role
// from the last account that has it is ErrLastAdminRole. The audit log
// records the role before and after.
func (u *Users) SetRole(ctx context.Context, name, role string) error {
	if msg := validRole(role); msg != "" {
		return &InvalidAccount{Fields: map[string]string{"role": msg}}
	}
	now := u.now().UTC()
	err := u.db.Update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketUsers)
		rec, err := decodeUser(name, b.Get([]byte(name)))
		if err != nil {
			return err
		}
		if rec.Role == role {
			return nil
		}
		if rec.Role == RoleAdmin && adminCount(b) <= 1 {
			return ErrLastAdminRole
		}
		old := rec.Role
		rec.Role = role
		nv, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(name), nv); err != nil {
			return err
		}
		return liveconfig.Record(tx, liveconfig.Entry{At: now, By: principalName(ctx), Action: "update", Kind: AuditKindUsers, Name: name,
			Before: accountAudit(name, old), After: accountAudit(name, role)})
	})
	if err != nil {
		if errors.Is(err, ErrNoUser) || errors.Is(err, ErrLastAdminRole) {
			return err
		}
		return fmt.Errorf("web: users: set role of %q: %w", name, err)
	}
	// A cached login carries the role it was checked with.
	u.forgetLogins()
	return nil
}

// SetPassword replaces an existing account's password; the audit log
// records who did it and when (after: {"password": "changed"}, never a
// hash).
func (u *Users) SetPassword(ctx context.Context, user, password string) error {
	if msg := validPassword(password); msg != "" {
		return &InvalidAccount{Fields: map[string]string{"password": msg}}
	}
	return u.setPassword(ctx, user, password, principalName(ctx))
}

// ResetPassword gives an existing account a new random password, the kind
// the first start makes, and returns it so that the caller prints it once.
// by names who did it in the audit log. It is how an operator who lost
// every admin password gets back in: `chainmail reset-password`, on the
// data directory of a stopped node.
func (u *Users) ResetPassword(ctx context.Context, user, by string) (string, error) {
	password := rand.Text()
	if err := u.setPassword(ctx, user, password, by); err != nil {
		return "", err
	}
	return password, nil
}

func (u *Users) setPassword(ctx context.Context, user, password, by string) error {
	hash, err := bcrypt.GenerateFromPassword([]byte(password), u.cost)
	if err != nil {
		return fmt.Errorf("web: users: hash password: %w", err)
	}
	now := u.now().UTC()
	err = u.db.Update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketUsers)
		rec, err := decodeUser(user, b.Get([]byte(user)))
		if err != nil {
			return err
		}
		rec.Hash, rec.Changed = string(hash), now
		nv, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(user), nv); err != nil {
			return err
		}
		return liveconfig.Record(tx, liveconfig.Entry{At: now, By: by, Action: "update", Kind: AuditKindUsers, Name: user,
			After: map[string]any{"password": "changed"}})
	})
	if err != nil {
		if errors.Is(err, ErrNoUser) {
			return err
		}
		return fmt.Errorf("web: users: set password of %q: %w", user, err)
	}
	// Logins cached under the old password must not outlive it.
	u.forgetLogins()
	return nil
}

// List returns every account, by name.
func (u *Users) List() ([]Account, error) {
	var out []Account
	err := u.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUsers).ForEach(func(k, v []byte) error {
			rec, err := decodeUser(string(k), v)
			if err != nil {
				return err
			}
			out = append(out, Account{Name: string(k), Role: rec.Role, Created: rec.Created, Changed: rec.Changed})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("web: users: list: %w", err)
	}
	return out, nil
}

// decodeUser decodes a users/<name> value; nil is ErrNoUser.
func decodeUser(name string, v []byte) (userRecord, error) {
	var rec userRecord
	if v == nil {
		return rec, ErrNoUser
	}
	if err := json.Unmarshal(v, &rec); err != nil {
		return rec, fmt.Errorf("decode %q: %w", name, err)
	}
	return rec, nil
}

// forgetLogins empties the login cache after a change of credentials.
func (u *Users) forgetLogins() {
	u.mu.Lock()
	clear(u.cache)
	u.gen++
	u.mu.Unlock()
}

// Check verifies a password and returns the account's role.
func (u *Users) Check(user, password string) (role string, ok bool) {
	key := u.cacheKeyOf(user, password)
	now := u.now()
	u.mu.Lock()
	c, hit := u.cache[key]
	gen := u.gen
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
	if u.gen == gen { // no change of credentials since the lookup
		u.cache[key] = cachedLogin{role: rec.Role, expires: now.Add(loginCacheTTL)}
	}
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

// any tells whether there is at least one account.
func (u *Users) any() bool {
	found := false
	_ = u.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bucketUsers).Cursor().First()
		found = k != nil
		return nil
	})
	return found
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
