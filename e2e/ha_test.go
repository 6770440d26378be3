package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"chainmail/internal/testutil"
)

// haNode describes one node of a chain for the tests: its addresses and the
// connections it forwards journal (and, in a ring, ha) traffic to.
type haNode struct {
	name, journal, ha, web string
	peers                  []string // names of nodes it forwards to
	forwardHA              bool     // ring: what arrives on ha is forwarded too
	extra                  string   // extra connection keys
	probe                  string   // probe_interval of its connections (default 200ms)
}

func newHANode(t *testing.T, name string) *haNode {
	return &haNode{
		name:    name,
		journal: testutil.FreeAddr(t, "127.0.0.1"),
		ha:      testutil.FreeAddr(t, "127.0.0.1"),
		web:     testutil.FreeAddr(t, "127.0.0.1"),
	}
}

func (n *haNode) config(all map[string]*haNode) string {
	var conns, fwd strings.Builder
	probe := n.probe
	if probe == "" {
		probe = "200ms"
	}
	for _, p := range n.peers {
		fmt.Fprintf(&conns, "  - {name: to-%s, address: %s, probe_interval: %s, retry_min: 100ms, retry_max: 1s, timeout: 5s%s}\n", p, all[p].ha, probe, n.extra)
		fmt.Fprintf(&fwd, ", forward:to-%s", p)
	}
	connSection := ""
	if conns.Len() > 0 {
		connSection = "connections:\n" + conns.String()
	}
	haActions := "[archive]"
	if n.forwardHA {
		haActions = "[archive" + fwd.String() + "]"
	}
	return fmt.Sprintf(`node: %s
data_dir: {{dir}}/data
listeners:
  - {name: journal, address: %s}
  - {name: ha, address: %s, role: ha, allow: [127.0.0.0/8]}
%sroutes:
  - {name: journal, from: [journal], actions: [archive%s]}
  - {name: ha-in, from: [ha], actions: %s}
web: {address: %s, api_tokens: [%s]}
log: {level: debug, format: json}
`, n.name, n.journal, n.ha, connSection, fwd.String(), haActions, n.web, testutil.Token)
}

func msgN(node string, i int) []byte {
	return []byte(fmt.Sprintf("From: sender@example.com\r\nTo: rcpt@example.org\r\nSubject: %s %d\r\nMessage-ID: <%s-%d@example.com>\r\n\r\nbody of %s %d\r\n", node, i, node, i, node, i))
}

// TestTwoNodeChainConverges is the MailArchiva daisy chain: journal traffic
// to both nodes, each forwards to the other's ha listener, archives match.
func TestTwoNodeChainConverges(t *testing.T) {
	t.Parallel()
	a, b := newHANode(t, "a"), newHANode(t, "b")
	a.peers, b.peers = []string{"b"}, []string{"a"}
	all := map[string]*haNode{"a": a, "b": b}
	na := testutil.StartNode(t, a.config(all))
	nb := testutil.StartNode(t, b.config(all))
	var sent [][]byte
	for i := range 20 {
		for _, n := range []*haNode{a, b} {
			m := msgN(n.name, i)
			if r, err := testutil.Send(n.journal, "j@example.com", []string{"r@example.org"}, m); err != nil || r.Code != 250 {
				t.Fatalf("send to %s: %v %v", n.name, r, err)
			}
			sent = append(sent, m)
		}
	}
	want := testutil.DigestOf(sent)
	testutil.WaitFor(t, 30*time.Second, "digests to converge", func() bool {
		return na.Digest() == want && nb.Digest() == want
	})
	var conns struct {
		Connections []struct {
			Name       string `json:"name"`
			State      string `json:"state"`
			QueueDepth int64  `json:"queue_depth"`
			Delivered  int64  `json:"delivered"`
			PeerNode   string `json:"peer_node"`
		} `json:"connections"`
	}
	testutil.WaitFor(t, 10*time.Second, "queue to drain", func() bool {
		na.Get("/api/v1/connections", &conns)
		return len(conns.Connections) == 1 && conns.Connections[0].QueueDepth == 0
	})
	c := conns.Connections[0]
	if c.Name != "to-b" || c.State != "up" || c.Delivered != 20 || c.PeerNode != "b" {
		t.Fatalf("connection status %+v", c)
	}
}

// TestReturningPeerIsProbedAtOnce: a node that comes back starts
// replicating its own traffic, and its first session to our ha listener
// tells us it is up: our backlog for it goes at once, not at our next
// probe (an hour away here).
func TestReturningPeerIsProbedAtOnce(t *testing.T) {
	t.Parallel()
	a, b := newHANode(t, "a"), newHANode(t, "b")
	a.peers, b.peers = []string{"b"}, []string{"a"}
	a.probe = "1h"
	all := map[string]*haNode{"a": a, "b": b}
	na := testutil.StartNode(t, a.config(all))
	var sent [][]byte
	for i := range 10 {
		m := msgN("back", i)
		if r, err := testutil.Send(a.journal, "j@example.com", []string{"r@example.org"}, m); err != nil || r.Code != 250 {
			t.Fatalf("send: %v %v", r, err)
		}
		sent = append(sent, m)
	}
	testutil.WaitFor(t, 10*time.Second, "a's connection to b to be down with its backlog", func() bool {
		c := connections(t, na)["to-b"]
		return c.State == "down" && c.LastError != "" && c.QueueDepth == 10
	})
	nb := testutil.StartNode(t, b.config(all))
	want := testutil.DigestOf(sent)
	testutil.WaitFor(t, 20*time.Second, "b to be caught up", func() bool {
		return nb.Digest() == want && connections(t, na)["to-b"].QueueDepth == 0
	})
}

type connStatus struct {
	Name        string `json:"name"`
	State       string `json:"state"`
	QueueDepth  int64  `json:"queue_depth"`
	Delivered   int64  `json:"delivered"`
	DeadLetters int64  `json:"dead_letters"`
	PeerNode    string `json:"peer_node"`
	LastError   string `json:"last_error"`
}

func connections(t *testing.T, n *testutil.Node) map[string]connStatus {
	t.Helper()
	var resp struct {
		Connections []connStatus `json:"connections"`
	}
	if s := n.Get("/api/v1/connections", &resp); s != 200 {
		t.Fatalf("GET /api/v1/connections: HTTP %d", s)
	}
	out := map[string]connStatus{}
	for _, c := range resp.Connections {
		out[c.Name] = c
	}
	return out
}

// metric sums a metric's samples whose labels contain filter.
func metric(t *testing.T, n *testutil.Node, name, filter string) float64 {
	t.Helper()
	status, body := n.Do("GET", "/metrics", nil)
	if status != 200 {
		t.Fatalf("metrics: HTTP %d", status)
	}
	total := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		if (strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ")) && strings.Contains(line, filter) {
			var v float64
			fmt.Sscanf(line[strings.LastIndex(line, " ")+1:], "%g", &v)
			total += v
		}
	}
	return total
}

// startTopology starts every node, sends msgs journal messages to each, and
// waits until every archive holds all of them.
func startTopology(t *testing.T, nodes []*haNode, msgs int) (map[string]*testutil.Node, testutil.Digest) {
	t.Helper()
	all := map[string]*haNode{}
	for _, n := range nodes {
		all[n.name] = n
	}
	run := map[string]*testutil.Node{}
	for _, n := range nodes {
		run[n.name] = testutil.StartNode(t, n.config(all))
	}
	var sent [][]byte
	for i := range msgs {
		for _, n := range nodes {
			m := msgN(n.name, i)
			if r, err := testutil.Send(n.journal, "j@example.com", []string{"r@example.org"}, m); err != nil || r.Code != 250 {
				t.Fatalf("send to %s: %v %v", n.name, r, err)
			}
			sent = append(sent, m)
		}
	}
	want := testutil.DigestOf(sent)
	testutil.WaitFor(t, 60*time.Second, "every archive to hold every message", func() bool {
		for _, n := range run {
			if n.Digest() != want {
				return false
			}
		}
		return true
	})
	testutil.WaitFor(t, 20*time.Second, "every queue to drain", func() bool {
		for _, n := range run {
			for _, c := range connections(t, n) {
				if c.QueueDepth != 0 {
					return false
				}
			}
		}
		return true
	})
	return run, want
}

// TestRingAndMesh: three nodes as a ring (a→b→c→a, forwarding what
// arrives on either listener) and as a full mesh; every message in every
// archive exactly once, queues drained, loops counted, nothing circulating.
func TestRingAndMesh(t *testing.T) {
	t.Parallel()
	t.Run("ring", func(t *testing.T) {
		t.Parallel()
		a, b, c := newHANode(t, "a"), newHANode(t, "b"), newHANode(t, "c")
		a.peers, b.peers, c.peers = []string{"b"}, []string{"c"}, []string{"a"}
		a.forwardHA, b.forwardHA, c.forwardHA = true, true, true
		run, want := startTopology(t, []*haNode{a, b, c}, 10)
		loops := 0.0
		for _, n := range run {
			loops += metric(t, n, "chainmail_loops_detected_total", "")
			loops += metric(t, n, "chainmail_forward_messages_total", `result="loop"`)
		}
		// Each message stops at the node before its origin: one loop each.
		if loops < 30 {
			t.Fatalf("loops detected = %v, want ≥ 30", loops)
		}
		assertQuiet(t, run, want)
	})
	t.Run("mesh", func(t *testing.T) {
		t.Parallel()
		a, b, c := newHANode(t, "a"), newHANode(t, "b"), newHANode(t, "c")
		a.peers, b.peers, c.peers = []string{"b", "c"}, []string{"a", "c"}, []string{"a", "b"}
		run, want := startTopology(t, []*haNode{a, b, c}, 10)
		for name, n := range run {
			for cname, cs := range connections(t, n) {
				if cs.Delivered != 10 {
					t.Errorf("%s → %s delivered %d, want 10 (its own journal traffic only)", name, cname, cs.Delivered)
				}
			}
		}
		assertQuiet(t, run, want)
	})
}

// assertQuiet checks that nothing keeps circulating: after a pause the
// delivered counters and digests stand still.
func assertQuiet(t *testing.T, run map[string]*testutil.Node, want testutil.Digest) {
	t.Helper()
	before := map[string]int64{}
	for name, n := range run {
		for c, cs := range connections(t, n) {
			before[name+c] = cs.Delivered
		}
	}
	time.Sleep(500 * time.Millisecond) // an observation window, not synchronisation
	for name, n := range run {
		if d := n.Digest(); d != want {
			t.Errorf("%s digest changed: %+v", name, d)
		}
		for c, cs := range connections(t, n) {
			if cs.Delivered != before[name+c] || cs.QueueDepth != 0 {
				t.Errorf("%s → %s still moving: %+v (delivered before %d)", name, c, cs, before[name+c])
			}
		}
	}
}
