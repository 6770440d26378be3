package web

import (
	"os"
	"strings"
	"testing"
)

// TestDocumented keeps docs/api.md and docs/metrics.md in step with the
// code: every route has a section and every metric a row.
func TestDocumented(t *testing.T) {
	t.Parallel()
	api, err := os.ReadFile("../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	s := newTestServer(t, newFakeArchive(), nil)
	for path, methods := range s.allowed {
		for _, m := range methods {
			if m == "HEAD" {
				continue
			}
			if h := "### `" + m + " " + path + "`"; !strings.Contains(string(api), h) {
				t.Errorf("docs/api.md has no section %q", h)
			}
		}
	}
	metrics, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{MetricHTTPRequests, MetricHTTPDuration, MetricHTTPInFlight, MetricHTTPAuthFailures} {
		if !strings.Contains(string(metrics), "| `"+name+"` |") {
			t.Errorf("docs/metrics.md has no row for %s", name)
		}
	}
}
