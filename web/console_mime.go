package web

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/textproto"
	"strings"
)

// The MIME structure of a message for the console's message page: each
// part's type, file name, disposition and decoded size, nested parts and
// attached messages (a journal report's original) included. It streams the
// message once and keeps no content; it never fails, but notes what it
// could not read.

// Bounds of one listing: a message can be 64 MiB and crafted.
const (
	mimeMaxParts = 200
	mimeMaxDepth = 8
	mimeMaxRead  = 32 << 20
	// mimeMaxHeader bounds one header block; a longer one ends the listing.
	mimeMaxHeader = 256 << 10
)

// mimePart is one node of the structure.
type mimePart struct {
	ContentType string
	Charset     string
	Filename    string
	Disposition string
	Encoding    string
	Size        int64 // decoded bytes of a leaf; 0 for a container
	Parts       []*mimePart
	Note        string // what could not be read
}

type mimeWalk struct {
	parts int
	read  *countingReader
}

type countingReader struct {
	r   io.Reader
	n   int64
	max int64
}

var errMIMEBound = errors.New("listing stopped at 32 MiB")

func (c *countingReader) Read(p []byte) (int, error) {
	if c.n >= c.max {
		return 0, errMIMEBound
	}
	if int64(len(p)) > c.max-c.n {
		p = p[:c.max-c.n]
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// listParts reads a whole message (headers and body) from r.
func listParts(r io.Reader) *mimePart {
	w := &mimeWalk{read: &countingReader{r: r, max: mimeMaxRead}}
	br := bufio.NewReader(w.read)
	h, err := readHeader(br)
	if err != nil {
		return &mimePart{ContentType: "message/rfc822", Note: "header not readable: " + err.Error()}
	}
	return w.entity(h, br, 0)
}

// readHeader reads one header block, bounded by mimeMaxHeader.
func readHeader(br *bufio.Reader) (textproto.MIMEHeader, error) {
	lr := &io.LimitedReader{R: br, N: mimeMaxHeader}
	// The block is copied out first, so a header that never ends costs
	// at most the bound.
	tr := textproto.NewReader(bufio.NewReader(headerUntilBlank(br, lr)))
	h, err := tr.ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		return h, err
	}
	return h, nil
}

// headerUntilBlank copies from br up to and including the first empty
// line (the end of a header block), or until lr is exhausted.
func headerUntilBlank(br *bufio.Reader, lr *io.LimitedReader) io.Reader {
	var buf strings.Builder
	for lr.N > 0 {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if int64(len(line)) > lr.N {
				line = line[:lr.N]
			}
			lr.N -= int64(len(line))
			buf.Write(line)
			if t := strings.TrimRight(string(line), "\r\n"); t == "" && strings.HasSuffix(string(line), "\n") {
				break
			}
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			break
		}
	}
	s := buf.String()
	if !strings.HasSuffix(s, "\n\n") && !strings.HasSuffix(s, "\r\n\r\n") && s != "\r\n" && s != "\n" {
		s += "\r\n" // a message without a body, or a cut header block
	}
	return strings.NewReader(s)
}

// entity describes one entity with header h and body b.
func (w *mimeWalk) entity(h textproto.MIMEHeader, b io.Reader, depth int) *mimePart {
	w.parts++
	p := &mimePart{ContentType: "text/plain", Charset: "us-ascii"}
	ct := h.Get("Content-Type")
	params := map[string]string{}
	if ct != "" {
		mt, ps, err := mime.ParseMediaType(ct)
		if err != nil {
			p.Note = "malformed Content-Type: " + clipText(ct, 80)
			mt, _, _ = strings.Cut(strings.ToLower(strings.TrimSpace(ct)), ";")
		}
		p.ContentType, params, p.Charset = mt, ps, ""
		if ps != nil {
			p.Charset = ps["charset"]
		}
	}
	p.Encoding = strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding")))
	if d := h.Get("Content-Disposition"); d != "" {
		disp, dp, err := mime.ParseMediaType(d)
		if err == nil {
			p.Disposition = disp
			p.Filename = decodeWord(dp["filename"])
		} else {
			p.Disposition = clipText(d, 40)
		}
	}
	if p.Filename == "" && params != nil {
		p.Filename = decodeWord(params["name"])
	}

	switch {
	case strings.HasPrefix(p.ContentType, "multipart/") && params["boundary"] != "":
		if depth >= mimeMaxDepth {
			p.Note = "nested too deep to list"
			io.Copy(io.Discard, b)
			return p
		}
		mr := multipart.NewReader(b, params["boundary"])
		for {
			if w.parts >= mimeMaxParts {
				p.Note = fmt.Sprintf("more than %d parts; the rest is not listed", mimeMaxParts)
				io.Copy(io.Discard, b)
				break
			}
			part, err := mr.NextRawPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				p.Note = noteOf(err, "parts not readable")
				break
			}
			p.Parts = append(p.Parts, w.entity(part.Header, part, depth+1))
		}
	case (p.ContentType == "message/rfc822" || p.ContentType == "message/global") && depth < mimeMaxDepth:
		br := bufio.NewReader(decoded(p.Encoding, b))
		inner, err := readHeader(br)
		if err != nil {
			p.Note = noteOf(err, "attached message not readable")
			io.Copy(io.Discard, b)
			return p
		}
		p.Parts = append(p.Parts, w.entity(inner, br, depth+1))
	default:
		n, err := io.Copy(io.Discard, decoded(p.Encoding, b))
		p.Size = n
		if err != nil {
			p.Note = noteOf(err, "content not decodable")
		}
	}
	return p
}

func noteOf(err error, what string) string {
	if errors.Is(err, errMIMEBound) {
		return errMIMEBound.Error()
	}
	return what + ": " + clipText(err.Error(), 80)
}

// decoded undoes a transfer encoding; unknown ones are counted as is.
func decoded(enc string, r io.Reader) io.Reader {
	switch enc {
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, &base64Cleaner{r: r})
	case "quoted-printable":
		return quotedprintable.NewReader(r)
	}
	return r
}

// base64Cleaner drops the line breaks and spaces that base64 bodies carry.
type base64Cleaner struct{ r io.Reader }

func (c *base64Cleaner) Read(p []byte) (int, error) {
	for {
		n, err := c.r.Read(p)
		j := 0
		for _, b := range p[:n] {
			if b != '\r' && b != '\n' && b != ' ' && b != '\t' {
				p[j] = b
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

func decodeWord(s string) string {
	if s == "" {
		return ""
	}
	if d, err := new(mime.WordDecoder).DecodeHeader(s); err == nil {
		s = d
	}
	return clipText(s, 200)
}

func clipText(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
