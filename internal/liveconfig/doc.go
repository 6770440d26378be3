// Package liveconfig is a node's runtime configuration: listeners, routes
// and connections changed through the API or the console while the node
// runs, validated with the same rules as `chainmail check`, applied live,
// and persisted so a restart keeps them.
//
// Where changes are kept: in the node's bbolt file (bucket "config"), not
// written back into the YAML file. Writing YAML back would drop the
// operator's comments and would write ${VAR} secrets out expanded. At start
// the stored sections (listeners, routes, connections), when present,
// replace the file's — the node logs that it does so and
// GET /api/v1/config shows the effective configuration as YAML, to fold
// back into the file; `chainmail serve --reset-runtime-config` drops them.
//
// Every change is recorded in an audit log (bucket "audit": who, when,
// what, before and after), newest last. Record lets another store of the
// same file (web's console accounts, kind "users") append its changes in
// its own transaction, so the console shows one log.
//
// On-disk layout:
//
//	config  "runtime" → YAML {listeners, routes, connections}; "changed" → JSON {at, by}
//	audit   seq (8-byte big-endian) → JSON Entry
package liveconfig
