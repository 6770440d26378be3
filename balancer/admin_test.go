package balancer

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

const testToken = "0123456789abcdef-token"

func apiCall(t *testing.T, bal *Balancer, method, path, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+bal.AdminAddr().String()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdminAPI(t *testing.T) {
	t.Parallel()
	a := startBackend(t, "a", "127.0.0.1", false)
	b := startBackend(t, "b", "127.0.0.1", false)
	extra := fmt.Sprintf("  admin: %q\n  api_tokens: [%q]\n", freeAddr(t, "127.0.0.1"), testToken)
	bal := startBalancer(t, poolYAML("      proxy_protocol: none\n", []string{
		fmt.Sprintf("{name: a, address: %q, weight: 2}", a.addr),
		fmt.Sprintf("{name: b, address: %q}", b.addr),
	}, extra), Options{})
	if _, err := runSession(bal.frontend(t, "smtp"), ""); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		method, path, token, body string
		code                      int
		contains                  string
	}{
		{"GET", "/healthz", "", "", 200, `"status": "ok"`},
		{"GET", "/metrics", "", "", 200, `chainmail_balancer_server_sessions_total{pool="p",server="a"} 1`},
		{"GET", "/api/v1/pools", "", "", 401, "bearer token"},
		{"GET", "/api/v1/pools", "wrong-token-wrong-token", "", 401, "bearer token"},
		{"GET", "/api/v1/pools", testToken, "", 200, `"config_weight": 2`},
		{"GET", "/api/v1/frontends", testToken, "", 200, `"total_sessions": 1`},
		{"POST", "/api/v1/pools/p/servers/a", "", `{"state":"drain"}`, 401, "bearer token"},
		{"POST", "/api/v1/pools/p/servers/a", testToken, `{"state":"asleep"}`, 400, "invalid change"},
		{"POST", "/api/v1/pools/p/servers/a", testToken, `{"weight":-1}`, 400, "invalid change"},
		{"POST", "/api/v1/pools/p/servers/a", testToken, `{}`, 400, "nothing to change"},
		{"POST", "/api/v1/pools/p/servers/a", testToken, `{"stat":"drain"}`, 400, "unknown field"},
		{"POST", "/api/v1/pools/p/servers/zz", testToken, `{"state":"drain"}`, 404, "no such pool or server"},
		{"POST", "/api/v1/pools/zz/servers/a", testToken, `{"state":"drain"}`, 404, "no such pool or server"},
		{"POST", "/api/v1/pools/p/servers/a", testToken, `{"state":"drain","weight":7}`, 200, `"state": "drain"`},
		{"GET", "/api/v1/nothing", testToken, "", 404, "no such endpoint"},
	} {
		code, body := apiCall(t, bal, tc.method, tc.path, tc.token, tc.body)
		if code != tc.code || !strings.Contains(body, tc.contains) {
			t.Errorf("%s %s: %d %s\nwant %d containing %q", tc.method, tc.path, code, body, tc.code, tc.contains)
		}
	}

	code, body := apiCall(t, bal, "GET", "/api/v1/pools", testToken, "")
	var resp struct {
		Pools []PoolStatus `json:"pools"`
	}
	if err := json.Unmarshal([]byte(body), &resp); err != nil || code != 200 {
		t.Fatal(code, err)
	}
	sa := resp.Pools[0].Servers[0]
	if sa.State != StateDrain || sa.Weight != 7 || sa.ConfigWeight != 2 || sa.Available || sa.TotalSessions != 1 || sa.BytesIn == 0 {
		t.Fatalf("server a: %+v", sa)
	}
	// With every server out, /healthz says so.
	apiCall(t, bal, "POST", "/api/v1/pools/p/servers/b", testToken, `{"state":"maint"}`)
	code, body = apiCall(t, bal, "GET", "/healthz", "", "")
	if code != 503 || !strings.Contains(body, `"pools_without_server"`) {
		t.Fatalf("healthz with nothing available: %d %s", code, body)
	}
	_, body = apiCall(t, bal, "GET", "/metrics", "", "")
	for _, want := range []string{
		`chainmail_balancer_server_state{pool="p",server="b",state="maint"} 1`,
		`chainmail_balancer_server_available{pool="p",server="a"} 0`,
		`chainmail_balancer_frontend_sessions_total{frontend="smtp"} 1`,
		`chainmail_balancer_server_failures_total{kind="connect",pool="p",server="a"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
