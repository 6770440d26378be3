package main

import (
	"os"
	"runtime/debug"
)

// nodeGCPercent is serve's garbage collector target when GOGC is not set.
//
// A node's live heap is small (a few MB besides the in-memory bodies of
// messages being received, at most spool_threshold each), but every
// commit allocates bbolt's nodes and page buffers afresh, so at the
// default GOGC=100 the collector ran about once per ten messages of a
// single session and took a fifth of the node's CPU at 32 sessions. At 200
// it runs half as often; the heap may grow to three times the live data
// instead of twice. docs/BENCHMARKS.md has the measurements; GOGC (and
// GOMEMLIMIT) in the environment still decide when set.
const nodeGCPercent = 200

func tuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(nodeGCPercent)
	}
}
