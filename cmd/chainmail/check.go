package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"

	"gopkg.in/yaml.v3"

	"chainmail/balancer"
	"chainmail/internal/config"
)

func runCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("c", "", "configuration file to validate (a node's, or a balancer's with a top-level balancer: key)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: chainmail check -c FILE\n\nValidates a configuration and prints every problem as FILE:LINE: key: message.\nExits 1 if there is any.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *file == "" {
		fs.Usage()
		return 2
	}
	data, err := os.ReadFile(*file)
	if err != nil {
		fmt.Fprintf(stderr, "chainmail check: %v\n", err)
		return 1
	}
	kind := "node"
	if isBalancerConfig(data) {
		kind = "balancer"
		_, err = balancer.LoadConfig(*file)
	} else {
		_, err = config.LoadNode(*file)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok (%s configuration)\n", *file, kind)
	return 0
}

// isBalancerConfig tells the two kinds of file apart by their top-level
// balancer: key.
func isBalancerConfig(data []byte) bool {
	var top map[string]any
	if yaml.NewDecoder(bytes.NewReader(data)).Decode(&top) != nil {
		return false
	}
	_, ok := top["balancer"]
	return ok
}
