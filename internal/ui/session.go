package ui

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Session is one logged-in browser.
type Session struct {
	User     string
	Role     string
	CSRF     string
	Created  time.Time
	Seen     time.Time
	flash    string
	flashBad bool
	// key is the store's key of the session (the id's hash), so that a
	// copy handed out can name its session to EndUser.
	key [32]byte
}

// SessionOptions configure a Sessions store; zero fields take defaults.
type SessionOptions struct {
	// Cookie is the cookie's name. Cookies are not kept apart by port, so
	// two consoles on one host need different names.
	Cookie string
	// Idle ends a session after this long without a request (30 minutes);
	// Lifetime ends it in any case (12 hours).
	Idle, Lifetime time.Duration
	// Max bounds the sessions kept (10000); at the bound the oldest goes.
	Max int
	Now func() time.Time
}

// Sessions is an in-memory session store. A restart ends every session.
type Sessions struct {
	opts SessionOptions

	mu sync.Mutex
	m  map[[32]byte]*Session
}

// NewSessions makes an empty store.
func NewSessions(o SessionOptions) *Sessions {
	if o.Cookie == "" {
		o.Cookie = "chainmail_session"
	}
	if o.Idle <= 0 {
		o.Idle = 30 * time.Minute
	}
	if o.Lifetime <= 0 {
		o.Lifetime = 12 * time.Hour
	}
	if o.Max <= 0 {
		o.Max = 10000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Sessions{opts: o, m: map[[32]byte]*Session{}}
}

// Cookie is the session cookie's name.
func (s *Sessions) Cookie() string { return s.opts.Cookie }

// RandomToken is 32 random bytes in base64url.
func RandomToken() string {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func key(id string) [32]byte { return sha256.Sum256([]byte(id)) }

// Start creates a session for user and sets its cookie. A fresh id on
// every login means an id planted before the login is worth nothing.
func (s *Sessions) Start(w http.ResponseWriter, r *http.Request, user, role string) Session {
	id := RandomToken()
	now := s.opts.Now()
	sess := &Session{User: user, Role: role, CSRF: RandomToken(), Created: now, Seen: now, key: key(id)}
	s.mu.Lock()
	s.pruneLocked(now)
	if len(s.m) >= s.opts.Max {
		var oldest [32]byte
		var at time.Time
		for k, v := range s.m {
			if at.IsZero() || v.Seen.Before(at) {
				oldest, at = k, v.Seen
			}
		}
		delete(s.m, oldest)
	}
	s.m[sess.key] = sess
	s.mu.Unlock()
	SetCookie(w, r, s.opts.Cookie, id, s.opts.Lifetime)
	return *sess
}

// Get returns the request's live session and marks it seen.
func (s *Sessions) Get(r *http.Request) (Session, bool) { return s.lookup(r, true) }

// Peek is Get for requests that are not the user's doing (the dashboard's
// refresh): they do not keep an unattended session alive.
func (s *Sessions) Peek(r *http.Request) (Session, bool) { return s.lookup(r, false) }

func (s *Sessions) lookup(r *http.Request, touch bool) (Session, bool) {
	c, err := r.Cookie(s.opts.Cookie)
	if err != nil || c.Value == "" {
		return Session{}, false
	}
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key(c.Value)
	sess, ok := s.m[k]
	if !ok {
		return Session{}, false
	}
	if s.expired(sess, now) {
		delete(s.m, k)
		return Session{}, false
	}
	if touch {
		sess.Seen = now
	}
	return *sess, true
}

func (s *Sessions) expired(sess *Session, now time.Time) bool {
	return now.Sub(sess.Seen) >= s.opts.Idle || now.Sub(sess.Created) >= s.opts.Lifetime
}

func (s *Sessions) pruneLocked(now time.Time) {
	for k, v := range s.m {
		if s.expired(v, now) {
			delete(s.m, k)
		}
	}
}

// End deletes the request's session and its cookie (logout).
func (s *Sessions) End(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(s.opts.Cookie); err == nil {
		s.mu.Lock()
		delete(s.m, key(c.Value))
		s.mu.Unlock()
	}
	SetCookie(w, r, s.opts.Cookie, "", -1)
}

// EndUser ends every session of user except keep (a session of the
// caller, who stays logged in; the zero Session keeps none), and returns
// how many ended. It is called when an account's password changes or the
// account is deleted, so that no browser outlives the credentials it
// logged in with.
func (s *Sessions) EndUser(user string, keep Session) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, v := range s.m {
		if v.User == user && (keep.User != user || k != keep.key) {
			delete(s.m, k)
			n++
		}
	}
	return n
}

// Len is the number of sessions held (tests).
func (s *Sessions) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// SetFlash leaves a one-time notice for the session's next page.
func (s *Sessions) SetFlash(r *http.Request, msg string, isError bool) {
	c, err := r.Cookie(s.opts.Cookie)
	if err != nil {
		return
	}
	s.mu.Lock()
	if sess, ok := s.m[key(c.Value)]; ok {
		sess.flash, sess.flashBad = msg, isError
	}
	s.mu.Unlock()
}

// TakeFlash returns and clears the session's notice.
func (s *Sessions) TakeFlash(r *http.Request) (string, bool) {
	c, err := r.Cookie(s.opts.Cookie)
	if err != nil {
		return "", false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.m[key(c.Value)]
	if !ok {
		return "", false
	}
	msg, bad := sess.flash, sess.flashBad
	sess.flash, sess.flashBad = "", false
	return msg, bad
}

// SetCookie sets (maxAge > 0), or deletes (maxAge < 0), an HttpOnly,
// SameSite=Strict cookie for the whole console; Secure when the request
// came over TLS.
func SetCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge time.Duration) {
	c := &http.Cookie{
		Name: name, Value: value, Path: "/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	}
	if maxAge < 0 {
		c.MaxAge = -1
	} else {
		c.MaxAge = int(maxAge / time.Second)
	}
	http.SetCookie(w, c)
}

// FieldCSRF is the name of the CSRF token's form field.
const FieldCSRF = "csrf"

// ValidCSRF tells whether a POST carries the session's token, and comes
// from the console's own origin when the browser says where it comes
// from. Call it after the form is parsed.
func ValidCSRF(r *http.Request, token string) bool {
	if !SameOrigin(r) {
		return false
	}
	got := r.PostFormValue(FieldCSRF)
	return token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// SameOrigin is false when the request's Origin (or, lacking one, its
// Referer) names another host than the one it was sent to. The scheme is
// not compared: behind a TLS-terminating proxy the browser says https and
// the console sees plain HTTP; the host and port are what tell another
// site's page from ours.
func SameOrigin(r *http.Request) bool {
	src := r.Header.Get("Origin")
	if src == "" {
		ref := r.Header.Get("Referer")
		if ref == "" {
			return true // privacy settings may drop both; the token decides
		}
		u, err := url.Parse(ref)
		if err != nil {
			return false
		}
		src = u.Scheme + "://" + u.Host
	}
	u, err := url.Parse(src)
	if src == "null" || err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	return strings.EqualFold(u.Host, r.Host)
}

// LoginToken issues the double-submit token of a login form: a random
// value in a short-lived cookie that the form must repeat. A page of
// another site can neither read the cookie nor set it, so it cannot log a
// browser in under the attacker's account.
func LoginToken(w http.ResponseWriter, r *http.Request, cookie string) string {
	if c, err := r.Cookie(cookie); err == nil && len(c.Value) >= 40 {
		return c.Value
	}
	t := RandomToken()
	SetCookie(w, r, cookie, t, time.Hour)
	return t
}

// ValidLoginToken checks a login POST's double-submit token.
func ValidLoginToken(r *http.Request, cookie string) bool {
	c, err := r.Cookie(cookie)
	if err != nil || c.Value == "" || !SameOrigin(r) {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(c.Value), []byte(r.PostFormValue(FieldCSRF))) == 1
}
