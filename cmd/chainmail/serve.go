package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/sirupsen/logrus"
	bolt "go.etcd.io/bbolt"

	"chainmail/archive"
	"chainmail/forwarder"
	"chainmail/internal/config"
	"chainmail/internal/liveconfig"
	"chainmail/internal/store"
	"chainmail/listener"
	"chainmail/queue"
	"chainmail/route"
	"chainmail/web"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("c", "", "configuration file (default: the embedded single-node default)")
	reset := fs.Bool("reset-runtime-config", false, "drop the listeners, routes and connections changed live (kept in the data store) and use the file's")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: chainmail serve [-c chainmail.yaml]\n\nRuns a node. With no -c it runs the embedded default: listener \"journal\" on\n127.0.0.1:2525 archiving everything, data in ./chainmail-data, console and API\non 127.0.0.1:8090.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.LoadNode(*file)
	if err != nil {
		fmt.Fprintf(stderr, "chainmail serve: invalid configuration:\n%v\n", err)
		return 1
	}
	log := newLogger(cfg.Log, stderr)
	tuneGC()
	stopProfile, err := startCPUProfile("serve", stderr)
	if err != nil {
		log.WithError(err).Error("cpu profile")
		return 1
	}
	defer stopProfile()
	n, err := startNode(cfg, log, stdout, *reset)
	if err != nil {
		log.WithError(err).Error("node failed to start")
		return 1
	}
	if err := n.run(ctx); err != nil {
		log.WithError(err).Error("node stopped with an error")
		return 1
	}
	return 0
}

func newLogger(c config.Log, out io.Writer) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(out)
	if lvl, err := logrus.ParseLevel(c.Level); err == nil {
		l.SetLevel(lvl)
	}
	// logrus's own "msg" key would clash with the msg field that names a
	// message by its hash in every log line about it.
	fm := logrus.FieldMap{logrus.FieldKeyMsg: "message"}
	if c.Format == "json" {
		l.SetFormatter(&logrus.JSONFormatter{TimestampFormat: time.RFC3339Nano, FieldMap: fm})
	} else {
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: time.RFC3339Nano, FieldMap: fm})
	}
	return logrus.NewEntry(l)
}

// node is one running chainmail node: its store, listeners and API.
type node struct {
	cfg       *config.Node // as started; live changes are in live
	live      *liveconfig.Manager
	log       *logrus.Entry
	db        *store.DB
	archive   *archive.Store
	router    *route.Router
	queue     *queue.Store
	forwarder *forwarder.Forwarder
	web       *web.Server
	webLn     net.Listener

	ldeps     listener.Deps
	mu        sync.Mutex // guards listeners and lctx
	listeners map[string]*runningListener
	lctx      context.Context
	lwg       sync.WaitGroup
	lerr      chan error
}

func startNode(cfg *config.Node, log *logrus.Entry, stdout io.Writer, resetRuntime bool) (n *node, err error) {
	log = log.WithField("node", cfg.Node)
	spool := filepath.Join(cfg.DataDir, "spool")
	if err := os.MkdirAll(spool, 0o750); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	db, err := store.Open(filepath.Join(cfg.DataDir, "chainmail.db"), store.Options{
		LockTimeout: cfg.Store.LockTimeout,
		NoSync:      cfg.Store.NoSync,
		OnCommit:    store.NewMetrics(reg),
	})
	if err != nil {
		return nil, err
	}
	n = &node{cfg: cfg, log: log, db: db, listeners: map[string]*runningListener{}}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	// Spool files left by a crash belong to sessions that never got a
	// 250: their clients will send them again.
	if left, _ := filepath.Glob(filepath.Join(spool, "data-*.eml")); len(left) > 0 {
		for _, f := range left {
			os.Remove(f)
		}
		log.WithField("files", len(left)).Info("removed spool files of sessions interrupted by a crash")
	}
	if resetRuntime {
		if err := liveconfig.Reset(db); err != nil {
			return nil, err
		}
		log.Warn("runtime configuration dropped (--reset-runtime-config): using the file's listeners, routes and connections")
	}
	var overridden bool
	if n.live, cfg, overridden, err = liveconfig.Open(db, cfg); err != nil {
		return nil, err
	}
	if overridden {
		log.Warn("listeners, routes and connections come from the runtime configuration in the data store (changed live), not from the file; GET /api/v1/config shows them as YAML")
	}
	if n.archive, err = archive.Open(db); err != nil {
		return nil, err
	}
	reg.MustRegister(archive.NewCollector(n.archive))
	if n.queue, err = queue.Open(db); err != nil {
		return nil, err
	}
	n.forwarder = forwarder.New(cfg.Connections, forwarder.Deps{
		Node: cfg.Node, Queue: n.queue, Archive: n.archive,
		Log: log, Metrics: forwarder.NewMetrics(reg),
	})
	forwarder.RegisterQueueGauges(reg, n.forwarder)
	n.router = route.New(cfg.Routes, route.Deps{
		Node: cfg.Node, MaxHops: cfg.MaxHops,
		Commit: db, Archive: n.archive, Stage: n.archive, Queue: n.queue, Peers: n.forwarder,
		Metrics: route.NewMetrics(reg),
		Log:     log.WithField("component", "route"),
	})
	n.ldeps = listener.Deps{
		Node: cfg.Node, Router: n.router, PeerHello: n.forwarder.PeerSeen,
		SpoolDir: spool, SpoolThreshold: int64(cfg.Store.SpoolThreshold),
		Metrics: listener.NewMetrics(reg), Log: log,
	}
	for _, lc := range cfg.Listeners {
		if lc.Disabled {
			continue
		}
		rl, err := n.bindListener(lc)
		if err != nil {
			return nil, err
		}
		n.listeners[lc.Name] = rl
	}
	n.live.SetApplier(n)
	users, err := web.OpenUsers(db)
	if err != nil {
		return nil, err
	}
	password, created, err := users.EnsureAdmin()
	if err != nil {
		return nil, err
	}
	started := time.Now()
	n.web, err = web.New(web.Options{
		Address: cfg.Web.Address, NodeID: cfg.Node, Version: version, Started: started,
		Archive: n.archive, Connections: n.forwarder, Config: n.live, ListenerStates: n.listenerStates,
		Health: n.health, Counters: n.counters, Registry: reg,
		APITokens: cfg.Web.APITokens, ReadOnlyTokens: cfg.Web.ReadOnlyTokens, MetricsAuth: cfg.Web.MetricsAuth,
		Users: users, Log: log.WithField("component", "web"),
	})
	if err != nil {
		return nil, err
	}
	if n.webLn, err = net.Listen("tcp", cfg.Web.Address); err != nil {
		return nil, fmt.Errorf("web: %w", err)
	}
	fmt.Fprintf(stdout, "chainmail %s: node %q, data in %s\n", version, cfg.Node, cfg.DataDir)
	for _, lc := range cfg.Listeners {
		if rl, ok := n.listeners[lc.Name]; ok {
			fmt.Fprintf(stdout, "  SMTP listener %-10s %s\n", lc.Name, rl.l.Addr())
		}
	}
	fmt.Fprintf(stdout, "  console and API       http://%s/\n", n.webLn.Addr())
	if created {
		fmt.Fprintf(stdout, "\nFirst start: console login \"admin\", password %s\n(shown once; only its hash is kept)\n\n", password)
	}
	return n, nil
}

// run serves until ctx ends, then stops listeners (which finish their
// transactions), the forwarder, the API, and closes the store.
func (n *node) run(ctx context.Context) error {
	lctx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	n.lerr = make(chan error, 1)
	n.mu.Lock()
	n.lctx = lctx
	for _, rl := range n.listeners {
		n.runListener(rl)
	}
	n.mu.Unlock()
	fwdDone := make(chan struct{})
	fctx, stopForwarder := context.WithCancel(context.Background())
	go func() {
		defer close(fwdDone)
		n.forwarder.Run(fctx)
	}()
	webErr := make(chan error, 1)
	go func() {
		err := n.web.Serve(lctx, n.webLn)
		if err != nil && !errors.Is(err, context.Canceled) {
			stopAll()
		}
		webErr <- err
	}()
	n.log.Info("node started")
	var err error
	select {
	case <-lctx.Done():
	case err = <-n.lerr:
		stopAll()
	}
	n.log.Info("node stopping")
	n.lwg.Wait()
	// The forwarder stops after the listeners, so nothing is queued behind
	// its back; each worker finishes the message it is sending.
	stopForwarder()
	<-fwdDone
	if werr := <-webErr; werr != nil && !errors.Is(werr, context.Canceled) {
		err = errors.Join(err, fmt.Errorf("web: %w", werr))
	}
	err = errors.Join(err, n.close())
	if err == nil {
		n.log.Info("node stopped cleanly")
	}
	return err
}

func (n *node) close() error {
	if n.db == nil {
		return nil
	}
	err := n.db.Close()
	n.db = nil
	return err
}

func (n *node) health(ctx context.Context) []web.Check {
	checks := []web.Check{}
	err := n.db.View(func(*bolt.Tx) error { return nil })
	checks = append(checks, web.Check{Name: "store", OK: err == nil, Detail: errText(err, "bbolt file open")})
	var fs syscall.Statfs_t
	if err := syscall.Statfs(n.cfg.DataDir, &fs); err == nil {
		free := int64(fs.Bavail) * int64(fs.Bsize)
		// Below this a burst of large messages could fill the disk
		// between two checks.
		const minFree = 256 << 20
		checks = append(checks, web.Check{Name: "disk", OK: free >= minFree, Detail: fmt.Sprintf("%d MiB free in %s", free>>20, n.cfg.DataDir)})
	}
	n.mu.Lock()
	for name, rl := range n.listeners {
		select {
		case <-rl.l.Ready():
			checks = append(checks, web.Check{Name: "listener:" + name, OK: true, Detail: fmt.Sprintf("%s, %d sessions", rl.l.Addr(), rl.l.Sessions())})
		default:
			checks = append(checks, web.Check{Name: "listener:" + name, OK: false, Detail: "not accepting"})
		}
	}
	n.mu.Unlock()
	return checks
}

func errText(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}

func (n *node) counters() map[string]int64 {
	st := n.archive.Stats()
	c := map[string]int64{"archive_messages": st.Messages, "archive_bytes": st.Bytes}
	var sessions int64
	n.mu.Lock()
	for _, rl := range n.listeners {
		sessions += int64(rl.l.Sessions())
	}
	n.mu.Unlock()
	c["smtp_sessions_active"] = sessions
	return c
}
