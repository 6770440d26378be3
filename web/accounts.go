package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/sirupsen/logrus"

	"chainmail/internal/ui"
)

// The console accounts, as operations (accountList, accountCreate,
// accountDelete, accountPassword) and their JSON views. The console's
// Accounts page (console_accounts.go) calls the same operations.

// AccountStore manages the console accounts; *Users is one. Its changes
// take the caller from the context (PrincipalFrom) for the audit log.
type AccountStore interface {
	UserChecker
	List() ([]Account, error)
	Create(ctx context.Context, name, role, password string) (Account, error)
	Delete(ctx context.Context, name string) error
	SetPassword(ctx context.Context, name, password string) error
	SetRole(ctx context.Context, name, role string) error
}

// AccountList is the answer of GET /api/v1/users.
type AccountList struct {
	Users []Account `json:"users"`
}

// NewAccount is the body of POST /api/v1/users.
type NewAccount struct {
	Name     string `json:"name"`
	Role     string `json:"role"`
	Password string `json:"password"`
}

// RoleChange is the body of POST /api/v1/users/{name}/role.
type RoleChange struct {
	Role string `json:"role"`
}

// PasswordChange is the body of POST /api/v1/users/{name}/password.
// Current is the account's present password, required when a console
// session changes its own.
type PasswordChange struct {
	Password string `json:"password"`
	Current  string `json:"current_password,omitempty"`
}

func (s *Server) accountStore() (AccountStore, error) {
	if a, ok := s.opts.Users.(AccountStore); ok {
		return a, nil
	}
	return nil, &Error{Status: http.StatusNotFound, Msg: "this server has no console accounts"}
}

// accountError turns the store's errors into answers: field errors are a
// 400 keyed by field, as for configuration changes, so the console shows
// each beside its input.
func accountError(err error) error {
	var inv *InvalidAccount
	switch {
	case err == nil:
		return nil
	case errors.As(err, &inv):
		return &Error{Status: http.StatusBadRequest, Msg: "invalid account", Fields: inv.Fields}
	case errors.Is(err, ErrUserExists):
		return &Error{Status: http.StatusConflict, Msg: "invalid account", Fields: map[string]string{"name": "an account of this name exists"}}
	case errors.Is(err, ErrNoUser):
		return &Error{Status: http.StatusNotFound, Param: "name", Msg: "no such account"}
	case errors.Is(err, ErrLastAdmin):
		return &Error{Status: http.StatusConflict, Param: "name",
			Msg: "the last account with the admin role cannot be deleted; create another admin account first"}
	case errors.Is(err, ErrLastAdminRole):
		return &Error{Status: http.StatusConflict, Param: "name",
			Msg: "the last account with the admin role cannot lose it; give another account the admin role first"}
	}
	return err
}

func (s *Server) accountList() ([]Account, error) {
	st, err := s.accountStore()
	if err != nil {
		return nil, err
	}
	list, err := st.List()
	if list == nil {
		list = []Account{}
	}
	return list, err
}

// accountGet is one account of the list (there are few).
func (s *Server) accountGet(name string) (Account, error) {
	list, err := s.accountList()
	if err != nil {
		return Account{}, err
	}
	for _, a := range list {
		if a.Name == name {
			return a, nil
		}
	}
	return Account{}, accountError(ErrNoUser)
}

func (s *Server) accountCreate(ctx context.Context, a NewAccount) (Account, error) {
	st, err := s.accountStore()
	if err != nil {
		return Account{}, err
	}
	acc, err := st.Create(ctx, a.Name, a.Role, a.Password)
	if err != nil {
		return Account{}, accountError(err)
	}
	s.accountLog(ctx, "create", a.Name).WithField("role", a.Role).Info("web: account changed")
	return acc, nil
}

// accountDelete deletes an account and ends its console sessions, the
// caller's own included (a deleted account is logged out at once).
func (s *Server) accountDelete(ctx context.Context, name string) error {
	st, err := s.accountStore()
	if err != nil {
		return err
	}
	if err := st.Delete(ctx, name); err != nil {
		return accountError(err)
	}
	ended := s.console.sessions.EndUser(name, ui.Session{})
	s.accountLog(ctx, "delete", name).WithField("sessions_ended", ended).Info("web: account changed")
	return nil
}

// accountRole changes an account's role and ends its console sessions,
// the caller's own included: a session keeps the role it logged in with,
// so the account logs in again under the new one.
func (s *Server) accountRole(ctx context.Context, name, role string) error {
	st, err := s.accountStore()
	if err != nil {
		return err
	}
	if err := st.SetRole(ctx, name, role); err != nil {
		return accountError(err)
	}
	ended := s.console.sessions.EndUser(name, ui.Session{})
	s.accountLog(ctx, "role", name).WithFields(logrus.Fields{"role": role, "sessions_ended": ended}).Info("web: account changed")
	return nil
}

// accountPassword sets an account's password: the admin role may set any,
// every account its own. The account's other console sessions end; the
// caller's own session stays. A console session changing its own password
// gives the current one too: a session is a cookie, not proof of the
// password, and one left open on a shared screen must not be enough to
// take the account over. Wrong guesses count against the client's login
// limit. (Basic auth has just presented the password; tokens are not
// accounts.)
func (s *Server) accountPassword(ctx context.Context, name string, pc PasswordChange, remoteAddr string) error {
	st, err := s.accountStore()
	if err != nil {
		return err
	}
	p, _ := PrincipalFrom(ctx)
	if p.Role != RoleAdmin && !ownAccount(p, name) {
		return &Error{Status: http.StatusForbidden, Msg: fmt.Sprintf("role %s may change only its own password", p.Role)}
	}
	if p.Via == "session" && p.Name == name {
		a, ip := s.auth, clientKey(remoteAddr)
		if a.limiter.retryAfter(ip) > 0 {
			a.metrics.authFailures.WithLabelValues("limited").Inc()
			return &Error{Status: http.StatusTooManyRequests, Msg: "too many wrong passwords from your address; try again later"}
		}
		if _, ok := st.Check(name, pc.Current); !ok {
			a.limiter.fail(ip)
			a.metrics.authFailures.WithLabelValues("password").Inc()
			s.accountLog(ctx, "password", name).WithField("client", remoteAddr).Warn("web: password change refused: wrong current password")
			return &Error{Status: http.StatusBadRequest, Msg: "current_password: wrong password",
				Fields: map[string]string{"current_password": "not your current password"}}
		}
		a.limiter.succeed(ip)
	}
	if err := st.SetPassword(ctx, name, pc.Password); err != nil {
		return accountError(err)
	}
	ended := s.console.sessions.EndUser(name, p.session)
	s.accountLog(ctx, "password", name).WithField("sessions_ended", ended).Info("web: account changed")
	return nil
}

// accountLog is the log line of an account change: who did what to whom.
// The audit log has the same facts (Users writes them with the change).
func (s *Server) accountLog(ctx context.Context, action, name string) *logrus.Entry {
	return s.log.WithFields(logrus.Fields{"action": action, "account": name, "by": principalName(ctx)})
}

// decodeBody decodes a small JSON body strictly: an unknown key is an
// error that names it (a typo in "password" must not pass silently).
func decodeBody(r *http.Request, v any) error {
	body, err := readBody(r)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &Error{Status: http.StatusBadRequest, Msg: "body: " + err.Error()}
	}
	return nil
}

func (s *Server) handleUsers(w http.ResponseWriter, r *http.Request) {
	list, err := s.accountList()
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, AccountList{Users: list})
}

func (s *Server) handleUserCreate(w http.ResponseWriter, r *http.Request) {
	var a NewAccount
	err := decodeBody(r, &a)
	var acc Account
	if err == nil {
		acc, err = s.accountCreate(r.Context(), a)
	}
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusCreated, acc)
}

func (s *Server) handleUserRole(w http.ResponseWriter, r *http.Request) {
	var rc RoleChange
	err := decodeBody(r, &rc)
	if err == nil {
		err = s.accountRole(r.Context(), r.PathValue("name"), rc.Role)
	}
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleUserDelete(w http.ResponseWriter, r *http.Request) {
	if err := s.accountDelete(r.Context(), r.PathValue("name")); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleUserPassword(w http.ResponseWriter, r *http.Request) {
	var pc PasswordChange
	err := decodeBody(r, &pc)
	if err == nil {
		err = s.accountPassword(r.Context(), r.PathValue("name"), pc, r.RemoteAddr)
	}
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
