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
	// Who may not see Bcc recipients may not find a message by one.
	q.Restricted = !mayAudit(ctx)
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

// message returns a message's metadata, without the Bcc recipients and
// list expansions for callers who may not see them (archive.Restrict).
func (s *Server) message(ctx context.Context, id string) (*archive.Meta, error) {
	id, err := parseID(id)
	if err != nil {
		return nil, err
	}
	m, err := s.opts.Archive.Get(ctx, id)
	if errors.Is(err, archive.ErrNotFound) {
		return nil, &Error{Status: http.StatusNotFound, Param: "id", Msg: "no such message"}
	}
	if err != nil {
		return nil, err
	}
	if !mayAudit(ctx) {
		m = archive.Restrict(m)
	}
	return m, nil
}

// mayAudit tells whether the caller may see what a message's own header
// does not show: Bcc recipients, list expansions, a journal report whole.
// That is the admin role; a request without a principal may not.
func mayAudit(ctx context.Context) bool {
	p, ok := PrincipalFrom(ctx)
	return ok && p.Role == RoleAdmin
}

// parsePart reads the part parameter of a download and checks that the
// caller may have it.
func parsePart(ctx context.Context, part string) (string, error) {
	switch part {
	case "", archive.PartOriginal:
		return archive.PartOriginal, nil
	case archive.PartReport, archive.PartDecrypted:
		if !mayAudit(ctx) {
			return "", &Error{Status: http.StatusForbidden, Param: "part",
				Msg: "part=" + part + " shows what the original does not (Bcc recipients, list expansions): admin role only"}
		}
		return part, nil
	}
	return "", badParam("part", "want original, report or decrypted")
}

// openPart opens a part of a message (see parsePart); the caller closes it.
func (s *Server) openPart(ctx context.Context, id, part string) (io.ReadCloser, archive.PartInfo, string, error) {
	id, err := parseID(id)
	if err != nil {
		return nil, archive.PartInfo{}, "", err
	}
	if part, err = parsePart(ctx, part); err != nil {
		return nil, archive.PartInfo{}, "", err
	}
	rc, info, err := s.opts.Archive.OpenPart(ctx, id, part)
	switch {
	case errors.Is(err, archive.ErrNotFound):
		return nil, info, "", &Error{Status: http.StatusNotFound, Param: "id", Msg: "no such message"}
	case errors.Is(err, archive.ErrNoPart) && part == archive.PartOriginal:
		return nil, info, "", &Error{Status: http.StatusNotFound, Param: "part",
			Msg: "the journal report carries no original that could be located (see the message's journal warnings); an admin may download part=report"}
	case errors.Is(err, archive.ErrNoPart):
		return nil, info, "", &Error{Status: http.StatusNotFound, Param: "part", Msg: "the message has no " + part + " part"}
	}
	return rc, info, id, err
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

// handleRaw streams a message without holding it in memory: the store
// reads it chunk by chunk and each chunk is written as it comes. For a
// journal report it serves the original unless ?part= asks otherwise (Bcc
// privacy, docs/api.md); X-Chainmail-Part says what was served.
func (s *Server) handleRaw(w http.ResponseWriter, r *http.Request) {
	rc, info, id, err := s.openPart(r.Context(), r.PathValue("id"), r.URL.Query().Get("part"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	defer rc.Close()
	size := info.Size
	name := id
	switch info.Part {
	case archive.PartOriginal, archive.PartDecrypted:
		name += "." + info.Part
	}
	if p, ok := PrincipalFrom(r.Context()); ok && r.Method != http.MethodHead &&
		(info.Part == archive.PartReport || info.Part == archive.PartDecrypted) {
		// Who read the Bcc recipients of which message.
		s.log.WithFields(logrus.Fields{"msg": id[:12], "part": info.Part, "principal": p.Name}).Info("web: journal report part downloaded")
	}
	ext := ".eml"
	if info.ContentType != "message/rfc822" {
		ext = ".dat"
	}
	h := w.Header()
	h.Set("Content-Type", info.ContentType)
	h.Set("Content-Length", strconv.FormatInt(size, 10))
	h.Set("Content-Disposition", `attachment; filename="`+name+ext+`"`)
	h.Set("X-Chainmail-Part", info.Part)
	// The SHA-256 of these bytes (the id, for the archived bytes): a
	// strong validator forever.
	h.Set("ETag", `"`+info.SHA256+`"`)
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
