package web

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"chainmail/internal/ui"
)

// loginData is the login page's.
type loginData struct {
	User  string
	Next  string
	Error string
	CSRF  string
	// NoAccounts: the server has no console accounts (Options.Users nil).
	NoAccounts bool
}

// safeNext keeps a post-login destination only if it is a path of this
// console (not "//evil.example", not the login page itself).
func safeNext(next string) string {
	if next == "" || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") ||
		strings.HasPrefix(next, "/\\") || strings.HasPrefix(next, "/login") || strings.ContainsAny(next, "\r\n") {
		return "/"
	}
	return next
}

func (c *console) loginPage(w http.ResponseWriter, r *http.Request) {
	if _, ok := c.sessions.Get(r); ok {
		http.Redirect(w, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	c.showLogin(w, r, http.StatusOK, loginData{Next: safeNext(r.URL.Query().Get("next"))})
}

func (c *console) showLogin(w http.ResponseWriter, r *http.Request, status int, d loginData) {
	d.CSRF = ui.LoginToken(w, r, c.loginCookie)
	d.NoAccounts = c.s.opts.Users == nil
	p := c.page(r, ui.Session{}, "Log in", d)
	p.Nav = nil
	c.render(w, r, status, "login", p)
}

// login checks the account with the same limiter as the API's Basic and
// token logins: a client over the limit gets 429 without its password
// being looked at.
func (c *console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	user := strings.TrimSpace(r.PostFormValue("user"))
	d := loginData{User: user, Next: safeNext(r.PostFormValue("next"))}
	if !ui.ValidLoginToken(r, c.loginCookie) {
		d.Error = "The login form expired or did not come from this console. Please try again."
		c.showLogin(w, r, http.StatusForbidden, d)
		return
	}
	a := c.s.auth
	ip := clientKey(r.RemoteAddr)
	if wait := a.limiter.retryAfter(ip); wait > 0 {
		a.metrics.authFailures.WithLabelValues("limited").Inc()
		secs := int((wait + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		d.Error = "Too many failed logins from your address. Try again in " + ui.HumanDuration(time.Duration(secs)*time.Second) + "."
		c.showLogin(w, r, http.StatusTooManyRequests, d)
		return
	}
	log := c.s.log.WithFields(logrus.Fields{"client": r.RemoteAddr, "user": user})
	if a.users != nil && user != "" {
		if role, ok := a.users.Check(user, r.PostFormValue("password")); ok {
			a.limiter.succeed(ip)
			ui.SetCookie(w, r, c.loginCookie, "", -1)
			c.sessions.Start(w, r, user, role)
			log.Info("web: console login")
			http.Redirect(w, r, d.Next, http.StatusSeeOther)
			return
		}
	}
	a.limiter.fail(ip)
	a.metrics.authFailures.WithLabelValues("password").Inc()
	log.Info("web: console login failed")
	d.Error = "Wrong user name or password."
	c.showLogin(w, r, http.StatusUnauthorized, d)
}

// logout is a POST with the session's CSRF token, so another site cannot
// log a user out either.
func (c *console) logout(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	r.ParseForm()
	if sess, ok := c.sessions.Get(r); ok {
		if !ui.ValidCSRF(r, sess.CSRF) {
			c.fail(w, r, sess, &Error{Status: http.StatusForbidden, Msg: "This form is out of date. Reload the page and try again."})
			return
		}
		c.s.log.WithFields(logrus.Fields{"client": r.RemoteAddr, "user": sess.User}).Info("web: console logout")
	}
	c.sessions.End(w, r)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}
