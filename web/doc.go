// Package web is a node's HTTP face: the JSON API of DESIGN.md, /healthz,
// /metrics, and the HTML console (console*.go, templates/, docs/console.md)
// as a second view over the same code.
//
// # Shape
//
// Every API endpoint is split in two: an operation that takes plain values
// and returns plain values or an *Error (node, health, searchArchive,
// message, openRaw, digest), and a thin JSON view that decodes the request,
// calls the operation and encodes the result. The console's HTML handlers
// call the same operations and render a template instead, so the rules
// (validation, limits, roles) live once.
//
// # Auth
//
// Everything under /api/ is authenticated before routing, so no endpoint
// can be added without it and an anonymous caller learns nothing about
// which paths exist: a bearer token (compared in constant time against
// web.api_tokens, role admin, and web.read_only_tokens, role read-only) or
// HTTP Basic with a console account (Users, bcrypt hashes in the node's
// bbolt file). GET and HEAD need any role; every other method needs admin,
// but an account may set its own password (accessOwn).
// Failed attempts are counted per client IP and an IP over the limit gets
// 429 without its credentials being checked, so guessing costs time.
// /healthz is open (load balancers and orchestrators probe it); /metrics is
// open unless web.metrics_auth is set.
//
// # Users bucket (in the node's bbolt file)
//
//	users/<name> → JSON {"hash": bcrypt, "role": "admin"|"read-only",
//	                     "created": RFC 3339, "changed": RFC 3339}
//
// Only bcrypt hashes are stored. EnsureAdmin creates "admin" with a random
// password when there is no account at all (the first start), and returns
// the password so that cmd can print it exactly once. Create, Delete and
// SetPassword (/api/v1/users and the console's Accounts page) record each
// change in liveconfig's audit bucket in the same transaction
// (liveconfig.Record, kind "users"; never a hash). The last account with
// the admin role cannot be deleted: Delete counts them in its transaction.
// A change of credentials empties the Basic-auth cache and ends the
// account's console sessions.
//
// Names are 1–64 of [a-z0-9._@-], starting with a letter or digit;
// passwords are 12–72 bytes (bcrypt reads at most 72).
//
// # Console
//
// The pages sit beside the API on the same mux, outside /api/. A console
// login (an account of Users, the API's failed-login limiter) starts a
// session held in memory (internal/ui: random id in an HttpOnly,
// SameSite=Strict cookie, Secure over TLS; a restart logs everybody out);
// the session's user is the Principal of every operation, so the audit log
// and the read-only rules see the console as they see the API. Every POST
// needs the session's CSRF token and the admin role — except an account's
// change of its own password, which any role may make (byRoleOrOwn, the
// same rule as the API route's). The traffic chart
// samples the node's counters from the registry, in a goroutine that Serve
// owns.
//
// # Lifecycle
//
// New builds a Server from Options (no package-level state; the metrics go
// into the registry cmd passes). Run listens, serves, and when its context
// ends shuts down gracefully within Options.ShutdownTimeout, then closes
// what is left.
package web
