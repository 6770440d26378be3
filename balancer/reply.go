package balancer

import (
	"bufio"
	"errors"
	"fmt"
)

// RFC 5321 §4.5.3.1.5 limits a reply line to 512 octets; real servers stay
// far below. We accept up to replyLineMax so a verbose banner still passes,
// and at most replyLinesMax lines so a broken server cannot feed us forever.
const (
	replyLineMax  = 1000
	replyLinesMax = 64
	replyBufSize  = replyLineMax + 24
)

// reply is one SMTP reply as read from a server: its code, and its raw
// bytes (every line, line endings kept) so it can be relayed verbatim.
type reply struct {
	code int
	raw  []byte
}

var errReplyTooLong = errors.New("reply line too long")

// readReply reads one complete, possibly multi-line, SMTP reply
// (RFC 5321 §4.2.1): "250-first", "250-more", "250 last". Every line must
// carry the same three-digit code. A bare LF is accepted as a line end.
// r must have a buffer of at least replyBufSize bytes.
func readReply(r *bufio.Reader) (reply, error) {
	var rep reply
	for n := 0; ; n++ {
		if n == replyLinesMax {
			return reply{}, fmt.Errorf("reply longer than %d lines", replyLinesMax)
		}
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) || len(line) > replyLineMax {
			return reply{}, errReplyTooLong
		}
		if err != nil {
			return reply{}, err
		}
		code, last, err := parseReplyLine(line)
		if err != nil {
			return reply{}, err
		}
		if n == 0 {
			rep.code = code
		} else if code != rep.code {
			return reply{}, fmt.Errorf("reply code changed from %d to %d within one reply", rep.code, code)
		}
		rep.raw = append(rep.raw, line...)
		if last {
			return rep, nil
		}
	}
}

// parseReplyLine reads the code of one reply line (ending in LF) and
// whether it is the last line of its reply.
func parseReplyLine(line []byte) (code int, last bool, err error) {
	text := line[:len(line)-1]
	if len(text) > 0 && text[len(text)-1] == '\r' {
		text = text[:len(text)-1]
	}
	// RFC 5321 §4.2: the first digit is 2-5, the second 0-5.
	if len(text) < 3 || text[0] < '2' || text[0] > '5' || text[1] < '0' || text[1] > '5' || text[2] < '0' || text[2] > '9' {
		return 0, false, fmt.Errorf("malformed reply line %.40q", text)
	}
	code = int(text[0]-'0')*100 + int(text[1]-'0')*10 + int(text[2]-'0')
	switch {
	case len(text) == 3 || text[3] == ' ':
		return code, true, nil
	case text[3] == '-':
		return code, false, nil
	}
	return 0, false, fmt.Errorf("malformed reply line %.40q", text)
}
