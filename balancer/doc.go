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
//   - After the greeting, bytes move between the two raw *net.TCPConn by
//     pump: commands and replies by recv and send, the bulk of a large
//     message by splice(2) without entering user space. Nothing may wrap
//     the connections on that path. Byte counters are therefore updated
//     when a session ends, and the idle timeout asks the kernel (TCP_INFO)
//     when data last arrived.
//   - Backup servers take sessions only while no primary is eligible.
//   - Every goroutine has an owner: accept loops, checkers and the admin
//     server are counted in Balancer.loops, sessions in Balancer.sessions;
//     Run returns only after all of them have ended.
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
