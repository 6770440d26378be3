package web

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"chainmail/internal/ui"
)

// Roles. A read-only caller may use every safe method (GET, HEAD); any
// other method needs admin.
const (
	RoleAdmin    = "admin"
	RoleReadOnly = "read-only"
)

// Principal is who made a request, for handlers and (later) the audit log.
type Principal struct {
	// Name is the account name, or the token's configuration path
	// ("web.api_tokens[0]") so that logs never carry a token.
	Name string
	Role string
	// Via is "token", "basic" or "session" (the console).
	Via string
	// session is the console session a request came with (Via
	// "session"), so that a change of the caller's own password can end
	// the account's other sessions and keep this one.
	session ui.Session
}

type principalKey struct{}

// PrincipalFrom returns the authenticated caller of a request's context.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// realm is the protection space of the WWW-Authenticate challenges.
const realm = "chainmail"

type token struct {
	sum  [sha256.Size]byte
	role string
	name string
}

// authenticator checks the credentials of API requests.
type authenticator struct {
	tokens  []token
	users   UserChecker
	limiter *loginLimiter
	metrics *metrics
}

func newAuthenticator(opts Options, m *metrics) (*authenticator, error) {
	a := &authenticator{
		users:   opts.Users,
		limiter: newLoginLimiter(opts.LoginLimit, opts.Now),
		metrics: m,
	}
	add := func(list []string, role, path string) error {
		for i, t := range list {
			// An empty token (an unset ${VAR}) would let "Bearer " in.
			if strings.TrimSpace(t) == "" {
				return fmt.Errorf("web: %s[%d] is empty", path, i)
			}
			a.tokens = append(a.tokens, token{
				sum: sha256.Sum256([]byte(t)), role: role, name: fmt.Sprintf("%s[%d]", path, i),
			})
		}
		return nil
	}
	if err := add(opts.APITokens, RoleAdmin, "web.api_tokens"); err != nil {
		return nil, err
	}
	if err := add(opts.ReadOnlyTokens, RoleReadOnly, "web.read_only_tokens"); err != nil {
		return nil, err
	}
	return a, nil
}

// errNoCredentials is an authentication failure that is not an attempt
// (a first request before the challenge): it is not counted against the IP.
var errNoCredentials = errors.New("authentication required")

// authenticate returns the request's principal, or an *Error to answer.
func (a *authenticator) authenticate(r *http.Request) (Principal, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return Principal{}, errNoCredentials
	}
	ip := clientKey(r.RemoteAddr)
	// A blocked client's credentials are not even looked at, so a guesser
	// learns nothing and costs no bcrypt while blocked.
	if wait := a.limiter.retryAfter(ip); wait > 0 {
		a.metrics.authFailures.WithLabelValues("limited").Inc()
		return Principal{}, &limitedError{wait: wait}
	}
	scheme, cred, _ := strings.Cut(h, " ")
	cred = strings.TrimSpace(cred)
	switch strings.ToLower(scheme) {
	case "bearer":
		if p, ok := a.checkToken(cred); ok {
			a.limiter.succeed(ip)
			return p, nil
		}
		a.limiter.fail(ip)
		a.metrics.authFailures.WithLabelValues("token").Inc()
		return Principal{}, errBadToken
	case "basic":
		user, pass, ok := r.BasicAuth()
		if ok && a.users != nil {
			if role, ok := a.users.Check(user, pass); ok {
				a.limiter.succeed(ip)
				return Principal{Name: user, Role: role, Via: "basic"}, nil
			}
		}
		a.limiter.fail(ip)
		a.metrics.authFailures.WithLabelValues("password").Inc()
		return Principal{}, errBadPassword
	}
	return Principal{}, errBadScheme
}

var (
	errBadToken    = errors.New("invalid token")
	errBadPassword = errors.New("invalid user or password")
	errBadScheme   = errors.New("unsupported authorization scheme (use Bearer or Basic)")
)

// limitedError is a client over its failed-login limit.
type limitedError struct{ wait time.Duration }

func (e *limitedError) Error() string { return "too many failed logins; retry later" }

// checkToken compares the token with every configured one in constant
// time. Comparing SHA-256 sums keeps the time independent of the lengths,
// and the loop never stops early, so the time says nothing about which
// token (if any) matched.
func (a *authenticator) checkToken(t string) (Principal, bool) {
	sum := sha256.Sum256([]byte(t))
	found := -1
	for i := range a.tokens {
		if subtle.ConstantTimeCompare(sum[:], a.tokens[i].sum[:]) == 1 && found < 0 {
			found = i
		}
	}
	if found < 0 || t == "" {
		return Principal{}, false
	}
	return Principal{Name: a.tokens[found].name, Role: a.tokens[found].role, Via: "token"}, true
}

// require authenticates the request, checks it with allow (byRole or
// byRoleOrOwn), and passes the principal on in the context.
func (a *authenticator) require(next http.Handler, log *logrus.Entry, allow func(Principal, *http.Request) bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := a.authenticate(r)
		if err != nil {
			a.deny(w, r, log, err)
			return
		}
		if !allow(p, r) {
			writeError(w, r, log, &Error{Status: http.StatusForbidden,
				Msg: fmt.Sprintf("role %s may not %s", p.Role, r.Method)})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}

// byRole lets a request through by the role model alone (mayCall).
func byRole(p Principal, r *http.Request) bool { return mayCall(p.Role, r.Method) }

// byRoleOrOwn also lets any role change what is its own: a route whose
// {name} is the caller's account (its password). The API and the console
// use it for the same routes.
func byRoleOrOwn(p Principal, r *http.Request) bool {
	return byRole(p, r) || ownAccount(p, r.PathValue("name"))
}

// ownAccount tells whether name is the caller's console account: it logged
// in with that account's password (Basic or a console session), not with a
// token, whose name is a configuration path.
func ownAccount(p Principal, name string) bool {
	return (p.Via == "basic" || p.Via == "session") && p.Name != "" && p.Name == name
}

// mayCall is the whole role model: read-only callers may only read.
func mayCall(role, method string) bool {
	switch role {
	case RoleAdmin:
		return true
	case RoleReadOnly:
		return method == http.MethodGet || method == http.MethodHead
	}
	return false
}

// deny answers an authentication failure: 429 with Retry-After for a
// limited client, otherwise 401 with the challenges (RFC 9110 §11.6.1, one
// per scheme; RFC 6750 §3 error="invalid_token" for a rejected token).
func (a *authenticator) deny(w http.ResponseWriter, r *http.Request, log *logrus.Entry, err error) {
	var lim *limitedError
	if errors.As(err, &lim) {
		w.Header().Set("Retry-After", strconv.Itoa(int((lim.wait+time.Second-1)/time.Second)))
		writeError(w, r, log, &Error{Status: http.StatusTooManyRequests, Msg: lim.Error()})
		return
	}
	bearer := `Bearer realm="` + realm + `"`
	if errors.Is(err, errBadToken) {
		bearer += `, error="invalid_token"`
	}
	w.Header().Add("WWW-Authenticate", bearer)
	if a.users != nil {
		w.Header().Add("WWW-Authenticate", `Basic realm="`+realm+`", charset="UTF-8"`)
	}
	if !errors.Is(err, errNoCredentials) {
		log.WithFields(logrus.Fields{"client": r.RemoteAddr, "path": r.URL.Path}).
			WithError(err).Info("web: authentication failed")
	}
	writeError(w, r, log, &Error{Status: http.StatusUnauthorized, Msg: err.Error()})
}
