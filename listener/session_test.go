package listener

import (
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// deadlineConn records read deadlines.
type deadlineConn struct {
	net.Conn
	deadlines int
}

func (c *deadlineConn) SetReadDeadline(time.Time) error { c.deadlines++; return nil }

// scriptReader returns its reads in order, then blocks the test.
type scriptReader struct {
	t     *testing.T
	reads []struct {
		s   string
		err error
	}
}

func (r *scriptReader) Read(p []byte) (int, error) {
	if len(r.reads) == 0 {
		r.t.Fatal("read after the error: a stalled client would get another data_timeout")
	}
	next := r.reads[0]
	r.reads = r.reads[1:]
	return copy(p, next.s), next.err
}

// TestDeadlineReaderErrorIsFinal: after a read fails (the data_timeout
// passed), reading again returns the same error at once instead of
// renewing the deadline and waiting another data_timeout.
func TestDeadlineReaderErrorIsFinal(t *testing.T) {
	conn := &deadlineConn{}
	src := &scriptReader{t: t, reads: []struct {
		s   string
		err error
	}{{"Subject: x\r\n", nil}, {"half", os.ErrDeadlineExceeded}}}
	r := &deadlineReader{r: src, conn: conn, d: time.Minute}
	buf := make([]byte, 64)
	if n, err := r.Read(buf); n != 12 || err != nil {
		t.Fatalf("first read: %d %v", n, err)
	}
	if n, err := r.Read(buf); n != 4 || err != os.ErrDeadlineExceeded {
		t.Fatalf("second read: %d %v", n, err)
	}
	for range 3 {
		if n, err := r.Read(buf); n != 0 || err != os.ErrDeadlineExceeded {
			t.Fatalf("read after the timeout: %d %v", n, err)
		}
	}
	if conn.deadlines != 2 {
		t.Fatalf("%d deadlines set, want one per read that reached the connection (2)", conn.deadlines)
	}
	var _ io.Reader = r
}
