package testutil

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// Signal sends sig to the node's process.
func (n *Node) Signal(sig os.Signal) error { return n.cmd.Process.Signal(sig) }

// WaitExit waits up to d for the process to end and returns how it ended
// (nil: exit status 0). A process still running after d is killed, and the
// error says it did not exit in time.
func (n *Node) WaitExit(d time.Duration) error { return n.wait(d) }

// WaitClosed reads until the server closes the connection, for up to d. It
// returns an error if the server sends anything more, or keeps the
// connection open past d.
func (c *Client) WaitClosed(d time.Duration) error {
	c.Conn.SetReadDeadline(time.Now().Add(d))
	defer c.Conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	rest, err := io.ReadAll(c.R.R)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("connection still open after %s (read %q)", d, rest)
	case len(rest) > 0:
		return fmt.Errorf("server sent %q before closing", rest)
	}
	return nil // EOF or a reset: closed
}
