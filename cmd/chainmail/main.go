// Command chainmail is the high-availability journaling archive relay: a
// node (serve), the front balancer tier (balance), and the operator's
// tools over a running node's API (archive, queue, check).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: chainmail <command> [flags]

commands:
  serve   [-c chainmail.yaml]   run a node; with no file, the embedded default
  balance  -c balancer.yaml     run the balancer tier
  check    -c FILE              validate a configuration, print every error
  archive  search|show|raw|export|digest|verify   query a running node's archive
  queue    ls|retry|purge                  a running node's outbound queues
  import   [--smtp ADDR] PATH...           submit .eml, mbox and Maildir messages to a node's listener
  passwd                        print a bcrypt hash of a password (for auth users)
  reset-password [-c FILE] [ACCOUNT]       a new console password, on a stopped node
  version                       print the version

Run 'chainmail <command> -h' for a command's flags.
`

// run is the whole CLI: main only wires the process to it, so tests can
// call it with their own arguments and writers.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) < 2 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[1], args[2:]
	switch cmd {
	case "serve":
		return runServe(ctx, rest, stdout, stderr)
	case "balance":
		return runBalance(ctx, rest, stdout, stderr)
	case "check":
		return runCheck(rest, stdout, stderr)
	case "archive":
		return runArchive(ctx, rest, stdout, stderr)
	case "queue":
		return runQueue(ctx, rest, stdout, stderr)
	case "import":
		return runImport(ctx, rest, stdout, stderr)
	case "reset-password":
		return runResetPassword(ctx, rest, stdout, stderr)
	case "passwd":
		return runPasswd(rest, os.Stdin, stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintf(stdout, "chainmail %s\n", version)
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "chainmail: unknown command %q\n\n%s", cmd, usage)
	return 2
}
