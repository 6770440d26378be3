package web

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"chainmail/internal/ui"
)

// The Accounts page: the list of console accounts; for the admin role a
// form to add one and, per account, a password reset and a delete with a
// confirmation page; for everybody a form to change their own password.
// Each form goes through the operation of the matching API route
// (accountCreate, accountDelete, accountPassword), so the rules — names,
// password length, the last admin, who may change which password — live
// there. The only check of the console's own is the repeated password, a
// guard against a typing mistake that the API has no need of.

// accountsData is the Accounts page's.
type accountsData struct {
	Accounts []Account
	Me       string
	Admin    bool
	// Form is the add form (admin only) and its errors.
	Form      []formField
	HasErrors bool
}

// accountSpecs are the fields of the add form.
var accountSpecs = []fieldSpec{
	{Key: "name", Label: "Name", Type: "text", Help: "Lower-case letters, digits and . _ - @, up to 64 characters."},
	{Key: "role", Label: "Role", Type: "select", Options: []option{{RoleReadOnly, RoleReadOnly}, {RoleAdmin, RoleAdmin}},
		Help: "read-only sees every page; admin also changes them."},
	{Key: "password", Label: "Password", Type: "password", Help: fmt.Sprintf("%d to %d characters.", minPassword, maxPassword)},
	{Key: "repeat", Label: "Repeat the password", Type: "password"},
}

// currentSpec asks for the present password when the account is the
// caller's own.
var currentSpec = fieldSpec{Key: "current_password", Label: "Current password", Type: "password"}

// passwordSpecs are the fields of the password form.
var passwordSpecs = []fieldSpec{
	{Key: "password", Label: "New password", Type: "password", Help: fmt.Sprintf("%d to %d characters.", minPassword, maxPassword)},
	{Key: "repeat", Label: "Repeat the new password", Type: "password"},
}

// accountFields renders specs with the values typed (never a password's)
// and the errors beside their fields.
func accountFields(specs []fieldSpec, values, errs map[string]string) []formField {
	out := make([]formField, 0, len(specs))
	for _, sp := range specs {
		f := formField{fieldSpec: sp, ID: "a-" + sp.Key, Error: errs[sp.Key], Options: sp.Options}
		if sp.Type != "password" {
			f.Value = values[sp.Key]
		}
		var desc []string
		if f.Error != "" {
			desc = append(desc, f.ID+"-err")
		}
		if sp.Help != "" {
			desc = append(desc, f.ID+"-help")
		}
		f.DescribedBy = strings.Join(desc, " ")
		out = append(out, f)
	}
	return out
}

// repeatError is the console's own check: both password fields agree.
func repeatError(r *http.Request) string {
	if r.PostFormValue("password") != r.PostFormValue("repeat") {
		return "does not match the password"
	}
	return ""
}

func (c *console) accountsPage(w http.ResponseWriter, r *http.Request, sess ui.Session) {
	c.showAccounts(w, r, sess, map[string]string{"role": RoleReadOnly}, nil, http.StatusOK)
}

func (c *console) showAccounts(w http.ResponseWriter, r *http.Request, sess ui.Session, values, errs map[string]string, status int) {
	list, err := c.s.accountList()
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	d := accountsData{Accounts: list, Me: sess.User, Admin: sess.Role == RoleAdmin, HasErrors: len(errs) > 0}
	if d.Admin {
		d.Form = accountFields(accountSpecs, values, errs)
	}
	c.render(w, r, status, "accounts", c.page(r, sess, "Accounts", d))
}

func (c *console) accountCreateAct(w http.ResponseWriter, r *http.Request, sess ui.Session) {
	a := NewAccount{
		Name:     strings.TrimSpace(r.PostFormValue("name")),
		Role:     r.PostFormValue("role"),
		Password: r.PostFormValue("password"),
	}
	values := map[string]string{"name": a.Name, "role": a.Role}
	if msg := repeatError(r); msg != "" {
		errs := map[string]string{"repeat": msg}
		if inv := validateAccount(a.Name, a.Role, a.Password); inv != nil {
			for k, v := range inv.Fields {
				errs[k] = v
			}
		}
		c.showAccounts(w, r, sess, values, errs, http.StatusBadRequest)
		return
	}
	acc, err := c.s.accountCreate(r.Context(), a)
	var e *Error
	if errors.As(err, &e) && e.Fields != nil {
		c.showAccounts(w, r, sess, values, e.Fields, e.Status)
		return
	}
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	c.done(w, r, "/accounts", fmt.Sprintf("Account %q added with the role %s.", acc.Name, acc.Role))
}

// accountDeleteData is the confirmation page's.
type accountDeleteData struct {
	Account Account
	Error   string
	Admin   bool
	Self    bool
}

func (c *console) accountDeletePage(w http.ResponseWriter, r *http.Request, sess ui.Session) {
	c.showAccountDelete(w, r, sess, "", http.StatusOK)
}

func (c *console) showAccountDelete(w http.ResponseWriter, r *http.Request, sess ui.Session, msg string, status int) {
	acc, err := c.s.accountGet(r.PathValue("name"))
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	d := accountDeleteData{Account: acc, Error: msg, Admin: sess.Role == RoleAdmin, Self: acc.Name == sess.User}
	c.render(w, r, status, "account_delete", c.page(r, sess, "Delete account "+acc.Name, d))
}

func (c *console) accountDeleteAct(w http.ResponseWriter, r *http.Request, sess ui.Session) {
	name := r.PathValue("name")
	err := c.s.accountDelete(r.Context(), name)
	var e *Error
	if errors.As(err, &e) && e.Status == http.StatusConflict {
		c.showAccountDelete(w, r, sess, e.Msg, e.Status)
		return
	}
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	if name == sess.User {
		// The account's sessions, this one included, have ended.
		http.Redirect(w, r, "/login", http.StatusSeeOther)
		return
	}
	c.done(w, r, "/accounts", fmt.Sprintf("Account %q deleted; its sessions were ended.", name))
}

func (c *console) accountRoleAct(w http.ResponseWriter, r *http.Request, sess ui.Session) {
	name, role := r.PathValue("name"), r.PostFormValue("role")
	if err := c.s.accountRole(r.Context(), name, role); err != nil {
		c.fail(w, r, sess, err)
		return
	}
	if name == sess.User {
		// The account's sessions, this one included, have ended.
		http.Redirect(w, r, "/login", http.StatusSeeOther)
		return
	}
	c.done(w, r, "/accounts", fmt.Sprintf("Account %q is now %s; its sessions were ended.", name, role))
}

// passwordData is the password page's.
type passwordData struct {
	Account   Account
	Own       bool
	Fields    []formField
	HasErrors bool
}

func (c *console) accountPasswordPage(w http.ResponseWriter, r *http.Request, sess ui.Session) {
	c.showPassword(w, r, sess, nil, http.StatusOK)
}

func (c *console) showPassword(w http.ResponseWriter, r *http.Request, sess ui.Session, errs map[string]string, status int) {
	name := r.PathValue("name")
	p, _ := PrincipalFrom(r.Context())
	if p.Role != RoleAdmin && !ownAccount(p, name) {
		c.fail(w, r, sess, &Error{Status: http.StatusForbidden, Msg: "Your role (" + sess.Role + ") may change only your own password."})
		return
	}
	acc, err := c.s.accountGet(name)
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	specs := passwordSpecs
	own := acc.Name == sess.User
	if own {
		specs = append([]fieldSpec{currentSpec}, passwordSpecs...)
	}
	d := passwordData{Account: acc, Own: own, Fields: accountFields(specs, nil, errs), HasErrors: len(errs) > 0}
	title := "Set the password of " + acc.Name
	if d.Own {
		title = "Change your password"
	}
	c.render(w, r, status, "account_password", c.page(r, sess, title, d))
}

func (c *console) accountPasswordAct(w http.ResponseWriter, r *http.Request, sess ui.Session) {
	name := r.PathValue("name")
	if msg := repeatError(r); msg != "" {
		errs := map[string]string{"repeat": msg}
		if m := validPassword(r.PostFormValue("password")); m != "" {
			errs["password"] = m
		}
		c.showPassword(w, r, sess, errs, http.StatusBadRequest)
		return
	}
	err := c.s.accountPassword(r.Context(), name,
		PasswordChange{Password: r.PostFormValue("password"), Current: r.PostFormValue("current_password")}, r.RemoteAddr)
	var e *Error
	if errors.As(err, &e) && e.Fields != nil {
		c.showPassword(w, r, sess, e.Fields, e.Status)
		return
	}
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	msg := fmt.Sprintf("The password of %q was set; its sessions were ended.", name)
	if name == sess.User {
		msg = "Your password was changed; your other sessions were ended."
	}
	c.done(w, r, "/accounts", msg)
}
