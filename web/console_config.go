package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"chainmail/internal/ui"
)

// The live-configuration pages: a list, a form (add, edit), enable and
// disable, and delete with a confirmation step, for each of listeners,
// routes and connections. A form is turned into the same JSON body as an
// API call and goes through configCreate / configReplace / configDelete, so
// the live configuration validates it (the rules of `chainmail check`),
// applies it, persists it and audits it; its field errors come back keyed
// by field and are shown beside each.

// configKind is one kind of live object and its form.
type configKind struct {
	Kind     string // listeners, routes, connections (the API's)
	Singular string
	Title    string
	fields   func(c *console) []fieldSpec
}

var configKinds = []configKind{
	{Kind: "listeners", Singular: "listener", Title: "Listeners", fields: (*console).listenerFields},
	{Kind: "routes", Singular: "route", Title: "Routes", fields: (*console).routeFields},
	{Kind: "connections", Singular: "connection", Title: "Connections", fields: (*console).connectionFields},
}

// fieldSpec is one form field and the configuration key it edits; a
// dotted key ("tls.cert") is a key of a nested object.
type fieldSpec struct {
	Key, Label, Help string
	// Placeholder shows the default an empty field stands for.
	Placeholder string
	// Type: text, number, list (one value per line), select, bool,
	// password (write-only: empty keeps the stored one), choices
	// (checkboxes, a list of the checked values).
	Type    string
	Options []option
	// Fixed fields (the name) are set on creation only; CreateOnly fields
	// exist only in the creation form.
	Fixed, CreateOnly bool
	Wide              bool
	// Default values of a choices field in the creation form.
	Default []string
	// Group is the form section the field is in ("" for the first).
	Group string
}

type option struct{ Value, Label string }

func (c *console) listenerFields() []fieldSpec {
	return []fieldSpec{
		{Key: "name", Label: "Name", Type: "text", Fixed: true, Help: "Letters, digits, '.', '_', '-'. Routes name it in their from."},
		{Key: "address", Label: "Address", Type: "text", Placeholder: "0.0.0.0:25", Help: "host:port to listen on."},
		{Key: "role", Label: "Role", Type: "select", Options: []option{{"", "journal"}, {"ha", "ha"}},
			Help: "journal: mail from outside the chain. ha: copies from peers, whose trace headers it trusts."},
		{Key: "route_actions", Label: "Route its mail to", Type: "choices", CreateOnly: true, Default: []string{"archive"}, Options: c.actionOptions(),
			Help: "Creates a route of the same name with these actions, so the listener accepts mail at once."},
		{Key: "disabled", Label: "Disabled (keeps the configuration, closes the port)", Type: "bool", Wide: true},
		{Key: "allow", Group: "Who may connect", Label: "Allowed clients", Type: "list", Placeholder: "10.0.1.0/24", Help: "One network or address per line. Empty: everyone."},
		{Key: "proxy_protocol_from", Group: "Who may connect", Label: "Trusted PROXY senders", Type: "list", Help: "Balancers whose PROXY header is believed, one per line."},
		{Key: "max_message_size", Group: "Limits", Label: "Max message size", Type: "text", Placeholder: "default 64MiB"},
		{Key: "max_recipients", Group: "Limits", Label: "Max recipients", Type: "number", Placeholder: "default 1000"},
		{Key: "max_sessions", Group: "Limits", Label: "Max sessions", Type: "number", Placeholder: "default 200"},
		{Key: "max_sessions_per_ip", Group: "Limits", Label: "Max sessions per IP", Type: "number", Placeholder: "default 50"},
		{Key: "read_timeout", Group: "Limits", Label: "Read timeout", Type: "text", Placeholder: "default 5m0s"},
		{Key: "write_timeout", Group: "Limits", Label: "Write timeout", Type: "text", Placeholder: "default 1m0s"},
		{Key: "data_timeout", Group: "Limits", Label: "DATA timeout", Type: "text", Placeholder: "default 3m0s"},
		{Key: "tls.cert", Group: "STARTTLS", Label: "TLS certificate file", Type: "text", Help: "PEM file; with a key, the listener offers STARTTLS."},
		{Key: "tls.key", Group: "STARTTLS", Label: "TLS key file", Type: "text"},
		{Key: "tls.require", Group: "STARTTLS", Label: "Require STARTTLS before MAIL", Type: "bool"},
	}
}

func (c *console) routeFields() []fieldSpec {
	return []fieldSpec{
		{Key: "name", Label: "Name", Type: "text", Fixed: true},
		{Key: "from", Label: "From listeners", Type: "choices", Options: c.nameOptions("listeners"), Wide: true},
		{Key: "actions", Label: "Actions", Type: "choices", Options: c.actionOptions(), Wide: true,
			Help: "archive stores the message here; forward queues it for a connection. Archive and every enqueue are one transaction."},
		{Key: "disabled", Label: "Disabled", Type: "bool", Wide: true},
	}
}

func (c *console) connectionFields() []fieldSpec {
	return []fieldSpec{
		{Key: "name", Label: "Name", Type: "text", Fixed: true},
		{Key: "address", Label: "Peer address", Type: "text", Placeholder: "10.0.0.2:8091", Help: "host:port of the peer's ha listener."},
		{Key: "peer_node", Label: "Peer node id", Type: "text", Help: "Loop detection skips a message whose trace names it."},
		{Key: "disabled", Label: "Disabled (keeps the queue; delivers nothing)", Type: "bool", Wide: true},
		{Key: "tls", Group: "TLS and AUTH", Label: "TLS", Type: "select", Options: []option{{"", "none"}, {"starttls", "STARTTLS"}, {"implicit", "implicit TLS"}}},
		{Key: "tls_ca", Group: "TLS and AUTH", Label: "CA file", Type: "text"},
		{Key: "tls_server_name", Group: "TLS and AUTH", Label: "TLS server name", Type: "text"},
		{Key: "tls_skip_verify", Group: "TLS and AUTH", Label: "Skip certificate verification (tests only)", Type: "bool"},
		{Key: "username", Group: "TLS and AUTH", Label: "AUTH user", Type: "text"},
		{Key: "password", Group: "TLS and AUTH", Label: "AUTH password", Type: "password", Help: "Write-only; leave empty to keep the stored one."},
		{Key: "concurrency", Group: "Delivery", Label: "Parallel sessions", Type: "number", Placeholder: "default 32"},
		{Key: "max_retries", Group: "Delivery", Label: "Max retries", Type: "number", Placeholder: "default 0", Help: "0 retries forever (an HA connection never drops a message)."},
		{Key: "queue_limit", Group: "Delivery", Label: "Queue limit", Type: "number", Placeholder: "default 1000000"},
		{Key: "retry_min", Group: "Delivery", Label: "First retry after", Type: "text", Placeholder: "default 1s"},
		{Key: "retry_max", Group: "Delivery", Label: "Longest retry interval", Type: "text", Placeholder: "default 5m0s"},
		{Key: "probe_interval", Group: "Delivery", Label: "Probe interval while down", Type: "text", Placeholder: "default 2s"},
		{Key: "timeout", Group: "Delivery", Label: "SMTP timeout", Type: "text", Placeholder: "default 1m0s"},
	}
}

// nameOptions lists the names of a kind, as checkbox options.
func (c *console) nameOptions(kind string) []option {
	var out []option
	if c.s.opts.Config == nil {
		return nil
	}
	list, _ := c.s.opts.Config.List(kind)
	for _, o := range list {
		n := str(o, "name")
		out = append(out, option{n, n})
	}
	return out
}

func (c *console) actionOptions() []option {
	out := []option{{"archive", "archive"}}
	for _, o := range c.nameOptions("connections") {
		out = append(out, option{"forward:" + o.Value, "forward to " + o.Value})
	}
	return out
}

func kindByName(kind string) configKind {
	for _, k := range configKinds {
		if k.Kind == kind {
			return k
		}
	}
	return configKind{}
}

// formField is one rendered field.
type formField struct {
	fieldSpec
	ID       string
	Value    string
	Checked  map[string]bool
	Options  []option // the spec's, plus values no longer offered
	Error    string
	Disabled bool
	// DescribedBy lists the ids of the field's error and help texts.
	DescribedBy string
}

// formGroup is one section of a form.
type formGroup struct {
	Title  string
	Fields []formField
}

// formData is the form page's.
type formData struct {
	Kind    configKind
	Name    string // "" when adding
	Action  string
	Fields  []formField
	Groups  []formGroup // the same fields, by section
	General []string    // errors that belong to no field of the form
	// HasErrors: the change was refused (a summary heads the form).
	HasErrors bool
	ReadOnly  bool
	// Notes are facts the form does not edit (listener AUTH users).
	Notes []string
}

func (c *console) configForm(w http.ResponseWriter, r *http.Request, sess ui.Session, k configKind, name string) {
	m := map[string]any{}
	if name != "" {
		o, err := c.s.configGet(k.Kind, name)
		if err != nil {
			c.fail(w, r, sess, err)
			return
		}
		m = o
		delete(m, "status")
	}
	c.showForm(w, r, sess, k, name, m, nil, http.StatusOK)
}

func (c *console) showForm(w http.ResponseWriter, r *http.Request, sess ui.Session, k configKind, name string, m map[string]any, fieldErrs map[string]string, status int) {
	d := formData{Kind: k, Name: name, Action: "/" + k.Kind + "/new", ReadOnly: !mayCall(sess.Role, http.MethodPost)}
	if name != "" {
		d.Action = "/" + k.Kind + "/" + name + "/edit"
	}
	specs := k.fields(c)
	perField, general := c.placeErrors(k, specs, fieldErrs)
	d.General, d.HasErrors = general, len(fieldErrs) > 0
	for _, sp := range specs {
		if sp.CreateOnly && name != "" {
			continue
		}
		f := formField{fieldSpec: sp, ID: "f-" + strings.NewReplacer(".", "-", "_", "-").Replace(sp.Key), Error: perField[sp.Key],
			Disabled: d.ReadOnly || sp.Fixed && name != "", Options: sp.Options}
		var desc []string
		if f.Error != "" {
			desc = append(desc, f.ID+"-err")
		}
		if sp.Help != "" {
			desc = append(desc, f.ID+"-help")
		}
		f.DescribedBy = strings.Join(desc, " ")
		v := getPath(m, sp.Key)
		switch sp.Type {
		case "choices":
			f.Checked = map[string]bool{}
			vals := listOf(v)
			if v == nil && name == "" && fieldErrs == nil {
				vals = sp.Default
			}
			for _, x := range vals {
				f.Checked[x] = true
				if !hasOption(f.Options, x) {
					f.Options = append(f.Options, option{x, x + " (missing)"})
				}
			}
		case "password":
		default:
			f.Value = formValue(v)
		}
		d.Fields = append(d.Fields, f)
		if n := len(d.Groups); n == 0 || d.Groups[n-1].Title != sp.Group {
			d.Groups = append(d.Groups, formGroup{Title: sp.Group})
		}
		g := &d.Groups[len(d.Groups)-1]
		g.Fields = append(g.Fields, f)
	}
	if a, ok := m["auth"].(map[string]any); ok && k.Kind == "listeners" {
		var names []string
		for _, u := range listOf(a["users"]) {
			names = append(names, u)
		}
		d.Notes = append(d.Notes, fmt.Sprintf("SMTP AUTH is on for %d user(s)%s; change AUTH users through the API or the file (passwords are bcrypt hashes).",
			len(listAny(a["users"])), joinNames(names)))
	}
	title := "Add " + k.Singular
	if name != "" {
		title = strings.ToUpper(k.Singular[:1]) + k.Singular[1:] + " " + name
	}
	c.render(w, r, status, "config_form", c.page(r, sess, title, d))
}

func joinNames(n []string) string {
	if len(n) == 0 {
		return ""
	}
	return " (" + strings.Join(n, ", ") + ")"
}

func hasOption(opts []option, v string) bool {
	for _, o := range opts {
		if o.Value == v {
			return true
		}
	}
	return false
}

// configSave turns the form into the API's JSON body over the stored
// object (so keys the form does not show, such as AUTH users, are kept)
// and creates or replaces through the live configuration.
func (c *console) configSave(w http.ResponseWriter, r *http.Request, sess ui.Session, k configKind, name string) {
	m := map[string]any{}
	if name != "" {
		o, err := c.s.configGet(k.Kind, name)
		if err != nil {
			c.fail(w, r, sess, err)
			return
		}
		m = o
		delete(m, "status")
	}
	for _, sp := range k.fields(c) {
		if name != "" && (sp.Fixed || sp.CreateOnly) {
			continue
		}
		applyField(m, sp, r)
	}
	body, err := json.Marshal(m)
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	var saved map[string]any
	if name == "" {
		saved, err = c.s.configCreate(r.Context(), k.Kind, body)
	} else {
		saved, err = c.s.configReplace(r.Context(), k.Kind, name, body)
	}
	var e *Error
	if errors.As(err, &e) && e.Fields != nil {
		c.showForm(w, r, sess, k, name, m, e.Fields, http.StatusBadRequest)
		return
	}
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	verb := "saved"
	if name == "" {
		verb = "added"
	}
	c.s.log.WithFields(map[string]any{"kind": k.Kind, "name": saved["name"], "by": sess.User, "create": name == ""}).Info("configuration changed")
	c.done(w, r, "/"+k.Kind, fmt.Sprintf("%s %q %s.", capital(k.Singular), str(saved, "name"), verb))
}

func capital(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// applyField sets one form field's value in m: an empty field removes the
// key, so the default applies, as in the file.
func applyField(m map[string]any, sp fieldSpec, r *http.Request) {
	raw := strings.TrimSpace(r.PostFormValue(sp.Key))
	switch sp.Type {
	case "bool":
		if raw != "" {
			setPath(m, sp.Key, true)
		} else {
			delPath(m, sp.Key)
		}
	case "number":
		if raw == "" {
			delPath(m, sp.Key)
		} else if n, err := strconv.Atoi(raw); err == nil {
			setPath(m, sp.Key, n)
		} else {
			setPath(m, sp.Key, raw) // the decoder names the field and says what it wants
		}
	case "list":
		if l := splitList(raw); len(l) > 0 {
			setPath(m, sp.Key, l)
		} else {
			delPath(m, sp.Key)
		}
	case "choices":
		var l []string
		for _, v := range r.PostForm[sp.Key] {
			if v = strings.TrimSpace(v); v != "" {
				l = append(l, v)
			}
		}
		if len(l) > 0 {
			setPath(m, sp.Key, l)
		} else {
			delPath(m, sp.Key)
		}
	case "password":
		if raw != "" {
			setPath(m, sp.Key, raw)
		}
	default:
		if raw != "" {
			setPath(m, sp.Key, raw)
		} else {
			delPath(m, sp.Key)
		}
	}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == ',' || r == '\r' }) {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

var indexedPath = regexp.MustCompile(`^(listeners|routes|connections)\[(\d+)\]\.?(.*)$`)

// placeErrors sorts a change's field errors into those shown beside a
// field of the form and the rest (problems the change causes elsewhere,
// such as a route left naming a deleted listener), which name the object
// they are about.
func (c *console) placeErrors(k configKind, specs []fieldSpec, errs map[string]string) (map[string]string, []string) {
	perField := map[string]string{}
	var general []string
	keys := make([]string, 0, len(errs))
	for key := range errs {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	has := map[string]bool{}
	for _, sp := range specs {
		has[sp.Key] = true
	}
	for _, key := range keys {
		msg := errs[key]
		field := key
		if !has[field] {
			field, _, _ = strings.Cut(key, "[")
		}
		if has[field] {
			if perField[field] != "" {
				perField[field] += "; "
			}
			perField[field] += msg
			continue
		}
		general = append(general, c.describePath(key)+": "+msg)
	}
	return perField, general
}

// describePath names the object of an error path: routes[0].from[1] →
// route "journal", from[1].
func (c *console) describePath(path string) string {
	m := indexedPath.FindStringSubmatch(path)
	if m == nil || c.s.opts.Config == nil {
		return path
	}
	i, _ := strconv.Atoi(m[2])
	list, _ := c.s.opts.Config.List(m[1])
	if i >= len(list) {
		return path
	}
	out := fmt.Sprintf("%s %q", kindByName(m[1]).Singular, str(list[i], "name"))
	if m[3] != "" {
		out += ", " + m[3]
	}
	return out
}

// configToggle enables or disables an object: the stored object with
// "disabled" changed, through configReplace.
func (c *console) configToggle(w http.ResponseWriter, r *http.Request, sess ui.Session, k configKind, disable bool) {
	name := r.PathValue("name")
	m, err := c.s.configGet(k.Kind, name)
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	delete(m, "status")
	verb := "enabled"
	if disable {
		m["disabled"], verb = true, "disabled"
	} else {
		delete(m, "disabled")
	}
	body, _ := json.Marshal(m)
	_, err = c.s.configReplace(r.Context(), k.Kind, name, body)
	back := "/" + k.Kind
	var e *Error
	if errors.As(err, &e) && e.Fields != nil {
		_, general := c.placeErrors(k, nil, e.Fields)
		c.sessions.SetFlash(r, fmt.Sprintf("%s %q was not %s: %s", capital(k.Singular), name, verb, strings.Join(general, "; ")), true)
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	c.done(w, r, back, fmt.Sprintf("%s %q %s.", capital(k.Singular), name, verb))
}

// deleteData is the confirmation page's.
type deleteData struct {
	Kind    configKind
	Name    string
	Object  string // its configuration as YAML-ish lines
	Errors  []string
	Warning string
}

func (c *console) configDeletePage(w http.ResponseWriter, r *http.Request, sess ui.Session, k configKind) {
	c.showDelete(w, r, sess, k, nil, http.StatusOK)
}

func (c *console) showDelete(w http.ResponseWriter, r *http.Request, sess ui.Session, k configKind, errs []string, status int) {
	name := r.PathValue("name")
	o, err := c.s.configGet(k.Kind, name)
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	delete(o, "status")
	d := deleteData{Kind: k, Name: name, Errors: errs, Object: describeObject(o)}
	switch k.Kind {
	case "listeners":
		d.Warning = "Its port closes gracefully: sessions in progress finish, new ones are refused."
	case "connections":
		d.Warning = "Messages still queued for it stay in the data store but are not delivered until a connection of the same name exists again."
	}
	c.render(w, r, status, "config_delete", c.page(r, sess, "Delete "+k.Singular+" "+name, d))
}

func (c *console) configDeleteAct(w http.ResponseWriter, r *http.Request, sess ui.Session, k configKind) {
	name := r.PathValue("name")
	err := c.s.configDelete(r.Context(), k.Kind, name)
	var e *Error
	if errors.As(err, &e) && e.Fields != nil {
		_, general := c.placeErrors(k, nil, e.Fields)
		c.showDelete(w, r, sess, k, general, http.StatusBadRequest)
		return
	}
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	c.s.log.WithFields(map[string]any{"kind": k.Kind, "name": name, "by": sess.User}).Info("configuration changed: deleted")
	c.done(w, r, "/"+k.Kind, fmt.Sprintf("%s %q deleted.", capital(k.Singular), name))
}

// describeObject renders an object's keys, one "key: value" per line, in
// a stable order.
func describeObject(o map[string]any) string {
	keys := make([]string, 0, len(o))
	for k := range o {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		v := o[k]
		if nested, ok := v.(map[string]any); ok {
			for _, line := range strings.Split(strings.TrimSpace(describeObject(nested)), "\n") {
				fmt.Fprintf(&b, "%s.%s\n", k, line)
			}
			continue
		}
		fmt.Fprintf(&b, "%s: %s\n", k, strings.ReplaceAll(formValue(v), "\n", ", "))
	}
	return b.String()
}

// listPage is the data of the three list pages.
type listPage struct {
	Kind        configKind
	ReadOnly    bool
	Listeners   []listenerRow
	Routes      []routeRow
	Connections []connRow
	Configured  bool // the node has a live configuration
}

type routeRow struct {
	Name          string
	From, Actions []string
	Disabled      bool
}

type connRow struct {
	Name, Address, PeerNode, TLS string
	Disabled                     bool
	Status                       *connectionRow
}

func (c *console) configListPage(w http.ResponseWriter, r *http.Request, sess ui.Session, k configKind) {
	d := listPage{Kind: k, ReadOnly: !mayCall(sess.Role, http.MethodPost), Configured: c.s.opts.Config != nil}
	list, err := c.s.configList(k.Kind)
	if err != nil && d.Configured {
		c.fail(w, r, sess, err)
		return
	}
	switch k.Kind {
	case "listeners":
		d.Listeners = c.listenerRows()
	case "routes":
		for _, o := range list {
			d.Routes = append(d.Routes, routeRow{Name: str(o, "name"), From: listOf(o["from"]), Actions: listOf(o["actions"]), Disabled: boolean(o, "disabled")})
		}
	case "connections":
		for _, o := range list {
			row := connRow{Name: str(o, "name"), Address: str(o, "address"), PeerNode: str(o, "peer_node"), TLS: str(o, "tls"), Disabled: boolean(o, "disabled")}
			if c.s.opts.Connections != nil {
				if st, ok := c.s.opts.Connections.StatusOf(row.Name); ok {
					cr := c.connectionRow(st)
					row.Status = &cr
				}
			}
			d.Connections = append(d.Connections, row)
		}
	}
	p := c.page(r, sess, k.Title, d)
	p.Live = k.Kind == "connections"
	c.render(w, r, http.StatusOK, k.Kind, p)
}

// Helpers over the configuration's map form (config.ToMap).

func str(m map[string]any, key string) string {
	s, _ := m[key].(string)
	return s
}

func boolean(m map[string]any, key string) bool {
	b, _ := m[key].(bool)
	return b
}

func listAny(v any) []any {
	switch l := v.(type) {
	case []any:
		return l
	case []string:
		out := make([]any, len(l))
		for i, s := range l {
			out[i] = s
		}
		return out
	}
	return nil
}

// listOf is a list of strings, or of objects' names.
func listOf(v any) []string {
	var out []string
	for _, x := range listAny(v) {
		switch t := x.(type) {
		case string:
			out = append(out, t)
		case map[string]any:
			out = append(out, str(t, "name"))
		default:
			out = append(out, fmt.Sprint(t))
		}
	}
	return out
}

// formValue is a configuration value as a form field shows it.
func formValue(v any) string {
	switch t := v.(type) {
	case nil:
		return ""
	case string:
		return t
	case bool:
		if t {
			return "true"
		}
		return ""
	case float64: // from JSON (the audit log)
		return strconv.FormatFloat(t, 'f', -1, 64)
	case []any, []string:
		return strings.Join(listOf(t), "\n")
	case map[string]any:
		return ""
	}
	return fmt.Sprint(v)
}

func getPath(m map[string]any, key string) any {
	head, rest, nested := strings.Cut(key, ".")
	if !nested {
		return m[key]
	}
	sub, _ := m[head].(map[string]any)
	if sub == nil {
		return nil
	}
	return getPath(sub, rest)
}

func setPath(m map[string]any, key string, v any) {
	head, rest, nested := strings.Cut(key, ".")
	if !nested {
		m[key] = v
		return
	}
	sub, _ := m[head].(map[string]any)
	if sub == nil {
		sub = map[string]any{}
		m[head] = sub
	}
	setPath(sub, rest, v)
}

// delPath removes a key, and a nested object left empty (an empty "tls"
// would mean TLS without a certificate).
func delPath(m map[string]any, key string) {
	head, rest, nested := strings.Cut(key, ".")
	if !nested {
		delete(m, key)
		return
	}
	sub, _ := m[head].(map[string]any)
	if sub == nil {
		return
	}
	delPath(sub, rest)
	if len(sub) == 0 {
		delete(m, head)
	}
}
