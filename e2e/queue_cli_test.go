package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"chainmail/internal/testutil"
)

// TestQueueCLI drives `chainmail queue` against a node whose peer is down.
func TestQueueCLI(t *testing.T) {
	t.Parallel()
	a, b := newHANode(t, "a"), newHANode(t, "b")
	a.peers = []string{"b"}
	na := testutil.StartNode(t, a.config(map[string]*haNode{"a": a, "b": b}))
	for i := range 3 {
		if r, err := testutil.Send(a.journal, "j@example.com", []string{"r@example.org"}, msgN("cli", i)); err != nil || r.Code != 250 {
			t.Fatalf("send: %v %v", r, err)
		}
	}
	testutil.WaitFor(t, 10*time.Second, "the connection to be down", func() bool { return connections(t, na)["to-b"].State == "down" })
	cli := func(stdin string, args ...string) (string, error) {
		cmd := exec.Command(testutil.Binary(t), append(append([]string{"queue"}, args...), "--api", na.API, "--token", testutil.Token)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := cli("", "ls")
	if err != nil || !strings.Contains(out, "to-b") || !strings.Contains(out, "down") || !strings.Contains(out, "connection refused") {
		t.Fatalf("queue ls: %v\n%s", err, out)
	}
	out, err = cli("", "ls", "to-b")
	if err != nil || strings.Count(out, "\n") != 4 {
		t.Fatalf("queue ls to-b (3 entries): %v\n%s", err, out)
	}
	out, err = cli("", "retry", "to-b")
	if err != nil || !strings.Contains(out, "to-b: revived 0 dead letters") {
		t.Fatalf("queue retry: %v\n%s", err, out)
	}
	out, err = cli("nope\n", "purge", "to-b")
	if err == nil || !strings.Contains(out, "not confirmed") || connections(t, na)["to-b"].QueueDepth != 3 {
		t.Fatalf("unconfirmed purge: %v\n%s", err, out)
	}
	out, err = cli("to-b\n", "purge", "to-b")
	if err != nil || !strings.Contains(out, "dropped 3 entries") || connections(t, na)["to-b"].QueueDepth != 0 {
		t.Fatalf("confirmed purge: %v\n%s", err, out)
	}
	if d := na.Digest(); d.Count != 3 {
		t.Fatalf("purge touched the archive: %+v", d)
	}
	if out, err := cli("", "retry"); err == nil || !strings.Contains(out, "want a connection NAME") {
		t.Fatalf("usage: %v\n%s", err, out)
	}
}
