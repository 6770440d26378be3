package main

import (
	"fmt"
	"io"
	"os"
	"runtime/pprof"
)

// cpuProfileEnv names a file that serve and balance write a CPU profile to,
// from start to a clean stop (bench/ingest.sh uses it; see
// docs/BENCHMARKS.md). It is an environment variable, not a flag, because
// it is a tool for whoever measures, not part of the configuration.
const cpuProfileEnv = "CHAINMAIL_CPUPROFILE"

// startCPUProfile starts the CPU profile when cpuProfileEnv is set and
// returns the function that stops and writes it.
func startCPUProfile(command string, stderr io.Writer) (stop func(), err error) {
	path := os.Getenv(cpuProfileEnv)
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cpuProfileEnv, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", cpuProfileEnv, err)
	}
	fmt.Fprintf(stderr, "chainmail %s: writing a CPU profile to %s until stopped\n", command, path)
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
