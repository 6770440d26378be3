package balancer

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	postfixCmd    = "/usr/sbin/postfix"
	postfixMaster = "/usr/lib/postfix/sbin/master"
)

// postfixInstance is a private Postfix on loopback: its own configuration,
// queue and log under a temporary directory, every transport "discard", so
// nothing can leave the machine.
type postfixInstance struct {
	dir    string
	plain  string // smtpd address
	proxy  string // smtpd address expecting a PROXY header
	log    string
	master *exec.Cmd
}

// The services smtpd needs, none chrooted (the queue is a temp dir).
const postfixMasterCf = `%s inet n - n - - smtpd
%s inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
`

const postfixMainCf = `compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
mail_owner = postfix
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = postfix.test
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
default_transport = discard:test
local_transport = discard:test
relay_transport = discard:test
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
maillog_file = %[1]s/maillog
maillog_file_prefixes = %[1]s
smtpd_banner = $myhostname ESMTP
`

func startPostfix(t *testing.T) *postfixInstance {
	t.Helper()
	if _, err := os.Stat(postfixMaster); err != nil {
		t.Skipf("Postfix not installed (apt-get install postfix): %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("a private Postfix instance needs root to start its master")
	}
	pf, err := user.Lookup("postfix")
	if err != nil {
		t.Skipf("no postfix user: %v", err)
	}
	dir, err := os.MkdirTemp("", "chainmail-postfix-") // not t.TempDir: Postfix wants root-owned parents
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			os.RemoveAll(dir)
		}
	})
	os.Chmod(dir, 0o755)
	p := &postfixInstance{dir: dir, plain: freeAddr(t, "127.0.0.1"), proxy: freeAddr(t, "127.0.0.1"), log: filepath.Join(dir, "maillog")}
	for _, d := range []string{"queue", "data"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var uid, gid int
	fmt.Sscan(pf.Uid, &uid)
	fmt.Sscan(pf.Gid, &gid)
	os.Chown(filepath.Join(dir, "data"), uid, gid)
	os.WriteFile(filepath.Join(dir, "main.cf"), []byte(fmt.Sprintf(postfixMainCf, dir)), 0o644)
	os.WriteFile(filepath.Join(dir, "master.cf"), []byte(fmt.Sprintf(postfixMasterCf, p.plain, p.proxy)), 0o644)
	// "postfix check" creates the queue directories with their owners.
	if out, err := exec.Command(postfixCmd, "-c", dir, "check").CombinedOutput(); err != nil {
		t.Fatalf("postfix check: %v\n%s", err, out)
	}
	// The master in the foreground (-s), so it is our child and its PID ours.
	p.master = exec.Command(postfixMaster, "-c", dir, "-s")
	p.master.Env = append(os.Environ(), "MAIL_CONFIG="+dir)
	var out bytes.Buffer
	p.master.Stdout, p.master.Stderr = &out, &out
	p.master.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM} // even if the test binary dies
	if err := p.master.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(p.master.Process.Pid, syscall.SIGTERM) // the master stops its children
		p.master.Wait()
	})
	waitFor(t, "Postfix smtpd on "+p.plain, func() bool {
		if p.master.ProcessState != nil {
			t.Fatalf("postfix master exited: %s", out.String())
		}
		c, err := net.DialTimeout("tcp", p.plain, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = smtpCheck(c, "") // politely: Postfix must log no lost connection
		return err == nil
	})
	return p
}

func (p *postfixInstance) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

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
