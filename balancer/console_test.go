package balancer

import (
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
)

// TestConsolePage logs in with a token and drains, weights and readies a
// server through the console's forms; a form without the session's CSRF
// token changes nothing.
func TestConsolePage(t *testing.T) {
	t.Parallel()
	a := startBackend(t, "a", "127.0.0.1", false)
	b := startBackend(t, "b", "127.0.0.1", false)
	extra := fmt.Sprintf("  admin: %q\n  api_tokens: [%q]\n", freeAddr(t, "127.0.0.1"), testToken)
	bal := startBalancer(t, poolYAML("      proxy_protocol: none\n", []string{
		fmt.Sprintf("{name: a, address: %q, weight: 2}", a.addr),
		fmt.Sprintf("{name: b, address: %q}", b.addr),
	}, extra), Options{})
	base := "http://" + bal.AdminAddr().String()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, path string, form url.Values) (int, string, http.Header) {
		t.Helper()
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, _ := http.NewRequest(method, base+path, body)
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Origin", base)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out), resp.Header
	}
	csrfRE := regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	token := func(page string) string {
		t.Helper()
		m := csrfRE.FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("no CSRF token:\n%s", page)
		}
		return m[1]
	}

	if code, _, h := do("GET", "/", nil); code != http.StatusSeeOther || h.Get("Location") != "/login" {
		t.Fatalf("without a session: %d %q", code, h.Get("Location"))
	}
	_, page, _ := do("GET", "/login", nil)
	if code, body, _ := do("POST", "/login", url.Values{"csrf": {token(page)}, "token": {"wrong-token-wrong-token"}}); code != http.StatusUnauthorized ||
		!strings.Contains(body, "not one of the balancer") {
		t.Fatalf("wrong token: %d", code)
	}
	if code, _, h := do("POST", "/login", url.Values{"csrf": {token(page)}, "token": {testToken}}); code != http.StatusSeeOther ||
		!strings.Contains(strings.Join(h.Values("Set-Cookie"), "\n"), "HttpOnly; SameSite=Strict") {
		t.Fatalf("login: %d %v", code, h)
	}
	code, page, h := do("GET", "/", nil)
	if code != 200 || !strings.Contains(page, "Pool p") || !strings.Contains(h.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Fatalf("overview: %d %v\n%s", code, h, page)
	}
	if regexp.MustCompile(`(?i)\sstyle=|<script>`).MatchString(page) {
		t.Error("inline style or script on the page")
	}
	tok := token(page)

	if code, _, _ := do("POST", "/servers/p/a", url.Values{"state": {"drain"}}); code != http.StatusForbidden {
		t.Errorf("without CSRF: %d", code)
	}
	if s := bal.server(t, "p", "a"); s.State != StateReady {
		t.Fatalf("a form without CSRF changed the state: %s", s.State)
	}
	if code, _, _ := do("POST", "/servers/p/a", url.Values{"csrf": {tok}, "state": {"drain"}}); code != http.StatusSeeOther {
		t.Fatalf("drain: %d", code)
	}
	if code, _, _ := do("POST", "/servers/p/b", url.Values{"csrf": {tok}, "weight": {"5"}}); code != http.StatusSeeOther {
		t.Fatalf("weight: %d", code)
	}
	if sa, sb := bal.server(t, "p", "a"), bal.server(t, "p", "b"); sa.State != StateDrain || sb.Weight != 5 {
		t.Fatalf("after the clicks: a %s, b weight %d", sa.State, sb.Weight)
	}
	_, page, _ = do("GET", "/", nil)
	if !strings.Contains(page, "Server b of pool p: ready, weight 5.") || !strings.Contains(page, `aria-pressed="true">drain`) {
		t.Errorf("page after the changes:\n%s", page)
	}
	// A bad value is refused by SetServer and said on the page.
	do("POST", "/servers/p/a", url.Values{"csrf": {tok}, "weight": {"-3"}})
	if _, page, _ = do("GET", "/", nil); !strings.Contains(page, "not changed") {
		t.Errorf("refused change not shown:\n%s", page)
	}
	// The API keeps its tokens: a session cookie is not one.
	if code, _, _ := do("GET", "/api/v1/pools", nil); code != http.StatusUnauthorized {
		t.Errorf("API with a cookie only: %d", code)
	}
	if code, _, _ := do("GET", "/static/console.css", nil); code != 200 {
		t.Errorf("stylesheet: %d", code)
	}
}

func TestConsoleLoginLimit(t *testing.T) {
	t.Parallel()
	l := &tokenLimiter{now: newFakeClock().Now, fails: map[string]*failCount{}}
	for range loginFailures {
		if l.wait("192.0.2.1") != 0 {
			t.Fatal("limited too early")
		}
		l.fail("192.0.2.1")
	}
	if l.wait("192.0.2.1") != loginWindow || l.wait("192.0.2.2") != 0 {
		t.Fatal("limit not applied to the one client")
	}
	l.succeed("192.0.2.1")
	if l.wait("192.0.2.1") != 0 {
		t.Fatal("a success did not clear the count")
	}
}
