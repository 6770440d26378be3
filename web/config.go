package web

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"

	"chainmail/internal/liveconfig"
)

// RuntimeConfig is the node's live configuration of listeners, routes and
// connections (liveconfig.Manager).
type RuntimeConfig interface {
	List(kind string) ([]map[string]any, error)
	Get(kind, name string) (map[string]any, error)
	Create(ctx context.Context, who, kind string, body []byte) (map[string]any, error)
	Replace(ctx context.Context, who, kind, name string, body []byte) (map[string]any, error)
	Delete(ctx context.Context, who, kind, name string) error
	Audit(limit int) ([]liveconfig.Entry, error)
	YAML() ([]byte, error)
}

// ListenerState is a running listener's state for the API.
type ListenerState struct {
	State    string `json:"state"` // running, disabled, stopped
	Sessions int    `json:"sessions"`
	Address  string `json:"bound_address,omitempty"`
}

// maxConfigBody bounds a configuration change's body.
const maxConfigBody = 64 << 10

// configError turns the live configuration's errors into answers: field
// errors are a 400 that names each key, so the console shows each beside
// its field.
func configError(err error) error {
	var inv *liveconfig.Invalid
	switch {
	case errors.As(err, &inv):
		return &Error{Status: http.StatusBadRequest, Msg: "invalid configuration", Fields: inv.Fields}
	case errors.Is(err, liveconfig.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Param: "name", Msg: "no such object"}
	case errors.Is(err, liveconfig.ErrUnknownKind):
		return &Error{Status: http.StatusNotFound, Msg: "no such endpoint"}
	}
	return err
}

func (s *Server) requireConfig() error {
	if s.opts.Config == nil {
		return &Error{Status: http.StatusNotFound, Msg: "this server has no live configuration"}
	}
	return nil
}

// configList lists a kind; listeners carry their state, connections their
// forwarding status.
func (s *Server) configList(kind string) ([]map[string]any, error) {
	if err := s.requireConfig(); err != nil {
		return nil, err
	}
	list, err := s.opts.Config.List(kind)
	if err != nil {
		return nil, configError(err)
	}
	for _, o := range list {
		s.decorate(kind, o)
	}
	return list, nil
}

func (s *Server) decorate(kind string, o map[string]any) {
	name, _ := o["name"].(string)
	switch kind {
	case liveconfig.Listeners:
		if s.opts.ListenerStates != nil {
			if st, ok := s.opts.ListenerStates()[name]; ok {
				o["status"] = st
			}
		}
	case liveconfig.Connections:
		if s.opts.Connections != nil {
			if st, ok := s.opts.Connections.StatusOf(name); ok {
				o["status"] = st
			}
		}
	}
}

func (s *Server) configGet(kind, name string) (map[string]any, error) {
	if err := s.requireConfig(); err != nil {
		return nil, err
	}
	o, err := s.opts.Config.Get(kind, name)
	if err != nil {
		return nil, configError(err)
	}
	s.decorate(kind, o)
	return o, nil
}

func (s *Server) configCreate(ctx context.Context, kind string, body []byte) (map[string]any, error) {
	if err := s.requireConfig(); err != nil {
		return nil, err
	}
	o, err := s.opts.Config.Create(ctx, principalName(ctx), kind, body)
	return o, configError(err)
}

func (s *Server) configReplace(ctx context.Context, kind, name string, body []byte) (map[string]any, error) {
	if err := s.requireConfig(); err != nil {
		return nil, err
	}
	o, err := s.opts.Config.Replace(ctx, principalName(ctx), kind, name, body)
	return o, configError(err)
}

func (s *Server) configDelete(ctx context.Context, kind, name string) error {
	if err := s.requireConfig(); err != nil {
		return err
	}
	return configError(s.opts.Config.Delete(ctx, principalName(ctx), kind, name))
}

func readBody(r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxConfigBody))
	if err != nil {
		return nil, &Error{Status: http.StatusRequestEntityTooLarge, Msg: "body over 64 KiB"}
	}
	return b, nil
}

func (s *Server) handleConfigList(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		list, err := s.configList(kind)
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{kind: list})
	}
}

func (s *Server) handleConfigGet(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		o, err := s.configGet(kind, r.PathValue("name"))
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		writeJSON(w, http.StatusOK, o)
	}
}

func (s *Server) handleConfigWrite(kind string, create bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(r)
		if err == nil {
			var o map[string]any
			if create {
				o, err = s.configCreate(r.Context(), kind, body)
			} else {
				o, err = s.configReplace(r.Context(), kind, r.PathValue("name"), body)
			}
			if err == nil {
				s.log.WithFields(map[string]any{"kind": kind, "name": o["name"], "by": principalName(r.Context()), "create": create}).Info("configuration changed")
				status := http.StatusOK
				if create {
					status = http.StatusCreated
				}
				writeJSON(w, status, o)
				return
			}
		}
		writeError(w, r, s.log, err)
	}
}

func (s *Server) handleConfigDelete(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := s.configDelete(r.Context(), kind, r.PathValue("name")); err != nil {
			writeError(w, r, s.log, err)
			return
		}
		s.log.WithFields(map[string]any{"kind": kind, "name": r.PathValue("name"), "by": principalName(r.Context())}).Info("configuration changed: deleted")
		w.WriteHeader(http.StatusNoContent)
	}
}

// AuditList is the answer of GET /api/v1/audit.
type AuditList struct {
	Entries []liveconfig.Entry `json:"entries"`
}

func (s *Server) audit(limit int) (AuditList, error) {
	if err := s.requireConfig(); err != nil {
		return AuditList{}, err
	}
	list, err := s.opts.Config.Audit(limit)
	if list == nil {
		list = []liveconfig.Entry{}
	}
	return AuditList{Entries: list}, err
}

func (s *Server) handleAudit(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			writeError(w, r, s.log, badParam("limit", "want a number from 1 to 10000"))
			return
		}
		limit = n
	}
	list, err := s.audit(limit)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) handleConfigYAML(w http.ResponseWriter, r *http.Request) {
	if err := s.requireConfig(); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	y, err := s.opts.Config.YAML()
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	w.Header().Set("Content-Type", "application/yaml; charset=utf-8")
	w.Write(y)
}
