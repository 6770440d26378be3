package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"chainmail/internal/testutil"
)

const (
	authUser     = "journal"
	authPassword = "correct horse battery staple"
)

// tlsNode starts a node whose listener has a fresh self-signed certificate
// and one bcrypt user; listenerExtra adds to the listener's tls and auth
// maps.
func tlsNode(t *testing.T, tlsExtra, authExtra string) (n *testutil.Node, addr string, pool *x509.CertPool) {
	t.Helper()
	dir := t.TempDir()
	cert, key, pool := testutil.SelfSignedCert(t, dir)
	hash, err := bcrypt.GenerateFromPassword([]byte(authPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	cfg, addr := nodeConfig(t, fmt.Sprintf(
		"    tls: {cert: %q, key: %q%s}\n    auth: {users: [{name: %s, password_hash: %q}]%s}\n",
		cert, key, tlsExtra, authUser, hash, authExtra))
	return testutil.StartNode(t, cfg), addr, pool
}

// capabilities are the EHLO keywords (the lines after the greeting line).
func capabilities(t *testing.T, c *testutil.Client) []string {
	t.Helper()
	return strings.Split(ehlo(t, c), "\n")[1:]
}

func hasCap(caps []string, prefix string) bool {
	return slices.ContainsFunc(caps, func(c string) bool { return strings.HasPrefix(c, prefix) })
}

func startTLS(t *testing.T, c *testutil.Client, pool *x509.CertPool) tls.ConnectionState {
	t.Helper()
	r, err := c.StartTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})
	expect(t, r, err, "220 2.0.0 Ready to start TLS")
	st, _ := c.TLSState()
	return st
}

func authPlain(t *testing.T, c *testutil.Client, user, pass, want string) {
	t.Helper()
	cmd(t, c, want, "AUTH PLAIN %s", base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass)))
}

func authLogin(t *testing.T, c *testutil.Client, user, pass, want string) {
	t.Helper()
	cmd(t, c, "334 VXNlcm5hbWU6", "AUTH LOGIN") // "Username:"
	cmd(t, c, "334 UGFzc3dvcmQ6", "%s", base64.StdEncoding.EncodeToString([]byte(user)))
	cmd(t, c, want, "%s", base64.StdEncoding.EncodeToString([]byte(pass)))
}

// deliver runs MAIL, RCPT and DATA on an open (greeted) session.
func deliver(t *testing.T, c *testutil.Client, msg []byte) {
	t.Helper()
	cmd(t, c, "250 2.0.0 Roger, accepting mail from <s@example.com>", "MAIL FROM:<s@example.com>")
	cmd(t, c, "250 2.0.0 I'll make sure <r@example.org> gets this", "RCPT TO:<r@example.org>")
	cmd(t, c, "354 Go ahead. End your data with <CR><LF>.<CR><LF>", "DATA")
	c.Raw(append(testutil.DotStuff(msg), ".\r\n"...))
	r, err := c.Read()
	expect(t, r, err, archived(msg))
}

// receipt is the part of a message's metadata that says how it came in.
type receipt struct {
	TLS      string `json:"tls"`
	AuthUser string `json:"auth_user"`
	Helo     string `json:"helo"`
	Listener string `json:"listener"`
}

func receiptOf(t *testing.T, n *testutil.Node, msg []byte) receipt {
	t.Helper()
	var meta struct {
		Receipt receipt `json:"receipt"`
	}
	if s := n.Get("/api/v1/archive/messages/"+testutil.HashOf(msg), &meta); s != 200 {
		t.Fatalf("GET metadata: HTTP %d", s)
	}
	return meta.Receipt
}

func tlsText(st tls.ConnectionState) string {
	return tls.VersionName(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite)
}

// TestTLSRequiredAndAuthRequired: a listener with tls.require and
// auth.required takes mail only over STARTTLS from a logged-in user, offers
// AUTH only after TLS, and records both in the message's metadata.
func TestTLSRequiredAndAuthRequired(t *testing.T) {
	t.Parallel()
	n, addr, pool := tlsNode(t, ", require: true", ", required: true")

	t.Run("before STARTTLS", func(t *testing.T) {
		c := dial(t, addr, "")
		caps := capabilities(t, c)
		if !hasCap(caps, "STARTTLS") || hasCap(caps, "AUTH") {
			t.Fatalf("before TLS: want STARTTLS offered and AUTH not: %q", caps)
		}
		cmd(t, c, "530 5.7.0 Must issue a STARTTLS command first", "MAIL FROM:<s@example.com>")
		authPlain(t, c, authUser, authPassword, "523 5.7.10 TLS is required")
		cmd(t, c, "221 2.0.0 Bye", "QUIT")
	})
	t.Run("after STARTTLS, without AUTH", func(t *testing.T) {
		c := dial(t, addr, "")
		ehlo(t, c)
		startTLS(t, c, pool)
		caps := capabilities(t, c)
		if hasCap(caps, "STARTTLS") || !slices.Contains(caps, "AUTH PLAIN LOGIN") {
			t.Fatalf("after TLS: want AUTH PLAIN LOGIN and no STARTTLS: %q", caps)
		}
		cmd(t, c, "530 5.7.0 Authentication required", "MAIL FROM:<s@example.com>")
	})
	t.Run("bad passwords", func(t *testing.T) {
		c := dial(t, addr, "")
		ehlo(t, c)
		startTLS(t, c, pool)
		ehlo(t, c)
		authPlain(t, c, authUser, "wrong", "535 5.7.8 Authentication failed")
		authLogin(t, c, "nobody", authPassword, "535 5.7.8 Authentication failed")
		cmd(t, c, "530 5.7.0 Authentication required", "MAIL FROM:<s@example.com>")
		// The third failure on a connection is its last.
		authPlain(t, c, "", "", "421 4.7.0 Too many failed authentication attempts, closing connection")
		if err := c.WaitClosed(5 * time.Second); err != nil {
			t.Fatalf("after the third failed AUTH: %v", err)
		}
		// The count is per connection: a new one starts again.
		c = dial(t, addr, "")
		ehlo(t, c)
		startTLS(t, c, pool)
		ehlo(t, c)
		authLogin(t, c, authUser, "wrong", "535 5.7.8 Authentication failed")
		authPlain(t, c, authUser, authPassword, "235 2.0.0 Authentication succeeded")
	})
	for _, mech := range []string{"PLAIN", "LOGIN"} {
		t.Run("AUTH "+mech, func(t *testing.T) {
			c := dial(t, addr, "")
			ehlo(t, c)
			st := startTLS(t, c, pool)
			ehlo(t, c)
			if mech == "PLAIN" {
				authPlain(t, c, authUser, authPassword, "235 2.0.0 Authentication succeeded")
			} else {
				authLogin(t, c, authUser, authPassword, "235 2.0.0 Authentication succeeded")
			}
			msg := textMessage("over TLS with AUTH "+mech, "tls-"+mech+"@example.com", 3)
			deliver(t, c, msg)
			got := receiptOf(t, n, msg)
			if want := (receipt{TLS: tlsText(st), AuthUser: authUser, Helo: "client.example", Listener: "journal"}); got != want {
				t.Fatalf("receipt %+v, want %+v", got, want)
			}
		})
	}
}

// TestTLSOptionalAuthInsecure: with tls not required and auth
// allow_insecure, AUTH is offered before TLS and mail is taken without
// either; the metadata says what was (not) used.
func TestTLSOptionalAuthInsecure(t *testing.T) {
	t.Parallel()
	n, addr, _ := tlsNode(t, "", ", allow_insecure: true")

	c := dial(t, addr, "")
	caps := capabilities(t, c)
	if !hasCap(caps, "STARTTLS") || !slices.Contains(caps, "AUTH PLAIN LOGIN") {
		t.Fatalf("allow_insecure: want STARTTLS and AUTH PLAIN LOGIN before TLS: %q", caps)
	}
	anon := textMessage("plain, anonymous", "anon@example.com", 3)
	deliver(t, c, anon)
	authPlain(t, c, authUser, "wrong", "535 5.7.8 Authentication failed")
	authLogin(t, c, authUser, authPassword, "235 2.0.0 Authentication succeeded")
	authed := textMessage("plain, authenticated", "authed@example.com", 3)
	deliver(t, c, authed)

	if got := receiptOf(t, n, anon); got.TLS != "" || got.AuthUser != "" {
		t.Fatalf("anonymous plain-text receipt %+v", got)
	}
	if got := receiptOf(t, n, authed); got.TLS != "" || got.AuthUser != authUser {
		t.Fatalf("authenticated plain-text receipt %+v", got)
	}
}
