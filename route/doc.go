// Package route decides what happens to each received message and does it
// in one durable step.
//
// A route names the listeners it takes from and its actions: archive, and
// forward:<connection>. Every enabled route whose from names the message's
// listener applies; their actions are united. Deliver runs them in ONE
// group-committed write transaction (store.DB.Update): the message is
// archived (or merged into its existing record) and queued for every
// connection it must go to, and only after that transaction is durable does
// Deliver return, so the listener's 250 means "archived and queued".
// Forwarding always archives: a queue entry is a reference to archived
// bytes, never a second copy.
//
// Loop detection (DESIGN.md): a trace longer than max_hops is refused; a
// message whose trace names this node is archived if missing and never
// forwarded; no copy goes to a connection whose peer node is already in the
// trace. A message already archived is only queued again when it brought
// recipients the archive did not have, so replays and catch-up never fan
// out again.
//
// The route package sees the archive and the queues through the narrow
// interfaces it declares (Committer, Archiver, Enqueuer, Peers).
package route
