package config

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Node is the configuration of one chainmail node (`chainmail serve`).
type Node struct {
	Node        string       `yaml:"node" json:"node"`
	DataDir     string       `yaml:"data_dir" json:"data_dir"`
	MaxHops     int          `yaml:"max_hops" json:"max_hops"`
	Listeners   []Listener   `yaml:"listeners" json:"listeners"`
	Connections []Connection `yaml:"connections" json:"connections"`
	Routes      []Route      `yaml:"routes" json:"routes"`
	Web         Web          `yaml:"web" json:"web"`
	Log         Log          `yaml:"log" json:"log"`
	Store       Store        `yaml:"store" json:"store"`
}

// Defaults fills what DESIGN.md promises for a key left out.
func (n *Node) Defaults() {
	n.DataDir = "./chainmail-data"
	n.MaxHops = 16
}

// Listener is one SMTP server of a node.
type Listener struct {
	Name              string        `yaml:"name" json:"name"`
	Address           string        `yaml:"address" json:"address"`
	Role              string        `yaml:"role" json:"role,omitempty"` // "" or "journal", or "ha"
	Disabled          bool          `yaml:"disabled" json:"disabled,omitempty"`
	Allow             []string      `yaml:"allow" json:"allow,omitempty"`
	ProxyProtocolFrom []string      `yaml:"proxy_protocol_from" json:"proxy_protocol_from,omitempty"`
	MaxMessageSize    Size          `yaml:"max_message_size" json:"max_message_size"`
	MaxRecipients     int           `yaml:"max_recipients" json:"max_recipients"`
	MaxSessions       int           `yaml:"max_sessions" json:"max_sessions"`
	MaxSessionsPerIP  int           `yaml:"max_sessions_per_ip" json:"max_sessions_per_ip"`
	ReadTimeout       time.Duration `yaml:"read_timeout" json:"read_timeout"`
	WriteTimeout      time.Duration `yaml:"write_timeout" json:"write_timeout"`
	DataTimeout       time.Duration `yaml:"data_timeout" json:"data_timeout"`
	TLS               *ListenerTLS  `yaml:"tls" json:"tls,omitempty"`
	Auth              *ListenerAuth `yaml:"auth" json:"auth,omitempty"`
	// Subaddress decodes journaling sub-addresses in RCPT TO into the
	// envelope recipients they stand for (Postfix recipient_bcc_maps).
	Subaddress *ListenerSubaddress `yaml:"subaddress" json:"subaddress,omitempty"`
}

// ListenerSubaddress: a RCPT TO of Mailbox's local part, the delimiter and
// an encoded recipient (archive+bob=contoso.example@archive.example, the
// last "=" standing for the "@") is archived as that recipient
// (bob@contoso.example); the address as received is kept as evidence.
// Mailbox itself, and anything not encoded so, is taken as it is.
type ListenerSubaddress struct {
	Mailbox string `yaml:"mailbox" json:"mailbox"`
	// Delimiter is the set of characters that may start the extension,
	// as Postfix's recipient_delimiter; "" means "+".
	Delimiter string `yaml:"delimiter" json:"delimiter,omitempty"`
}

// Defaults are generous for journaling (Exchange reports can be large and
// carry thousands of recipients) but bounded everywhere a client has a say.
func (l *Listener) Defaults() {
	l.MaxMessageSize = 64 << 20
	l.MaxRecipients = 1000
	l.MaxSessions = 200
	l.MaxSessionsPerIP = 50
	l.ReadTimeout = 5 * time.Minute // RFC 5321 §4.5.3.2.7: server timeout ≥ 5 minutes
	l.WriteTimeout = time.Minute
	l.DataTimeout = 3 * time.Minute // between two reads during DATA
}

// ListenerTLS enables STARTTLS on a listener.
type ListenerTLS struct {
	Cert    string `yaml:"cert" json:"cert"`
	Key     string `yaml:"key" json:"key"`
	Require bool   `yaml:"require" json:"require,omitempty"` // refuse MAIL before STARTTLS
}

// ListenerAuth enables AUTH PLAIN/LOGIN for configured users.
type ListenerAuth struct {
	Users []User `yaml:"users" json:"users"`
	// Required refuses MAIL from unauthenticated clients.
	Required bool `yaml:"required" json:"required,omitempty"`
	// AllowInsecure offers AUTH before STARTTLS (test rigs only).
	AllowInsecure bool `yaml:"allow_insecure" json:"allow_insecure,omitempty"`
}

// User is a login with a bcrypt password hash (never a clear password).
type User struct {
	Name         string `yaml:"name" json:"name"`
	PasswordHash string `yaml:"password_hash" json:"-"`
}

// Connection is an outbound SMTP peer (used by the forwarder).
type Connection struct {
	Name          string        `yaml:"name" json:"name"`
	Address       string        `yaml:"address" json:"address"`
	PeerNode      string        `yaml:"peer_node" json:"peer_node,omitempty"`
	Disabled      bool          `yaml:"disabled" json:"disabled,omitempty"`
	TLS           string        `yaml:"tls" json:"tls"` // none | starttls | implicit
	TLSCA         string        `yaml:"tls_ca" json:"tls_ca,omitempty"`
	TLSServerName string        `yaml:"tls_server_name" json:"tls_server_name,omitempty"`
	TLSSkipVerify bool          `yaml:"tls_skip_verify" json:"tls_skip_verify,omitempty"`
	Username      string        `yaml:"username" json:"username,omitempty"`
	Password      string        `yaml:"password" json:"-"`
	Concurrency   int           `yaml:"concurrency" json:"concurrency"`
	MaxRetries    int           `yaml:"max_retries" json:"max_retries"`
	QueueLimit    int           `yaml:"queue_limit" json:"queue_limit"`
	RetryMin      time.Duration `yaml:"retry_min" json:"retry_min"`
	RetryMax      time.Duration `yaml:"retry_max" json:"retry_max"`
	ProbeInterval time.Duration `yaml:"probe_interval" json:"probe_interval"`
	Timeout       time.Duration `yaml:"timeout" json:"timeout"`
}

// Defaults follow DESIGN.md's catch-up section.
func (c *Connection) Defaults() {
	c.TLS = "none"
	c.Concurrency = 32
	c.QueueLimit = 1000000
	c.RetryMin = time.Second
	c.RetryMax = 5 * time.Minute
	c.ProbeInterval = 2 * time.Second
	c.Timeout = time.Minute
}

// Route takes messages from listeners and runs actions on each.
type Route struct {
	Name     string   `yaml:"name" json:"name"`
	From     []string `yaml:"from" json:"from"`
	Actions  []string `yaml:"actions" json:"actions"`
	Disabled bool     `yaml:"disabled" json:"disabled,omitempty"`
}

// Web is the console and API server.
type Web struct {
	Address        string   `yaml:"address" json:"address"`
	APITokens      []string `yaml:"api_tokens" json:"-"`
	ReadOnlyTokens []string `yaml:"read_only_tokens" json:"-"`
	MetricsAuth    bool     `yaml:"metrics_auth" json:"metrics_auth,omitempty"`
}

// Defaults keeps the console on loopback unless the operator opens it.
func (w *Web) Defaults() { w.Address = "127.0.0.1:8090" }

// Log selects logrus's level and format.
type Log struct {
	Level  string `yaml:"level" json:"level"`
	Format string `yaml:"format" json:"format"`
}

// Defaults: info, human-readable text.
func (l *Log) Defaults() { l.Level, l.Format = "info", "text" }

// Store tunes the node's bbolt file.
type Store struct {
	// SpoolThreshold is the size past which DATA goes to a spool file
	// instead of memory.
	SpoolThreshold Size `yaml:"spool_threshold" json:"spool_threshold"`
	// LockTimeout bounds the wait for the data directory's file lock.
	LockTimeout time.Duration `yaml:"lock_timeout" json:"lock_timeout"`
	// NoSync turns off fsync: for benchmarks that want the protocol
	// ceiling only. A node with no_sync loses acknowledged mail on a crash.
	NoSync bool `yaml:"no_sync" json:"no_sync,omitempty"`
}

// Defaults: 1 MiB in memory per message at most.
func (s *Store) Defaults() {
	s.SpoolThreshold = 1 << 20
	s.LockTimeout = time.Second
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// Actions a route may run.
const (
	ActionArchive = "archive"
	ActionForward = "forward:" // forward:<connection>
)

// Roles a listener may have.
const (
	RoleJournal = "journal"
	RoleHA      = "ha"
)

// Validate checks the whole node configuration and its cross-references.
func (n *Node) Validate(p *Problems) {
	if n.Node == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			p.Add("node", "required (and the host name is unavailable: %v)", err)
		}
		n.Node = h
	}
	if n.Node != "" && !nameRE.MatchString(n.Node) {
		p.Add("node", "must be 1-63 letters, digits, '.', '_' or '-' (got %q)", n.Node)
	}
	if n.DataDir == "" {
		p.Add("data_dir", "required")
	}
	if n.MaxHops < 1 || n.MaxHops > 255 {
		p.Add("max_hops", "must be between 1 and 255 (got %d)", n.MaxHops)
	}
	listeners := map[string]bool{}
	addrs := map[string]string{}
	for i := range n.Listeners {
		l := &n.Listeners[i]
		path := fmt.Sprintf("listeners[%d]", i)
		l.Validate(p, path)
		if l.Name != "" {
			if listeners[l.Name] {
				p.Add(path+".name", "duplicate listener name %q", l.Name)
			}
			listeners[l.Name] = true
		}
		if l.Address != "" {
			if other, dup := addrs[l.Address]; dup {
				p.Add(path+".address", "%s is already used by listener %q", l.Address, other)
			}
			addrs[l.Address] = l.Name
		}
	}
	conns := map[string]bool{}
	for i := range n.Connections {
		c := &n.Connections[i]
		path := fmt.Sprintf("connections[%d]", i)
		c.Validate(p, path)
		if c.Name != "" {
			if conns[c.Name] {
				p.Add(path+".name", "duplicate connection name %q", c.Name)
			}
			conns[c.Name] = true
		}
		if c.PeerNode != "" && c.PeerNode == n.Node {
			p.Add(path+".peer_node", "names this node (%q): a connection to itself would loop", n.Node)
		}
		for _, l := range n.Listeners {
			if sameEndpoint(c.Address, l.Address) {
				p.Add(path+".address", "%s is this node's own listener %q: a connection to itself would loop", c.Address, l.Name)
			}
		}
	}
	taken := map[string]bool{}
	routes := map[string]bool{}
	for i := range n.Routes {
		r := &n.Routes[i]
		path := fmt.Sprintf("routes[%d]", i)
		if r.Name == "" {
			p.Add(path+".name", "required")
		} else if !nameRE.MatchString(r.Name) {
			p.Add(path+".name", "must be 1-63 letters, digits, '.', '_' or '-' (got %q)", r.Name)
		} else if routes[r.Name] {
			p.Add(path+".name", "duplicate route name %q", r.Name)
		}
		routes[r.Name] = true
		if len(r.From) == 0 {
			p.Add(path+".from", "required: name at least one listener")
		}
		for j, f := range r.From {
			if !listeners[f] {
				p.Add(fmt.Sprintf("%s.from[%d]", path, j), "no listener named %q", f)
			} else if !r.Disabled {
				taken[f] = true
			}
		}
		if len(r.Actions) == 0 {
			p.Add(path+".actions", "required: archive and/or forward:<connection>")
		}
		seen := map[string]bool{}
		for j, a := range r.Actions {
			ap := fmt.Sprintf("%s.actions[%d]", path, j)
			if seen[a] {
				p.Add(ap, "duplicate action %q", a)
			}
			seen[a] = true
			switch {
			case a == ActionArchive:
			case strings.HasPrefix(a, ActionForward):
				if c := strings.TrimPrefix(a, ActionForward); !conns[c] {
					p.Add(ap, "no connection named %q", c)
				}
			default:
				p.Add(ap, "unknown action %q (want archive or forward:<connection>)", a)
			}
		}
	}
	for i, l := range n.Listeners {
		if l.Name != "" && !l.Disabled && !taken[l.Name] {
			p.Add(fmt.Sprintf("listeners[%d].name", i), "no enabled route takes from listener %q: its mail would have nowhere to go", l.Name)
		}
	}
	n.Web.validate(p)
	switch n.Log.Level {
	case "trace", "debug", "info", "warn", "warning", "error":
	default:
		p.Add("log.level", "unknown level %q (want debug, info, warn or error)", n.Log.Level)
	}
	if n.Log.Format != "text" && n.Log.Format != "json" {
		p.Add("log.format", "unknown format %q (want text or json)", n.Log.Format)
	}
	if n.Store.SpoolThreshold < 4<<10 {
		p.Add("store.spool_threshold", "must be at least 4KiB (got %s)", n.Store.SpoolThreshold)
	}
	if n.Store.LockTimeout <= 0 {
		p.Add("store.lock_timeout", "must be > 0")
	}
}

// Validate checks one listener; path locates it in the file.
func (l *Listener) Validate(p *Problems, path string) {
	if l.Name == "" {
		p.Add(path+".name", "required")
	} else if !nameRE.MatchString(l.Name) {
		p.Add(path+".name", "must be 1-63 letters, digits, '.', '_' or '-' (got %q)", l.Name)
	}
	checkAddress(p, path+".address", l.Address)
	switch l.Role {
	case "", RoleJournal:
	case RoleHA:
		if len(l.Allow) == 0 && l.Auth == nil {
			p.Add(path+".role", "an ha listener honours X-Chainmail-Trace from its peers only: set allow (the peers' addresses) or auth")
		}
	default:
		p.Add(path+".role", "unknown role %q (want journal or ha)", l.Role)
	}
	checkCIDRs(p, path+".allow", l.Allow)
	checkCIDRs(p, path+".proxy_protocol_from", l.ProxyProtocolFrom)
	positive := func(key string, v int64) {
		if v <= 0 {
			p.Add(path+"."+key, "must be > 0 (got %d)", v)
		}
	}
	positive("max_message_size", int64(l.MaxMessageSize))
	positive("max_recipients", int64(l.MaxRecipients))
	positive("max_sessions", int64(l.MaxSessions))
	positive("max_sessions_per_ip", int64(l.MaxSessionsPerIP))
	positive("read_timeout", int64(l.ReadTimeout))
	positive("write_timeout", int64(l.WriteTimeout))
	positive("data_timeout", int64(l.DataTimeout))
	if l.TLS != nil {
		if l.TLS.Cert == "" {
			p.Add(path+".tls.cert", "required")
		}
		if l.TLS.Key == "" {
			p.Add(path+".tls.key", "required")
		}
	}
	if l.Subaddress != nil {
		l.Subaddress.validate(p, path+".subaddress")
	}
	if l.Auth != nil {
		if len(l.Auth.Users) == 0 {
			p.Add(path+".auth.users", "required: at least one user")
		}
		for i, u := range l.Auth.Users {
			up := fmt.Sprintf("%s.auth.users[%d]", path, i)
			if u.Name == "" {
				p.Add(up+".name", "required")
			}
			if !strings.HasPrefix(u.PasswordHash, "$2") {
				p.Add(up+".password_hash", "must be a bcrypt hash ($2a$/$2b$…); make one with `chainmail passwd`")
			}
		}
		if l.TLS == nil && !l.Auth.AllowInsecure {
			p.Add(path+".auth", "AUTH without tls would send passwords in clear: configure tls, or set allow_insecure: true")
		}
	}
}

func (sa *ListenerSubaddress) validate(p *Problems, path string) {
	delim := sa.Delimiter
	if delim == "" {
		delim = "+"
	}
	if len(delim) > 8 {
		p.Add(path+".delimiter", "at most 8 characters (got %q)", sa.Delimiter)
	}
	for _, c := range delim {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune(`@="\<>()[],;:.`, c) || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') {
			p.Add(path+".delimiter", "%q cannot separate an extension: use characters such as + or - (got %q)", c, sa.Delimiter)
			break
		}
	}
	local, domain, ok := strings.Cut(sa.Mailbox, "@")
	switch {
	case sa.Mailbox == "":
		p.Add(path+".mailbox", "required: the archive address the sub-addresses extend (archive@archive.example)")
	case !ok || local == "" || domain == "" || strings.ContainsAny(sa.Mailbox, " \t\"<>()[],;:") || strings.Count(sa.Mailbox, "@") != 1:
		p.Add(path+".mailbox", "want an address like archive@archive.example (got %q)", sa.Mailbox)
	case strings.ContainsAny(local, delim):
		p.Add(path+".mailbox", "the local part %q contains the delimiter %q; give the address without an extension", local, delim)
	case strings.HasPrefix(domain, ".") || strings.HasSuffix(domain, ".") || strings.Contains(domain, ".."):
		p.Add(path+".mailbox", "invalid domain %q", domain)
	}
}

// Validate checks one connection; path locates it in the file.
func (c *Connection) Validate(p *Problems, path string) {
	if c.Name == "" {
		p.Add(path+".name", "required")
	} else if !nameRE.MatchString(c.Name) {
		p.Add(path+".name", "must be 1-63 letters, digits, '.', '_' or '-' (got %q)", c.Name)
	}
	checkAddress(p, path+".address", c.Address)
	if c.PeerNode != "" && !nameRE.MatchString(c.PeerNode) {
		p.Add(path+".peer_node", "not a valid node id %q", c.PeerNode)
	}
	switch c.TLS {
	case "none", "starttls", "implicit":
	default:
		p.Add(path+".tls", "unknown mode %q (want none, starttls or implicit)", c.TLS)
	}
	if c.Concurrency < 1 || c.Concurrency > 256 {
		p.Add(path+".concurrency", "must be between 1 and 256 (got %d)", c.Concurrency)
	}
	if c.MaxRetries < 0 {
		p.Add(path+".max_retries", "must be >= 0 (0 retries forever; got %d)", c.MaxRetries)
	}
	if c.QueueLimit < 1 {
		p.Add(path+".queue_limit", "must be > 0 (got %d)", c.QueueLimit)
	}
	if c.RetryMin <= 0 {
		p.Add(path+".retry_min", "must be > 0")
	}
	if c.RetryMax < c.RetryMin {
		p.Add(path+".retry_max", "must be >= retry_min (%s)", c.RetryMin)
	}
	if c.ProbeInterval <= 0 {
		p.Add(path+".probe_interval", "must be > 0")
	}
	if c.Timeout <= 0 {
		p.Add(path+".timeout", "must be > 0")
	}
	if c.Username != "" && c.Password == "" {
		p.Add(path+".password", "required with username")
	}
}

func (w *Web) validate(p *Problems) {
	checkAddress(p, "web.address", w.Address)
	for i, t := range w.APITokens {
		if len(t) < 16 {
			p.Add(fmt.Sprintf("web.api_tokens[%d]", i), "too short: use at least 16 characters")
		}
	}
	for i, t := range w.ReadOnlyTokens {
		if len(t) < 16 {
			p.Add(fmt.Sprintf("web.read_only_tokens[%d]", i), "too short: use at least 16 characters")
		}
	}
}

func checkAddress(p *Problems, path, addr string) {
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
	if err != nil || n < 0 || n > 65535 {
		p.Add(path, "invalid port %q in %q", port, addr)
	}
	if host != "" && strings.ContainsAny(host, " /") {
		p.Add(path, "invalid host %q in %q", host, addr)
	}
}

func checkCIDRs(p *Problems, path string, list []string) {
	for i, s := range list {
		if _, err := ParsePrefix(s); err != nil {
			p.Add(fmt.Sprintf("%s[%d]", path, i), "%v", err)
		}
	}
}

// ParsePrefix reads a CIDR, or a bare address as a single-host prefix.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		pr, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid network %q (want a CIDR such as 10.0.1.0/24)", s)
		}
		return pr.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid network %q (want a CIDR such as 10.0.1.0/24)", s)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// sameEndpoint tells whether a connection's address points at a listener's
// address, counting a wildcard listener as every local address.
func sameEndpoint(connAddr, listenAddr string) bool {
	ch, cp, err1 := net.SplitHostPort(connAddr)
	lh, lp, err2 := net.SplitHostPort(listenAddr)
	if err1 != nil || err2 != nil || cp != lp {
		return false
	}
	if ch == lh {
		return true
	}
	wild := lh == "" || lh == "0.0.0.0" || lh == "::"
	if !wild {
		return strings.EqualFold(ch, "localhost") && (lh == "127.0.0.1" || lh == "::1")
	}
	if strings.EqualFold(ch, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(ch)
	if err != nil {
		return false
	}
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range ifaddrs {
		if pn, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(pn.IP); ok && ip.Unmap() == a.Unmap() {
				return true
			}
		}
	}
	return false
}
