package balancer

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsNoNodePackage keeps the tier independent of the node: the
// balancer may import chainmail/internal/config and chainmail/internal/ui
// (the console's shared layout, assets and sessions; a leaf) and nothing
// else of ours.
func TestImportsNoNodePackage(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "chainmail/balancer").CombinedOutput()
	if err != nil {
		t.Skipf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "chainmail/") && dep != "chainmail/balancer" && dep != "chainmail/internal/config" && dep != "chainmail/internal/ui" {
			t.Errorf("balancer depends on %s", dep)
		}
	}
}
