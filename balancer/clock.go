package balancer

import "time"

// Clock is the time source of the balancer's health decisions: passive
// marks, slow start and the active check schedule. Network timeouts
// (connect, greeting, idle, queue, shutdown) are socket deadlines and use
// the real time.
type Clock interface {
	Now() time.Time
	// After sends the time on the returned channel once d has passed.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
