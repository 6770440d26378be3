package web

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// loginLimiter counts failed authentications per client. A client with
// Failures failures inside the Window that began at its first failure is
// refused until that window ends; a success clears its count.
//
// The table is bounded: when it is full of live entries, new clients share
// one overflow entry, so a flood of addresses neither grows memory nor
// buys unlimited guesses (it only makes those clients limit each other).
type loginLimiter struct {
	limit LoginLimit
	now   func() time.Time

	mu       sync.Mutex
	entries  map[string]*failures
	capacity int
}

type failures struct {
	n     int
	start time.Time
}

const (
	limiterCapacity = 10000
	overflowKey     = "overflow"
)

func newLoginLimiter(limit LoginLimit, now func() time.Time) *loginLimiter {
	return &loginLimiter{limit: limit, now: now, entries: map[string]*failures{}, capacity: limiterCapacity}
}

// retryAfter is how long key must wait, 0 if it may try now.
func (l *loginLimiter) retryAfter(key string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.lookup(key)
	if f == nil || f.n < l.limit.Failures {
		return 0
	}
	return f.start.Add(l.limit.Window).Sub(l.now())
}

// lookup returns key's live entry (or the overflow entry it shares), or
// nil. Expired entries are dropped on the way.
func (l *loginLimiter) lookup(key string) *failures {
	for _, k := range []string{key, overflowKey} {
		if f, ok := l.entries[k]; ok {
			if l.now().Sub(f.start) >= l.limit.Window {
				delete(l.entries, k)
				continue
			}
			return f
		}
	}
	return nil
}

func (l *loginLimiter) fail(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f := l.lookup(key); f != nil {
		f.n++
		return
	}
	if len(l.entries) >= l.capacity {
		l.prune()
	}
	if len(l.entries) >= l.capacity {
		key = overflowKey
	}
	l.entries[key] = &failures{n: 1, start: l.now()}
}

func (l *loginLimiter) succeed(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.entries, key)
}

// prune drops every expired entry.
func (l *loginLimiter) prune() {
	now := l.now()
	for k, f := range l.entries {
		if now.Sub(f.start) >= l.limit.Window {
			delete(l.entries, k)
		}
	}
}

// clientKey is the limiter key of a remote address: the IP, or its /64 for
// IPv6. It trusts no forwarding header: the console is reached directly.
func clientKey(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}
