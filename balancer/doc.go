// Package balancer is chainmail's front tier, `chainmail balance`: a TCP
// proxy for SMTP that spreads sessions over pools of servers (chainmail
// nodes, or any MTA) and fails over without the client ever seeing a dead
// server.
//
// # Responsibility
//
// Frontends listen and hand each client session to their pool. A pool
// chooses a server (smooth weighted round robin as nginx, weighted least
// connections, consistent ip-hash, or the power of two random choices),
// honouring each server's administrative state (ready, drain, maint),
// weight, backup and down flags, max_conns and slow start. Passive health
// (nginx's max_fails/fail_timeout) and active checks (tcp or a polite smtp
// dialogue, with HAProxy's rise/fall) decide which servers are eligible.
// The admin endpoint serves /healthz, /metrics and the JSON API that changes
// a server's state and weight at runtime.
//
// # Invariants
//
//   - The package imports none of the node packages (listener, route,
//     archive, queue, forwarder, web); only chainmail/internal/config.
//   - A session is bound to a server only after that server's 220
//     greeting. Until then the balancer reads nothing from the client, so a
//     refused connect, a timeout or a 4xx/5xx greeting moves the session to
//     the next eligible server (each server at most once per session) with
//     no byte lost. When none is left the client gets "421 4.3.2" and the
//     session is logged.
//   - The PROXY protocol header (v1 or v2) is written right after connect,
//     before the greeting is awaited.
//   - On Linux engines (engine_linux.go) serve the sessions: event loops,
//     one per two GOMAXPROCS, each on a locked OS thread, each accepting on
//     every frontend, connecting, reading greetings and relaying, on
//     sockets Go's poller never sees. Commands and replies move
//     by recv and send; once a read fills the buffer, the rest of that
//     direction goes by splice(2) through a pipe, without entering user
//     space. A session that must wait for a slot (max_conns), connect to a
//     host name, or be refused is handed to the goroutine path, as every
//     session is outside Linux: a goroutine per session, relaying by io.Copy
//     (splice(2) on Linux).
//     Nothing may wrap the connections there: byte counters are updated
//     when a session ends, and the idle timeout asks the kernel (TCP_INFO)
//     when data last arrived.
//   - Backup servers take sessions only while no primary is eligible.
//   - Every goroutine has an owner: accept loops, checkers and the admin
//     server are counted in Balancer.loops, sessions (on the engine or not)
//     in Balancer.sessions; Run returns only after all of them have ended,
//     and the engine after them.
//   - The engine's state belongs to its loop; other goroutines reach it only
//     through engine.do. It never holds a lock while it waits.
//   - Lock order: Balancer.mu before pool.mu, never the reverse. pool.mu
//     guards the pool's servers and their runtime fields; counters are
//     atomics.
//   - No package-level mutable state: logger, clock and dialer come in
//     Options. The clock drives health decisions (passive marks, slow start,
//     check schedule); network timeouts are socket deadlines.
//   - A reload keeps every server's runtime state (state, health, passive
//     record, counters, established sessions) when its name and address are
//     unchanged; a weight changed in the file replaces one set at runtime.
//
// # Logs
//
// logrus, constant messages, component=balancer: one "session" line per
// client session (frontend, pool, server, client, tries, bytes_in,
// bytes_out, duration, result), "server try failed" per failed try, and
// "server down" / "server up" / "server marked unavailable" /
// "server available again" / "server changed" on state changes.
package balancer
