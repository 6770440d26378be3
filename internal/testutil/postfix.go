package testutil

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PostfixMaster is where Debian's postfix package puts the master daemon.
const PostfixMaster = "/usr/lib/postfix/sbin/master"

// postfixServices are the Postfix services the tests use, none chrooted
// (the queue lives under a temporary directory).
const postfixServices = `pickup    unix  n - n 60 1 pickup
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
smtp      unix  - - n - - smtp
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
`

// postfixMain is what every test instance shares: loopback only, no DNS,
// no local delivery configured, relaying for loopback clients only, its own
// log file.
const postfixMain = `compatibility_level = 3.6
queue_directory = {{dir}}/queue
data_directory = {{dir}}/data
mail_owner = postfix
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = postfix.test
mydomain = postfix.test
myorigin = $myhostname
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
smtp_dns_support_level = disabled
smtp_host_lookup = native
biff = no
maillog_file = {{dir}}/maillog
maillog_file_prefixes = {{dir}}
`

// PostfixConfig is what a test adds to the shared instance.
type PostfixConfig struct {
	// Services are master.cf lines for the test's inet services, e.g.
	// "127.0.0.1:2526 inet n - n - - smtpd".
	Services string
	// Main is appended to main.cf (later keys win). {{dir}}, {{uid}} and
	// {{gid}} stand for the instance's directory and the postfix user.
	Main string
	// Dirs are directories made under the instance's directory, owned by
	// the postfix user (Maildirs, say).
	Dirs []string
	// Wait is the smtpd address to wait for before returning.
	Wait string
}

// Postfix is a private Postfix instance on loopback: its own configuration,
// queue and log under a temporary directory, its master a child of the test
// (stopped by PID at the end, and by the kernel if the test binary dies).
type Postfix struct {
	Dir    string
	master *exec.Cmd
	out    *SyncBuffer
}

// StartPostfix starts an instance, or skips the test when Postfix is not
// installed (scripts/deps.sh installs it) or the test is not root (the
// master must start its daemons as the postfix user).
func StartPostfix(tb testing.TB, cfg PostfixConfig) *Postfix {
	tb.Helper()
	if _, err := os.Stat(PostfixMaster); err != nil {
		tb.Skipf("Postfix is not installed (make test installs it): %v", err)
	}
	if os.Geteuid() != 0 {
		tb.Skip("a private Postfix instance needs root to start its master")
	}
	pf, err := user.Lookup("postfix")
	if err != nil {
		tb.Skipf("no postfix user: %v", err)
	}
	// Not t.TempDir: its parents are 0700, and Postfix's daemons must
	// reach the queue.
	dir, err := os.MkdirTemp("", "chainmail-postfix-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	var uid, gid int
	for _, d := range append([]string{"queue", "data"}, cfg.Dirs...) {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	uid, gid = atoi(pf.Uid), atoi(pf.Gid)
	for _, d := range append([]string{"data"}, cfg.Dirs...) {
		os.Chown(filepath.Join(dir, d), uid, gid)
	}
	fill := strings.NewReplacer("{{dir}}", dir, "{{uid}}", pf.Uid, "{{gid}}", pf.Gid)
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	write("main.cf", fill.Replace(postfixMain+cfg.Main))
	write("master.cf", cfg.Services+"\n"+postfixServices)
	// "postfix check" creates the queue's directories with their owners.
	if out, err := exec.Command("/usr/sbin/postfix", "-c", dir, "check").CombinedOutput(); err != nil {
		tb.Fatalf("postfix check: %v\n%s", err, out)
	}
	p := &Postfix{Dir: dir, out: &SyncBuffer{}}
	// The master in the foreground (-s), so it is our child and its PID
	// ours to stop.
	p.master = exec.Command(PostfixMaster, "-c", dir, "-s")
	p.master.Env = append(os.Environ(), "MAIL_CONFIG="+dir)
	p.master.Stdout, p.master.Stderr = p.out, p.out
	p.master.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := p.master.Start(); err != nil {
		tb.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { p.master.Wait(); close(exited) }()
	tb.Cleanup(func() {
		syscall.Kill(p.master.Process.Pid, syscall.SIGTERM) // the master stops its children
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			syscall.Kill(p.master.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if tb.Failed() {
			tb.Logf("Postfix log:\n%s", p.Log())
		}
	})
	if cfg.Wait != "" {
		WaitFor(tb, 20*time.Second, "Postfix's smtpd on "+cfg.Wait, func() bool {
			select {
			case <-exited:
				tb.Fatalf("postfix master exited: %s\n%s", p.out.String(), p.Log())
			default:
			}
			// Politely, greeting to QUIT: tests read Postfix's log for
			// "lost connection" and must find none of ours.
			c, r, err := Dial(cfg.Wait, "")
			if err != nil {
				return false
			}
			defer c.Close()
			if r.Code != 220 {
				return false
			}
			r, err = c.Cmd("QUIT")
			return err == nil && r.Code == 221
		})
	}
	return p
}

// Log is the instance's maillog.
func (p *Postfix) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "maillog"))
	return string(b)
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}
