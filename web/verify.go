package web

import (
	"context"
	"net/http"
	"time"

	"chainmail/archive"
)

// Verifier reads the whole archive back against its ids (archive.Store
// has it); an Archive without it answers 404 on the endpoint.
type Verifier interface {
	Verify(ctx context.Context, progress func(done int64)) (archive.Verification, error)
}

// verifyArchive runs a verification; admin only, as it reads every byte.
func (s *Server) verifyArchive(ctx context.Context) (archive.Verification, error) {
	v, ok := s.opts.Archive.(Verifier)
	if !ok {
		return archive.Verification{}, &Error{Status: http.StatusNotFound, Msg: "this archive cannot be verified"}
	}
	if !mayAudit(ctx) {
		return archive.Verification{}, &Error{Status: http.StatusForbidden, Msg: "verifying the archive needs the admin role"}
	}
	res, err := v.Verify(ctx, nil)
	if res.Damaged == nil {
		res.Damaged = []archive.Damage{}
	}
	return res, err
}

func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request) {
	// Reading a large archive back takes long: no write deadline.
	http.NewResponseController(w).SetWriteDeadline(time.Time{})
	res, err := s.verifyArchive(r.Context())
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	s.log.WithFields(map[string]any{"messages": res.Messages, "bytes": res.Bytes, "damaged": len(res.Damaged), "by": principalName(r.Context())}).Info("archive verified")
	writeJSON(w, http.StatusOK, res)
}
