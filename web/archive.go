package web

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/sirupsen/logrus"

	"chainmail/archive"
	"chainmail/internal/envelope"
)

// The archive operations. Each takes plain values and returns plain values
// or an *Error, so the JSON handlers below and the console's HTML pages
// (issue 6) share one implementation.

// searchArchive runs a search given as query parameters (see ParseQuery).
func (s *Server) searchArchive(ctx context.Context, params url.Values) (archive.Page, error) {
	q, err := ParseQuery(params)
	if err != nil {
		return archive.Page{}, err
	}
	page, err := s.opts.Archive.Search(ctx, q)
	if errors.Is(err, archive.ErrBadCursor) {
		return archive.Page{}, badParam("cursor", "not a cursor from a previous page of this node")
	}
	if err != nil {
		return archive.Page{}, err
	}
	if page.Messages == nil {
		page.Messages = []archive.Summary{} // [] in JSON, not null
	}
	return page, nil
}

// message returns a message's metadata.
func (s *Server) message(ctx context.Context, id string) (*archive.Meta, error) {
	id, err := parseID(id)
	if err != nil {
		return nil, err
	}
	m, err := s.opts.Archive.Get(ctx, id)
	if errors.Is(err, archive.ErrNotFound) {
		return nil, &Error{Status: http.StatusNotFound, Param: "id", Msg: "no such message"}
	}
	return m, err
}

// openRaw opens a message's archived bytes; the caller closes them.
func (s *Server) openRaw(ctx context.Context, id string) (io.ReadCloser, int64, string, error) {
	id, err := parseID(id)
	if err != nil {
		return nil, 0, "", err
	}
	rc, size, err := s.opts.Archive.OpenRaw(ctx, id)
	if errors.Is(err, archive.ErrNotFound) {
		return nil, 0, "", &Error{Status: http.StatusNotFound, Param: "id", Msg: "no such message"}
	}
	return rc, size, id, err
}

// digest returns the archive digest of DESIGN.md.
func (s *Server) digest(ctx context.Context) (archive.Digest, error) {
	return s.opts.Archive.Digest(ctx)
}

// parseID accepts a message id (the SHA-256 in hex, either case) and
// returns it in the archive's lower-case form.
func parseID(id string) (string, error) {
	h, ok := envelope.ParseHash(id)
	if !ok {
		return "", badParam("id", "want a message id: 64 hexadecimal digits")
	}
	return h.String(), nil
}

// JSON views.

func (s *Server) handleSearch(w http.ResponseWriter, r *http.Request) {
	page, err := s.searchArchive(r.Context(), r.URL.Query())
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

func (s *Server) handleMessage(w http.ResponseWriter, r *http.Request) {
	m, err := s.message(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

func (s *Server) handleDigest(w http.ResponseWriter, r *http.Request) {
	d, err := s.digest(r.Context())
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// handleRaw streams the archived bytes without holding them in memory:
// the store reads them chunk by chunk and each chunk is written as it
// comes.
func (s *Server) handleRaw(w http.ResponseWriter, r *http.Request) {
	rc, size, id, err := s.openRaw(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	defer rc.Close()
	h := w.Header()
	h.Set("Content-Type", "message/rfc822")
	h.Set("Content-Length", strconv.FormatInt(size, 10))
	h.Set("Content-Disposition", `attachment; filename="`+id+`.eml"`)
	// The id is the SHA-256 of these bytes: a strong validator forever.
	h.Set("ETag", `"`+id+`"`)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	// Send the headers now: the client learns the size and starts its
	// progress display before the first chunk is read.
	ctl := http.NewResponseController(w)
	_ = ctl.Flush()
	buf := make([]byte, 32<<10)
	n, err := io.CopyBuffer(&progressWriter{w: w, rc: ctl}, rc, buf)
	if err != nil || n != size {
		// The status line is gone; the only honest signal left is to cut
		// the connection so the client sees a short body, not a clean end.
		if r.Context().Err() == nil {
			s.log.WithError(err).WithFields(logrus.Fields{
				"msg": id[:12], "written": n, "size": size,
			}).Error("web: message download failed")
		}
		panic(http.ErrAbortHandler)
	}
}

// downloadStall is how long one write of a download may block: the
// deadline moves with every chunk, so a slow client can fetch a large
// message while a stalled one is cut.
const downloadStall = time.Minute

// progressWriter extends the connection's write deadline before each
// write. Writers that cannot set deadlines (httptest's recorder) are fine.
type progressWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (p *progressWriter) Write(b []byte) (int, error) {
	_ = p.rc.SetWriteDeadline(time.Now().Add(downloadStall))
	return p.w.Write(b)
}
