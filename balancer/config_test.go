package balancer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadConfigExample(t *testing.T) {
	t.Setenv("CHAINMAIL_TOKEN", "0123456789abcdef-token")
	cfg, err := LoadConfig("testdata/balancer.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Balancer
	if s.Admin != "127.0.0.1:8404" || s.APITokens[0] != "0123456789abcdef-token" || s.ShutdownTimeout != 20*time.Second {
		t.Fatalf("settings: %+v", s)
	}
	f := s.Frontends[0]
	if f.MaxSessions != 2000 || f.GreetingTimeout != 10*time.Second || f.IdleTimeout != 10*time.Minute {
		t.Fatalf("frontend: %+v", f)
	}
	p := s.Pools[0]
	if p.ProxyProtocol != ProxyV2 || p.HealthCheck.Type != CheckSMTP || p.HealthCheck.Fall != 3 || p.Tries != 3 {
		t.Fatalf("pool: %+v", p)
	}
	a, b, c, d := p.Servers[0], p.Servers[1], p.Servers[2], p.Servers[3]
	if a.Weight != 4 || a.MaxFails != 3 || a.FailTimeout != 3*time.Second || a.MaxConns != 500 || a.SlowStart != 30*time.Second {
		t.Fatalf("server a: %+v", a)
	}
	// Defaults are nginx's where the file says nothing.
	if b.Weight != 1 || b.MaxFails != 1 || b.FailTimeout != 10*time.Second || b.MaxConns != 0 || !c.Backup || !d.Down {
		t.Fatalf("servers b, c, d: %+v %+v %+v", b, c, d)
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := ParseConfig("min.yaml", []byte(`
balancer:
  frontends: [{name: smtp, address: ":2525", pool: p}]
  pools: [{name: p, servers: [{name: a, address: "127.0.0.1:25"}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	f, p := cfg.Balancer.Frontends[0], cfg.Balancer.Pools[0]
	if f.ConnectTimeout != 2*time.Second || f.GreetingTimeout != 15*time.Second || f.IdleTimeout != 10*time.Minute || f.QueueTimeout != 5*time.Second {
		t.Errorf("frontend defaults: %+v", f)
	}
	if p.Algorithm != AlgorithmWeightedRoundRobin || p.ProxyProtocol != ProxyNone || p.HealthCheck.Type != CheckNone ||
		p.HealthCheck.Interval != 5*time.Second || p.HealthCheck.Rise != 2 || p.HealthCheck.Fall != 3 {
		t.Errorf("pool defaults: %+v", p)
	}
	if cfg.Balancer.ShutdownTimeout != 30*time.Second || cfg.Balancer.Log.Level != "info" {
		t.Errorf("settings defaults: %+v", cfg.Balancer)
	}
}

func TestConfigErrorsNameLineAndKey(t *testing.T) {
	t.Parallel()
	data := `balancer:
  admin: "nonsense"
  api_tokens: [short]
  frontends:
    - {name: smtp, address: ":25", pool: nope, max_sessions: -1}
    - {name: smtp, address: ":25", pool: p, idle_timeout: 0s}
  pools:
    - name: p
      algorithm: fastest
      proxy_protocol: v3
      health_check: {type: http, rise: 0}
      servers:
        - {name: a, address: "10.0.0.1", weight: -1}
        - {name: a, address: "10.0.0.2:25", max_fails: 2, fail_timeout: 0s, max_conns: -5, slow_start: 2h}
        - {name: b, address: "10.0.0.3:25", wieght: 3}
`
	_, err := ParseConfig("bal.yaml", []byte(data))
	if err == nil {
		t.Fatal("no error")
	}
	// The decoder reports the unknown key first; fix it to see the rest.
	if !strings.Contains(err.Error(), `bal.yaml:15: balancer.pools[0].servers[2].wieght: unknown key`) {
		t.Fatalf("unknown key not reported with file, line and path:\n%v", err)
	}
	_, err = ParseConfig("bal.yaml", []byte(strings.Replace(data, "wieght", "weight", 1)))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"bal.yaml:2: balancer.admin: invalid address",
		"bal.yaml:3: balancer.api_tokens[0]: too short",
		"bal.yaml:5: balancer.frontends[0].pool: no pool named \"nope\"",
		"bal.yaml:5: balancer.frontends[0].max_sessions: must be >= 0",
		"bal.yaml:6: balancer.frontends[1].name: duplicate frontend name",
		"bal.yaml:6: balancer.frontends[1].address: address \":25\" is used by another frontend",
		"bal.yaml:6: balancer.frontends[1].idle_timeout: must be > 0",
		"bal.yaml:9: balancer.pools[0].algorithm: unknown algorithm \"fastest\"",
		"bal.yaml:10: balancer.pools[0].proxy_protocol: unknown value \"v3\"",
		"bal.yaml:11: balancer.pools[0].health_check.type: unknown type \"http\"",
		"bal.yaml:11: balancer.pools[0].health_check.rise: must be >= 1",
		"bal.yaml:13: balancer.pools[0].servers[0].address: invalid address",
		"bal.yaml:13: balancer.pools[0].servers[0].weight: must be between 0 and 1000",
		"bal.yaml:14: balancer.pools[0].servers[1].name: duplicate server name",
		"bal.yaml:14: balancer.pools[0].servers[1].fail_timeout: must be > 0 when max_fails is set",
		"bal.yaml:14: balancer.pools[0].servers[1].max_conns: must be >= 0",
		"bal.yaml:14: balancer.pools[0].servers[1].slow_start: must be between 0 and 1h0m0s",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
}

func TestConfigMissingEnv(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "b.yaml")
	os.WriteFile(p, []byte(`balancer:
  api_tokens: ["${CHAINMAIL_TEST_UNSET_TOKEN}"]
  frontends: [{name: smtp, address: ":2525", pool: p}]
  pools: [{name: p, servers: [{name: a, address: "127.0.0.1:25"}]}]
`), 0o600)
	_, err := LoadConfig(p)
	if err == nil || !strings.Contains(err.Error(), "CHAINMAIL_TEST_UNSET_TOKEN is not set") {
		t.Fatalf("err = %v", err)
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	t.Parallel()
	_, err := New(&Config{}, Options{})
	if err == nil || !strings.Contains(err.Error(), "balancer.frontends: required") {
		t.Fatalf("err = %v", err)
	}
}

// FuzzParseConfig: the loader and validation never panic, and a config
// that passes validation can be handed to New's checks again unchanged.
func FuzzParseConfig(f *testing.F) {
	seed, err := os.ReadFile("testdata/balancer.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(strings.ReplaceAll(string(seed), "${CHAINMAIL_TOKEN}", "0123456789abcdef0123"))
	f.Add("balancer:\n  frontends: [{name: s, address: ':1', pool: p}]\n  pools: [{name: p, servers: [{name: a, address: 'h:1'}]}]\n")
	f.Add("balancer: {pools: [{name: p, servers: [{name: a, address: 'h:1', weight: 1001}]}]}")
	f.Add("balancer: [1, 2]")
	f.Fuzz(func(t *testing.T, data string) {
		cfg, err := ParseConfig("fuzz.yaml", []byte(data))
		if err != nil {
			return
		}
		if err := cfg.validateErr(); err != nil {
			t.Fatalf("parsed config fails validation again: %v", err)
		}
	})
}
