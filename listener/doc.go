// Package listener runs a node's SMTP servers (go-smtp backends): it
// accepts sessions, enforces every limit a client controls, reads DATA into
// a spool, and hands each message to the router, answering 250 only once
// the router says the message is durably archived and queued.
//
// Each listener has a gate in front of go-smtp's accept loop. The gate
// reads a PROXY header from trusted balancers (proxy_protocol_from), then
// applies the allow list (554 5.7.1), the caps on concurrent sessions per
// listener and per client IP (421 4.7.0), and shutdown (421 4.3.2), all
// before the greeting, so a refused client never reaches a session.
//
// reply.go holds the one function that turns internal errors into SMTP
// replies: go-smtp sends any error that is not a bare *smtp.SMTPError to the
// client as its text, so nothing else may return a raw error to go-smtp.
//
// Logs: one line per connection (at its end) and one per message outcome,
// with the fields component, listener, client, msg, size, code.
package listener
