package web

import (
	"fmt"
	"net/http"
	"strings"

	"chainmail/internal/ui"
	"chainmail/queue"
)

// A connection's page: its forwarding state, catch-up progress, queue and
// dead letters, and the operator's actions (retry the dead letters, pause,
// resume, purge with a confirmation step) through connectionAction, the
// API's operation.

// queueShown bounds the entries a connection's page lists.
const queueShown = 100

type connectionPageData struct {
	Name     string
	Row      connectionRow
	Config   string
	Dead     bool // the dead-letter tab is shown
	Entries  []queue.Entry
	Subjects map[string]string // by message id, for the entries listed
	More     bool              // the list was cut at queueShown
	ReadOnly bool
	Paused   bool
}

func (c *console) connectionPage(w http.ResponseWriter, r *http.Request, sess ui.Session) {
	name := r.PathValue("name")
	d := connectionPageData{Name: name, Dead: r.URL.Query().Get("view") == "dead", ReadOnly: !mayCall(sess.Role, http.MethodPost)}
	view, err := c.s.connection(name)
	if err != nil {
		// A disabled connection is configured but not run: show its
		// configuration, with a way to enable it.
		if o, cerr := c.s.configGet("connections", name); cerr == nil {
			delete(o, "status")
			d.Config = describeObject(o)
			d.Row = connectionRow{Disabled: boolean(o, "disabled")}
			d.Row.Name = name
			c.render(w, r, http.StatusOK, "connection", c.page(r, sess, "Connection "+name, d))
			return
		}
		c.fail(w, r, sess, err)
		return
	}
	d.Row = c.connectionRow(view.Status)
	d.Paused = view.Paused
	if view.Config != nil {
		d.Config = describeObject(view.Config)
	}
	list, err := c.s.queueEntries(name, d.Dead, queueShown+1)
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	d.Entries = list.Entries
	if len(d.Entries) > queueShown {
		d.Entries, d.More = d.Entries[:queueShown], true
	}
	d.Subjects = map[string]string{}
	for _, e := range d.Entries {
		if m, err := c.s.message(r.Context(), e.HashHex); err == nil {
			d.Subjects[e.HashHex] = m.Headers.Subject
		}
	}
	p := c.page(r, sess, "Connection "+name, d)
	p.Live = true
	c.render(w, r, http.StatusOK, "connection", p)
}

func (c *console) connectionAct(w http.ResponseWriter, r *http.Request, sess ui.Session, action string) {
	name := r.PathValue("name")
	if action == "purge" && strings.TrimSpace(r.PostFormValue("confirm")) != name {
		// The confirmation page has the name typed back; a bare POST (a
		// script, a double click elsewhere) does not purge.
		c.showPurge(w, r, sess, http.StatusBadRequest, "Type the connection's name, "+name+", to confirm.")
		return
	}
	res, err := c.s.connectionAction(r.Context(), name, action)
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	c.s.log.WithFields(map[string]any{"connection": name, "action": action, "count": res.Count, "by": sess.User}).Info("connection action")
	var msg string
	switch action {
	case "retry":
		msg = fmt.Sprintf("%d dead letter(s) of %q queued again.", res.Count, name)
	case "purge":
		msg = fmt.Sprintf("%d queued message(s) of %q purged. They stay in the archive.", res.Count, name)
	case "pause":
		msg = fmt.Sprintf("Delivery to %q paused; its queue keeps filling.", name)
	case "resume":
		msg = fmt.Sprintf("Delivery to %q resumed.", name)
	}
	c.done(w, r, "/connections/"+name, msg)
}

type purgeData struct {
	Name  string
	Depth int64
	Error string
}

func (c *console) purgePage(w http.ResponseWriter, r *http.Request, sess ui.Session) {
	c.showPurge(w, r, sess, http.StatusOK, "")
}

func (c *console) showPurge(w http.ResponseWriter, r *http.Request, sess ui.Session, status int, msg string) {
	name := r.PathValue("name")
	view, err := c.s.connection(name)
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	d := purgeData{Name: name, Depth: view.QueueDepth, Error: msg}
	c.render(w, r, status, "purge", c.page(r, sess, "Purge the queue of "+name, d))
}
