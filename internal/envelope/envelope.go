package envelope

import (
	"encoding/hex"
	"fmt"
	"time"
)

// Hash is a message's identity: SHA-256 of its archived bytes.
type Hash [32]byte

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// Short is the prefix logs use to name a message.
func (h Hash) Short() string { return hex.EncodeToString(h[:6]) }

// ParseHash reads a lower- or upper-case hex SHA-256.
func ParseHash(s string) (Hash, bool) {
	var h Hash
	if len(s) != 64 {
		return h, false
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return h, false
	}
	return h, true
}

// Envelope is the SMTP envelope of one transaction.
type Envelope struct {
	MailFrom string   `json:"mail_from"`
	RcptTo   []string `json:"rcpt_to"`
}

// Receipt is what the receiving node knows about how a message arrived. It
// is metadata beside the bytes; no node writes it into the message.
type Receipt struct {
	Node       string    `json:"node"`
	Listener   string    `json:"listener"`
	ClientIP   string    `json:"client_ip"`
	ClientPort int       `json:"client_port"`
	ProxiedBy  string    `json:"proxied_by,omitempty"` // balancer address when a PROXY header gave the client
	Helo       string    `json:"helo"`
	TLS        string    `json:"tls,omitempty"` // "TLS1.3 TLS_AES_128_GCM_SHA256"; empty without TLS
	AuthUser   string    `json:"auth_user,omitempty"`
	Received   time.Time `json:"received"`
}

// MarshalText writes a hash as lower-case hex, in JSON and logs.
func (h Hash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText reads what MarshalText writes.
func (h *Hash) UnmarshalText(b []byte) error {
	v, ok := ParseHash(string(b))
	if !ok {
		return fmt.Errorf("envelope: bad hash %q", b)
	}
	*h = v
	return nil
}
