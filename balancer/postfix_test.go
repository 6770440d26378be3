package balancer

import (
	"fmt"
	"strings"
	"testing"

	"chainmail/internal/testutil"
)

// postfixInstance is a private Postfix on loopback (testutil.StartPostfix)
// with two smtpd services, every transport "discard": nothing can leave
// the machine.
type postfixInstance struct {
	*testutil.Postfix
	plain string // smtpd address
	proxy string // smtpd address expecting a PROXY header
}

func startPostfix(t *testing.T) *postfixInstance {
	t.Helper()
	p := &postfixInstance{plain: freeAddr(t, "127.0.0.1"), proxy: freeAddr(t, "127.0.0.1")}
	p.Postfix = testutil.StartPostfix(t, testutil.PostfixConfig{
		Services: fmt.Sprintf("%s inet n - n - - smtpd\n%s inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy\n", p.plain, p.proxy),
		Main: `default_transport = discard:test
local_transport = discard:test
relay_transport = discard:test
smtpd_banner = $myhostname ESMTP
`,
		Wait: p.plain,
	})
	return p
}

func (p *postfixInstance) logText() string { return p.Log() }

// TestPostfixSeesPoliteChecks runs smtp checks (plain, and with PROXY v1
// and v2 headers) and client sessions against a real Postfix, whose log
// must show every check as a clean EHLO/QUIT session and no complaint.
func TestPostfixSeesPoliteChecks(t *testing.T) {
	t.Parallel()
	pf := startPostfix(t)
	pools := ""
	for _, pc := range []struct{ name, proxy, addr string }{{"plain", "none", pf.plain}, {"v1", "v1", pf.proxy}, {"v2", "v2", pf.proxy}} {
		pools += fmt.Sprintf(`    - name: %s
      proxy_protocol: %s
      health_check: {type: smtp, interval: 20ms, timeout: 2s, rise: 1, fall: 1}
      servers: [{name: postfix, address: %q}]
`, pc.name, pc.proxy, pc.addr)
	}
	yaml := fmt.Sprintf(`balancer:
  frontends:
    - {name: plain, address: "127.0.0.1:0", pool: plain}
    - {name: v1, address: "127.0.0.1:0", pool: v1}
    - {name: v2, address: "127.0.0.1:0", pool: v2}
  pools:
%s`, pools)
	bal := startBalancer(t, yaml, Options{})
	const checks = 25
	for _, pool := range []string{"plain", "v1", "v2"} {
		waitFor(t, pool+" checks", func() bool { return bal.server(t, pool, "postfix").Checks >= checks })
		if st := bal.server(t, pool, "postfix"); st.CheckFailures > 0 || st.Health != "up" {
			t.Fatalf("%s: checks against Postfix failed: %+v", pool, st.LastCheck)
		}
	}
	for _, fe := range []string{"plain", "v1", "v2"} {
		for range 3 {
			c, err := dialClient(bal.frontend(t, fe), "127.0.0.31")
			if err != nil {
				t.Fatal(err)
			}
			if err := c.send(true); err != nil {
				t.Fatalf("%s: mail through the balancer to Postfix: %v", fe, err)
			}
			if err := c.quit(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Every check is a clean session in Postfix's own words.
	waitFor(t, "Postfix to log the sessions' ends", func() bool {
		return strings.Count(pf.logText(), ": disconnect from ") >= 3*checks+6
	})
	log := pf.logText()
	if n := strings.Count(log, "ehlo=1 quit=1 commands=2"); n < 3*checks {
		t.Errorf("only %d clean EHLO/QUIT sessions for %d checks", n, 3*checks)
	}
	for _, bad := range []string{"improper command pipelining", "lost connection", "timeout after", "warning: haproxy", "too many errors"} {
		if strings.Contains(log, bad) {
			t.Errorf("Postfix logged %q:\n%s", bad, grepLines(log, bad))
		}
	}
	// The relayed sessions reached Postfix from the client's address.
	if n := strings.Count(log, ": connect from unknown[127.0.0.31]") + strings.Count(log, ": connect from localhost[127.0.0.31]"); n != 6 {
		t.Errorf("Postfix saw %d PROXY-relayed connects from the client, want 6", n)
	}
}

func grepLines(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
