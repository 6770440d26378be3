package web

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"chainmail/archive"
	"chainmail/forwarder"
	"chainmail/internal/config"
	"chainmail/internal/liveconfig"
	"chainmail/internal/store"
	"chainmail/queue"
)

// consoleNode is a Server with a real live configuration (bbolt in a
// temporary directory, no applier: changes are validated, persisted and
// audited but start nothing) behind an httptest server.
type consoleNode struct {
	s     *Server
	srv   *httptest.Server
	clock *fakeClock
	live  *liveconfig.Manager
}

const consoleFile = `node: a
data_dir: /tmp/unused
listeners:
  - {name: journal, address: "127.0.0.1:2525"}
routes:
  - {name: journal, from: [journal], actions: [archive]}
`

func newConsoleNode(t *testing.T, edit func(*Options)) *consoleNode {
	t.Helper()
	db, err := store.Open(filepath.Join(t.TempDir(), "chainmail.db"), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return newConsoleNodeOn(t, db, edit)
}

// newConsoleNodeOn is newConsoleNode on a store the caller opened (and
// closes), for tests that put more of the node in it.
func newConsoleNodeOn(t *testing.T, db *store.DB, edit func(*Options)) *consoleNode {
	t.Helper()
	var file config.Node
	if err := config.Parse("test.yaml", []byte(consoleFile), &file); err != nil {
		t.Fatal(err)
	}
	live, _, _, err := liveconfig.Open(db, &file)
	if err != nil {
		t.Fatal(err)
	}
	clock := newFakeClock()
	s := newTestServer(t, newFakeArchive([]byte("Subject: hello\r\n\r\nbody\r\n")), func(o *Options) {
		o.Config = live
		o.Now = clock.Now
		if edit != nil {
			edit(o)
		}
	})
	n := &consoleNode{s: s, srv: httptest.NewServer(s.Handler()), clock: clock, live: live}
	t.Cleanup(n.srv.Close)
	return n
}

// browser is an HTTP client with a cookie jar that does not follow
// redirects, so tests see each answer.
type browser struct {
	t    *testing.T
	base string
	c    *http.Client
}

func (n *consoleNode) browser(t *testing.T) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, base: n.srv.URL, c: &http.Client{
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

type answer struct {
	code int
	body string
	h    http.Header
}

func (b *browser) get(path string) answer {
	b.t.Helper()
	return b.do("GET", path, nil, nil)
}

// post sends a form as a browser does: with its Origin.
func (b *browser) post(path string, form url.Values) answer {
	b.t.Helper()
	return b.do("POST", path, form, http.Header{"Origin": {b.base}})
}

func (b *browser) do(method, path string, form url.Values, h http.Header) answer {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.base+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return answer{code: resp.StatusCode, body: string(out), h: resp.Header}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf is the first CSRF token of a page.
func csrf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token in page:\n%s", page)
	}
	return m[1]
}

// login logs in and returns the session's CSRF token.
func (b *browser) login(user, pass string) string {
	b.t.Helper()
	page := b.get("/login")
	a := b.post("/login", url.Values{"csrf": {csrf(b.t, page.body)}, "user": {user}, "password": {pass}, "next": {"/"}})
	if a.code != http.StatusSeeOther {
		b.t.Fatalf("login as %s: %d\n%s", user, a.code, a.body)
	}
	return csrf(b.t, b.get("/").body)
}

func TestConsoleNoSessionGoesToLogin(t *testing.T) {
	t.Parallel()
	n := newConsoleNode(t, nil)
	b := n.browser(t)
	for _, path := range []string{"/", "/archive?q=x", "/listeners", "/connections/peer", "/audit", "/archive/" + strings.Repeat("a", 64) + "/raw"} {
		a := b.get(path)
		if a.code != http.StatusSeeOther || a.h.Get("Location") != "/login?next="+url.QueryEscape(path) {
			t.Errorf("GET %s without a session: %d Location %q", path, a.code, a.h.Get("Location"))
		}
	}
	if a := b.post("/listeners/new", url.Values{"name": {"x"}}); a.code != http.StatusSeeOther || a.h.Get("Location") != "/login" {
		t.Errorf("POST without a session: %d %q", a.code, a.h.Get("Location"))
	}
	// A console session is not an API credential: the API still wants a
	// token (and the console cookie is not a way around CSRF on it).
	b.login("admin", "right-password")
	if a := b.get("/api/v1/node"); a.code != http.StatusUnauthorized {
		t.Errorf("API with only a session cookie: %d", a.code)
	}
	req, _ := http.NewRequest("GET", n.srv.URL+"/api/v1/node", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("API with a token: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
}

func TestConsoleLoginAndLogout(t *testing.T) {
	t.Parallel()
	n := newConsoleNode(t, nil)
	b := n.browser(t)
	page := b.get("/login?next=/audit")
	if page.code != 200 || !strings.Contains(page.body, `<label for="user">User</label>`) {
		t.Fatalf("login page: %d\n%s", page.code, page.body)
	}
	tok := csrf(t, page.body)
	a := b.post("/login", url.Values{"csrf": {tok}, "user": {"admin"}, "password": {"wrong"}, "next": {"/audit"}})
	if a.code != http.StatusUnauthorized || !strings.Contains(a.body, "Wrong user name or password") {
		t.Fatalf("wrong password: %d\n%s", a.code, a.body)
	}
	a = b.post("/login", url.Values{"csrf": {tok}, "user": {"admin"}, "password": {"right-password"}, "next": {"/audit"}})
	if a.code != http.StatusSeeOther || a.h.Get("Location") != "/audit" {
		t.Fatalf("login: %d %q", a.code, a.h.Get("Location"))
	}
	cookie := ""
	for _, c := range a.h.Values("Set-Cookie") {
		if strings.HasPrefix(c, "chainmail_a=") {
			cookie = c
		}
	}
	for _, want := range []string{"chainmail_a=", "HttpOnly", "SameSite=Strict", "Path=/"} {
		if !strings.Contains(cookie, want) {
			t.Errorf("session cookie %q lacks %s", cookie, want)
		}
	}
	if strings.Contains(cookie, "Secure") {
		t.Errorf("session cookie over plain HTTP is Secure (the browser would drop it): %q", cookie)
	}
	if n.s.console.sessions.Len() != 1 {
		t.Errorf("sessions: %d", n.s.console.sessions.Len())
	}
	// An open redirect is not followed after login.
	if got := safeNext("//evil.example/"); got != "/" {
		t.Errorf("safeNext(//evil.example/) = %q", got)
	}

	dash := b.get("/")
	if dash.code != 200 || !strings.Contains(dash.body, "Log out") {
		t.Fatalf("dashboard: %d", dash.code)
	}
	// Logout needs the token too, then ends the session on the server.
	if a := b.post("/logout", url.Values{}); a.code != http.StatusForbidden {
		t.Errorf("logout without CSRF: %d", a.code)
	}
	if a := b.post("/logout", url.Values{"csrf": {csrf(t, dash.body)}}); a.code != http.StatusSeeOther {
		t.Errorf("logout: %d", a.code)
	}
	if n.s.console.sessions.Len() != 0 {
		t.Error("the session outlived the logout")
	}
	if a := b.get("/"); a.code != http.StatusSeeOther {
		t.Errorf("after logout: %d", a.code)
	}
}

func TestConsoleSecureCookieOverTLS(t *testing.T) {
	t.Parallel()
	n := newConsoleNode(t, nil)
	srv := httptest.NewTLSServer(n.s.Handler())
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	c := srv.Client()
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	c.Transport.(*http.Transport).TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	b := &browser{t: t, base: srv.URL, c: c}
	page := b.get("/login")
	if !strings.Contains(page.h.Get("Set-Cookie"), "Secure") {
		t.Errorf("login-token cookie over TLS is not Secure: %q", page.h.Get("Set-Cookie"))
	}
	a := b.post("/login", url.Values{"csrf": {csrf(t, page.body)}, "user": {"admin"}, "password": {"right-password"}})
	for _, c := range a.h.Values("Set-Cookie") {
		if !strings.Contains(c, "Secure") || !strings.Contains(c, "HttpOnly") {
			t.Errorf("cookie over TLS: %q", c)
		}
	}
	if a.code != http.StatusSeeOther || len(a.h.Values("Set-Cookie")) != 2 {
		t.Errorf("login over TLS: %d %q", a.code, a.h.Values("Set-Cookie"))
	}
}

func TestConsoleCSRF(t *testing.T) {
	t.Parallel()
	n := newConsoleNode(t, nil)
	b := n.browser(t)
	tok := b.login("admin", "right-password")
	form := func(extra url.Values) url.Values {
		v := url.Values{"name": {"extra"}, "address": {"127.0.0.1:2526"}, "route_actions": {"archive"}}
		for k, x := range extra {
			v[k] = x
		}
		return v
	}
	wrong := "A" + tok[1:]
	if wrong == tok {
		wrong = "B" + tok[1:]
	}
	cases := []struct {
		name   string
		form   url.Values
		header http.Header
	}{
		{"missing", form(nil), http.Header{"Origin": {b.base}}},
		{"wrong", form(url.Values{"csrf": {wrong}}), http.Header{"Origin": {b.base}}},
		{"another origin", form(url.Values{"csrf": {tok}}), http.Header{"Origin": {"http://evil.example"}}},
		{"another referer", form(url.Values{"csrf": {tok}}), http.Header{"Referer": {"http://evil.example/x"}}},
	}
	for _, tc := range cases {
		a := b.do("POST", "/listeners/new", tc.form, tc.header)
		if a.code != http.StatusForbidden {
			t.Errorf("%s CSRF token: %d", tc.name, a.code)
		}
	}
	if _, err := n.live.Get("listeners", "extra"); err == nil {
		t.Fatal("a refused form changed the configuration")
	}
	// Behind a TLS-terminating proxy the browser's Origin says https.
	if a := b.do("POST", "/listeners/new", form(url.Values{"csrf": {tok}, "name": {"proxied"}, "address": {"127.0.0.1:2527"}}),
		http.Header{"Origin": {"https://" + strings.TrimPrefix(b.base, "http://")}}); a.code != http.StatusSeeOther {
		t.Errorf("form through a TLS proxy: %d\n%s", a.code, a.body)
	}
	// The login form has its own (double-submit) token.
	other := n.browser(t)
	if a := other.post("/login", url.Values{"user": {"admin"}, "password": {"right-password"}}); a.code != http.StatusForbidden {
		t.Errorf("login without its token: %d", a.code)
	}
	// With the token the same form goes through.
	if a := b.post("/listeners/new", form(url.Values{"csrf": {tok}})); a.code != http.StatusSeeOther {
		t.Fatalf("valid form: %d\n%s", a.code, a.body)
	}
	if _, err := n.live.Get("listeners", "extra"); err != nil {
		t.Fatal("the listener was not created")
	}
}

func TestConsoleReadOnlySeesButCannotChange(t *testing.T) {
	t.Parallel()
	n := newConsoleNode(t, nil)
	b := n.browser(t)
	tok := b.login("viewer", "viewer-password")
	for _, path := range []string{"/", "/listeners", "/routes", "/connections", "/listeners/journal/edit", "/audit", "/archive"} {
		a := b.get(path)
		if a.code != 200 {
			t.Errorf("read-only GET %s: %d", path, a.code)
		}
		if strings.Contains(a.body, "Add listener") || strings.Contains(a.body, "Save changes") || strings.Contains(a.body, ">Delete<") {
			t.Errorf("read-only %s offers a change", path)
		}
	}
	posts := map[string]url.Values{
		"/listeners/new":             {"name": {"x"}, "address": {"127.0.0.1:2599"}, "route_actions": {"archive"}},
		"/listeners/journal/disable": {},
		"/routes/journal/edit":       {"from": {"journal"}, "actions": {"archive"}, "disabled": {"true"}},
		"/routes/journal/delete":     {},
	}
	for path, form := range posts {
		form.Set("csrf", tok)
		if a := b.post(path, form); a.code != http.StatusForbidden || !strings.Contains(a.body, "read-only") {
			t.Errorf("read-only POST %s: %d", path, a.code)
		}
	}
	if audit, _ := n.live.Audit(10); len(audit) != 0 {
		t.Errorf("read-only changed something: %+v", audit)
	}
}

func TestConsoleValidationErrorsBesideFields(t *testing.T) {
	t.Parallel()
	n := newConsoleNode(t, nil)
	b := n.browser(t)
	tok := b.login("admin", "right-password")
	a := b.post("/listeners/new", url.Values{
		"csrf": {tok}, "name": {"extra"}, "address": {"nohost"}, "max_recipients": {"0"}, "route_actions": {"archive"},
	})
	if a.code != http.StatusBadRequest {
		t.Fatalf("invalid listener: %d\n%s", a.code, a.body)
	}
	for _, id := range []string{"f-address", "f-max-recipients"} {
		// The error sits in the field's own block, tied to its input.
		re := regexp.MustCompile(`(?s)<input[^>]*id="` + id + `"[^>]*aria-invalid="true"[^>]*>\s*<span class="error" id="` + id + `-err">[^<]+</span>`)
		if !re.MatchString(a.body) {
			t.Errorf("no error beside %s in:\n%s", id, a.body)
		}
	}
	if !strings.Contains(a.body, `value="nohost"`) || !strings.Contains(a.body, `id="f-max-recipients" name="max_recipients" value="0"`) {
		t.Error("the form lost what was typed")
	}
	if !strings.Contains(a.body, `class="error-summary"`) || !strings.Contains(a.body, `href="#f-address"`) {
		t.Error("no error summary linking to the fields")
	}

	// What the decoder refuses is shown beside its field as well.
	a = b.post("/listeners/new", url.Values{"csrf": {tok}, "name": {"extra"}, "address": {"127.0.0.1:2599"}, "max_sessions": {"many"}, "route_actions": {"archive"}})
	if a.code != http.StatusBadRequest || !strings.Contains(a.body, `<span class="error" id="f-max-sessions-err">invalid integer &#34;many&#34;</span>`) {
		t.Errorf("not a number: %d\n%s", a.code, a.body)
	}

	// A route naming a missing connection: the error is on its actions.
	a = b.post("/routes/journal/edit", url.Values{"csrf": {tok}, "from": {"journal"}, "actions": {"archive", "forward:nowhere"}})
	if a.code != http.StatusBadRequest || !strings.Contains(a.body, `id="f-actions-err"`) || !strings.Contains(a.body, "nowhere") {
		t.Errorf("bad route: %d\n%s", a.code, a.body)
	}
	// Deleting the listener a route takes from: refused on the
	// confirmation page, naming the route.
	a = b.post("/listeners/journal/delete", url.Values{"csrf": {tok}})
	if a.code != http.StatusBadRequest || !strings.Contains(a.body, `route &#34;journal&#34;, from[0]`) {
		t.Errorf("delete of a used listener: %d\n%s", a.code, a.body)
	}
	// A valid edit goes through and lands in the audit log with the user.
	a = b.post("/routes/journal/edit", url.Values{"csrf": {tok}, "from": {"journal"}, "actions": {"archive"}})
	if a.code != http.StatusSeeOther {
		t.Fatalf("valid edit: %d\n%s", a.code, a.body)
	}
	list, _ := n.live.Audit(1)
	if len(list) != 1 || list[0].By != "admin" || list[0].Action != "update" {
		t.Errorf("audit: %+v", list)
	}
	if a := b.get("/routes"); !strings.Contains(a.body, `Route &#34;journal&#34; saved.`) {
		t.Errorf("no notice after saving:\n%s", a.body)
	}
	if a := b.get("/audit"); !strings.Contains(a.body, "admin") || !strings.Contains(a.body, "update") {
		t.Errorf("audit page:\n%s", a.body)
	}
}

func TestConsoleLoginRateLimit(t *testing.T) {
	t.Parallel()
	n := newConsoleNode(t, func(o *Options) { o.LoginLimit = LoginLimit{Failures: 3, Window: time.Minute} })
	b := n.browser(t)
	tok := csrf(t, b.get("/login").body)
	try := func(pass string) answer {
		return b.post("/login", url.Values{"csrf": {tok}, "user": {"admin"}, "password": {pass}})
	}
	for i := 0; i < 3; i++ {
		if a := try("wrong"); a.code != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d", i, a.code)
		}
	}
	a := try("right-password")
	if a.code != http.StatusTooManyRequests || a.h.Get("Retry-After") != "60" || !strings.Contains(a.body, "Too many failed logins") {
		t.Fatalf("over the limit, even with the right password: %d %q", a.code, a.h.Get("Retry-After"))
	}
	// The API shares the count: the same client is limited there too.
	req, _ := http.NewRequest("GET", n.srv.URL+"/api/v1/node", nil)
	req.SetBasicAuth("admin", "right-password")
	resp, _ := http.DefaultClient.Do(req)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("API after console failures: %d", resp.StatusCode)
	}
	resp.Body.Close()
	n.clock.Add(time.Minute)
	if a := try("right-password"); a.code != http.StatusSeeOther {
		t.Errorf("after the window: %d", a.code)
	}
}

func TestConsoleSessionExpires(t *testing.T) {
	t.Parallel()
	n := newConsoleNode(t, nil)
	b := n.browser(t)
	b.login("admin", "right-password")
	n.clock.Add(29 * time.Minute)
	if a := b.get("/"); a.code != 200 {
		t.Fatalf("within the idle bound: %d", a.code)
	}
	// The dashboard's own refresh does not count as use.
	for range 3 {
		n.clock.Add(8 * time.Minute)
		if a := b.do("GET", "/", nil, http.Header{"X-Console-Refresh": {"1"}}); a.code != 200 {
			t.Fatalf("refresh: %d", a.code)
		}
	}
	n.clock.Add(8 * time.Minute)
	if a := b.get("/"); a.code != http.StatusSeeOther {
		t.Fatalf("after 32 minutes of refreshes only: %d", a.code)
	}
}

// TestConsolePagesSafe renders every page and checks the headers and the
// markup the CSP relies on: no inline script or style anywhere.
func TestConsolePagesSafe(t *testing.T) {
	t.Parallel()
	n := newConsoleNode(t, nil)
	b := n.browser(t)
	b.login("admin", "right-password")
	id := ""
	for k := range n.s.opts.Archive.(*fakeArchive).msgs {
		id = k
	}
	inline := regexp.MustCompile(`(?i)<script>|<script[^>]*>[^<]|\sstyle=|\son[a-z]+=|javascript:`)
	for _, path := range []string{"/", "/listeners", "/listeners/new", "/listeners/journal/edit", "/listeners/journal/delete",
		"/routes", "/routes/new", "/connections", "/connections/new", "/archive", "/archive?q=hello", "/archive/" + id, "/audit", "/login"} {
		a := b.get(path)
		if path == "/login" {
			continue // a logged-in user is sent on
		}
		if a.code != 200 {
			t.Errorf("GET %s: %d\n%s", path, a.code, a.body)
			continue
		}
		csp := a.h.Get("Content-Security-Policy")
		if !strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") {
			t.Errorf("%s: CSP %q", path, csp)
		}
		if a.h.Get("X-Frame-Options") != "DENY" || a.h.Get("X-Content-Type-Options") != "nosniff" || a.h.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: headers %v", path, a.h)
		}
		if m := inline.FindString(a.body); m != "" {
			t.Errorf("%s: inline code %q", path, m)
		}
		if !strings.Contains(a.body, "<h1>") || !strings.Contains(a.body, `<main id="main"`) {
			t.Errorf("%s: no main heading", path)
		}
	}
	for _, asset := range []string{"/static/console.css", "/static/console.js", "/static/icon.svg"} {
		a := b.get(asset)
		if a.code != 200 || a.h.Get("X-Content-Type-Options") != "nosniff" || a.h.Get("Content-Type") == "" {
			t.Errorf("%s: %d %v", asset, a.code, a.h)
		}
	}
	if a := b.get("/static/../server.go"); a.code == 200 {
		t.Error("static files escape their directory")
	}
}

func TestConsoleChartFromCounters(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s := newTestServer(t, newFakeArchive(), func(o *Options) { o.Now = clock.Now })
	sessions := promCounter(t, s, metricSessions, "listener")
	messages := promCounter(t, s, metricMessages, "listener", "result")
	r := s.console.rates
	r.sample()
	for i := 1; i <= 12; i++ {
		clock.Add(sampleEvery)
		sessions.WithLabelValues("journal").Add(2)
		messages.WithLabelValues("journal", "archived").Add(3)
		messages.WithLabelValues("journal", "rejected").Add(100) // not counted
		if i < 12 {
			r.sample()
		}
	}
	// Two minutes of samples: a point for the minute ending a minute ago,
	// one for the minute ending now (read live, not yet sampled).
	pts := r.minutes(r.read())
	if len(pts) != 2 || pts[0].Messages != 18 || pts[1].Messages != 18 || pts[1].Sessions != 12 || !pts[1].At.Equal(clock.Now()) {
		t.Fatalf("points: %+v", pts)
	}
	c := makeChart(wideChart, pts, clock.Now())
	if strings.Count(c.Messages, ",") != 2 || !strings.Contains(c.Summary, "In the last minute: 18 messages, 12 sessions") {
		t.Errorf("chart: %+v", c)
	}
	if c.YTicks[4].Label != "20" || c.YTicks[1].Label != "5" {
		t.Errorf("y axis: %+v", c.YTicks)
	}
	if c := makeChart(narrowChart, nil, clock.Now()); c.YTicks[4].Label != "4" || c.Messages != "" {
		t.Errorf("empty chart: %+v", c)
	}
	// Catch-up progress is measured from the highest backlog seen.
	if p, ok := r.progress("peer", 100); !ok || p != 0 {
		t.Errorf("progress at the peak: %v %v", p, ok)
	}
	if p, _ := r.progress("peer", 25); p != 0.75 {
		t.Errorf("progress: %v", p)
	}
	if _, ok := r.progress("peer", 0); ok {
		t.Error("an empty queue is catching up")
	}
	// Serve owns the sampler and waits for it.
	ctx, cancel := context.WithCancel(context.Background())
	wait := s.console.startSampler(ctx)
	cancel()
	wait()
}

func promCounter(t *testing.T, s *Server, name string, labels ...string) *prometheus.CounterVec {
	t.Helper()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: "test"}, labels)
	if err := s.opts.Registry.Register(c); err != nil {
		t.Fatal(err)
	}
	return c
}

const mimeSample = "From: a@example.com\r\nSubject: parts\r\nMIME-Version: 1.0\r\n" +
	"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n" +
	"preamble\r\n--outer\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n" +
	"--outer\r\nContent-Type: application/pdf; name=\"=?UTF-8?Q?r=C3=A9sum=C3=A9.pdf?=\"\r\nContent-Disposition: attachment\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAwQF\r\nBgcICQ==\r\n" +
	"--outer\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nContent-Type: multipart/alternative; boundary=in\r\n\r\n" +
	"--in\r\nContent-Type: text/plain\r\n\r\nhi\r\n--in\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--in--\r\n" +
	"\r\n--outer--\r\n"

func TestConsoleMIMEParts(t *testing.T) {
	t.Parallel()
	p := listParts(strings.NewReader(mimeSample))
	if p.ContentType != "multipart/mixed" || len(p.Parts) != 3 || p.Note != "" {
		t.Fatalf("top: %+v", p)
	}
	text, pdf, msg := p.Parts[0], p.Parts[1], p.Parts[2]
	if text.ContentType != "text/plain" || text.Size != 5 || text.Charset != "utf-8" {
		t.Errorf("text part: %+v", text)
	}
	if pdf.Filename != "résumé.pdf" || pdf.Size != 10 || pdf.Disposition != "attachment" {
		t.Errorf("attachment: %+v", pdf)
	}
	if msg.ContentType != "message/rfc822" || len(msg.Parts) != 1 || len(msg.Parts[0].Parts) != 2 || msg.Parts[0].Parts[1].ContentType != "text/html" {
		t.Errorf("attached message: %+v", msg)
	}
	// Broken input is described, never a failure.
	for _, in := range []string{"", "no header end", "Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nunterminated",
		"Content-Type: ;;;\r\n\r\nx", "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!"} {
		if p := listParts(strings.NewReader(in)); p == nil {
			t.Errorf("%q: nil", in)
		}
	}
}

func FuzzConsoleMIMEParts(f *testing.F) {
	f.Add([]byte(mimeSample))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: message/rfc822\r\n\r\n--a--"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := listParts(strings.NewReader(string(b)))
		if p == nil {
			t.Fatal("nil structure")
		}
	})
}

// fakeConns is one forwarder connection, "peer", for the console's
// connection page.
type fakeConns struct {
	mu              sync.Mutex
	depth           int64
	paused          bool
	purges, retries int
}

func (f *fakeConns) st() forwarder.Status {
	state := "up"
	if f.paused {
		state = "paused"
	}
	return forwarder.Status{Name: "peer", Address: "192.0.2.9:8091", State: state, Paused: f.paused, QueueDepth: f.depth, Rate: 2, ETAS: float64(f.depth) / 2, Concurrency: 4}
}

func (f *fakeConns) Status() []forwarder.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return []forwarder.Status{f.st()}
}

func (f *fakeConns) StatusOf(name string) (forwarder.Status, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st(), name == "peer"
}

func (f *fakeConns) Retry(ctx context.Context, name string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.retries++
	return 2, nil
}

func (f *fakeConns) Purge(ctx context.Context, name string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := int(f.depth)
	f.depth, f.purges = 0, f.purges+1
	return n, nil
}

func (f *fakeConns) Pause(name string) error { f.mu.Lock(); f.paused = true; f.mu.Unlock(); return nil }
func (f *fakeConns) Resume(name string) error {
	f.mu.Lock()
	f.paused = false
	f.mu.Unlock()
	return nil
}

func (f *fakeConns) Entries(name string, dead bool, limit int) ([]queue.Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []queue.Entry
	for i := int64(0); i < f.depth && len(out) < limit; i++ {
		out = append(out, queue.Entry{Seq: uint64(i + 1), HashHex: strings.Repeat("ab", 32), Attempts: 3, LastError: "421 try later"})
	}
	return out, nil
}

func TestConsoleConnectionActions(t *testing.T) {
	t.Parallel()
	conns := &fakeConns{depth: 40}
	n := newConsoleNode(t, func(o *Options) { o.Connections = conns })
	b := n.browser(t)
	tok := b.login("admin", "right-password")

	page := b.get("/connections/peer")
	if page.code != 200 || !strings.Contains(page.body, "421 try later") || !strings.Contains(page.body, `<progress max="100" value="0"`) {
		t.Fatalf("connection page: %d\n%s", page.code, page.body)
	}
	// The backlog shrinks: progress is measured from its peak.
	conns.mu.Lock()
	conns.depth = 10
	conns.mu.Unlock()
	if page := b.get("/"); !strings.Contains(page.body, `value="75"`) || !strings.Contains(page.body, "5s") {
		t.Errorf("dashboard catch-up (75%%, ETA 5s):\n%s", page.body)
	}

	if a := b.post("/connections/peer/pause", url.Values{"csrf": {tok}}); a.code != http.StatusSeeOther || a.h.Get("Location") != "/connections/peer" {
		t.Fatalf("pause: %d %q", a.code, a.h.Get("Location"))
	}
	if page := b.get("/connections/peer"); !strings.Contains(page.body, "Resume delivery") || !strings.Contains(page.body, "paused; its queue keeps filling") {
		t.Errorf("after pause:\n%s", page.body)
	}
	b.post("/connections/peer/resume", url.Values{"csrf": {tok}})
	if conns.paused {
		t.Error("resume did not resume")
	}
	if a := b.post("/connections/peer/retry", url.Values{"csrf": {tok}}); a.code != http.StatusSeeOther || conns.retries != 1 {
		t.Errorf("retry: %d %d", a.code, conns.retries)
	}

	// Purge: the confirmation page first; a POST without the typed name
	// purges nothing.
	if a := b.get("/connections/peer/purge"); a.code != 200 || !strings.Contains(a.body, "<strong>10</strong> message(s)") {
		t.Errorf("purge confirmation: %d\n%s", a.code, a.body)
	}
	if a := b.post("/connections/peer/purge", url.Values{"csrf": {tok}}); a.code != http.StatusBadRequest || conns.purges != 0 ||
		!strings.Contains(a.body, `id="confirm-err"`) {
		t.Errorf("purge without confirmation: %d, %d purges", a.code, conns.purges)
	}
	if a := b.post("/connections/peer/purge", url.Values{"csrf": {tok}, "confirm": {"peer"}}); a.code != http.StatusSeeOther || conns.purges != 1 {
		t.Errorf("purge: %d, %d purges", a.code, conns.purges)
	}
	if page := b.get("/connections/peer"); !strings.Contains(page.body, "10 queued message(s) of &#34;peer&#34; purged") {
		t.Errorf("after purge:\n%s", page.body)
	}
	if a := b.get("/connections/nope"); a.code != http.StatusNotFound {
		t.Errorf("unknown connection: %d", a.code)
	}
}

// consoleJournalArchive answers every message as a journal report with a Bcc
// recipient.
type consoleJournalArchive struct{ *fakeArchive }

func (j consoleJournalArchive) Get(ctx context.Context, id string) (*archive.Meta, error) {
	m, err := j.fakeArchive.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	m.Headers = archive.Headers{Subject: "Quarterly numbers", From: []string{"alice@contoso.example"}, To: []string{"bob@contoso.example"}}
	m.Envelope.RcptTo = []string{"journal@archive.example"}
	m.Journal = &archive.JournalSummary{
		Format: "exchange", Sender: "alice@contoso.example", Subject: "Quarterly numbers",
		Recipients: []archive.Recipient{
			{Address: "bob@contoso.example", Kind: "to"},
			{Address: "carol@contoso.example", Kind: "bcc"},
		},
		Original: &archive.JournalPart{ContentType: "message/rfc822", Size: 1234, SHA256: strings.Repeat("c", 64)},
		Warnings: []string{"envelope line 7 unreadable"},
	}
	return m, nil
}

func TestConsoleJournalReport(t *testing.T) {
	t.Parallel()
	n := newConsoleNode(t, func(o *Options) {
		o.Archive = consoleJournalArchive{newFakeArchive([]byte("Subject: report\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nenvelope\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: Quarterly numbers\r\n\r\nnumbers\r\n--b--\r\n"))}
	})
	var id string
	for k := range n.s.opts.Archive.(consoleJournalArchive).msgs {
		id = k
	}
	admin, viewer := n.browser(t), n.browser(t)
	admin.login("admin", "right-password")
	viewer.login("viewer", "viewer-password")

	a := admin.get("/archive/" + id)
	for _, want := range []string{"Journal report", "carol@contoso.example", "bcc", "The original (unwrapped)", "1234", "envelope line 7 unreadable",
		"Download the original (.eml)", `href="/archive/` + id + `/raw?part=report"`, "<code>message/rfc822</code>"} {
		if !strings.Contains(a.body, want) {
			t.Errorf("admin's view lacks %q", want)
		}
	}
	// A read-only user sees what the original's header shows, no more
	// (the API's rule: archive.Restrict), and cannot fetch the report.
	v := viewer.get("/archive/" + id)
	if v.code != 200 || !strings.Contains(v.body, "bob@contoso.example") {
		t.Fatalf("viewer: %d\n%s", v.code, v.body)
	}
	for _, leak := range []string{"carol@contoso.example", "part=report", "envelope line 7"} {
		if strings.Contains(v.body, leak) {
			t.Errorf("read-only view shows %q", leak)
		}
	}
	if a := viewer.get("/archive/" + id + "/raw?part=report"); a.code != http.StatusForbidden {
		t.Errorf("read-only download of the report: %d", a.code)
	}
	if a := admin.get("/archive/" + id + "/raw"); a.code != 200 || !strings.Contains(a.h.Get("Content-Disposition"), ".eml") {
		t.Errorf("download: %d %v", a.code, a.h)
	}
}

// pagedArchive has two pages of results.
type pagedArchive struct{ *fakeArchive }

func (p pagedArchive) Search(ctx context.Context, q archive.Query) (archive.Page, error) {
	page, err := p.fakeArchive.Search(ctx, q)
	if err == nil && q.Cursor == "" {
		page.NextCursor = "page2"
	}
	return page, err
}

func TestConsoleArchiveSearchPaging(t *testing.T) {
	t.Parallel()
	n := newConsoleNode(t, func(o *Options) { o.Archive = pagedArchive{newFakeArchive([]byte("Subject: s\r\n\r\nx\r\n"))} })
	b := n.browser(t)
	b.login("viewer", "viewer-password")
	a := b.get("/archive?subject=s&from=&q=")
	if a.code != 200 || !strings.Contains(a.body, `href="/archive?cursor=page2&amp;subject=s" rel="next"`) || strings.Contains(a.body, "First page") {
		t.Fatalf("first page: %d\n%s", a.code, a.body)
	}
	if q := n.s.opts.Archive.(pagedArchive).lastQuery; q.Subject != "s" || q.Limit != 25 {
		t.Errorf("query: %+v", q)
	}
	a = b.get("/archive?cursor=page2&subject=s")
	if !strings.Contains(a.body, `href="/archive?subject=s">« First page`) || strings.Contains(a.body, `rel="next"`) {
		t.Errorf("second page:\n%s", a.body)
	}
	// Bad input: beside its field, or at the top when it is no field's.
	a = b.get("/archive?after=yesterday")
	if a.code != http.StatusBadRequest || !strings.Contains(a.body, `<span class="error" id="s-after-err">`) {
		t.Errorf("bad date: %d\n%s", a.code, a.body)
	}
	a = b.get("/archive?cursor=bogus")
	if a.code != http.StatusBadRequest || !strings.Contains(a.body, "cursor: not a cursor") {
		t.Errorf("bad cursor: %d\n%s", a.code, a.body)
	}
}
