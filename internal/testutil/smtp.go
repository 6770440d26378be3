package testutil

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/textproto"
	"sort"
	"strings"
	"time"
)

func digestOf(msgs [][]byte) Digest {
	seen := map[string]bool{}
	var hexes []string
	for _, m := range msgs {
		h := sha256.Sum256(m)
		s := hex.EncodeToString(h[:])
		if !seen[s] {
			seen[s] = true
			hexes = append(hexes, s)
		}
	}
	sort.Strings(hexes)
	sum := sha256.New()
	for _, h := range hexes {
		sum.Write([]byte(h + "\n"))
	}
	return Digest{Count: len(hexes), SHA256: hex.EncodeToString(sum.Sum(nil))}
}

// HashOf is a message's id.
func HashOf(msg []byte) string {
	h := sha256.Sum256(msg)
	return hex.EncodeToString(h[:])
}

// Client is a raw SMTP client that shows every reply exactly, for tests
// that assert codes and texts.
type Client struct {
	Conn net.Conn
	R    *textproto.Reader
	W    *bufio.Writer
	ehlo bool
}

// Reply is one SMTP reply (all lines joined by "\n").
type Reply struct {
	Code int
	Text string
}

func (r Reply) String() string { return fmt.Sprintf("%d %s", r.Code, r.Text) }

// Dial connects (from local, if not empty) and returns the client with the
// greeting read.
func Dial(addr, local string) (*Client, Reply, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, Reply{}, err
	}
	cl := &Client{Conn: c, R: textproto.NewReader(bufio.NewReader(c)), W: bufio.NewWriter(c)}
	cl.Conn.SetDeadline(time.Now().Add(30 * time.Second))
	r, err := cl.Read()
	return cl, r, err
}

// Read reads one (possibly multi-line) reply.
func (c *Client) Read() (Reply, error) {
	code, msg, err := c.R.ReadResponse(0)
	if err != nil && code == 0 {
		return Reply{}, err
	}
	return Reply{Code: code, Text: msg}, nil
}

// Cmd sends one command line and reads its reply.
func (c *Client) Cmd(format string, args ...any) (Reply, error) {
	if _, err := fmt.Fprintf(c.W, format+"\r\n", args...); err != nil {
		return Reply{}, err
	}
	if err := c.W.Flush(); err != nil {
		return Reply{}, err
	}
	return c.Read()
}

// Raw writes bytes as they are.
func (c *Client) Raw(b []byte) error {
	if _, err := c.W.Write(b); err != nil {
		return err
	}
	return c.W.Flush()
}

// Close ends the connection without QUIT.
func (c *Client) Close() error { return c.Conn.Close() }

// Send runs one whole transaction (EHLO, MAIL, RCPT…, DATA) and returns the
// reply to the end of DATA, or the first failing reply. msg must use CRLF;
// it is dot-stuffed here.
func Send(addr, from string, to []string, msg []byte) (Reply, error) {
	c, r, err := Dial(addr, "")
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	if r.Code != 220 {
		return r, nil
	}
	r, err = c.SendOn(from, to, msg)
	c.Cmd("QUIT")
	return r, err
}

// SendOn runs a transaction on an open session.
func (c *Client) SendOn(from string, to []string, msg []byte) (Reply, error) {
	steps := []string{"EHLO test.example", "MAIL FROM:<" + from + ">"}
	for _, t := range to {
		steps = append(steps, "RCPT TO:<"+t+">")
	}
	for _, s := range steps {
		if strings.HasPrefix(s, "EHLO") {
			// EHLO only once per session.
			if c.ehlo {
				continue
			}
			c.ehlo = true
		}
		r, err := c.Cmd("%s", s)
		if err != nil || r.Code/100 != 2 {
			return r, err
		}
	}
	r, err := c.Cmd("DATA")
	if err != nil || r.Code != 354 {
		return r, err
	}
	if err := c.Raw(DotStuff(msg)); err != nil {
		return Reply{}, err
	}
	if err := c.Raw([]byte(".\r\n")); err != nil {
		return Reply{}, err
	}
	return c.Read()
}

// DotStuff applies RFC 5321 §4.5.2 transparency and ends msg with CRLF.
func DotStuff(msg []byte) []byte {
	s := string(msg)
	if strings.HasPrefix(s, ".") {
		s = "." + s
	}
	s = strings.ReplaceAll(s, "\r\n.", "\r\n..")
	if !strings.HasSuffix(s, "\r\n") {
		s += "\r\n"
	}
	return []byte(s)
}
