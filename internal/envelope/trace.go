package envelope

import (
	"fmt"
	"strings"
	"time"
)

// TraceHeader is the field chainmail adds, one per hop, to forwarded copies.
const TraceHeader = "X-Chainmail-Trace"

// Hop is one X-Chainmail-Trace field:
//
//	X-Chainmail-Trace: node=<id>; hash=<sha256-hex>; received=<RFC 3339 time>
type Hop struct {
	Node     string    `json:"node"`
	Hash     Hash      `json:"hash"`
	Received time.Time `json:"received"`
}

// Value is the field's value as written on the wire.
func (h Hop) Value() string {
	return fmt.Sprintf("node=%s; hash=%s; received=%s", h.Node, h.Hash, h.Received.UTC().Format(time.RFC3339Nano))
}

// Field is the whole header field with its CRLF.
func (h Hop) Field() string { return TraceHeader + ": " + h.Value() + "\r\n" }

// ParseHop reads a trace field's value (unfolded or folded). Unknown
// parameters are ignored so later versions can add some.
func ParseHop(value string) (Hop, error) {
	var h Hop
	var haveNode, haveHash bool
	for _, part := range strings.Split(value, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "node":
			if v == "" || len(v) > 63 || strings.ContainsAny(v, " \t\r\n;") {
				return h, fmt.Errorf("trace: bad node %q", v)
			}
			h.Node, haveNode = v, true
		case "hash":
			hh, ok := ParseHash(v)
			if !ok {
				return h, fmt.Errorf("trace: bad hash %q", v)
			}
			h.Hash, haveHash = hh, true
		case "received":
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return h, fmt.Errorf("trace: bad received time %q", v)
			}
			h.Received = t
		}
	}
	if !haveNode || !haveHash {
		return h, fmt.Errorf("trace: node and hash are required in %q", value)
	}
	return h, nil
}

// Trace is the hops a message has passed, oldest first.
type Trace []Hop

// Has tells whether node is already on the message's path.
func (t Trace) Has(node string) bool {
	for _, h := range t {
		if h.Node == node {
			return true
		}
	}
	return false
}

// Origin is the node that first received the message from outside the
// chain, or "" for a message that has not been forwarded.
func (t Trace) Origin() string {
	if len(t) == 0 {
		return ""
	}
	return t[0].Node
}
