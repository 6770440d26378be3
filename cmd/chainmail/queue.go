package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"chainmail/forwarder"
	"chainmail/queue"
)

const queueUsage = `usage: chainmail queue <command> [flags]

commands:
  ls     [NAME] [--dead] [--limit N]   connections and their queues; with NAME, its entries
  retry  NAME                           revive dead letters, make deferred entries due, probe now
  purge  NAME [--yes]                   drop a connection's queue and dead letters (asks first)

Every command takes --api URL, --token TOKEN (or CHAINMAIL_API, CHAINMAIL_TOKEN),
or --user/--password for the console account.
Exit status: 0 done, 1 failed, 2 usage error.
`

// runQueue is 'chainmail queue'.
func runQueue(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return queueCLI{archiveCLI: archiveCLI{getenv: os.Getenv, stdout: stdout, stderr: stderr, loc: time.Local}, stdin: os.Stdin}.run(ctx, args)
}

type queueCLI struct {
	archiveCLI
	stdin io.Reader
}

func (c queueCLI) run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, queueUsage)
		return 2
	}
	cmds := map[string]func(context.Context, []string) error{"ls": c.ls, "retry": c.retry, "purge": c.purge}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(c.stdout, queueUsage)
		return 0
	}
	fn, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(c.stderr, "chainmail queue: unknown command %q\n\n%s", args[0], queueUsage)
		return 2
	}
	err := fn(ctx, args[1:])
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintf(c.stderr, "chainmail queue %s: %v\n", args[0], err)
	return 1
}

func (c queueCLI) flags(name, synopsis string) (*flag.FlagSet, *apiFlags) {
	fs := c.newFlagSet(name, synopsis)
	fs.Init("queue "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(c.stdout, "usage: chainmail queue %s %s\n\nflags:\n", name, synopsis)
		fs.SetOutput(c.stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	af := &apiFlags{}
	af.register(fs)
	return fs, af
}

func (c queueCLI) ls(ctx context.Context, args []string) error {
	fs, af := c.flags("ls", "[NAME] [--dead] [--limit N]")
	dead := fs.Bool("dead", false, "list the dead-letter list instead of the queue")
	limit := fs.Int("limit", 100, "entries to list, `N` at most 10000")
	pos, err := c.parseUpTo(fs, args, 1)
	if err != nil {
		return err
	}
	cl, err := c.client(af)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(c.stdout, 2, 8, 2, ' ', 0)
	defer tw.Flush()
	if len(pos) == 0 {
		var list struct {
			Connections []forwarder.Status `json:"connections"`
		}
		if err := cl.getJSON(ctx, "/api/v1/connections", nil, &list); err != nil {
			return err
		}
		fmt.Fprintln(tw, "NAME\tPEER\tSTATE\tQUEUE\tOLDEST\tDEAD\tDELIVERED\tRATE/s\tETA\tLAST ERROR")
		for _, s := range list.Connections {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%d\t%.1f\t%s\t%s\n", s.Name, peerOf(s), s.State, s.QueueDepth,
				seconds(s.OldestAgeS), s.DeadLetters, s.Delivered, s.Rate, seconds(s.ETAS), printable(s.LastError))
		}
		return nil
	}
	q := url.Values{"limit": {fmt.Sprint(*limit)}}
	if *dead {
		q.Set("dead", "1")
	}
	var list struct {
		Entries []queue.Entry `json:"entries"`
	}
	if err := cl.getJSON(ctx, "/api/v1/connections/"+url.PathEscape(pos[0])+"/queue", q, &list); err != nil {
		return err
	}
	fmt.Fprintln(tw, "ID\tENQUEUED\tATTEMPTS\tNEXT ATTEMPT\tLAST ERROR")
	for _, e := range list.Entries {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", e.HashHex, e.Enqueued.In(c.loc).Format(time.DateTime), e.Attempts,
			e.NextAttempt.In(c.loc).Format(time.DateTime), printable(fit(e.LastError, 60)))
	}
	return nil
}

func peerOf(s forwarder.Status) string {
	if s.PeerNode != "" {
		return s.PeerNode + " (" + s.Address + ")"
	}
	return s.Address
}

func seconds(s float64) string {
	if s <= 0 {
		return "-"
	}
	return time.Duration(s * float64(time.Second)).Round(time.Second).String()
}

func (c queueCLI) retry(ctx context.Context, args []string) error {
	fs, af := c.flags("retry", "NAME")
	pos, err := c.parseUpTo(fs, args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(c.stderr, "chainmail queue retry: want a connection NAME (see -h)")
		return errUsage
	}
	return c.action(ctx, af, pos[0], "retry", "revived %d dead letters; deferred entries are due now\n")
}

func (c queueCLI) purge(ctx context.Context, args []string) error {
	fs, af := c.flags("purge", "NAME [--yes]")
	yes := fs.Bool("yes", false, "do not ask for confirmation")
	pos, err := c.parseUpTo(fs, args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(c.stderr, "chainmail queue purge: want a connection NAME (see -h)")
		return errUsage
	}
	if !*yes {
		fmt.Fprintf(c.stderr, "Purge drops every queued entry and dead letter of %q: its peer will never receive them\n(they stay in this node's archive). Type the connection's name to confirm: ", pos[0])
		line, _ := bufio.NewReader(c.stdin).ReadString('\n')
		if strings.TrimSpace(line) != pos[0] {
			return errors.New("not confirmed; nothing purged")
		}
	}
	return c.action(ctx, af, pos[0], "purge", "dropped %d entries\n")
}

func (c queueCLI) action(ctx context.Context, af *apiFlags, name, action, format string) error {
	cl, err := c.client(af)
	if err != nil {
		return err
	}
	var res struct {
		Count int `json:"count"`
	}
	if err := cl.post(ctx, "/api/v1/connections/"+url.PathEscape(name)+"/"+action, &res); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%s: "+format, name, res.Count)
	return nil
}

// parseUpTo parses flags anywhere among at most max positionals.
func (c queueCLI) parseUpTo(fs *flag.FlagSet, args []string, max int) ([]string, error) {
	pos, err := c.parseFlags(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) > max {
		fmt.Fprintf(c.stderr, "chainmail %s: too many arguments (see -h)\n", fs.Name())
		return nil, errUsage
	}
	return pos, nil
}
