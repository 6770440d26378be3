// Package ui is what the node's console (package web) and the balancer's
// console page (package balancer) share: the page layout, the stylesheet
// and the script (embedded, no CDN), the in-memory login sessions with
// their CSRF tokens, and the security headers of an HTML answer.
//
// It is a leaf: it imports nothing of chainmail's, so the balancer may use
// it and still import none of the node's packages. One copy of the session
// and CSRF code serves both consoles, so a fix to either lands in both.
//
// # Sessions
//
// A session id is 32 random bytes (base64url) in an HttpOnly,
// SameSite=Strict cookie, Secure when the request came over TLS. The
// server keeps sessions in memory only, under the SHA-256 of the id: a
// restart logs everybody out, and nothing on disk or in a heap dump is a
// usable cookie. A session ends after Idle without a request, after
// Lifetime in any case, or at logout. Each session has its own CSRF token,
// which every form carries and every POST must return; the login form,
// which has no session yet, is protected by a double-submit cookie.
package ui
