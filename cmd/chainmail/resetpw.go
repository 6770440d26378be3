package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"chainmail/internal/config"
	"chainmail/internal/store"
	"chainmail/web"
)

// runResetPassword gives a console account a new random password on the
// data directory of a stopped node: the way back in for an operator who
// lost the password the first start printed, or every admin's. It needs
// the node stopped (the store is locked while it runs), which also makes
// it a local, root-or-owner operation, like reading the data directory.
func runResetPassword(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reset-password", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("c", "", "the node's configuration file (default: the embedded default, data in ./chainmail-data)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: chainmail reset-password [-c chainmail.yaml] [ACCOUNT]\n\n"+
			"Gives a console account (default %q) a new random password and prints it\n"+
			"once. Run it while the node is stopped; the change is in the audit log.\n\n", web.AdminUser)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return 2
	}
	user := web.AdminUser
	if fs.NArg() == 1 {
		user = fs.Arg(0)
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "chainmail reset-password: "+format+"\n", a...)
		return 1
	}
	cfg, err := config.LoadNode(*file)
	if err != nil {
		return fail("invalid configuration:\n%v", err)
	}
	path := filepath.Join(cfg.DataDir, "chainmail.db")
	if _, err := os.Stat(path); err != nil {
		return fail("no data store at %s (has this node been started?): %v", path, err)
	}
	// A running node holds the lock; the answer is to stop it, not to wait.
	db, err := store.Open(path, store.Options{})
	if err != nil {
		if errors.Is(err, store.ErrLocked) {
			return fail("the node using %s is running; stop it first", cfg.DataDir)
		}
		return fail("%v", err)
	}
	defer db.Close()
	users, err := web.OpenUsers(db)
	if err != nil {
		return fail("%v", err)
	}
	password, err := users.ResetPassword(ctx, user, "(reset-password)")
	if errors.Is(err, web.ErrNoUser) {
		var names []string
		if list, lerr := users.List(); lerr == nil {
			for _, a := range list {
				names = append(names, a.Name+" ("+a.Role+")")
			}
		}
		return fail("no account %q; the accounts are: %s", user, strings.Join(names, ", "))
	}
	if err != nil {
		return fail("%v", err)
	}
	fmt.Fprintf(stdout, "New password for console account %q: %s\n(shown once; only its hash is kept)\n", user, password)
	return 0
}
