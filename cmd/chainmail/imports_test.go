package main

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// TestImportDirection keeps DESIGN.md's dependency rules true: listener →
// route → {archive, queue}, forwarder → {queue, archive}, the stores import
// nothing above them, the balancer none of the node, and nothing imports cmd
// or web.
func TestImportDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", "chainmail/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	forbidden := map[string][]string{
		"chainmail/archive":             {"listener", "route", "queue", "forwarder", "web", "balancer"},
		"chainmail/queue":               {"listener", "route", "archive", "forwarder", "web", "balancer"},
		"chainmail/route":               {"listener", "forwarder", "web", "balancer"},
		"chainmail/listener":            {"forwarder", "web", "balancer", "queue"},
		"chainmail/forwarder":           {"listener", "route", "web", "balancer"},
		"chainmail/balancer":            {"listener", "route", "archive", "queue", "forwarder", "web", "journal", "internal/store", "internal/envelope", "internal/liveconfig"},
		"chainmail/journal":             {"listener", "route", "archive", "queue", "forwarder", "web", "balancer", "internal"},
		"chainmail/web":                 {"listener", "balancer"},
		"chainmail/internal/config":     {"listener", "route", "archive", "queue", "forwarder", "web", "balancer", "journal", "internal/store", "internal/envelope", "internal/liveconfig"},
		"chainmail/internal/envelope":   {"listener", "route", "archive", "queue", "forwarder", "web", "balancer", "journal", "internal/store", "internal/config", "internal/liveconfig"},
		"chainmail/internal/store":      {"listener", "route", "archive", "queue", "forwarder", "web", "balancer", "journal", "internal/config", "internal/envelope", "internal/liveconfig"},
		"chainmail/internal/liveconfig": {"listener", "route", "archive", "queue", "forwarder", "web", "balancer"},
		"chainmail/internal/ui":         {"listener", "route", "archive", "queue", "forwarder", "web", "balancer", "journal", "internal/store", "internal/config", "internal/envelope", "internal/liveconfig"},
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for dec.More() {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		for _, imp := range p.Imports {
			if imp == "chainmail/cmd/chainmail" || (imp == "chainmail/web" && p.ImportPath != "chainmail/cmd/chainmail") {
				t.Errorf("%s imports %s: nothing imports cmd or web", p.ImportPath, imp)
			}
			for _, bad := range forbidden[p.ImportPath] {
				if imp == "chainmail/"+bad || strings.HasPrefix(imp, "chainmail/"+bad+"/") {
					t.Errorf("%s imports %s, against the direction of DESIGN.md", p.ImportPath, imp)
				}
			}
		}
		if _, ok := forbidden[p.ImportPath]; ok {
			seen++
		}
	}
	if seen != len(forbidden) {
		t.Fatalf("found %d of the %d packages the rules name: a package moved?", seen, len(forbidden))
	}
}
