package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const chain = `node: a
data_dir: /var/lib/chainmail
listeners:
  - name: journal
    address: 0.0.0.0:25
    allow: [10.0.1.0/24]
    proxy_protocol_from: [10.0.0.5/32]
    max_message_size: 64MiB
  - name: ha
    address: 0.0.0.0:8091
    role: ha
    allow: [10.0.0.2/32]
connections:
  - name: peer-b
    address: 10.0.0.2:8091
    max_retries: 0
    queue_limit: 1000000
    concurrency: 4
routes:
  - name: journal
    from: [journal]
    actions: [archive, forward:peer-b]
  - name: ha-in
    from: [ha]
    actions: [archive]
web:
  address: 0.0.0.0:8090
  api_tokens: ["${CHAINMAIL_TEST_TOKEN}"]
log: {level: info, format: json}
`

func TestDesignExampleLoads(t *testing.T) {
	t.Setenv("CHAINMAIL_TEST_TOKEN", "0123456789abcdef0123")
	var n Node
	if err := Parse("chain.yaml", []byte(chain), &n); err != nil {
		t.Fatal(err)
	}
	if n.Node != "a" || len(n.Listeners) != 2 || n.Listeners[0].MaxMessageSize != 64<<20 {
		t.Fatalf("decoded wrong: %+v", n)
	}
	if n.Listeners[1].MaxMessageSize != 64<<20 || n.Listeners[1].ReadTimeout != 5*time.Minute {
		t.Errorf("defaults not applied to second listener: %+v", n.Listeners[1])
	}
	if c := n.Connections[0]; c.ProbeInterval != 2*time.Second || c.TLS != "none" {
		t.Errorf("connection defaults: %+v", c)
	}
	if n.Web.APITokens[0] != "0123456789abcdef0123" {
		t.Errorf("env not expanded: %q", n.Web.APITokens)
	}
	if n.MaxHops != 16 {
		t.Errorf("max_hops default = %d", n.MaxHops)
	}
}

func TestEmbeddedDefault(t *testing.T) {
	n, err := LoadNode("")
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if n.Node != host || n.DataDir != "./chainmail-data" || n.Listeners[0].Address != "127.0.0.1:2525" || n.Web.Address != "127.0.0.1:8090" {
		t.Fatalf("embedded default is not DESIGN.md's: %+v", n)
	}
}

func TestErrorsNameFileLineAndKey(t *testing.T) {
	bad := `node: a
listeners:
  - name: journal
    address: 127.0.0.1:2525
    max_message_size: lots
    read_timeout: 5 minutes
    colour: blue
  - name: journal
    address: nohost
    allow: [10.0.0.0/33]
routes:
  - name: r
    from: [journal, missing]
    actions: [archive, forward:nowhere, shred]
web: {address: 127.0.0.1:8090}
`
	err := Parse("bad.yaml", []byte(bad), &Node{})
	if err == nil {
		t.Fatal("no error")
	}
	got := err.Error()
	for _, want := range []string{
		`bad.yaml:5: listeners[0].max_message_size: invalid size "lots"`,
		`bad.yaml:6: listeners[0].read_timeout: invalid duration "5 minutes"`,
		`bad.yaml:7: listeners[0].colour: unknown key`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	// Decode errors and validation errors come together, in file order.
	for _, want := range []string{
		`bad.yaml:8: listeners[1].name: duplicate listener name "journal"`,
		`bad.yaml:9: listeners[1].address: invalid address "nohost"`,
		`bad.yaml:10: listeners[1].allow[0]: invalid network "10.0.0.0/33"`,
		`bad.yaml:13: routes[0].from[1]: no listener named "missing"`,
		`bad.yaml:14: routes[0].actions[1]: no connection named "nowhere"`,
		`bad.yaml:14: routes[0].actions[2]: unknown action "shred"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	if strings.Contains(got, "max_message_size: must be > 0") {
		t.Errorf("validation repeats a key that failed to decode:\n%s", got)
	}
}

func TestCrossChecks(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"unrouted listener", `node: a
listeners: [{name: j, address: 127.0.0.1:2525}, {name: lost, address: 127.0.0.1:2526}]
routes: [{name: r, from: [j], actions: [archive]}]`, `listeners[1].name: no enabled route takes from listener "lost"`},
		{"connection to self", `node: a
listeners: [{name: ha, address: 0.0.0.0:8091, role: ha}]
connections: [{name: me, address: 127.0.0.1:8091}]
routes: [{name: r, from: [ha], actions: [archive, forward:me]}]`, `connections[0].address: 127.0.0.1:8091 is this node's own listener "ha"`},
		{"peer node is self", `node: a
listeners: [{name: j, address: 127.0.0.1:2525}]
connections: [{name: b, address: 127.0.0.9:8091, peer_node: a}]
routes: [{name: r, from: [j], actions: [archive, forward:b]}]`, `connections[0].peer_node: names this node`},
		{"missing env", `node: a
listeners: [{name: j, address: 127.0.0.1:2525}]
routes: [{name: r, from: [j], actions: [archive]}]
web: {api_tokens: ["${CHAINMAIL_SURELY_UNSET_VAR}"]}`, `web.api_tokens[0]: environment variable CHAINMAIL_SURELY_UNSET_VAR is not set`},
		{"syntax", "node: [a\n", `syntax.yaml:`},
		{"auth in clear", `node: a
listeners: [{name: j, address: 127.0.0.1:2525, auth: {users: [{name: u, password_hash: "$2a$10$x"}]}}]
routes: [{name: r, from: [j], actions: [archive]}]`, `listeners[0].auth: AUTH without tls`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Parse("syntax.yaml", []byte(tc.yaml), &Node{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want %q, got %v", tc.want, err)
			}
		})
	}
}

func TestSizes(t *testing.T) {
	for in, want := range map[string]Size{"512": 512, "10KB": 10000, "64MiB": 64 << 20, "1 GiB": 1 << 30, "2K": 2048} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1XB", "99999999999999GiB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

func TestLoadFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, []byte("node: a\nlisteners: []\nroutes: []\nunknown: 1\n"), 0o600)
	_, err := LoadNode(p)
	if err == nil || !strings.Contains(err.Error(), p+":4: unknown: unknown key") {
		t.Fatalf("got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(chain))
	f.Add(DefaultYAML())
	f.Add([]byte("listeners: [{name: x, address: \"[::1]:25\", max_message_size: 1GiB}]\n"))
	f.Add([]byte("a: &x [1]\nb: *x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var n Node
		err := Parse("fuzz.yaml", data, &n)
		if err != nil && err.Error() == "" {
			t.Fatal("empty error text")
		}
	})
}

func TestSubaddress(t *testing.T) {
	const base = `node: a
listeners:
  - name: journal
    address: 127.0.0.1:2525
    subaddress: %s
routes: [{name: r, from: [journal], actions: [archive]}]
`
	var n Node
	if err := Parse("ok.yaml", []byte(fmt.Sprintf(base, `{mailbox: archive@archive.example, delimiter: "+-"}`)), &n); err != nil {
		t.Fatal(err)
	}
	if sa := n.Listeners[0].Subaddress; sa == nil || sa.Mailbox != "archive@archive.example" || sa.Delimiter != "+-" {
		t.Fatalf("decoded %+v", n.Listeners[0].Subaddress)
	}
	if err := Parse("ok.yaml", []byte(fmt.Sprintf(base, `{mailbox: archive@archive.example}`)), &Node{}); err != nil {
		t.Fatalf("default delimiter: %v", err)
	}
	for _, tc := range []struct{ value, want string }{
		{`{delimiter: "+"}`, `bad.yaml:5: listeners[0].subaddress.mailbox: required`},
		{`{mailbox: archive}`, `listeners[0].subaddress.mailbox: want an address like archive@archive.example (got "archive")`},
		{`{mailbox: "a b@x.example"}`, `listeners[0].subaddress.mailbox: want an address`},
		{`{mailbox: archive+x@archive.example}`, `listeners[0].subaddress.mailbox: the local part "archive+x" contains the delimiter "+"`},
		{`{mailbox: archive@archive..example}`, `listeners[0].subaddress.mailbox: invalid domain`},
		{`{mailbox: archive@archive.example, delimiter: "="}`, `listeners[0].subaddress.delimiter: '=' cannot separate an extension`},
		{`{mailbox: archive@archive.example, delimiter: "x"}`, `listeners[0].subaddress.delimiter: 'x' cannot separate`},
		{`{mailbox: archive@archive.example, delimiter: "+++++++++"}`, `listeners[0].subaddress.delimiter: at most 8 characters`},
		{`{mailbox: archive@archive.example, separator: "+"}`, `listeners[0].subaddress.separator: unknown key`},
	} {
		err := Parse("bad.yaml", []byte(fmt.Sprintf(base, tc.value)), &Node{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: want %q, got %v", tc.value, tc.want, err)
		}
	}
}
