package liveconfig

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"gopkg.in/yaml.v3"

	"chainmail/internal/config"
	"chainmail/internal/store"
)

// Kinds of object that can change live.
const (
	Listeners   = "listeners"
	Routes      = "routes"
	Connections = "connections"
)

var (
	// ErrNotFound: no object of that kind and name.
	ErrNotFound = errors.New("not found")
	// ErrUnknownKind: not listeners, routes or connections.
	ErrUnknownKind = errors.New("unknown kind")

	bucketConfig = []byte("config")
	bucketAudit  = []byte("audit")
	keyRuntime   = []byte("runtime")
	keyChanged   = []byte("changed")
)

// Invalid is a change that failed validation: Fields maps a key of the
// object ("address") or a path elsewhere ("routes[0].from[1]") to what is
// wrong with it.
type Invalid struct {
	Fields map[string]string
}

func (e *Invalid) Error() string {
	parts := make([]string, 0, len(e.Fields))
	for k, v := range e.Fields {
		parts = append(parts, k+": "+v)
	}
	return "invalid configuration: " + strings.Join(parts, "; ")
}

// Applier makes a configuration change real (starts and stops listeners,
// swaps routes and connections). An error leaves the old configuration in
// place as far as the applier can.
type Applier interface {
	Apply(ctx context.Context, old, next *config.Node) error
}

// Manager holds the node's effective configuration and changes it.
type Manager struct {
	db    *store.DB
	apply Applier

	mu  sync.Mutex
	cur *config.Node
}

// sections is what the data store keeps.
type sections struct {
	Listeners   []config.Listener   `yaml:"listeners"`
	Routes      []config.Route      `yaml:"routes"`
	Connections []config.Connection `yaml:"connections"`
}

// Open reads the stored runtime sections, if any, over file (the
// configuration from the YAML file) and returns the effective
// configuration; overridden says whether stored sections were used.
func Open(db *store.DB, file *config.Node) (m *Manager, effective *config.Node, overridden bool, err error) {
	err = db.Bolt().Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketConfig); err != nil {
			return err
		}
		_, err := tx.CreateBucketIfNotExists(bucketAudit)
		return err
	})
	if err != nil {
		return nil, nil, false, fmt.Errorf("liveconfig: %w", err)
	}
	m = &Manager{db: db}
	var raw []byte
	db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketConfig).Get(keyRuntime); v != nil {
			raw = append([]byte(nil), v...)
		}
		return nil
	})
	eff := clone(file)
	if raw != nil {
		var sec sections
		if err := config.Decode("(runtime configuration in the data store)", raw, &sec); err != nil {
			return nil, nil, false, fmt.Errorf("liveconfig: stored configuration: %w", err)
		}
		eff.Listeners, eff.Routes, eff.Connections = sec.Listeners, sec.Routes, sec.Connections
		p := &config.Problems{}
		eff.Validate(p)
		if len(p.List()) > 0 {
			return nil, nil, false, fmt.Errorf("liveconfig: the stored runtime configuration does not fit this file (%s: %s); start with --reset-runtime-config to use the file's sections",
				p.List()[0].Path, p.List()[0].Msg)
		}
		overridden = true
	}
	m.cur = eff
	return m, clone(eff), overridden, nil
}

// SetApplier connects the manager to the running node.
func (m *Manager) SetApplier(a Applier) { m.apply = a }

// Reset drops the stored runtime sections (the file's apply at next start).
func Reset(db *store.DB) error {
	return db.Update(context.Background(), func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketConfig); b != nil {
			return b.Delete(keyRuntime)
		}
		return nil
	})
}

// Current is a copy of the effective configuration.
func (m *Manager) Current() *config.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	return clone(m.cur)
}

// YAML is the effective listeners, routes and connections as YAML, to fold
// back into the file. Secrets are left out.
func (m *Manager) YAML() ([]byte, error) {
	cur := m.Current()
	out := map[string]any{"listeners": toMaps(cur.Listeners), "routes": toMaps(cur.Routes), "connections": toMaps(cur.Connections)}
	return yaml.Marshal(out)
}

func toMaps[T any](list []T) []map[string]any {
	out := make([]map[string]any, len(list))
	for i := range list {
		out[i] = config.ToMap(list[i])
	}
	return out
}

// List returns every object of a kind, as the file would spell it.
func (m *Manager) List(kind string) ([]map[string]any, error) {
	cur := m.Current()
	switch kind {
	case Listeners:
		return toMaps(cur.Listeners), nil
	case Routes:
		return toMaps(cur.Routes), nil
	case Connections:
		return toMaps(cur.Connections), nil
	}
	return nil, ErrUnknownKind
}

// Get returns one object.
func (m *Manager) Get(kind, name string) (map[string]any, error) {
	list, err := m.List(kind)
	if err != nil {
		return nil, err
	}
	for _, o := range list {
		if o["name"] == name {
			return o, nil
		}
	}
	return nil, ErrNotFound
}

// Create adds an object from its JSON (or YAML) form. A listener may carry
// "route_actions": a route of the same name taking from it is created in
// the same change, so a new listener accepts mail at once.
func (m *Manager) Create(ctx context.Context, who, kind string, body []byte) (map[string]any, error) {
	return m.change(ctx, who, kind, "", body, "create")
}

// Replace changes an object; a name in the body, if any, must match.
func (m *Manager) Replace(ctx context.Context, who, kind, name string, body []byte) (map[string]any, error) {
	return m.change(ctx, who, kind, name, body, "update")
}

// Delete removes an object.
func (m *Manager) Delete(ctx context.Context, who, kind, name string) error {
	_, err := m.change(ctx, who, kind, name, nil, "delete")
	return err
}

func (m *Manager) change(ctx context.Context, who, kind, name string, body []byte, action string) (map[string]any, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.cur
	next := clone(old)
	var index int
	var before any
	var err error
	switch kind {
	case Listeners:
		index, before, err = changeListener(next, name, body, action)
	case Routes:
		index, before, err = changeList(&next.Routes, name, body, action, func(r config.Route) string { return r.Name }, func(*config.Route, *config.Route) {})
	case Connections:
		index, before, err = changeList(&next.Connections, name, body, action, func(c config.Connection) string { return c.Name }, keepConnectionSecrets)
	default:
		return nil, ErrUnknownKind
	}
	if err != nil {
		return nil, err
	}
	p := &config.Problems{}
	next.Validate(p)
	if list := p.List(); len(list) > 0 {
		inv := &Invalid{Fields: map[string]string{}}
		prefix := fmt.Sprintf("%s[%d].", kind, index)
		for _, pr := range list {
			key := pr.Path
			if action != "delete" && strings.HasPrefix(key, prefix) {
				key = strings.TrimPrefix(key, prefix)
			}
			if _, dup := inv.Fields[key]; !dup {
				inv.Fields[key] = pr.Msg
			}
		}
		return nil, inv
	}
	if m.apply != nil {
		if err := m.apply.Apply(ctx, old, next); err != nil {
			return nil, err
		}
	}
	var after any
	if action != "delete" {
		after = objectAt(next, kind, index)
	}
	if err := m.persist(ctx, next, Entry{At: time.Now().UTC(), By: who, Action: action, Kind: kind, Name: nameOf(after, before, name), Before: before, After: after}); err != nil {
		if m.apply != nil {
			m.apply.Apply(context.WithoutCancel(ctx), next, old)
		}
		return nil, err
	}
	m.cur = next
	if a, ok := after.(map[string]any); ok {
		return a, nil
	}
	return nil, nil
}

func nameOf(after, before any, name string) string {
	for _, o := range []any{after, before} {
		if mm, ok := o.(map[string]any); ok {
			if n, ok := mm["name"].(string); ok {
				return n
			}
		}
	}
	return name
}

func objectAt(n *config.Node, kind string, i int) map[string]any {
	switch kind {
	case Listeners:
		return config.ToMap(n.Listeners[i])
	case Routes:
		return config.ToMap(n.Routes[i])
	}
	return config.ToMap(n.Connections[i])
}

func changeListener(n *config.Node, name string, body []byte, action string) (int, any, error) {
	var routeActions []string
	if action == "create" && body != nil {
		var err error
		if body, routeActions, err = popRouteActions(body); err != nil {
			return 0, nil, err
		}
	}
	i, before, err := changeList(&n.Listeners, name, body, action, func(l config.Listener) string { return l.Name }, keepListenerSecrets)
	if err != nil {
		return 0, nil, err
	}
	if len(routeActions) > 0 {
		l := n.Listeners[i]
		n.Routes = append(n.Routes, config.Route{Name: l.Name, From: []string{l.Name}, Actions: routeActions})
	}
	return i, before, nil
}

// popRouteActions takes the convenience key route_actions out of a
// listener's JSON body.
func popRouteActions(body []byte) ([]byte, []string, error) {
	var m map[string]any
	if err := yaml.Unmarshal(body, &m); err != nil || m == nil {
		return body, nil, nil // the strict decoder reports it
	}
	raw, ok := m["route_actions"]
	if !ok {
		return body, nil, nil
	}
	delete(m, "route_actions")
	list, ok := raw.([]any)
	if !ok {
		return nil, nil, &Invalid{Fields: map[string]string{"route_actions": "want a list of actions"}}
	}
	var actions []string
	for _, a := range list {
		s, ok := a.(string)
		if !ok {
			return nil, nil, &Invalid{Fields: map[string]string{"route_actions": "want a list of actions"}}
		}
		actions = append(actions, s)
	}
	out, err := yaml.Marshal(m)
	return out, actions, err
}

// changeList applies a create, update or delete to a list of config
// objects and returns the index of the object (for error paths) and its
// previous form.
func changeList[T any](list *[]T, name string, body []byte, action string, nameOf func(T) string, keepSecrets func(old, next *T)) (int, any, error) {
	find := func(n string) int {
		for i, o := range *list {
			if nameOf(o) == n {
				return i
			}
		}
		return -1
	}
	if action == "delete" {
		i := find(name)
		if i < 0 {
			return 0, nil, ErrNotFound
		}
		before := config.ToMap((*list)[i])
		*list = append((*list)[:i:i], (*list)[i+1:]...)
		return i, before, nil
	}
	var obj T
	if err := config.Decode("request", body, &obj); err != nil {
		var errs config.Errors
		if errors.As(err, &errs) {
			inv := &Invalid{Fields: map[string]string{}}
			for _, e := range errs {
				key := e.Path
				if key == "" {
					key = "body"
				}
				inv.Fields[key] = e.Msg
			}
			return 0, nil, inv
		}
		return 0, nil, err
	}
	if action == "create" {
		*list = append(*list, obj)
		return len(*list) - 1, nil, nil
	}
	i := find(name)
	if i < 0 {
		return 0, nil, ErrNotFound
	}
	if n := nameOf(obj); n != "" && n != name {
		return 0, nil, &Invalid{Fields: map[string]string{"name": "renaming is not supported: delete and create (the name in the body must be " + strconv.Quote(name) + ")"}}
	}
	before := config.ToMap((*list)[i])
	keepSecrets(&(*list)[i], &obj)
	(*list)[i] = obj
	setName(&(*list)[i], name)
	return i, before, nil
}

func setName[T any](o *T, name string) {
	switch v := any(o).(type) {
	case *config.Listener:
		v.Name = name
	case *config.Route:
		v.Name = name
	case *config.Connection:
		v.Name = name
	}
}

// keepListenerSecrets carries password hashes over an update: the API
// never shows them, so an edited listener comes back without them.
func keepListenerSecrets(old, next *config.Listener) {
	if old.Auth == nil || next.Auth == nil {
		return
	}
	hashes := map[string]string{}
	for _, u := range old.Auth.Users {
		hashes[u.Name] = u.PasswordHash
	}
	for i, u := range next.Auth.Users {
		if u.PasswordHash == "" {
			next.Auth.Users[i].PasswordHash = hashes[u.Name]
		}
	}
}

func keepConnectionSecrets(old, next *config.Connection) {
	if next.Password == "" && next.Username == old.Username {
		next.Password = old.Password
	}
}

func (m *Manager) persist(ctx context.Context, n *config.Node, e Entry) error {
	sec := sections{Listeners: n.Listeners, Routes: n.Routes, Connections: n.Connections}
	raw, err := yaml.Marshal(sec)
	if err != nil {
		return fmt.Errorf("liveconfig: encode: %w", err)
	}
	ev, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("liveconfig: encode audit: %w", err)
	}
	changed, _ := json.Marshal(map[string]any{"at": e.At, "by": e.By})
	return m.db.Update(ctx, func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketConfig).Put(keyRuntime, raw); err != nil {
			return err
		}
		if err := tx.Bucket(bucketConfig).Put(keyChanged, changed); err != nil {
			return err
		}
		return appendAudit(tx, ev)
	})
}

// Record appends e to the audit log inside tx, so that a change kept
// elsewhere in the node's file (the console accounts of web.Users) commits
// together with its entry: no change without its record, no record of a
// change that did not happen. The bucket is created if needed (a store
// opened without Open, in tests).
func Record(tx *bolt.Tx, e Entry) error {
	ev, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("liveconfig: encode audit: %w", err)
	}
	if _, err := tx.CreateBucketIfNotExists(bucketAudit); err != nil {
		return fmt.Errorf("liveconfig: audit bucket: %w", err)
	}
	return appendAudit(tx, ev)
}

// appendAudit puts an encoded entry at the next sequence number.
func appendAudit(tx *bolt.Tx, ev []byte) error {
	a := tx.Bucket(bucketAudit)
	seq, err := a.NextSequence()
	if err != nil {
		return err
	}
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, seq)
	return a.Put(k, ev)
}

// Entry is one audited change.
type Entry struct {
	At     time.Time `json:"at"`
	By     string    `json:"by"`
	Action string    `json:"action"` // create, update, delete
	// Kind is listeners, routes, connections, or users (console
	// accounts, recorded by web.Users through Record).
	Kind   string `json:"kind"`
	Name   string `json:"name"`
	Before any    `json:"before,omitempty"`
	After  any    `json:"after,omitempty"`
}

// Audit returns up to limit audit entries, newest first.
func (m *Manager) Audit(limit int) ([]Entry, error) {
	var out []Entry
	err := m.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Last(); k != nil && len(out) < limit; k, v = c.Prev() {
			var e Entry
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// clone deep-copies a node configuration through YAML-free reflection of
// its slices (the values are plain data).
func clone(n *config.Node) *config.Node {
	c := *n
	c.Listeners = cloneSlice(n.Listeners, func(l config.Listener) config.Listener {
		l.Allow = append([]string(nil), l.Allow...)
		l.ProxyProtocolFrom = append([]string(nil), l.ProxyProtocolFrom...)
		if l.TLS != nil {
			t := *l.TLS
			l.TLS = &t
		}
		if l.Auth != nil {
			a := *l.Auth
			a.Users = append([]config.User(nil), a.Users...)
			l.Auth = &a
		}
		return l
	})
	c.Routes = cloneSlice(n.Routes, func(r config.Route) config.Route {
		r.From = append([]string(nil), r.From...)
		r.Actions = append([]string(nil), r.Actions...)
		return r
	})
	c.Connections = cloneSlice(n.Connections, func(x config.Connection) config.Connection { return x })
	c.Web.APITokens = append([]string(nil), n.Web.APITokens...)
	c.Web.ReadOnlyTokens = append([]string(nil), n.Web.ReadOnlyTokens...)
	return &c
}

func cloneSlice[T any](in []T, f func(T) T) []T {
	if in == nil {
		return nil
	}
	out := make([]T, len(in))
	for i, v := range in {
		out[i] = f(v)
	}
	return out
}
