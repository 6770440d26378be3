package ui

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"html/template"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed static layout.html
var files embed.FS

// Page is what the layout needs of every page; Data is the page's own.
type Page struct {
	Title   string // the page's name, first in <title> and its <h1>
	Product string // "chainmail node a", "chainmail balancer"
	Nav     []NavItem
	User    string // "" before login
	Role    string
	// CSRF is the session's token, for the logout form and every other
	// form of the page.
	CSRF string
	// Flash is a one-time notice from the previous request (a change
	// saved); FlashError marks it as a failure.
	Flash      string
	FlashError bool
	// Live marks a page whose [data-live] regions the script refreshes.
	Live bool
	Data any
}

// NavItem is one entry of the top navigation.
type NavItem struct {
	Href, Label string
	Current     bool
}

// assetVersion is a short hash of every embedded asset: asset URLs carry
// it, so a browser caches them for long and still never runs a stale
// script after an upgrade.
var assetVersion = func() string {
	h := sha256.New()
	fs.WalkDir(files, "static", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := files.ReadFile(p)
			h.Write([]byte(p))
			h.Write(b)
		}
		return nil
	})
	return hex.EncodeToString(h.Sum(nil))[:12]
}()

// Funcs are the template functions the layout and pages may use.
func Funcs() template.FuncMap {
	return template.FuncMap{
		"asset": func(name string) string { return "/static/" + name + "?v=" + assetVersion },
		"bytes": HumanBytes,
		"since": func(t time.Time) string { return HumanDuration(time.Since(t)) },
		"seconds": func(s float64) string {
			return HumanDuration(time.Duration(s * float64(time.Second)))
		},
		"time": func(t time.Time) string {
			if t.IsZero() {
				return "—"
			}
			return t.UTC().Format("2006-01-02 15:04:05Z")
		},
		"join": strings.Join,
	}
}

// Layout parses the shared layout with pages, the page templates of one
// console (each defines "content"), and the console's own template
// functions (may be nil); every page is executed as "layout".
func Layout(pages fs.FS, funcs template.FuncMap, patterns ...string) (map[string]*template.Template, error) {
	base, err := template.New("layout.html").Funcs(Funcs()).Funcs(funcs).ParseFS(files, "layout.html")
	if err != nil {
		return nil, fmt.Errorf("ui: layout: %w", err)
	}
	out := map[string]*template.Template{}
	for _, pat := range patterns {
		names, err := fs.Glob(pages, pat)
		if err != nil {
			return nil, err
		}
		for _, name := range names {
			if strings.HasPrefix(path.Base(name), "_") {
				continue // partials, parsed into every page below
			}
			t, err := base.Clone()
			if err != nil {
				return nil, err
			}
			partials, _ := fs.Glob(pages, path.Join(path.Dir(name), "_*.html"))
			if _, err := t.ParseFS(pages, append(partials, name)...); err != nil {
				return nil, fmt.Errorf("ui: page %s: %w", name, err)
			}
			out[strings.TrimSuffix(path.Base(name), ".html")] = t
		}
	}
	return out, nil
}

// Static serves the embedded assets under /static/. A request with the
// current version may be cached for a year; anything else is revalidated.
func Static() http.Handler {
	sub, _ := fs.Sub(files, "static")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, "/static/")
		b, err := fs.ReadFile(sub, name)
		if err != nil || name == "" || strings.Contains(name, "..") {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		ct := mime.TypeByExtension(path.Ext(name))
		if ct == "" {
			ct = "application/octet-stream"
		}
		h.Set("Content-Type", ct)
		h.Set("X-Content-Type-Options", "nosniff")
		if r.URL.Query().Get("v") == assetVersion {
			h.Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			h.Set("Cache-Control", "no-cache")
		}
		h.Set("ETag", `"`+assetVersion+`"`)
		if r.Header.Get("If-None-Match") == `"`+assetVersion+`"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		if r.Method == http.MethodHead {
			return
		}
		w.Write(b)
	})
}

// CSP is the Content-Security-Policy of every console page: scripts and
// styles only from the console's own files (no inline code, so an injected
// tag cannot run), forms only back to the console, never framed.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// HTMLHeaders sets the security headers of a console page.
func HTMLHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", CSP)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()")
	h.Set("Cache-Control", "no-store")
}

// HumanBytes is a size in B, KiB, MiB, GiB or TiB with one decimal.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 3; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGT"[exp])
}

// HumanDuration is a short duration: "45s", "12m", "3h 5m", "2d 4h".
func HumanDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm %ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh %dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd %dh", int(d.Hours())/24, int(d.Hours())%24)
}
