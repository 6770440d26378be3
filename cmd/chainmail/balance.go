package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"

	"chainmail/balancer"
)

// runBalance is `chainmail balance -c FILE`: the balancer tier. SIGHUP
// re-reads FILE and applies it without dropping sessions (an invalid file
// is logged and the running configuration kept); the end of ctx (SIGTERM,
// SIGINT in main) stops it gracefully.
func runBalance(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("balance", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("c", "", "balancer configuration file (required)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: chainmail balance -c balancer.yaml\n\nRuns the balancer tier: frontends, pools, health checks and the admin API.\nSIGHUP reloads the file; SIGTERM or SIGINT stops after established sessions end.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *file == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	cfg, err := balancer.LoadConfig(*file)
	if err != nil {
		fmt.Fprintf(stderr, "chainmail balance: invalid configuration:\n%v\n", err)
		return 1
	}
	log := newLogger(cfg.Balancer.Log, stderr)
	stopProfile, err := startCPUProfile("balance", stderr)
	if err != nil {
		log.WithError(err).Error("cpu profile")
		return 1
	}
	defer stopProfile()
	b, err := balancer.New(cfg, balancer.Options{Logger: log.Logger})
	if err != nil {
		log.WithError(err).Error("balancer failed to start")
		return 1
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	for {
		select {
		case <-hup:
			reload(b, *file, log)
		case err := <-done:
			if err != nil {
				log.WithError(err).Error("balancer stopped with an error")
				return 1
			}
			return 0
		}
	}
}

// reload applies the file again; on any problem the running configuration
// stays.
func reload(b *balancer.Balancer, file string, log *logrus.Entry) {
	cfg, err := balancer.LoadConfig(file)
	if err == nil {
		err = b.Reload(cfg)
	}
	if err != nil {
		log.WithError(err).WithField("file", file).Error("reload failed: keeping the running configuration")
		return
	}
	if lvl, err := logrus.ParseLevel(cfg.Balancer.Log.Level); err == nil {
		log.Logger.SetLevel(lvl)
	}
}
