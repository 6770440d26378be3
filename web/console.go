package web

import (
	"bytes"
	"context"
	"crypto/rand"
	"embed"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"strings"

	"github.com/sirupsen/logrus"

	"chainmail/internal/ui"
)

// The console: server-rendered HTML pages over the same operations as the
// JSON API (configList, configCreate, connectionAction, searchArchive,
// message, handleRaw, …). A page handler parses its form, calls the
// operation and renders a template; it never reimplements a rule. See
// docs/console.md.

//go:embed templates/*.html
var consoleTemplates embed.FS

// console holds the console's state: its templates, the login sessions
// (in memory) and the traffic sampler of the dashboard.
type console struct {
	s        *Server
	pages    map[string]*template.Template
	sessions *ui.Sessions
	rates    *rateSampler
	// loginCookie carries the double-submit token of the login form.
	loginCookie string
}

func newConsole(s *Server) *console {
	pages, err := ui.Layout(consoleTemplates, nil, "templates/*.html")
	if err != nil {
		// The templates are embedded: this is a build defect, caught by
		// every console test.
		panic(err)
	}
	cookie := "chainmail_" + cookieSafe(s.opts.NodeID)
	return &console{
		s:           s,
		pages:       pages,
		sessions:    ui.NewSessions(ui.SessionOptions{Cookie: cookie, Now: s.now}),
		rates:       newRateSampler(s.opts.Registry, s.now),
		loginCookie: cookie + "_login",
	}
}

// cookieSafe keeps the characters a cookie name may hold; node ids are
// already of that alphabet, so this only guards against an empty one.
func cookieSafe(id string) string {
	var b strings.Builder
	for _, r := range id {
		if r < 128 && (r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "node"
	}
	return b.String()
}

// consoleRoutes registers the console's pages. They sit beside the API on
// the same mux, outside /api/, and authenticate with the session cookie;
// the API keeps its tokens.
func (s *Server) consoleRoutes() {
	c := newConsole(s)
	s.console = c
	reg := func(pattern string, h http.Handler) { s.mux.Handle(pattern, s.metrics.instrument(pattern, h)) }

	reg("GET /static/", ui.Static())
	reg("GET /login", http.HandlerFunc(c.loginPage))
	reg("POST /login", http.HandlerFunc(c.login))
	reg("POST /logout", http.HandlerFunc(c.logout))

	reg("GET /{$}", c.view(c.dashboard))
	reg("GET /archive", c.view(c.archiveSearch))
	reg("GET /archive/{id}", c.view(c.archiveMessage))
	// The download is the API's own handler behind the session: the same
	// bytes, headers and (when the archive distinguishes them) parts.
	reg("GET /archive/{id}/raw", c.view(func(w http.ResponseWriter, r *http.Request, _ ui.Session) { s.handleRaw(w, r) }))
	reg("GET /audit", c.view(c.auditPage))

	for _, kind := range configKinds {
		k := kind
		base := "/" + k.Kind
		reg("GET "+base, c.view(func(w http.ResponseWriter, r *http.Request, sess ui.Session) { c.configListPage(w, r, sess, k) }))
		reg("GET "+base+"/new", c.view(func(w http.ResponseWriter, r *http.Request, sess ui.Session) { c.configForm(w, r, sess, k, "") }))
		reg("POST "+base+"/new", c.act(func(w http.ResponseWriter, r *http.Request, sess ui.Session) { c.configSave(w, r, sess, k, "") }))
		reg("GET "+base+"/{name}/edit", c.view(func(w http.ResponseWriter, r *http.Request, sess ui.Session) {
			c.configForm(w, r, sess, k, r.PathValue("name"))
		}))
		reg("POST "+base+"/{name}/edit", c.act(func(w http.ResponseWriter, r *http.Request, sess ui.Session) {
			c.configSave(w, r, sess, k, r.PathValue("name"))
		}))
		reg("POST "+base+"/{name}/enable", c.act(func(w http.ResponseWriter, r *http.Request, sess ui.Session) { c.configToggle(w, r, sess, k, false) }))
		reg("POST "+base+"/{name}/disable", c.act(func(w http.ResponseWriter, r *http.Request, sess ui.Session) { c.configToggle(w, r, sess, k, true) }))
		reg("GET "+base+"/{name}/delete", c.view(func(w http.ResponseWriter, r *http.Request, sess ui.Session) { c.configDeletePage(w, r, sess, k) }))
		reg("POST "+base+"/{name}/delete", c.act(func(w http.ResponseWriter, r *http.Request, sess ui.Session) { c.configDeleteAct(w, r, sess, k) }))
	}
	reg("GET /connections/{name}", c.view(c.connectionPage))
	for _, action := range []string{"retry", "pause", "resume", "purge"} {
		a := action
		reg("POST /connections/{name}/"+a, c.act(func(w http.ResponseWriter, r *http.Request, sess ui.Session) { c.connectionAct(w, r, sess, a) }))
	}
	reg("GET /connections/{name}/purge", c.view(c.purgePage))

	reg("GET /accounts", c.view(c.accountsPage))
	reg("POST /accounts/new", c.act(c.accountCreateAct))
	reg("GET /accounts/{name}/delete", c.view(c.accountDeletePage))
	reg("POST /accounts/{name}/delete", c.act(c.accountDeleteAct))
	reg("GET /accounts/{name}/password", c.view(c.accountPasswordPage))
	reg("POST /accounts/{name}/password", c.actOwn(c.accountPasswordAct))
	reg("POST /accounts/{name}/role", c.act(c.accountRoleAct))
}

// view wraps a page: it needs a session (else the login page, which comes
// back here afterwards); any role may look.
func (c *console) view(h func(http.ResponseWriter, *http.Request, ui.Session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		get := c.sessions.Get
		if r.Header.Get("X-Console-Refresh") != "" {
			get = c.sessions.Peek // the script's refresh keeps no session alive
		}
		sess, ok := get(r)
		if !ok {
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		h(w, r.WithContext(withSession(r.Context(), sess)), sess)
	})
}

// maxForm bounds a console form's body.
const maxForm = 64 << 10

// act wraps a change: a session, the CSRF token of that session, and the
// admin role; then the same operation as the API.
func (c *console) act(h func(http.ResponseWriter, *http.Request, ui.Session)) http.Handler {
	return c.actIf(byRole, h)
}

// actOwn is act for the routes an account may use on itself whatever its
// role (its password): the API's rule for the same change, byRoleOrOwn.
func (c *console) actOwn(h func(http.ResponseWriter, *http.Request, ui.Session)) http.Handler {
	return c.actIf(byRoleOrOwn, h)
}

func (c *console) actIf(allow func(Principal, *http.Request) bool, h func(http.ResponseWriter, *http.Request, ui.Session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sess, ok := c.sessions.Get(r)
		if !ok {
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxForm)
		if err := r.ParseForm(); err != nil {
			c.fail(w, r, sess, &Error{Status: http.StatusRequestEntityTooLarge, Msg: "the form could not be read (over 64 KiB?)"})
			return
		}
		if !ui.ValidCSRF(r, sess.CSRF) {
			c.s.log.WithFields(logrus.Fields{"client": r.RemoteAddr, "path": r.URL.Path, "user": sess.User}).
				Warn("web: console form refused: missing or wrong CSRF token")
			c.fail(w, r, sess, &Error{Status: http.StatusForbidden,
				Msg: "This form is out of date or did not come from this console. Reload the page and try again."})
			return
		}
		ctx := withSession(r.Context(), sess)
		if p, _ := PrincipalFrom(ctx); !allow(p, r) {
			c.fail(w, r, sess, &Error{Status: http.StatusForbidden,
				Msg: "Your role (" + sess.Role + ") may look but not change anything."})
			return
		}
		h(w, r.WithContext(ctx), sess)
	})
}

// withSession puts the session's user in the context as the principal, so
// the operations (and the audit log) see who acts, as for an API call.
func withSession(ctx context.Context, sess ui.Session) context.Context {
	return context.WithValue(ctx, principalKey{}, Principal{Name: sess.User, Role: sess.Role, Via: "session", session: sess})
}

// nav is the console's navigation.
var nav = []ui.NavItem{
	{Href: "/", Label: "Dashboard"},
	{Href: "/archive", Label: "Archive"},
	{Href: "/listeners", Label: "Listeners"},
	{Href: "/routes", Label: "Routes"},
	{Href: "/connections", Label: "Connections"},
	{Href: "/audit", Label: "Audit log"},
	{Href: "/accounts", Label: "Accounts"},
}

// page fills the layout's fields for a session.
func (c *console) page(r *http.Request, sess ui.Session, title string, data any) ui.Page {
	p := ui.Page{
		Title: title, Product: "chainmail · node " + c.s.opts.NodeID,
		User: sess.User, Role: sess.Role, CSRF: sess.CSRF, Data: data,
	}
	for _, n := range nav {
		n.Current = n.Href == r.URL.Path || n.Href != "/" && strings.HasPrefix(r.URL.Path, n.Href+"/")
		p.Nav = append(p.Nav, n)
	}
	if sess.User != "" {
		p.Flash, p.FlashError = c.sessions.TakeFlash(r)
	}
	return p
}

// render executes a page into a buffer first, so a template error is a
// clean 500 and not half a page.
func (c *console) render(w http.ResponseWriter, r *http.Request, status int, name string, p ui.Page) {
	t, ok := c.pages[name]
	var buf bytes.Buffer
	var err error
	if !ok {
		err = errors.New("no template " + name)
	} else {
		err = t.ExecuteTemplate(&buf, "layout", p)
	}
	ui.HTMLHeaders(w)
	if err != nil {
		ref := rand.Text()[:10]
		c.s.log.WithError(err).WithFields(logrus.Fields{"ref": ref, "path": r.URL.Path}).Error("web: console page failed")
		w.WriteHeader(http.StatusInternalServerError)
		w.Write([]byte("<!doctype html><title>Error</title><p>Internal error, reference " + ref + ".</p>"))
		return
	}
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// errorPage is the data of the error template.
type errorPage struct {
	Status int
	Msg    string
	Ref    string
	Back   string
}

// fail shows an error as a page: an *Error with its status and text,
// anything else as a 500 with a reference id that is also in the log.
func (c *console) fail(w http.ResponseWriter, r *http.Request, sess ui.Session, err error) {
	var e *Error
	data := errorPage{Back: r.Referer()}
	if errors.As(err, &e) {
		data.Status, data.Msg = e.Status, e.Error()
	} else {
		data.Status, data.Msg, data.Ref = http.StatusInternalServerError, "Internal error.", rand.Text()[:10]
		c.s.log.WithError(err).WithFields(logrus.Fields{"ref": data.Ref, "path": r.URL.Path}).Error("web: console request failed")
	}
	if !ui.SameOrigin(r) || !strings.HasPrefix(data.Back, "http") {
		data.Back = ""
	}
	c.render(w, r, data.Status, "error", c.page(r, sess, http.StatusText(data.Status), data))
}

// done ends a successful change: a notice on the next page, and a 303 so
// that reloading does not post the form again.
func (c *console) done(w http.ResponseWriter, r *http.Request, to, msg string) {
	c.sessions.SetFlash(r, msg, false)
	http.Redirect(w, r, to, http.StatusSeeOther)
}
