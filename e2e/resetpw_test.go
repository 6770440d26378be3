package e2e

import (
	"fmt"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"chainmail/internal/testutil"
)

// TestResetPasswordOnAStoppedNode: an operator who lost the admin password
// stops the node, runs reset-password, and logs in with what it prints; the
// old password no longer works, and the audit log says what happened.
// While the node runs, the command refuses and changes nothing.
func TestResetPasswordOnAStoppedNode(t *testing.T) {
	t.Parallel()
	web := testutil.FreeAddr(t, "127.0.0.1")
	n := testutil.StartNode(t, fmt.Sprintf(`node: n1
data_dir: {{dir}}/data
listeners:
  - {name: journal, address: %s}
routes:
  - {name: journal, from: [journal], actions: [archive]}
web: {address: %s, api_tokens: [%s]}
`, testutil.FreeAddr(t, "127.0.0.1"), web, testutil.Token))
	first := regexp.MustCompile(`password ([A-Z0-9]{26})`).FindStringSubmatch(n.Output())
	if first == nil {
		t.Fatalf("no first-start password in:\n%s", n.Output())
	}
	login := func(password string) int {
		req, _ := http.NewRequest("GET", n.API+"/api/v1/node", nil)
		req.SetBasicAuth("admin", password)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := login(first[1]); code != 200 {
		t.Fatalf("first-start password: HTTP %d", code)
	}
	reset := func(args ...string) (string, error) {
		out, err := exec.Command(testutil.Binary(t), append([]string{"reset-password", "-c", n.Config}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := reset(); err == nil || !strings.Contains(out, "is running; stop it first") {
		t.Fatalf("reset while running: %v\n%s", err, out)
	}
	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}
	if out, err := reset("nobody"); err == nil || !strings.Contains(out, `no account "nobody"; the accounts are: admin (admin)`) {
		t.Fatalf("reset of an unknown account: %v\n%s", err, out)
	}
	out, err := reset()
	if err != nil {
		t.Fatalf("reset: %v\n%s", err, out)
	}
	second := regexp.MustCompile(`New password for console account "admin": ([A-Z0-9]{26})\n`).FindStringSubmatch(out)
	if second == nil {
		t.Fatalf("reset printed:\n%s", out)
	}
	n.Restart()
	testutil.WaitFor(t, 10*time.Second, "the node's API", func() bool { return login(second[1]) == 200 })
	if code := login(first[1]); code != 401 {
		t.Fatalf("the old password after a reset: HTTP %d", code)
	}
	var audit struct {
		Entries []map[string]any `json:"entries"`
	}
	n.Get("/api/v1/audit", &audit)
	if len(audit.Entries) == 0 || audit.Entries[0]["by"] != "(reset-password)" || audit.Entries[0]["name"] != "admin" {
		t.Fatalf("audit: %v", audit.Entries)
	}
}
