package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"chainmail/archive"
	"chainmail/internal/ui"
)

// The archive pages: search (the API's searchArchive with the form's
// fields as its parameters), a message (the API's message operation, and
// its MIME structure), and the download (the API's raw handler).

// consolePageSize is the console's page of hits (the API's default is 50).
const consolePageSize = "25"

// searchField is one field of the search form.
type searchField struct {
	Name, Label, Type, Help, Value, Error, ID string
}

type searchData struct {
	Fields   []searchField
	Page     archive.Page
	Searched bool   // any criterion given
	Next     string // the next page's URL, "" on the last
	First    string // the first page's URL when not on it
	Error    string // an error not tied to a field
	Stats    archive.Stats
	Count    string // "1 message", "3 messages"
}

var searchForm = []searchField{
	{Name: "q", Label: "Text", Type: "search", Help: "Words in the indexed headers"},
	{Name: "from", Label: "From", Type: "text", Help: "Address, @domain or part of it"},
	{Name: "to", Label: "To", Type: "text", Help: "To, Cc or any envelope recipient"},
	{Name: "subject", Label: "Subject", Type: "text", Help: "Part of the subject"},
	{Name: "message_id", Label: "Message-ID", Type: "text", Help: "Exact, with or without <>"},
	{Name: "after", Label: "Date from", Type: "date", Help: "On or after (UTC)"},
	{Name: "before", Label: "Date before", Type: "date", Help: "Before this day (UTC)"},
}

func (c *console) archiveSearch(w http.ResponseWriter, r *http.Request, sess ui.Session) {
	in := r.URL.Query()
	params := url.Values{}
	d := searchData{Stats: c.s.opts.Archive.Stats()}
	d.Count = count(float64(d.Stats.Messages), "message")
	for _, f := range searchForm {
		f.ID = "s-" + f.Name
		f.Value = in.Get(f.Name)
		if strings.TrimSpace(f.Value) != "" {
			params.Set(f.Name, f.Value)
			d.Searched = true
		}
		d.Fields = append(d.Fields, f)
	}
	params.Set("limit", consolePageSize)
	if cur := in.Get("cursor"); cur != "" {
		params.Set("cursor", cur)
		query := cloneQuery(params)
		query.Del("cursor")
		query.Del("limit")
		d.First = "/archive?" + query.Encode()
	}
	status := http.StatusOK
	page, err := c.s.searchArchive(r.Context(), params)
	var e *Error
	switch {
	case errors.As(err, &e):
		status = e.Status
		placed := false
		for i := range d.Fields {
			if d.Fields[i].Name == e.Param {
				d.Fields[i].Error, placed = e.Msg, true
			}
		}
		if !placed {
			d.Error = e.Error()
		}
	case err != nil:
		c.fail(w, r, sess, err)
		return
	default:
		d.Page = page
		if page.NextCursor != "" {
			next := cloneQuery(params)
			next.Del("limit")
			next.Set("cursor", page.NextCursor)
			d.Next = "/archive?" + next.Encode()
		}
	}
	c.render(w, r, status, "archive", c.page(r, sess, "Archive", d))
}

func cloneQuery(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// messageData is the message page's.
type messageData struct {
	M       *archive.Meta
	Journal *journalView
	Parts   *mimePart
	Admin   bool
}

// journalView is a journal report's summary as the archive gives it,
// read through its JSON form so the page shows whatever the archive
// records (the fields grow with the journal work) without depending on
// each one.
type journalView struct {
	Fields     []kv
	Recipients []map[string]string
	Original   []kv
	Decrypted  []kv
	Reports    []map[string]string
	Warnings   []string
	Report     []kv // the report's own header fields
	HasOrig    bool
}

type kv struct{ Key, Value string }

func (c *console) archiveMessage(w http.ResponseWriter, r *http.Request, sess ui.Session) {
	m, err := c.s.message(r.Context(), r.PathValue("id"))
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	d := messageData{M: m, Admin: sess.Role == RoleAdmin}
	if m.Journal != nil {
		d.Journal = journalOf(m.Journal)
	}
	// The structure is read from what the caller may download (openPart's
	// rule: a journal report whole for admins, its original otherwise); the
	// page shows types, names and sizes, never content.
	part := archive.PartOriginal
	if d.Admin {
		part = archive.PartReport
	}
	if rc, _, _, err := c.s.openPart(r.Context(), m.ID, part); err == nil {
		d.Parts = listParts(rc)
		rc.Close()
	}
	subject := m.Headers.Subject
	if subject == "" {
		subject = "(no subject)"
	}
	c.render(w, r, http.StatusOK, "message", c.page(r, sess, subject, d))
}

func journalOf(j any) *journalView {
	b, err := json.Marshal(j)
	if err != nil {
		return nil
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	v := &journalView{}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch x := m[k].(type) {
		case []any:
			switch k {
			case "recipients":
				v.Recipients = objects(x)
			case "reports":
				v.Reports = objects(x)
			case "warnings":
				v.Warnings = listOf(x)
			default:
				v.Fields = append(v.Fields, kv{label(k), strings.Join(listOf(x), ", ")})
			}
		case map[string]any:
			switch k {
			case "original":
				v.Original, v.HasOrig = flat(x), true
			case "decrypted":
				v.Decrypted = flat(x)
			case "report_headers":
				v.Report = flat(x)
			default:
				v.Fields = append(v.Fields, kv{label(k), describeObject(x)})
			}
		default:
			v.Fields = append(v.Fields, kv{label(k), scalar(x)})
		}
	}
	return v
}

// objects turns a list of JSON objects into string maps.
func objects(list []any) []map[string]string {
	var out []map[string]string
	for _, x := range list {
		if o, ok := x.(map[string]any); ok {
			row := map[string]string{}
			for k, v := range o {
				row[k] = scalar(v)
			}
			out = append(out, row)
		}
	}
	return out
}

// flat lists an object's scalar keys (nested objects as their keys).
func flat(o map[string]any) []kv {
	var out []kv
	keys := make([]string, 0, len(o))
	for k := range o {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch x := o[k].(type) {
		case map[string]any:
			for _, in := range flat(x) {
				out = append(out, kv{label(k) + " · " + in.Key, in.Value})
			}
		default:
			out = append(out, kv{label(k), scalar(x)})
		}
	}
	return out
}

func scalar(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		if t, err := time.Parse(time.RFC3339Nano, x); err == nil && len(x) >= 20 {
			return t.UTC().Format("2006-01-02 15:04:05Z")
		}
		return x
	case float64:
		return trimFloat(x)
	case bool:
		if x {
			return "yes"
		}
		return "no"
	case []any:
		return strings.Join(listOf(x), ", ")
	}
	return fmt.Sprint(v)
}

// label makes a JSON key readable: message_id → Message id.
func label(k string) string {
	k = strings.ReplaceAll(k, "_", " ")
	return capital(k)
}

// auditRow is one audited change.
type auditRow struct {
	At                     time.Time
	By, Action, Kind, Name string
	Changes                []string
}

func (c *console) auditPage(w http.ResponseWriter, r *http.Request, sess ui.Session) {
	list, err := c.s.audit(200)
	var rows []auditRow
	if err != nil {
		var e *Error
		if !errors.As(err, &e) || e.Status != http.StatusNotFound {
			c.fail(w, r, sess, err)
			return
		}
	}
	for _, e := range list.Entries {
		kind := e.Kind
		if k := kindByName(kind); k.Singular != "" {
			kind = k.Singular
		} else if kind == AuditKindUsers {
			kind = "account"
		}
		rows = append(rows, auditRow{At: e.At, By: e.By, Action: e.Action, Kind: kind, Name: e.Name, Changes: changes(e.Before, e.After)})
	}
	c.render(w, r, http.StatusOK, "audit", c.page(r, sess, "Audit log", rows))
}

// changes lists what differs between two versions of an object, one
// "key: old → new" per changed key.
func changes(before, after any) []string {
	lines := func(v any) map[string]string {
		out := map[string]string{}
		m, ok := v.(map[string]any)
		if !ok {
			return out
		}
		for _, l := range strings.Split(strings.TrimSpace(describeObject(m)), "\n") {
			if k, val, ok := strings.Cut(l, ": "); ok {
				out[k] = val
			}
		}
		return out
	}
	b, a := lines(before), lines(after)
	keys := map[string]bool{}
	for k := range b {
		keys[k] = true
	}
	for k := range a {
		keys[k] = true
	}
	var sorted []string
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	var out []string
	for _, k := range sorted {
		switch {
		case before == nil:
			out = append(out, k+": "+a[k])
		case after == nil:
			// A deletion: the object's last form.
			out = append(out, k+": "+b[k])
		case a[k] != b[k]:
			from, to := b[k], a[k]
			if from == "" {
				from = "(default)"
			}
			if to == "" {
				to = "(default)"
			}
			out = append(out, k+": "+from+" → "+to)
		}
	}
	return out
}
