package config

import _ "embed"

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML is the configuration `chainmail serve` runs with no file.
func DefaultYAML() []byte { return defaultYAML }

// LoadNode reads and validates a node configuration; an empty file name
// means the embedded default.
func LoadNode(file string) (*Node, error) {
	n := &Node{}
	if file == "" {
		return n, Parse("(embedded default)", defaultYAML, n)
	}
	return n, Load(file, n)
}
