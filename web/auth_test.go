package web

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestAuthRoles(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, newFakeArchive(), nil)
	// A write endpoint, as the connection and listener endpoints will be.
	var who Principal
	s.handle("POST", "/api/v1/test/write", accessAPI, func(w http.ResponseWriter, r *http.Request) {
		who, _ = PrincipalFrom(r.Context())
		writeJSON(w, http.StatusOK, map[string]string{"done": "yes"})
	})

	tests := []struct {
		name string
		rq   request
		want int
	}{
		{"no credentials", request{path: "/api/v1/node"}, http.StatusUnauthorized},
		{"wrong token", request{path: "/api/v1/node", token: "not-a-configured-token"}, http.StatusUnauthorized},
		{"admin token reads", request{path: "/api/v1/node", token: adminToken}, http.StatusOK},
		{"read-only token reads", request{path: "/api/v1/node", token: readOnlyToken}, http.StatusOK},
		{"read-only token HEAD", request{method: "HEAD", path: "/api/v1/node", token: readOnlyToken}, http.StatusOK},
		{"read-only token writes", request{method: "POST", path: "/api/v1/test/write", token: readOnlyToken}, http.StatusForbidden},
		{"admin token writes", request{method: "POST", path: "/api/v1/test/write", token: adminToken}, http.StatusOK},
		{"no credentials write", request{method: "POST", path: "/api/v1/test/write"}, http.StatusUnauthorized},
		{"read-only POST to a read endpoint", request{method: "POST", path: "/api/v1/node", token: readOnlyToken}, http.StatusForbidden},
		{"admin POST to a read endpoint", request{method: "POST", path: "/api/v1/node", token: adminToken}, http.StatusMethodNotAllowed},
		{"basic admin", request{path: "/api/v1/node", user: "admin", pass: "right-password"}, http.StatusOK},
		{"basic read-only writes", request{method: "POST", path: "/api/v1/test/write", user: "viewer", pass: "viewer-password"}, http.StatusForbidden},
		{"basic wrong password", request{path: "/api/v1/node", user: "admin", pass: "wrong"}, http.StatusUnauthorized},
		{"unknown API path anonymous", request{path: "/api/v1/nothing"}, http.StatusUnauthorized},
		{"unknown API path authenticated", request{path: "/api/v1/nothing", token: adminToken}, http.StatusNotFound},
		{"healthz is open", request{path: "/healthz"}, http.StatusOK},
		{"metrics open by default", request{path: "/metrics"}, http.StatusOK},
	}
	for _, tt := range tests {
		// Sequential: the wrong-credential cases share the client IP and
		// must stay under the failed-login limit together.
		w := do(t, s, tt.rq)
		if w.Code != tt.want {
			t.Errorf("%s: status %d, want %d; body %s", tt.name, w.Code, tt.want, w.Body)
			continue
		}
		if w.Code >= 400 {
			errorOf(t, w)
		}
	}

	w := do(t, s, request{method: "POST", path: "/api/v1/test/write", user: "admin", pass: "right-password"})
	if w.Code != http.StatusOK || who.Name != "admin" || who.Role != RoleAdmin || who.Via != "basic" {
		t.Errorf("basic admin write: %d, principal %+v", w.Code, who)
	}
	do(t, s, request{method: "POST", path: "/api/v1/test/write", token: adminToken})
	if who.Name != "web.api_tokens[0]" || who.Via != "token" {
		t.Errorf("token principal %+v: want the token's config path, never the token", who)
	}
	w = do(t, s, request{method: "POST", path: "/api/v1/node", token: adminToken})
	if got := w.Header().Get("Allow"); got != "GET, HEAD" {
		t.Errorf("405 Allow = %q", got)
	}
}

func TestAuthChallenges(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, newFakeArchive(), nil)
	w := do(t, s, request{path: "/api/v1/archive/digest"})
	got := w.Header().Values("WWW-Authenticate")
	want := []string{`Bearer realm="chainmail"`, `Basic realm="chainmail", charset="UTF-8"`}
	if !slices.Equal(got, want) {
		t.Errorf("challenges %q, want %q", got, want)
	}
	w = do(t, s, request{path: "/api/v1/archive/digest", token: "wrong-token-0123456789"})
	if got := w.Header().Get("WWW-Authenticate"); !strings.Contains(got, `error="invalid_token"`) {
		t.Errorf("bad token challenge %q lacks error=\"invalid_token\" (RFC 6750 §3)", got)
	}

	// Without accounts, Basic is not offered (and not accepted).
	s = newTestServer(t, newFakeArchive(), func(o *Options) { o.Users = nil })
	w = do(t, s, request{path: "/api/v1/node"})
	if got := w.Header().Values("WWW-Authenticate"); len(got) != 1 || !strings.HasPrefix(got[0], "Bearer") {
		t.Errorf("challenges without users %q", got)
	}
	if w := do(t, s, request{path: "/api/v1/node", user: "admin", pass: "right-password"}); w.Code != http.StatusUnauthorized {
		t.Errorf("basic without users: %d", w.Code)
	}
}

func TestAuthOddHeaders(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, newFakeArchive(), nil)
	for _, h := range []string{"Bearer", "Bearer ", "bearer  ", "Basic", "Basic !!!", "Digest x", adminToken, "Bearer " + adminToken + "x"} {
		if w := serve(s, withAuthorization(request{path: "/api/v1/node", remote: "198.51.100.7:1"}, h)); w.Code != http.StatusUnauthorized {
			t.Errorf("Authorization %q: %d, want 401", h, w.Code)
		}
	}
	// The scheme is case-insensitive (RFC 9110 §11.1).
	if w := serve(s, withAuthorization(request{path: "/api/v1/node"}, "bEaReR "+adminToken)); w.Code != http.StatusOK {
		t.Errorf("mixed-case scheme: %d", w.Code)
	}
}

func TestMetricsAuth(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, newFakeArchive(), func(o *Options) { o.MetricsAuth = true })
	if w := do(t, s, request{path: "/metrics"}); w.Code != http.StatusUnauthorized {
		t.Errorf("metrics_auth, anonymous: %d", w.Code)
	}
	if w := do(t, s, request{path: "/metrics", token: readOnlyToken}); w.Code != http.StatusOK {
		t.Errorf("metrics_auth, read-only token: %d", w.Code)
	}
	if w := do(t, s, request{path: "/healthz"}); w.Code != http.StatusOK {
		t.Errorf("healthz must stay open: %d", w.Code)
	}
}

func TestEmptyTokenRefused(t *testing.T) {
	t.Parallel()
	for _, o := range []Options{
		{Archive: newFakeArchive(), APITokens: []string{""}},
		{Archive: newFakeArchive(), ReadOnlyTokens: []string{"  "}},
	} {
		if _, err := New(o); err == nil || !strings.Contains(err.Error(), "is empty") {
			t.Errorf("New with an empty token: %v", err)
		}
	}
}

func TestLoginRateLimit(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s := newTestServer(t, newFakeArchive(), func(o *Options) {
		o.Now = clock.Now
		o.LoginLimit = LoginLimit{Failures: 3, Window: time.Minute}
	})
	attacker := "203.0.113.9:4000"
	for i := range 3 {
		w := do(t, s, request{path: "/api/v1/node", user: "admin", pass: "guess", remote: attacker})
		if w.Code != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d, want 401", i+1, w.Code)
		}
	}
	// Over the limit even the right password is refused, unchecked.
	w := do(t, s, request{path: "/api/v1/node", user: "admin", pass: "right-password", remote: attacker})
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("over the limit: %d, want 429", w.Code)
	}
	if got := w.Header().Get("Retry-After"); got != "60" {
		t.Errorf("Retry-After %q, want 60", got)
	}
	errorOf(t, w)
	// Tokens are attempts too.
	if w := do(t, s, request{path: "/api/v1/node", token: adminToken, remote: attacker}); w.Code != http.StatusTooManyRequests {
		t.Errorf("token while limited: %d", w.Code)
	}
	// Other clients are unaffected; the same host's other port is not.
	if w := do(t, s, request{path: "/api/v1/node", user: "admin", pass: "right-password", remote: "203.0.113.10:1"}); w.Code != http.StatusOK {
		t.Errorf("another client: %d", w.Code)
	}
	if w := do(t, s, request{path: "/api/v1/node", token: adminToken, remote: "203.0.113.9:4001"}); w.Code != http.StatusTooManyRequests {
		t.Errorf("same IP, other port: %d", w.Code)
	}
	// Anonymous requests carry no credentials and are not attempts.
	if w := do(t, s, request{path: "/api/v1/node", remote: "203.0.113.11:1"}); w.Code != http.StatusUnauthorized {
		t.Errorf("anonymous: %d", w.Code)
	}

	clock.Add(59 * time.Second)
	if got := do(t, s, request{path: "/api/v1/node", token: adminToken, remote: attacker}).Header().Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After near the end %q, want 1", got)
	}
	clock.Add(time.Second)
	if w := do(t, s, request{path: "/api/v1/node", user: "admin", pass: "right-password", remote: attacker}); w.Code != http.StatusOK {
		t.Errorf("after the window: %d", w.Code)
	}
}

func TestLoginLimiterIPv6AndOverflow(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	l := newLoginLimiter(LoginLimit{Failures: 2, Window: time.Minute}, clock.Now)
	l.capacity = 3

	// One IPv6 /64 is one client.
	a, b := clientKey("[2001:db8:1:2::1]:25"), clientKey("[2001:db8:1:2:ffff::9]:25")
	if a != b || a != "2001:db8:1:2::/64" {
		t.Errorf("IPv6 keys %q %q, want the shared /64", a, b)
	}
	if k := clientKey("[::ffff:192.0.2.1]:80"); k != "192.0.2.1" {
		t.Errorf("mapped IPv4 key %q", k)
	}

	// Fill the table; the next clients share the overflow entry and so
	// are limited together rather than not at all.
	for _, k := range []string{"k1", "k2", "k3"} {
		l.fail(k)
	}
	l.fail("k4")
	l.fail("k5")
	if l.retryAfter("k6") == 0 {
		t.Error("overflow clients were not limited")
	}
	if l.retryAfter("k1") != 0 {
		t.Error("k1 (1 failure) limited")
	}
	if len(l.entries) != 4 {
		t.Errorf("table has %d entries, want capacity 3 + overflow", len(l.entries))
	}
	// Expired entries make room again.
	clock.Add(time.Minute)
	l.fail("k7")
	if l.retryAfter("k7") != 0 || len(l.entries) != 1 {
		t.Errorf("after expiry: entries %v", l.entries)
	}
}
