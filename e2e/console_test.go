package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"

	"chainmail/internal/testutil"
)

// The console's tests: a real headless Chromium (driven with chromedp) on
// the real binary and a real `chainmail balance`, and a browser-less test
// that a change made in the console survives a restart. Screenshots of
// every page go to $CHAINMAIL_ARTIFACTS (default: a temporary directory,
// logged).

var adminPasswordRE = regexp.MustCompile(`console login "admin", password (\S+)`)

// adminPassword is the password a node printed on its first start.
func adminPassword(t *testing.T, n *testutil.Node) string {
	t.Helper()
	m := adminPasswordRE.FindStringSubmatch(n.Output())
	if m == nil {
		t.Fatalf("the node printed no admin password:\n%s", n.Output())
	}
	return m[1]
}

func artifactsDir(t *testing.T) string {
	dir := os.Getenv("CHAINMAIL_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	} else {
		dir = filepath.Join(dir, t.Name())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("screenshots in %s", dir)
	return dir
}

// startBalancer runs `chainmail balance -c` until its admin address
// answers; it is stopped by PID at cleanup.
func startBalancer(t *testing.T, cfg, admin string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "balancer.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var out bytes.Buffer
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(p) })
	cmd := exec.Command(testutil.Binary(t), "balance", "-c", file)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			mu.Lock()
			t.Logf("balancer output:\n%s", out.String())
			mu.Unlock()
		}
	})
	testutil.WaitFor(t, 20*time.Second, "the balancer's admin address", func() bool {
		select {
		case <-exited:
			t.Fatal("chainmail balance exited")
		default:
		}
		resp, err := http.Get("http://" + admin + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestConsoleInBrowser walks the console as an operator does: log in, add
// a listener through its form (after a refused attempt) and deliver mail to
// it, add a connection, edit a route to forward to it, find the message in
// the archive, download it, read the audit log, add a read-only account and
// log in as it; then drain a server on the balancer's console page. Each
// page is saved as a PNG.
func TestConsoleInBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (make test installs it)")
	}
	t.Parallel()
	started := time.Now()
	shots := artifactsDir(t)

	cfg, journal := nodeConfig(t, "")
	n := testutil.StartNode(t, cfg)
	password := adminPassword(t, n)
	peer := testutil.StartFakePeer(t, "p1")
	extra := testutil.FreeAddr(t, "127.0.0.1")

	admin := testutil.FreeAddr(t, "127.0.0.1")
	startBalancer(t, fmt.Sprintf(`balancer:
  admin: %q
  api_tokens: [%q]
  log: {level: info, format: json}
  frontends:
    - {name: smtp, address: %q, pool: archive}
  pools:
    - name: archive
      proxy_protocol: none
      health_check: {type: none}
      servers:
        - {name: a, address: %q, weight: 2}
        - {name: b, address: %q}
`, admin, testutil.Token, testutil.FreeAddr(t, "127.0.0.1"), journal, peer.Addr()), admin)

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc() // stops the browser process and waits for it
	tab, cancelTab := chromedp.NewContext(alloc)
	defer cancelTab()
	// One bound for the whole walk; its end also stops the browser.
	ctx, cancel := context.WithTimeout(tab, 90*time.Second)
	defer cancel()

	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			if buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
				os.WriteFile(filepath.Join(shots, "failure.png"), buf, 0o644)
			}
			html, _ := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("html")))
			t.Fatalf("%s: %v\npage:\n%s", what, err, html)
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	shot := func(name string) {
		t.Helper()
		buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100: PNG
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(shots, name+".png"), buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	submit := css(`main form.stack button[type=submit]`)

	// Log in; the login page is where an anonymous visitor lands.
	do("login page", chromedp.Navigate(n.API+"/"), chromedp.WaitVisible(css(`#user`)))
	shot("01-login")
	do("log in",
		chromedp.SendKeys(css(`#user`), "admin"),
		chromedp.SendKeys(css(`#password`), password),
		chromedp.Click(submit),
		chromedp.WaitVisible(css(`#traffic`)))
	shot("02-dashboard")

	// Add a listener: first with a bad address (refused, beside the field),
	// then right.
	do("listener form",
		chromedp.Navigate(n.API+"/listeners/new"), chromedp.WaitVisible(css(`#f-name`)),
		chromedp.SendKeys(css(`#f-name`), "extra"),
		chromedp.SendKeys(css(`#f-address`), "nohost"),
		chromedp.Click(submit),
		chromedp.WaitVisible(css(`#f-address-err`)))
	if e := text(`#f-address-err`); !strings.Contains(e, "nohost") {
		t.Fatalf("error beside the address: %q", e)
	}
	shot("03-listener-form-error")
	do("fix the address",
		chromedp.SetValue(css(`#f-address`), extra),
		chromedp.Click(submit),
		chromedp.WaitVisible(css(`p.flash`)))
	shot("04-listeners")

	// Add a connection to a peer and edit the new listener's route to
	// forward to it.
	do("connection form",
		chromedp.Navigate(n.API+"/connections/new"), chromedp.WaitVisible(css(`#f-name`)),
		chromedp.SendKeys(css(`#f-name`), "peer"),
		chromedp.SendKeys(css(`#f-address`), peer.Addr()),
		chromedp.SendKeys(css(`#f-probe-interval`), "200ms"),
		chromedp.Click(submit),
		chromedp.WaitVisible(css(`p.flash`)))
	forward := css(`input[name=actions][value="forward:peer"]`)
	do("route form", chromedp.Navigate(n.API+"/routes/extra/edit"), chromedp.WaitVisible(forward), chromedp.Click(forward))
	shot("05-route-form")
	do("save the route", chromedp.Click(submit), chromedp.WaitVisible(css(`p.flash`)))
	shot("06-routes")
	var route map[string]any
	if n.Get("/api/v1/routes/extra", &route); fmt.Sprint(route["actions"]) != "[archive forward:peer]" {
		t.Fatalf("route after the edit: %v", route)
	}

	// Mail to the new listener is archived and forwarded.
	msg := []byte("From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: console browser test\r\n" +
		"Message-ID: <console-1@example.com>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nhello from the console test\r\n.a dot line\r\n")
	if r, err := testutil.Send(extra, "alice@example.com", []string{"bob@example.org"}, msg); err != nil || r.Code != 250 {
		t.Fatalf("send to the new listener: %v %v", r, err)
	}
	testutil.WaitFor(t, 20*time.Second, "the peer to receive the message", func() bool { return len(peer.Accepted()) == 1 })
	do("connection page", chromedp.Navigate(n.API+"/connections/peer"), chromedp.WaitVisible(css(`#conn-status`)))
	shot("07-connection")

	// Pause delivery: the queue fills; the page shows the backlog and its
	// entries; resume: the peer is caught up.
	do("pause", chromedp.Click(`//button[text()="Pause delivery"]`), chromedp.WaitVisible(`//button[text()="Resume delivery"]`))
	for i := 2; i <= 4; i++ {
		if r, err := testutil.Send(extra, "alice@example.com", []string{"bob@example.org"}, msgN("paused", i)); err != nil || r.Code != 250 {
			t.Fatalf("send while paused: %v %v", r, err)
		}
	}
	do("backlog", chromedp.Navigate(n.API+"/connections/peer"), chromedp.WaitVisible(`//td[contains(., "…")]`))
	shot("07b-connection-paused")
	do("purge confirmation", chromedp.Navigate(n.API+"/connections/peer/purge"), chromedp.WaitVisible(css(`#confirm`)))
	shot("07c-purge-confirm")
	do("resume", chromedp.Navigate(n.API+"/connections/peer"), chromedp.Click(`//button[text()="Resume delivery"]`),
		chromedp.WaitVisible(`//button[text()="Pause delivery"]`))
	resumed := time.Now()
	testutil.WaitFor(t, 20*time.Second, "the peer to catch up", func() bool { return len(peer.Accepted()) == 4 })
	t.Logf("caught up %s after resume", time.Since(resumed).Round(10*time.Millisecond))
	do("connections list", chromedp.Navigate(n.API+"/connections"), chromedp.WaitVisible(css(`#connections-table`)))
	shot("08-connections")

	// Find it in the archive, open it, download it.
	hit := `//a[text()="console browser test"]` // a plain string is a search: XPath here
	do("search",
		chromedp.Navigate(n.API+"/archive"), chromedp.WaitVisible(css(`#s-subject`)),
		chromedp.SendKeys(css(`#s-subject`), "console browser"),
		chromedp.Click(submit),
		chromedp.WaitVisible(css(`#results-h[data-searched]`)),
		chromedp.WaitVisible(hit))
	shot("09-archive-search")
	do("open the message", chromedp.Click(hit), chromedp.WaitVisible(css(`#mime-h`)))
	shot("10-message")

	downloads := t.TempDir()
	events := true
	if _, err := chromedp.CallBrowser(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
		Behavior: browser.SetDownloadBehaviorBehaviorAllowAndName, DownloadPath: downloads, EventsEnabled: &events,
	}); err != nil {
		t.Fatal(err)
	}
	progress := chromedp.BrowserEvents(ctx, browser.DownloadProgress) // subscribed before the click
	do("download", chromedp.Click(`//a[contains(., "Download .eml")]`))
	dctx, dcancel := context.WithTimeout(ctx, 15*time.Second)
	defer dcancel()
	guid := ""
	for ev, err := range progress {
		if err != nil || dctx.Err() != nil {
			t.Fatalf("the download did not complete: %v", err)
		}
		if ev.State == browser.DownloadProgressStateCompleted {
			guid = ev.GUID
			break
		}
	}
	if got, err := os.ReadFile(filepath.Join(downloads, guid)); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("downloaded %q (%v), want the archived bytes %q", got, err, msg)
	}

	do("audit log", chromedp.Navigate(n.API+"/audit"), chromedp.WaitVisible(css(`table`)))
	audit := strings.Join(strings.Fields(text(`main`)), " ")
	for _, want := range []string{"create listener extra", "create connection peer", "update route extra", "actions: archive → archive, forward:peer"} {
		if !strings.Contains(audit, want) {
			t.Errorf("the audit log lacks %q:\n%s", want, audit)
		}
	}
	shot("11-audit")
	do("dashboard with traffic", chromedp.Navigate(n.API+"/"), chromedp.WaitVisible(css(`#traffic`)))
	shot("12-dashboard-after")

	// A phone's width.
	do("phone", chromedp.EmulateViewport(390, 844), chromedp.Navigate(n.API+"/"), chromedp.WaitVisible(css(`#traffic`)))
	shot("13-phone-dashboard")
	do("phone archive", chromedp.Navigate(n.API+"/archive"), chromedp.WaitVisible(css(`#s-subject`)))
	shot("14-phone-archive")
	do("phone listener form", chromedp.Navigate(n.API+"/listeners/extra/edit"), chromedp.WaitVisible(css(`#f-address`)))
	shot("15-phone-listener-form")
	do("desktop again", chromedp.EmulateViewport(1280, 900))

	// Accounts: add a read-only account, log out, log in as it; it sees
	// the list but no form that changes other accounts.
	do("add a read-only account",
		chromedp.Navigate(n.API+"/accounts"), chromedp.WaitVisible(css(`#a-name`)),
		chromedp.SendKeys(css(`#a-name`), "viewer"),
		chromedp.SetValue(css(`#a-role`), "read-only"),
		chromedp.SendKeys(css(`#a-password`), "viewer password 1"),
		chromedp.SendKeys(css(`#a-repeat`), "viewer password 1"),
		chromedp.Click(submit),
		chromedp.WaitVisible(css(`p.flash`)))
	shot("15b-accounts")
	do("log out and in as viewer",
		chromedp.Click(css(`form.whoami button[type=submit]`)), chromedp.WaitVisible(css(`#user`)),
		chromedp.SendKeys(css(`#user`), "viewer"),
		chromedp.SendKeys(css(`#password`), "viewer password 1"),
		chromedp.Click(submit),
		chromedp.WaitVisible(css(`#traffic`)),
		chromedp.Navigate(n.API+"/accounts"), chromedp.WaitVisible(css(`#accounts-table`)))
	if page := text(`main`); !strings.Contains(page, "viewer (you)") || strings.Contains(page, "Add an account") {
		t.Errorf("the read-only account's Accounts page:\n%s", page)
	}
	shot("15c-accounts-read-only")

	// The balancer's console: log in with a token, drain server a.
	base := "http://" + admin
	do("balancer login", chromedp.Navigate(base+"/"), chromedp.WaitVisible(css(`#token`)))
	shot("16-balancer-login")
	do("balancer log in",
		chromedp.SendKeys(css(`#token`), testutil.Token),
		chromedp.Click(submit),
		chromedp.WaitVisible(css(`#pool-archive`)))
	shot("17-balancer")
	do("drain a",
		chromedp.Click(css(`form[action="/servers/archive/a"] button[value="drain"]`)),
		chromedp.WaitVisible(css(`p.flash`)))
	shot("18-balancer-drained")
	var pools struct {
		Pools []struct {
			Servers []struct {
				Name, State string
			}
		}
	}
	req, _ := http.NewRequest("GET", base+"/api/v1/pools", nil)
	req.Header.Set("Authorization", "Bearer "+testutil.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&pools)
	resp.Body.Close()
	if len(pools.Pools) != 1 || pools.Pools[0].Servers[0].State != "drain" || pools.Pools[0].Servers[1].State != "ready" {
		t.Fatalf("pools after the click: %+v", pools)
	}
	t.Logf("browser walk took %s", time.Since(started).Round(100*time.Millisecond))
}

// TestConsoleChangesSurviveRestart adds a listener and disables the
// journal route's sibling through the console's forms (a plain HTTP
// client: no browser needed), restarts the node, and finds both changes
// in place and the listener accepting mail.
func TestConsoleChangesSurviveRestart(t *testing.T) {
	t.Parallel()
	cfg, _ := nodeConfig(t, "")
	n := testutil.StartNode(t, cfg)
	password := adminPassword(t, n)
	extra := testutil.FreeAddr(t, "127.0.0.1")

	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	csrfRE := regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	get := func(path string) string {
		t.Helper()
		resp, err := c.Get(n.API + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	post := func(path, page string, form url.Values) *http.Response {
		t.Helper()
		m := csrfRE.FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("no CSRF token on the page before %s:\n%s", path, page)
		}
		form.Set("csrf", m[1])
		req, _ := http.NewRequest("POST", n.API+path, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", n.API)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	login := func() {
		t.Helper()
		if r := post("/login", get("/login"), url.Values{"user": {"admin"}, "password": {password}}); r.StatusCode != http.StatusSeeOther {
			t.Fatalf("login: %d", r.StatusCode)
		}
	}
	login()
	if r := post("/listeners/new", get("/listeners/new"), url.Values{
		"name": {"extra"}, "address": {extra}, "route_actions": {"archive"}, "max_recipients": {"7"},
	}); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("add listener: %d", r.StatusCode)
	}
	if r := post("/listeners/extra/disable", get("/listeners"), url.Values{}); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("disable: %d", r.StatusCode)
	}

	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}
	n.Restart()
	// Sessions are in memory: a restart logs everybody out (with a live
	// session, /login would send the browser on to the dashboard).
	if page := get("/login"); !strings.Contains(page, `id="password"`) {
		t.Fatal("a session survived the restart")
	}
	login()
	page := get("/listeners")
	if !strings.Contains(page, `<a href="/listeners/extra/edit">extra</a>`) || !strings.Contains(page, `badge-muted">disabled`) {
		t.Fatalf("after the restart the listener or its state is gone:\n%s", page)
	}
	var l map[string]any
	if n.Get("/api/v1/listeners/extra", &l); l["max_recipients"] != float64(7) || l["disabled"] != true {
		t.Fatalf("listener after restart: %v", l)
	}
	// Enable it again from the console; it accepts mail at once.
	if r := post("/listeners/extra/enable", page, url.Values{}); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("enable: %d", r.StatusCode)
	}
	testutil.WaitFor(t, 10*time.Second, "the enabled listener", func() bool {
		r, err := testutil.Send(extra, "a@example.com", []string{"b@example.org"}, msgN("restart", 1))
		return err == nil && r.Code == 250
	})
}
