package liveconfig

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"chainmail/internal/config"
	"chainmail/internal/store"
	"chainmail/internal/testutil"
)

type recorder struct {
	calls int
	fail  error
	last  *config.Node
}

func (r *recorder) Apply(_ context.Context, old, next *config.Node) error {
	r.calls++
	if r.fail != nil {
		return r.fail
	}
	r.last = next
	return nil
}

const base = `node: a
listeners: [{name: journal, address: 127.0.0.1:2525}]
routes: [{name: journal, from: [journal], actions: [archive]}]
`

func open(t *testing.T, path string) (*Manager, *config.Node, bool, *store.DB) {
	t.Helper()
	db, err := store.Open(path, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	file := &config.Node{}
	if err := config.Parse("c.yaml", []byte(base), file); err != nil {
		t.Fatal(err)
	}
	m, eff, over, err := Open(db, file)
	if err != nil {
		t.Fatal(err)
	}
	return m, eff, over, db
}

func TestCreateValidateApplyPersist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	m, _, over, db := open(t, path)
	if over {
		t.Fatal("nothing stored yet")
	}
	rec := &recorder{}
	m.SetApplier(rec)
	ctx := context.Background()

	// A listener without a route is refused, with the reason on its key.
	_, err := m.Create(ctx, "admin", Listeners, []byte(`{"name": "ha", "address": "127.0.0.1:8091", "role": "ha", "allow": ["127.0.0.0/8"]}`))
	var inv *Invalid
	if !errors.As(err, &inv) || !strings.Contains(inv.Fields["name"], "no enabled route") || rec.calls != 0 {
		t.Fatalf("unrouted listener: %v", err)
	}
	// With route_actions it is accepted, with its route.
	got, err := m.Create(ctx, "admin", Listeners, []byte(`{"name": "ha", "address": "127.0.0.1:8091", "role": "ha", "allow": ["127.0.0.0/8"], "route_actions": ["archive"], "read_timeout": "30s"}`))
	if err != nil || got["read_timeout"] != "30s" || got["max_message_size"] != "64MiB" || rec.calls != 1 || len(rec.last.Routes) != 2 {
		t.Fatalf("create: %v %v", got, err)
	}
	// Field errors name the key.
	_, err = m.Create(ctx, "admin", Connections, []byte(`{"name": "peer", "address": "nohost", "concurrency": 0}`))
	if !errors.As(err, &inv) || inv.Fields["address"] == "" || inv.Fields["concurrency"] == "" {
		t.Fatalf("bad connection: %v", err)
	}
	_, err = m.Create(ctx, "admin", Connections, []byte(`{"name": "peer", "address": "127.0.0.9:8091", "colour": "red"}`))
	if !errors.As(err, &inv) || !strings.Contains(inv.Fields["colour"], "unknown key") {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := m.Create(ctx, "ops", Connections, []byte(`{"name": "peer", "address": "127.0.0.9:8091", "password": "s3cret", "username": "u"}`)); err != nil {
		t.Fatal(err)
	}
	// An update keeps the secret the API never shows.
	if _, err := m.Replace(ctx, "ops", Connections, "peer", []byte(`{"address": "127.0.0.9:8092", "username": "u"}`)); err != nil {
		t.Fatal(err)
	}
	if m.Current().Connections[0].Password != "s3cret" {
		t.Fatal("password lost on update")
	}
	// Deleting a listener a route takes from is refused.
	if err := m.Delete(ctx, "ops", Listeners, "journal"); !errors.As(err, &inv) {
		t.Fatalf("delete routed listener: %v", err)
	}
	if err := m.Delete(ctx, "ops", Routes, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
	// A failed apply changes nothing.
	rec.fail = errors.New("address in use")
	if _, err := m.Create(ctx, "ops", Routes, []byte(`{"name": "r2", "from": ["journal"], "actions": ["archive"]}`)); err == nil {
		t.Fatal("failed apply accepted")
	}
	if len(m.Current().Routes) != 2 {
		t.Fatal("failed change kept")
	}
	audit, _ := m.Audit(10)
	if len(audit) != 3 || audit[0].By != "ops" || audit[0].Action != "update" || audit[2].Action != "create" || audit[2].Name != "ha" {
		t.Fatalf("audit %+v", audit)
	}
	db.Close()

	// A restart keeps the changes.
	m2, eff, over, db2 := open(t, path)
	defer func() { db2.Close(); testutil.CheckBolt(t, path) }()
	if !over || len(eff.Listeners) != 2 || eff.Listeners[1].ReadTimeout.String() != "30s" || eff.Connections[0].Address != "127.0.0.9:8092" || eff.Connections[0].Password != "s3cret" {
		t.Fatalf("after restart: over=%v %+v", over, eff)
	}
	y, _ := m2.YAML()
	if !strings.Contains(string(y), "127.0.0.9:8092") || strings.Contains(string(y), "s3cret") {
		t.Fatalf("yaml export:\n%s", y)
	}
	Reset(db2)
}
