package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"chainmail/internal/store"
	"chainmail/internal/testutil"
)

// newAccountsNode is a consoleNode whose accounts are a real Users store in
// the same bbolt file as its live configuration, so account changes land
// in the audit log the console shows. It returns the admin's password; the
// file is checked for consistency after the test.
func newAccountsNode(t *testing.T) (*consoleNode, *Users, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "chainmail.db")
	db, err := store.Open(path, store.Options{NoSync: true, LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(); testutil.CheckBolt(t, path) })
	users, err := OpenUsers(db)
	if err != nil {
		t.Fatal(err)
	}
	users.cost = bcrypt.MinCost
	pw, _, err := users.EnsureAdmin()
	if err != nil {
		t.Fatal(err)
	}
	n := newConsoleNodeOn(t, db, func(o *Options) { o.Users = users })
	return n, users, pw
}

// call is one API request with a JSON body; auth sets its credentials.
func call(t *testing.T, s *Server, method, path, body string, auth func(*http.Request)) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.RemoteAddr = "192.0.2.7:1234"
	r.Header.Set("Content-Type", "application/json")
	if auth != nil {
		auth(r)
	}
	return serve(s, r)
}

func bearer(tok string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
}

func basic(user, pass string) func(*http.Request) {
	return func(r *http.Request) { r.SetBasicAuth(user, pass) }
}

func TestAccountsAPI(t *testing.T) {
	t.Parallel()
	n, _, adminPW := newAccountsNode(t)
	s := n.s
	admin := basic("admin", adminPW)

	// The admin creates a read-only account; no hash comes back.
	w := call(t, s, "POST", "/api/v1/users", `{"name":"viewer","role":"read-only","password":"viewer password 1"}`, admin)
	if w.Code != http.StatusCreated || strings.Contains(w.Body.String(), "hash") || !strings.Contains(w.Body.String(), `"role":"read-only"`) {
		t.Fatalf("create: %d %s", w.Code, w.Body)
	}
	viewer := basic("viewer", "viewer password 1")
	var list AccountList
	w = call(t, s, "GET", "/api/v1/users", "", viewer)
	if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil || w.Code != 200 || len(list.Users) != 2 || list.Users[1].Name != "viewer" {
		t.Fatalf("list as read-only: %d %s", w.Code, w.Body)
	}
	if strings.Contains(w.Body.String(), "$2a$") || strings.Contains(w.Body.String(), "hash") {
		t.Errorf("the list shows hashes: %s", w.Body)
	}

	// Read-only: every write is refused, except its own password.
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/api/v1/users", `{"name":"x","role":"admin","password":"xxxxxxxxxxxxxx"}`},
		{"DELETE", "/api/v1/users/admin", ""},
		{"POST", "/api/v1/users/admin/password", `{"password":"taken over at last"}`},
		{"POST", "/api/v1/listeners", `{"name":"x"}`},
	} {
		if w := call(t, s, c.method, c.path, c.body, viewer); w.Code != http.StatusForbidden {
			t.Errorf("read-only %s %s: %d %s", c.method, c.path, w.Code, w.Body)
		}
	}
	// A read-only token is no account: it has no own password to change.
	if w := call(t, s, "POST", "/api/v1/users/viewer/password", `{"password":"viewer password 2"}`, bearer(readOnlyToken)); w.Code != http.StatusForbidden {
		t.Errorf("read-only token sets viewer's password: %d", w.Code)
	}
	if w := call(t, s, "POST", "/api/v1/users/viewer/password", `{"password":"short"}`, viewer); w.Code != http.StatusBadRequest || errorOf(t, w).Fields["password"] == "" {
		t.Errorf("own short password: %d %s", w.Code, w.Body)
	}
	if w := call(t, s, "POST", "/api/v1/users/viewer/password", `{"password":"viewer password 2"}`, viewer); w.Code != http.StatusNoContent {
		t.Fatalf("own password: %d %s", w.Code, w.Body)
	}
	// The old password (cached after the calls above) stops working.
	if w := call(t, s, "GET", "/api/v1/users", "", viewer); w.Code != http.StatusUnauthorized {
		t.Errorf("old password after the change: %d", w.Code)
	}
	viewer = basic("viewer", "viewer password 2")
	if w := call(t, s, "GET", "/api/v1/node", "", viewer); w.Code != 200 {
		t.Errorf("new password: %d", w.Code)
	}

	// Validation: every problem at once, keyed by field.
	w = call(t, s, "POST", "/api/v1/users", `{"name":"Not Valid","role":"root","password":"short"}`, bearer(adminToken))
	if e := errorOf(t, w); w.Code != http.StatusBadRequest || e.Fields["name"] == "" || e.Fields["role"] == "" || e.Fields["password"] == "" {
		t.Errorf("invalid account: %d %s", w.Code, w.Body)
	}
	w = call(t, s, "POST", "/api/v1/users", `{"name":"x","role":"admin","pasword":"typo in the key"}`, bearer(adminToken))
	if w.Code != http.StatusBadRequest || !strings.Contains(errorOf(t, w).Error, "pasword") {
		t.Errorf("unknown key: %d %s", w.Code, w.Body)
	}
	w = call(t, s, "POST", "/api/v1/users", `{"name":"viewer","role":"admin","password":"viewer password 3"}`, bearer(adminToken))
	if w.Code != http.StatusConflict || errorOf(t, w).Fields["name"] == "" {
		t.Errorf("taken name: %d %s", w.Code, w.Body)
	}

	// The last admin stays; unknown accounts are 404.
	w = call(t, s, "DELETE", "/api/v1/users/admin", "", bearer(adminToken))
	if w.Code != http.StatusConflict || !strings.Contains(errorOf(t, w).Error, "last") {
		t.Errorf("delete the last admin: %d %s", w.Code, w.Body)
	}
	if w := call(t, s, "DELETE", "/api/v1/users/nobody", "", bearer(adminToken)); w.Code != http.StatusNotFound {
		t.Errorf("delete unknown: %d", w.Code)
	}
	if w := call(t, s, "POST", "/api/v1/users/nobody/password", `{"password":"a long password"}`, bearer(adminToken)); w.Code != http.StatusNotFound {
		t.Errorf("password of unknown: %d", w.Code)
	}
	// The admin resets viewer's password, then deletes it.
	if w := call(t, s, "POST", "/api/v1/users/viewer/password", `{"password":"reset by admin 1"}`, bearer(adminToken)); w.Code != http.StatusNoContent {
		t.Errorf("admin resets viewer: %d %s", w.Code, w.Body)
	}
	if w := call(t, s, "DELETE", "/api/v1/users/viewer", "", admin); w.Code != http.StatusNoContent {
		t.Errorf("delete viewer: %d %s", w.Code, w.Body)
	}
	if w := call(t, s, "GET", "/api/v1/node", "", basic("viewer", "reset by admin 1")); w.Code != http.StatusUnauthorized {
		t.Errorf("deleted account: %d", w.Code)
	}

	// Every change is in the configuration's audit log, by who made it.
	var audit AuditList
	w = call(t, s, "GET", "/api/v1/audit", "", bearer(adminToken))
	json.Unmarshal(w.Body.Bytes(), &audit)
	var got []string
	for _, e := range audit.Entries {
		if e.Kind == AuditKindUsers {
			got = append(got, e.Action+" "+e.Name+" by "+e.By)
		}
	}
	want := []string{"delete viewer by admin", "update viewer by web.api_tokens[0]", "update viewer by viewer", "create viewer by admin", "create admin by (first start)"}
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Errorf("audit of accounts:\n got %q\nwant %q", got, want)
	}
	if strings.Contains(w.Body.String(), "$2a$") || strings.Contains(w.Body.String(), "password 1") {
		t.Errorf("the audit log holds a secret: %s", w.Body)
	}
}

// TestAccountRoles: an admin changes an account's role; the change takes
// effect at once (the account's sessions end, its cached logins go), the
// last admin keeps its role, and the audit log has before and after.
func TestAccountRoles(t *testing.T) {
	t.Parallel()
	n, _, adminPW := newAccountsNode(t)
	s := n.s
	admin := basic("admin", adminPW)
	if w := call(t, s, "POST", "/api/v1/users", `{"name":"ops","role":"read-only","password":"ops password 11"}`, admin); w.Code != http.StatusCreated {
		t.Fatalf("create: %d %s", w.Code, w.Body)
	}
	ops := basic("ops", "ops password 11")
	// A read-only account may not promote itself; its login is cached now.
	if w := call(t, s, "POST", "/api/v1/users/ops/role", `{"role":"admin"}`, ops); w.Code != http.StatusForbidden {
		t.Fatalf("read-only promotes itself: %d %s", w.Code, w.Body)
	}
	if w := call(t, s, "POST", "/api/v1/users/ops/role", `{"role":"root"}`, admin); w.Code != http.StatusBadRequest || errorOf(t, w).Fields["role"] == "" {
		t.Errorf("unknown role: %d %s", w.Code, w.Body)
	}
	if w := call(t, s, "POST", "/api/v1/users/nobody/role", `{"role":"admin"}`, admin); w.Code != http.StatusNotFound {
		t.Errorf("role of unknown: %d", w.Code)
	}
	if w := call(t, s, "POST", "/api/v1/users/admin/role", `{"role":"read-only"}`, admin); w.Code != http.StatusConflict || !strings.Contains(errorOf(t, w).Error, "last") {
		t.Errorf("demote the last admin: %d %s", w.Code, w.Body)
	}
	if w := call(t, s, "POST", "/api/v1/users/ops/role", `{"role":"admin"}`, admin); w.Code != http.StatusNoContent {
		t.Fatalf("promote ops: %d %s", w.Code, w.Body)
	}
	// At once: ops may now write (the cached read-only login is gone).
	if w := call(t, s, "POST", "/api/v1/users", `{"name":"third","role":"read-only","password":"third password 1"}`, ops); w.Code != http.StatusCreated {
		t.Fatalf("ops as admin: %d %s", w.Code, w.Body)
	}
	// With two admins, admin may step down; then ops is the last one.
	if w := call(t, s, "POST", "/api/v1/users/admin/role", `{"role":"read-only"}`, ops); w.Code != http.StatusNoContent {
		t.Fatalf("demote admin: %d %s", w.Code, w.Body)
	}
	if w := call(t, s, "POST", "/api/v1/users", `{"name":"fourth","role":"read-only","password":"fourth password"}`, admin); w.Code != http.StatusForbidden {
		t.Errorf("demoted admin still writes: %d", w.Code)
	}
	if w := call(t, s, "POST", "/api/v1/users/ops/role", `{"role":"read-only"}`, ops); w.Code != http.StatusConflict {
		t.Errorf("demote the last admin (itself): %d %s", w.Code, w.Body)
	}
	var audit AuditList
	json.Unmarshal(call(t, s, "GET", "/api/v1/audit", "", bearer(adminToken)).Body.Bytes(), &audit)
	var got []string
	for _, e := range audit.Entries {
		if e.Kind == AuditKindUsers && e.Action == "update" {
			role := func(v any) any { m, _ := v.(map[string]any); return m["role"] }
			got = append(got, e.Name+" "+fmt.Sprint(role(e.Before))+"→"+fmt.Sprint(role(e.After))+" by "+e.By)
		}
	}
	want := []string{"admin admin→read-only by ops", "ops read-only→admin by admin"}
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Errorf("audit of roles:\n got %q\nwant %q", got, want)
	}
}

func TestAccountsNeedAStore(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, newFakeArchive(), nil) // fakeUsers only checks
	if w := call(t, s, "GET", "/api/v1/users", "", bearer(adminToken)); w.Code != http.StatusNotFound {
		t.Errorf("GET /api/v1/users without accounts: %d", w.Code)
	}
	if w := call(t, s, "POST", "/api/v1/users/admin/password", `{"password":"a long password"}`, basic("admin", "right-password")); w.Code != http.StatusNotFound {
		t.Errorf("password without accounts: %d", w.Code)
	}
}

// TestConsoleAccounts: an admin adds a read-only account through the
// form (refused first, errors beside the fields); the new account logs
// in, sees the pages, is refused every change but its own password; the
// last admin cannot be deleted; a deleted account is logged out at once.
func TestConsoleAccounts(t *testing.T) {
	t.Parallel()
	n, _, adminPW := newAccountsNode(t)
	b := n.browser(t)
	tok := b.login("admin", adminPW)
	page := b.get("/accounts")
	if page.code != 200 || !strings.Contains(page.body, `href="/accounts" aria-current="page"`) || !strings.Contains(page.body, "Add account") {
		t.Fatalf("accounts page: %d\n%s", page.code, page.body)
	}

	a := b.post("/accounts/new", url.Values{"csrf": {tok}, "name": {"Viewer One"}, "role": {RoleReadOnly}, "password": {"short"}, "repeat": {"shrot"}})
	if a.code != http.StatusBadRequest {
		t.Fatalf("invalid account: %d\n%s", a.code, a.body)
	}
	for _, id := range []string{"a-name", "a-password", "a-repeat"} {
		re := regexp.MustCompile(`(?s)<input[^>]*id="` + id + `"[^>]*aria-invalid="true"[^>]*>\s*<span class="error" id="` + id + `-err">[^<]+</span>`)
		if !re.MatchString(a.body) {
			t.Errorf("no error beside %s in:\n%s", id, a.body)
		}
	}
	if !strings.Contains(a.body, `value="Viewer One"`) || strings.Contains(a.body, `value="short"`) {
		t.Error("the form lost the name, or echoed the password")
	}
	if !strings.Contains(a.body, `class="error-summary"`) || !strings.Contains(a.body, `href="#a-name"`) {
		t.Error("no error summary linking to the fields")
	}
	a = b.post("/accounts/new", url.Values{"csrf": {tok}, "name": {"viewer"}, "role": {RoleReadOnly}, "password": {"viewer password 1"}, "repeat": {"viewer password 1"}})
	if a.code != http.StatusSeeOther {
		t.Fatalf("add viewer: %d\n%s", a.code, a.body)
	}
	if page := b.get("/accounts"); !strings.Contains(page.body, `Account &#34;viewer&#34; added with the role read-only.`) {
		t.Errorf("no notice after adding:\n%s", page.body)
	}
	// A taken name is shown beside the name.
	a = b.post("/accounts/new", url.Values{"csrf": {tok}, "name": {"viewer"}, "role": {RoleAdmin}, "password": {"viewer password 1"}, "repeat": {"viewer password 1"}})
	if a.code != http.StatusConflict || !strings.Contains(a.body, `id="a-name-err">an account of this name exists`) {
		t.Errorf("taken name: %d\n%s", a.code, a.body)
	}

	// The read-only account logs in (twice: two browsers), sees the
	// pages, and may change nothing but its own password.
	v := n.browser(t)
	vtok := v.login("viewer", "viewer password 1")
	other := n.browser(t)
	other.login("viewer", "viewer password 1")
	for _, path := range []string{"/", "/listeners", "/archive", "/audit", "/accounts", "/accounts/viewer/password"} {
		a := v.get(path)
		if a.code != 200 {
			t.Errorf("read-only GET %s: %d", path, a.code)
		}
		if strings.Contains(a.body, "Add account") || strings.Contains(a.body, "/accounts/admin/delete") || strings.Contains(a.body, "Add listener") {
			t.Errorf("read-only %s offers a change", path)
		}
	}
	if a := v.get("/accounts/admin/password"); a.code != http.StatusForbidden {
		t.Errorf("read-only opens admin's password form: %d", a.code)
	}
	for path, form := range map[string]url.Values{
		"/listeners/new":           {"name": {"x"}, "address": {"127.0.0.1:2599"}},
		"/accounts/new":            {"name": {"evil"}, "role": {RoleAdmin}, "password": {"evil password 1"}, "repeat": {"evil password 1"}},
		"/accounts/admin/delete":   {},
		"/accounts/admin/password": {"password": {"taken over at last"}, "repeat": {"taken over at last"}},
	} {
		form.Set("csrf", vtok)
		if a := v.post(path, form); a.code != http.StatusForbidden {
			t.Errorf("read-only POST %s: %d", path, a.code)
		}
	}
	// Its own password: the CSRF token is needed as for any form.
	if a := v.post("/accounts/viewer/password", url.Values{"password": {"viewer password 2"}, "repeat": {"viewer password 2"}}); a.code != http.StatusForbidden {
		t.Errorf("own password without CSRF: %d", a.code)
	}
	// The form asks for the current password, and a session alone is not
	// enough to change it.
	if a := v.get("/accounts/viewer/password"); !strings.Contains(a.body, `name="current_password"`) {
		t.Errorf("own password form without the current password:\n%s", a.body)
	}
	if a := v.get("/accounts/viewer/password"); !strings.Contains(a.body, "Current password") {
		t.Errorf("own password form does not label the current password")
	}
	a = v.post("/accounts/viewer/password", url.Values{"csrf": {vtok}, "current_password": {"a wrong guess"}, "password": {"viewer password 2"}, "repeat": {"viewer password 2"}})
	if a.code != http.StatusBadRequest || !strings.Contains(a.body, "not your current password") {
		t.Fatalf("own password with a wrong current one: %d\n%s", a.code, a.body)
	}
	a = v.post("/accounts/viewer/password", url.Values{"csrf": {vtok}, "current_password": {"viewer password 1"}, "password": {"viewer password 2"}, "repeat": {"viewer password 2"}})
	if a.code != http.StatusSeeOther {
		t.Fatalf("own password: %d\n%s", a.code, a.body)
	}
	if a := v.get("/accounts"); a.code != 200 || !strings.Contains(a.body, "Your password was changed") {
		t.Errorf("this session after the change: %d", a.code)
	}
	if a := other.get("/"); a.code != http.StatusSeeOther {
		t.Errorf("the other session of viewer survived the password change: %d", a.code)
	}
	fresh := n.browser(t)
	if a := fresh.post("/login", url.Values{"csrf": {csrf(t, fresh.get("/login").body)}, "user": {"viewer"}, "password": {"viewer password 1"}}); a.code != http.StatusUnauthorized {
		t.Errorf("old password logs in: %d", a.code)
	}
	fresh.login("viewer", "viewer password 2")

	// The admin sets viewer's role from the accounts page; viewer's
	// sessions end, as it logged in with the old role.
	if a := b.get("/accounts"); !strings.Contains(a.body, `action="/accounts/viewer/role"`) || !strings.Contains(a.body, `<option value="read-only" selected>`) {
		t.Errorf("accounts page without the role form:\n%s", a.body)
	}
	if a := b.post("/accounts/viewer/role", url.Values{"csrf": {tok}, "role": {RoleAdmin}}); a.code != http.StatusSeeOther {
		t.Fatalf("set viewer's role: %d\n%s", a.code, a.body)
	}
	if a := fresh.get("/"); a.code != http.StatusSeeOther {
		t.Errorf("viewer's session survived its role change: %d", a.code)
	}
	if a := b.get("/accounts"); !strings.Contains(a.body, `is now admin`) {
		t.Errorf("no confirmation of the role change:\n%s", a.body)
	}
	b.post("/accounts/viewer/role", url.Values{"csrf": {tok}, "role": {RoleReadOnly}})

	// The last admin cannot be deleted; the confirmation page says why.
	if a := b.get("/accounts/admin/delete"); a.code != 200 || !strings.Contains(a.body, "you are logged out") {
		t.Errorf("own delete page: %d\n%s", a.code, a.body)
	}
	a = b.post("/accounts/admin/delete", url.Values{"csrf": {tok}})
	if a.code != http.StatusConflict || !strings.Contains(a.body, "last account with the admin role") {
		t.Errorf("delete the last admin: %d\n%s", a.code, a.body)
	}
	// Deleting viewer logs it out everywhere at once.
	a = b.post("/accounts/viewer/delete", url.Values{"csrf": {tok}})
	if a.code != http.StatusSeeOther {
		t.Fatalf("delete viewer: %d\n%s", a.code, a.body)
	}
	for _, br := range []*browser{v, fresh} {
		if a := br.get("/"); a.code != http.StatusSeeOther {
			t.Errorf("a deleted account's session survived: %d", a.code)
		}
	}

	// The audit page shows the account changes beside the configuration's.
	audit := b.get("/audit").body
	for _, want := range []string{"account <strong>viewer</strong>", "password: changed"} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit page lacks %q:\n%s", want, audit)
		}
	}

	// The new pages follow the console's rules: CSP, no inline code.
	inline := regexp.MustCompile(`(?i)<script>|<script[^>]*>[^<]|\sstyle=|\son[a-z]+=|javascript:`)
	for _, path := range []string{"/accounts", "/accounts/admin/password", "/accounts/admin/delete"} {
		a := b.get(path)
		if a.code != 200 || !strings.Contains(a.h.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
			t.Errorf("GET %s: %d %q", path, a.code, a.h.Get("Content-Security-Policy"))
		}
		if m := inline.FindString(a.body); m != "" {
			t.Errorf("%s: inline code %q", path, m)
		}
	}
}
