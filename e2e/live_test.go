package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"chainmail/internal/testutil"
)

// TestLiveConfiguration changes listeners, routes and connections through
// the API while the node runs, and checks that they apply at once and
// survive a restart.
func TestLiveConfiguration(t *testing.T) {
	t.Parallel()
	cfg, journal := nodeConfig(t, "")
	n := testutil.StartNode(t, cfg)
	extra := testutil.FreeAddr(t, "127.0.0.1")

	do := func(method, path, body string) (int, map[string]any) {
		t.Helper()
		status, b := n.Do(method, path, strings.NewReader(body))
		var m map[string]any
		json.Unmarshal(b, &m)
		return status, m
	}
	// Invalid: errors keyed by field.
	status, m := do("POST", "/api/v1/listeners", `{"name": "extra", "address": "nohost", "max_recipients": 0}`)
	fields, _ := m["fields"].(map[string]any)
	if status != 400 || fields["address"] == nil || fields["max_recipients"] == nil {
		t.Fatalf("invalid listener: %d %v", status, m)
	}
	// A new listener with its route accepts mail at once.
	status, m = do("POST", "/api/v1/listeners", fmt.Sprintf(`{"name": "extra", "address": %q, "route_actions": ["archive"], "max_recipients": 5}`, extra))
	if status != 201 || m["max_recipients"] != float64(5) {
		t.Fatalf("create: %d %v", status, m)
	}
	msg := msgN("live", 1)
	if r, err := testutil.Send(extra, "a@example.com", []string{"b@example.org"}, msg); err != nil || r.Code != 250 {
		t.Fatalf("send to the new listener: %v %v", r, err)
	}
	// Its address in use: refused, nothing applied.
	status, m = do("POST", "/api/v1/listeners", fmt.Sprintf(`{"name": "clash", "address": %q, "route_actions": ["archive"]}`, journal))
	if fields, _ := m["fields"].(map[string]any); status != 400 || fields["address"] == nil {
		t.Fatalf("clashing address: %d %v", status, m)
	}
	// A route naming a missing connection is refused with its path.
	status, m = do("PUT", "/api/v1/routes/extra", `{"from": ["extra"], "actions": ["archive", "forward:nowhere"]}`)
	if fields, _ := m["fields"].(map[string]any); status != 400 || fields["actions[1]"] == nil {
		t.Fatalf("bad route: %d %v", status, m)
	}
	// Disable the listener: it stops accepting.
	status, _ = do("PUT", "/api/v1/listeners/extra", fmt.Sprintf(`{"address": %q, "disabled": true}`, extra))
	if status != 200 {
		t.Fatalf("disable: %d", status)
	}
	if _, _, err := testutil.Dial(extra, ""); err == nil {
		t.Fatal("a disabled listener still accepts connections")
	}
	var listeners struct {
		Listeners []map[string]any `json:"listeners"`
	}
	n.Get("/api/v1/listeners", &listeners)
	if len(listeners.Listeners) != 2 || listeners.Listeners[1]["status"].(map[string]any)["state"] != "disabled" {
		t.Fatalf("listeners: %v", listeners)
	}
	// The audit log names who changed what.
	var audit struct {
		Entries []map[string]any `json:"entries"`
	}
	n.Get("/api/v1/audit", &audit)
	// Newest first: the two listener changes, then the first start's admin account.
	want := [][3]string{
		{"update", "listeners", "web.api_tokens[0]"},
		{"create", "listeners", "web.api_tokens[0]"},
		{"create", "users", "(first start)"},
	}
	if len(audit.Entries) != len(want) {
		t.Fatalf("audit: %v", audit)
	}
	for i, w := range want {
		e := audit.Entries[i]
		if e["action"] != w[0] || e["kind"] != w[1] || e["by"] != w[2] {
			t.Fatalf("audit entry %d = %v, want %v", i, e, w)
		}
	}
	// A restart keeps the live change (and says so).
	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}
	n.Restart()
	n.Get("/api/v1/listeners", &listeners)
	if len(listeners.Listeners) != 2 || listeners.Listeners[1]["disabled"] != true {
		t.Fatalf("after restart: %v", listeners)
	}
	if !strings.Contains(n.Output(), "runtime configuration in the data store") {
		t.Fatal("restart did not say the runtime configuration overrides the file")
	}
	status, y := n.Do("GET", "/api/v1/config", nil)
	if status != 200 || !strings.Contains(string(y), extra) {
		t.Fatalf("config yaml: %d\n%s", status, y)
	}
	// Enable it again; its only route cannot go while it is enabled.
	if status, _ := do("PUT", "/api/v1/listeners/extra", fmt.Sprintf(`{"address": %q}`, extra)); status != 200 {
		t.Fatalf("enable: %d", status)
	}
	if status, m := do("DELETE", "/api/v1/routes/extra", ""); status != 400 {
		t.Fatalf("deleting the only route of an enabled listener: %d %v", status, m)
	}
	testutil.WaitFor(t, 5*time.Second, "the re-enabled listener", func() bool {
		c, _, err := testutil.Dial(extra, "")
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if d := n.Digest(); d.Count != 1 {
		t.Fatalf("digest %+v", d)
	}
}
