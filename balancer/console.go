package balancer

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"chainmail/internal/ui"
)

// The balancer's console page, on its admin address beside the API: pools,
// servers and frontends, and one-click ready/drain/maint and weights. A
// change goes through SetServer, the function behind
// POST /api/v1/pools/{pool}/servers/{server}. The balancer has no user
// accounts: one logs in with one of its api_tokens, and the browser then
// holds a session cookie, not the token. Layout, assets, sessions and CSRF
// come from internal/ui, shared with the node's console.

//go:embed console_templates/*.html
var consoleTemplates embed.FS

type console struct {
	b           *Balancer
	pages       map[string]*template.Template
	sessions    *ui.Sessions
	loginCookie string
	limit       *tokenLimiter
}

// sumFailures totals a server's failures of every kind.
func sumFailures(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// consoleRoutes adds the console's pages to the admin mux.
func (b *Balancer) consoleRoutes(mux *http.ServeMux) {
	pages, err := ui.Layout(consoleTemplates, template.FuncMap{"failures": sumFailures}, "console_templates/*.html")
	if err != nil {
		panic(err) // embedded templates: a build defect every console test catches
	}
	c := &console{
		b: b, pages: pages,
		sessions:    ui.NewSessions(ui.SessionOptions{Cookie: "chainmail_balancer", Now: b.clock.Now}),
		loginCookie: "chainmail_balancer_login",
		limit:       &tokenLimiter{now: b.clock.Now, fails: map[string]*failCount{}},
	}
	mux.Handle("GET /static/", ui.Static())
	mux.HandleFunc("GET /login", c.loginPage)
	mux.HandleFunc("POST /login", c.login)
	mux.HandleFunc("POST /logout", c.logout)
	mux.HandleFunc("GET /{$}", c.overview)
	mux.HandleFunc("POST /servers/{pool}/{server}", c.setServer)
}

// Failed console logins: loginFailures per client IP within loginWindow,
// then the client waits until the window that began with its first
// failure is over.
const (
	loginFailures = 10
	loginWindow   = 5 * time.Minute
)

type failCount struct {
	n     int
	start time.Time
}

// tokenLimiter counts failed token logins per client IP (bounded table).
type tokenLimiter struct {
	now   func() time.Time
	mu    sync.Mutex
	fails map[string]*failCount
}

func (l *tokenLimiter) wait(ip string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.fails[ip]
	if f == nil {
		return 0
	}
	if l.now().Sub(f.start) >= loginWindow {
		delete(l.fails, ip)
		return 0
	}
	if f.n < loginFailures {
		return 0
	}
	return f.start.Add(loginWindow).Sub(l.now())
}

func (l *tokenLimiter) fail(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.fails) >= 10000 {
		for k, f := range l.fails {
			if l.now().Sub(f.start) >= loginWindow {
				delete(l.fails, k)
			}
		}
		if len(l.fails) >= 10000 {
			ip = "overflow"
		}
	}
	if f := l.fails[ip]; f != nil {
		f.n++
		return
	}
	l.fails[ip] = &failCount{n: 1, start: l.now()}
}

func (l *tokenLimiter) succeed(ip string) {
	l.mu.Lock()
	delete(l.fails, ip)
	l.mu.Unlock()
}

func clientIP(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return remote
	}
	return host
}

func (c *console) render(w http.ResponseWriter, r *http.Request, status int, name string, p ui.Page) {
	var buf bytes.Buffer
	err := errors.New("no template " + name)
	if t, ok := c.pages[name]; ok {
		err = t.ExecuteTemplate(&buf, "layout", p)
	}
	ui.HTMLHeaders(w)
	if err != nil {
		c.b.log.WithError(err).WithField("path", r.URL.Path).Error("console page failed")
		w.WriteHeader(http.StatusInternalServerError)
		w.Write([]byte("<!doctype html><title>Error</title><p>Internal error (see the balancer's log).</p>"))
		return
	}
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

func (c *console) page(r *http.Request, sess ui.Session, title string, data any) ui.Page {
	p := ui.Page{Title: title, Product: "chainmail · balancer", User: sess.User, Role: sess.Role, CSRF: sess.CSRF, Data: data}
	if sess.User != "" {
		p.Nav = []ui.NavItem{{Href: "/", Label: "Pools", Current: r.URL.Path == "/"}}
		p.Flash, p.FlashError = c.sessions.TakeFlash(r)
	}
	return p
}

type loginData struct {
	Error string
	CSRF  string
}

func (c *console) loginPage(w http.ResponseWriter, r *http.Request) {
	if _, ok := c.sessions.Get(r); ok {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	c.showLogin(w, r, http.StatusOK, "")
}

func (c *console) showLogin(w http.ResponseWriter, r *http.Request, status int, msg string) {
	d := loginData{Error: msg, CSRF: ui.LoginToken(w, r, c.loginCookie)}
	c.render(w, r, status, "login", c.page(r, ui.Session{}, "Log in", d))
}

func (c *console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxAdminBody)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	if !ui.ValidLoginToken(r, c.loginCookie) {
		c.showLogin(w, r, http.StatusForbidden, "The login form expired or did not come from this console. Please try again.")
		return
	}
	ip := clientIP(r.RemoteAddr)
	if wait := c.limit.wait(ip); wait > 0 {
		secs := int((wait + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		c.showLogin(w, r, http.StatusTooManyRequests, fmt.Sprintf("Too many failed logins from your address. Try again in %s.", ui.HumanDuration(time.Duration(secs)*time.Second)))
		return
	}
	log := c.b.log.WithField("client", r.RemoteAddr)
	if tok := strings.TrimSpace(r.PostFormValue("token")); c.b.validToken([]byte(tok)) {
		c.limit.succeed(ip)
		ui.SetCookie(w, r, c.loginCookie, "", -1)
		c.sessions.Start(w, r, "admin", "admin")
		log.Info("console login")
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	c.limit.fail(ip)
	log.Info("console login failed")
	c.showLogin(w, r, http.StatusUnauthorized, "That is not one of the balancer's API tokens.")
}

func (c *console) logout(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxAdminBody)
	r.ParseForm()
	if sess, ok := c.sessions.Get(r); ok && !ui.ValidCSRF(r, sess.CSRF) {
		c.sessions.SetFlash(r, "That form was out of date; you are still logged in.", true)
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	c.sessions.End(w, r)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// overviewData is the pools page's.
type overviewData struct {
	Pools     []PoolStatus
	Frontends []FrontendStatus
	Unhealthy []string
	Uptime    string
	States    []State
}

func (c *console) overview(w http.ResponseWriter, r *http.Request) {
	get := c.sessions.Get
	if r.Header.Get("X-Console-Refresh") != "" {
		get = c.sessions.Peek // the page's own refresh keeps no session alive
	}
	sess, ok := get(r)
	if !ok {
		http.Redirect(w, r, "/login", http.StatusSeeOther)
		return
	}
	d := overviewData{
		Pools: c.b.Pools(), Frontends: c.b.Frontends(), Unhealthy: c.b.unhealthyPools(),
		Uptime: ui.HumanDuration(time.Since(c.b.started)),
		States: []State{StateReady, StateDrain, StateMaint},
	}
	p := c.page(r, sess, "Pools and servers", d)
	p.Live = true
	c.render(w, r, http.StatusOK, "overview", p)
}

// setServer is one click: a state button (name "state") or the weight
// form (name "weight"), applied by SetServer as an API call would be.
func (c *console) setServer(w http.ResponseWriter, r *http.Request) {
	sess, ok := c.sessions.Get(r)
	if !ok {
		http.Redirect(w, r, "/login", http.StatusSeeOther)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxAdminBody)
	if err := r.ParseForm(); err != nil || !ui.ValidCSRF(r, sess.CSRF) {
		c.b.log.WithField("client", r.RemoteAddr).Warn("console form refused: missing or wrong CSRF token")
		d := loginData{Error: "This form is out of date or did not come from this console. Reload the page and try again."}
		c.render(w, r, http.StatusForbidden, "error", c.page(r, sess, "Forbidden", d))
		return
	}
	pool, server := r.PathValue("pool"), r.PathValue("server")
	var ch ServerChange
	if s := r.PostFormValue("state"); s != "" {
		ch.State = State(s)
	}
	if s := strings.TrimSpace(r.PostFormValue("weight")); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			c.sessions.SetFlash(r, fmt.Sprintf("Weight of %s/%s: %q is not a whole number.", pool, server, s), true)
			http.Redirect(w, r, "/#pool-"+pool, http.StatusSeeOther)
			return
		}
		ch.Weight = &n
	}
	st, err := c.b.SetServer(pool, server, ch)
	if err != nil {
		c.sessions.SetFlash(r, fmt.Sprintf("%s/%s not changed: %v", pool, server, err), true)
		http.Redirect(w, r, "/#pool-"+pool, http.StatusSeeOther)
		return
	}
	c.b.log.WithFields(logrus.Fields{"pool": pool, "server": server, "client": r.RemoteAddr}).Info("server changed from the console")
	c.sessions.SetFlash(r, fmt.Sprintf("Server %s of pool %s: %s, weight %d.", server, pool, st.State, st.Weight), false)
	http.Redirect(w, r, "/#pool-"+pool, http.StatusSeeOther)
}
