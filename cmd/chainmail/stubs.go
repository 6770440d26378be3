package main

import (
	"context"
	"fmt"
	"io"
)

// Placeholders until their commands land; each file replaces its stub.

func runQueue(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "chainmail queue: not built yet")
	return 1
}
