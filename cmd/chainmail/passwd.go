package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// runPasswd prints the bcrypt hash of a password read from stdin, for the
// password_hash of a listener's auth users.
func runPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cost := fs.Int("cost", bcrypt.DefaultCost, "bcrypt cost")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: echo -n PASSWORD | chainmail passwd [-cost N]\n\nPrints a bcrypt hash for a listener's auth.users[].password_hash.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && err != io.EOF {
		fmt.Fprintf(stderr, "chainmail passwd: %v\n", err)
		return 1
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		fmt.Fprintln(stderr, "chainmail passwd: empty password on stdin")
		return 1
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), *cost)
	if err != nil {
		fmt.Fprintf(stderr, "chainmail passwd: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, string(h))
	return 0
}
