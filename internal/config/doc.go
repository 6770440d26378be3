// Package config is the schema of chainmail's YAML files and the strict
// loader they share.
//
// The loader decodes through yaml.v3's node tree rather than its struct
// decoder so that every problem — an unknown key, a bad duration, a route
// naming a missing listener — comes back at once, each naming the file, the
// line and the key path ("chainmail.yaml:12: listeners[1].max_message_size:
// must be > 0 (got 0)"). Structs with a Defaults method get their defaults
// before the file is decoded over them; ${VAR} in a scalar is replaced by the
// environment variable, and a missing variable is an error, not an empty
// string.
//
// The package is a leaf: it imports nothing of chainmail's, so the node and
// the balancer can both describe their files with it.
package config
