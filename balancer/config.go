package balancer

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"chainmail/internal/config"
)

// Algorithms a pool may use to choose a server for a new session.
const (
	AlgorithmWeightedRoundRobin = "weighted-round-robin"
	AlgorithmLeastConn          = "least-conn"
	AlgorithmIPHash             = "ip-hash"
	AlgorithmRandomTwo          = "random-two"
)

// PROXY protocol versions a pool may send to its servers.
const (
	ProxyNone = "none"
	ProxyV1   = "v1"
	ProxyV2   = "v2"
)

// Active health check types.
const (
	CheckNone = "none"
	CheckTCP  = "tcp"
	CheckSMTP = "smtp"
)

// Limits that keep a configuration within what the balancer is built for.
const (
	maxWeight    = 1000
	maxSlowStart = time.Hour
	minTokenLen  = 16
)

// Config is a balancer configuration file. Its only top-level key is
// "balancer", so `chainmail check` can tell it from a node's file.
type Config struct {
	Balancer Settings `yaml:"balancer" json:"balancer"`
}

// Settings is the balancer tier: its admin endpoint, frontends and pools.
type Settings struct {
	// Admin is the listen address of the API, /healthz and /metrics;
	// empty runs no admin endpoint.
	Admin string `yaml:"admin" json:"admin"`
	// APITokens are the bearer tokens accepted by /api/v1.
	APITokens []string `yaml:"api_tokens" json:"-"`
	// ShutdownTimeout bounds how long a graceful stop waits for
	// established sessions before it closes them.
	ShutdownTimeout time.Duration    `yaml:"shutdown_timeout" json:"shutdown_timeout"`
	Log             config.Log       `yaml:"log" json:"log"`
	Frontends       []FrontendConfig `yaml:"frontends" json:"frontends"`
	Pools           []PoolConfig     `yaml:"pools" json:"pools"`
}

// Defaults: 30s to finish sessions on stop.
func (s *Settings) Defaults() { s.ShutdownTimeout = 30 * time.Second }

// FrontendConfig is one listen address and the pool it feeds.
type FrontendConfig struct {
	Name    string `yaml:"name" json:"name"`
	Address string `yaml:"address" json:"address"`
	Pool    string `yaml:"pool" json:"pool"`
	// MaxSessions caps concurrent client sessions; a client past it is
	// answered 421 4.3.2 and closed. 0 means no limit.
	MaxSessions int `yaml:"max_sessions" json:"max_sessions"`
	// ConnectTimeout bounds one TCP connect to a server.
	ConnectTimeout time.Duration `yaml:"connect_timeout" json:"connect_timeout"`
	// GreetingTimeout bounds the wait for a server's greeting after connect.
	GreetingTimeout time.Duration `yaml:"greeting_timeout" json:"greeting_timeout"`
	// IdleTimeout closes an established session in which neither side has
	// sent anything for this long.
	IdleTimeout time.Duration `yaml:"idle_timeout" json:"idle_timeout"`
	// QueueTimeout bounds the wait for a free slot when every eligible
	// server is at its max_conns.
	QueueTimeout time.Duration `yaml:"queue_timeout" json:"queue_timeout"`
}

// Defaults for a frontend. The idle timeout follows RFC 5321 §4.5.3.2.6:
// a client waits up to 10 minutes for the reply to the end of DATA.
func (f *FrontendConfig) Defaults() {
	f.ConnectTimeout = 2 * time.Second
	f.GreetingTimeout = 15 * time.Second
	f.IdleTimeout = 10 * time.Minute
	f.QueueTimeout = 5 * time.Second
}

// PoolConfig is a set of servers and how sessions are spread over them.
type PoolConfig struct {
	Name          string `yaml:"name" json:"name"`
	Algorithm     string `yaml:"algorithm" json:"algorithm"`
	ProxyProtocol string `yaml:"proxy_protocol" json:"proxy_protocol"`
	// Tries is how many servers one session may try before the client is
	// answered 421; 0 means every server of the pool once.
	Tries       int               `yaml:"tries" json:"tries"`
	HealthCheck HealthCheckConfig `yaml:"health_check" json:"health_check"`
	Servers     []ServerConfig    `yaml:"servers" json:"servers"`
}

// Defaults: smooth weighted round robin, no PROXY header.
func (p *PoolConfig) Defaults() {
	p.Algorithm = AlgorithmWeightedRoundRobin
	p.ProxyProtocol = ProxyNone
}

// HealthCheckConfig is a pool's active check, run against each server.
type HealthCheckConfig struct {
	Type     string        `yaml:"type" json:"type"`
	Interval time.Duration `yaml:"interval" json:"interval"`
	Timeout  time.Duration `yaml:"timeout" json:"timeout"`
	Rise     int           `yaml:"rise" json:"rise"`
	Fall     int           `yaml:"fall" json:"fall"`
	// Helo is the name the smtp check sends with EHLO; empty sends the
	// address literal of the check connection's local address.
	Helo string `yaml:"helo" json:"helo,omitempty"`
}

// Defaults: no active check unless a type is given; HAProxy's rise and fall.
func (h *HealthCheckConfig) Defaults() {
	h.Type = CheckNone
	h.Interval = 5 * time.Second
	h.Timeout = 2 * time.Second
	h.Rise = 2
	h.Fall = 3
}

// ServerConfig is one server of a pool.
type ServerConfig struct {
	Name    string `yaml:"name" json:"name"`
	Address string `yaml:"address" json:"address"`
	// Weight is relative: a server of weight 4 gets four times the sessions
	// of a server of weight 1. 0 gives it no new sessions.
	Weight int  `yaml:"weight" json:"weight"`
	Backup bool `yaml:"backup" json:"backup"`
	Down   bool `yaml:"down" json:"down"`
	// MaxFails failed tries within FailTimeout make the server unavailable
	// for FailTimeout (nginx semantics); 0 disables passive checks.
	MaxFails    int           `yaml:"max_fails" json:"max_fails"`
	FailTimeout time.Duration `yaml:"fail_timeout" json:"fail_timeout"`
	// MaxConns caps concurrent sessions to this server; 0 means no limit.
	MaxConns int `yaml:"max_conns" json:"max_conns"`
	// SlowStart ramps a recovered server's weight linearly from almost
	// nothing to Weight over this long.
	SlowStart time.Duration `yaml:"slow_start" json:"slow_start"`
}

// Defaults are nginx's: weight 1, max_fails 1, fail_timeout 10s.
func (s *ServerConfig) Defaults() {
	s.Weight = 1
	s.MaxFails = 1
	s.FailTimeout = 10 * time.Second
}

// LoadConfig reads and validates a balancer configuration file. The error
// lists every problem, one "FILE:LINE: path: message" per line.
func LoadConfig(path string) (*Config, error) {
	c := &Config{}
	if err := config.Load(path, c); err != nil {
		return nil, err
	}
	return c, nil
}

// ParseConfig is LoadConfig for bytes already read; file names them in errors.
func ParseConfig(file string, data []byte) (*Config, error) {
	c := &Config{}
	if err := config.Parse(file, data, c); err != nil {
		return nil, err
	}
	return c, nil
}

// validateErr validates a Config built in code, returning every problem.
func (c *Config) validateErr() error {
	p := &config.Problems{}
	c.Validate(p)
	list := p.List()
	if len(list) == 0 {
		return nil
	}
	msgs := make([]string, len(list))
	for i, pr := range list {
		msgs[i] = pr.Path + ": " + pr.Msg
	}
	return errors.New("balancer: invalid configuration:\n" + strings.Join(msgs, "\n"))
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// Validate reports every problem of the configuration with its key path.
func (c *Config) Validate(p *config.Problems) {
	s := &c.Balancer
	if s.Admin != "" {
		checkAddr(p, "balancer.admin", s.Admin, false)
	}
	for i, t := range s.APITokens {
		if len(t) < minTokenLen {
			p.Add(fmt.Sprintf("balancer.api_tokens[%d]", i), "too short: use at least %d characters", minTokenLen)
		}
	}
	if s.ShutdownTimeout < 0 {
		p.Add("balancer.shutdown_timeout", "must be >= 0 (got %s)", s.ShutdownTimeout)
	}
	switch s.Log.Level {
	case "debug", "info", "warn", "warning", "error":
	default:
		p.Add("balancer.log.level", "unknown level %q (want debug, info, warn or error)", s.Log.Level)
	}
	switch s.Log.Format {
	case "text", "json":
	default:
		p.Add("balancer.log.format", "unknown format %q (want text or json)", s.Log.Format)
	}

	pools := map[string]bool{}
	for i := range s.Pools {
		path := fmt.Sprintf("balancer.pools[%d]", i)
		pc := &s.Pools[i]
		if pools[pc.Name] {
			p.Add(path+".name", "duplicate pool name %q", pc.Name)
		}
		pools[pc.Name] = true
		pc.validate(p, path)
	}

	if len(s.Frontends) == 0 {
		p.Add("balancer.frontends", "required: at least one frontend")
	}
	names, addrs := map[string]bool{}, map[string]bool{}
	for i := range s.Frontends {
		path := fmt.Sprintf("balancer.frontends[%d]", i)
		f := &s.Frontends[i]
		checkName(p, path+".name", f.Name)
		if names[f.Name] {
			p.Add(path+".name", "duplicate frontend name %q", f.Name)
		}
		names[f.Name] = true
		checkAddr(p, path+".address", f.Address, false)
		if addrs[f.Address] && !strings.HasSuffix(f.Address, ":0") {
			p.Add(path+".address", "address %q is used by another frontend", f.Address)
		}
		addrs[f.Address] = true
		if s.Admin != "" && f.Address == s.Admin {
			p.Add(path+".address", "address %q is the admin address", f.Address)
		}
		if f.Pool == "" {
			p.Add(path+".pool", "required: the pool this frontend feeds")
		} else if !pools[f.Pool] {
			p.Add(path+".pool", "no pool named %q", f.Pool)
		}
		if f.MaxSessions < 0 {
			p.Add(path+".max_sessions", "must be >= 0 (got %d)", f.MaxSessions)
		}
		positive(p, path+".connect_timeout", f.ConnectTimeout)
		positive(p, path+".greeting_timeout", f.GreetingTimeout)
		positive(p, path+".idle_timeout", f.IdleTimeout)
		positive(p, path+".queue_timeout", f.QueueTimeout)
	}
}

func (pc *PoolConfig) validate(p *config.Problems, path string) {
	checkName(p, path+".name", pc.Name)
	switch pc.Algorithm {
	case AlgorithmWeightedRoundRobin, AlgorithmLeastConn, AlgorithmIPHash, AlgorithmRandomTwo:
	default:
		p.Add(path+".algorithm", "unknown algorithm %q (want %s, %s, %s or %s)", pc.Algorithm,
			AlgorithmWeightedRoundRobin, AlgorithmLeastConn, AlgorithmIPHash, AlgorithmRandomTwo)
	}
	switch pc.ProxyProtocol {
	case ProxyNone, ProxyV1, ProxyV2:
	default:
		p.Add(path+".proxy_protocol", "unknown value %q (want none, v1 or v2)", pc.ProxyProtocol)
	}
	if pc.Tries < 0 {
		p.Add(path+".tries", "must be >= 0 (got %d)", pc.Tries)
	}
	hc, hp := &pc.HealthCheck, path+".health_check"
	switch hc.Type {
	case CheckNone, CheckTCP, CheckSMTP:
	default:
		p.Add(hp+".type", "unknown type %q (want none, tcp or smtp)", hc.Type)
	}
	positive(p, hp+".interval", hc.Interval)
	positive(p, hp+".timeout", hc.Timeout)
	if hc.Rise < 1 {
		p.Add(hp+".rise", "must be >= 1 (got %d)", hc.Rise)
	}
	if hc.Fall < 1 {
		p.Add(hp+".fall", "must be >= 1 (got %d)", hc.Fall)
	}
	if strings.ContainsAny(hc.Helo, " \r\n\t") {
		p.Add(hp+".helo", "must be one word (got %q)", hc.Helo)
	}
	if len(pc.Servers) == 0 {
		p.Add(path+".servers", "required: at least one server")
	}
	names, addrs := map[string]bool{}, map[string]bool{}
	for j := range pc.Servers {
		sp := fmt.Sprintf("%s.servers[%d]", path, j)
		s := &pc.Servers[j]
		checkName(p, sp+".name", s.Name)
		if names[s.Name] {
			p.Add(sp+".name", "duplicate server name %q in pool %q", s.Name, pc.Name)
		}
		names[s.Name] = true
		checkAddr(p, sp+".address", s.Address, true)
		if addrs[s.Address] {
			p.Add(sp+".address", "address %q is already a server of pool %q", s.Address, pc.Name)
		}
		addrs[s.Address] = true
		if s.Weight < 0 || s.Weight > maxWeight {
			p.Add(sp+".weight", "must be between 0 and %d (got %d)", maxWeight, s.Weight)
		}
		if s.MaxFails < 0 {
			p.Add(sp+".max_fails", "must be >= 0 (got %d)", s.MaxFails)
		}
		if s.MaxFails > 0 && s.FailTimeout <= 0 {
			p.Add(sp+".fail_timeout", "must be > 0 when max_fails is set (got %s)", s.FailTimeout)
		}
		if s.MaxConns < 0 {
			p.Add(sp+".max_conns", "must be >= 0 (got %d)", s.MaxConns)
		}
		if s.SlowStart < 0 || s.SlowStart > maxSlowStart {
			p.Add(sp+".slow_start", "must be between 0 and %s (got %s)", maxSlowStart, s.SlowStart)
		}
	}
}

func checkName(p *config.Problems, path, name string) {
	if name == "" {
		p.Add(path, "required")
	} else if !nameRE.MatchString(name) {
		p.Add(path, "invalid name %q (letters, digits, '.', '_', '-'; at most 63)", name)
	}
}

// checkAddr checks host:port; a server address also needs a host and a
// non-zero port, where a listen address may leave the host out.
func checkAddr(p *config.Problems, path, addr string, dial bool) {
	if addr == "" {
		p.Add(path, "required (host:port)")
		return
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		p.Add(path, "invalid address %q (want host:port)", addr)
		return
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (dial && n == 0) {
		p.Add(path, "invalid port %q in %q", port, addr)
	}
	if dial && host == "" {
		p.Add(path, "missing host in %q", addr)
	}
	if strings.ContainsAny(host, " /") {
		p.Add(path, "invalid host %q in %q", host, addr)
	}
}

func positive(p *config.Problems, path string, d time.Duration) {
	if d <= 0 {
		p.Add(path, "must be > 0 (got %s)", d)
	}
}
