// Package forwarder drains each connection's queue into its peer over SMTP.
//
// Every connection runs one loop that owns its state:
//
//	paused       an operator paused it: nothing is sent, nothing probed
//	down         the peer cannot be reached (or greets as this node): the
//	             loop probes it every probe_interval
//	catching-up  the peer answers and a backlog is being sent
//	up           the peer answers and nothing is due or in flight: the
//	             queue is empty, or holds only entries deferred to a
//	             later retry
//
// While up, `concurrency` workers each keep one SMTP session open and send
// many messages on it, each with one X-Chainmail-Trace field per hop in
// front of the archived bytes. An entry leaves the queue only after the
// peer's 250: the workers hand each 250 to the connection's acker, which
// removes the accepted entries in batches (queue.Ack), one transaction per
// batch and at most one every 100 ms, so that a session goes on to its next
// message without waiting for a commit and fsync of its own; an entry stays
// in flight, and is not handed out again, until its ack is committed. A
// reply to the message itself (4xx or 5xx) is a failed attempt with
// backoff, and with a positive max_retries the last one moves it to the
// dead-letter list; a peer that cannot be reached, drops the session or
// keeps deferring everything takes the whole connection down instead, which
// costs no attempts: a peer outage never dead-letters mail.
// The moment a probe succeeds the workers resume at full parallelism.
//
// Delivery is idempotent per (message, connection): a crash after the
// peer's 250 and before the ack resends the message, and the peer's archive
// deduplicates it.
package forwarder
