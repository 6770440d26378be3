package web

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"chainmail/forwarder"
	"chainmail/queue"
)

// Connections is what the API needs of the forwarder: each connection's
// state and the operator's actions on its queue.
type Connections interface {
	Status() []forwarder.Status
	StatusOf(name string) (forwarder.Status, bool)
	Retry(ctx context.Context, name string) (int, error)
	Purge(ctx context.Context, name string) (int, error)
	Pause(name string) error
	Resume(name string) error
	Entries(name string, dead bool, limit int) ([]queue.Entry, error)
}

// ConnectionList is the answer of GET /api/v1/connections.
type ConnectionList struct {
	Connections []ConnectionView `json:"connections"`
}

// ConnectionView is a connection's forwarding status and, when the node
// has a live configuration, its configuration as the file spells it.
type ConnectionView struct {
	forwarder.Status
	Config map[string]any `json:"config,omitempty"`
}

// QueueList is the answer of GET /api/v1/connections/{name}/queue.
type QueueList struct {
	Connection string        `json:"connection"`
	Dead       bool          `json:"dead"`
	Entries    []queue.Entry `json:"entries"`
}

// ActionResult answers the POST actions on a connection.
type ActionResult struct {
	Connection string `json:"connection"`
	Action     string `json:"action"`
	Count      int    `json:"count"` // retry: dead letters revived; purge: entries dropped
}

func (s *Server) connections() (ConnectionList, error) {
	list := ConnectionList{Connections: []ConnectionView{}}
	if s.opts.Connections == nil {
		return list, nil
	}
	for _, st := range s.opts.Connections.Status() {
		list.Connections = append(list.Connections, s.view(st))
	}
	return list, nil
}

func (s *Server) view(st forwarder.Status) ConnectionView {
	v := ConnectionView{Status: st}
	if s.opts.Config != nil {
		v.Config, _ = s.opts.Config.Get("connections", st.Name)
	}
	return v
}

func (s *Server) connection(name string) (ConnectionView, error) {
	if s.opts.Connections != nil {
		if st, ok := s.opts.Connections.StatusOf(name); ok {
			return s.view(st), nil
		}
	}
	return ConnectionView{}, &Error{Status: http.StatusNotFound, Param: "name", Msg: "no such connection"}
}

func (s *Server) connectionAction(ctx context.Context, name, action string) (ActionResult, error) {
	if _, err := s.connection(name); err != nil {
		return ActionResult{}, err
	}
	c := s.opts.Connections
	res := ActionResult{Connection: name, Action: action}
	var err error
	switch action {
	case "retry":
		res.Count, err = c.Retry(ctx, name)
	case "purge":
		res.Count, err = c.Purge(ctx, name)
	case "pause":
		err = c.Pause(name)
	case "resume":
		err = c.Resume(name)
	default:
		return res, &Error{Status: http.StatusNotFound, Param: "action", Msg: "no such action (retry, purge, pause, resume)"}
	}
	if errors.Is(err, forwarder.ErrNoConnection) {
		return res, &Error{Status: http.StatusNotFound, Param: "name", Msg: "no such connection"}
	}
	return res, err
}

func (s *Server) queueEntries(name string, dead bool, limit int) (QueueList, error) {
	if _, err := s.connection(name); err != nil {
		return QueueList{}, err
	}
	list, err := s.opts.Connections.Entries(name, dead, limit)
	if err != nil {
		return QueueList{}, err
	}
	if list == nil {
		list = []queue.Entry{}
	}
	return QueueList{Connection: name, Dead: dead, Entries: list}, nil
}

func (s *Server) handleConnections(w http.ResponseWriter, r *http.Request) {
	list, err := s.connections()
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) handleConnection(w http.ResponseWriter, r *http.Request) {
	st, err := s.connection(r.PathValue("name"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) handleConnectionAction(action string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		res, err := s.connectionAction(r.Context(), r.PathValue("name"), action)
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		s.log.WithFields(map[string]any{"connection": res.Connection, "action": res.Action, "count": res.Count, "by": principalName(r.Context())}).Info("connection action")
		writeJSON(w, http.StatusOK, res)
	}
}

func (s *Server) handleQueue(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	dead := q.Get("dead") == "1" || q.Get("dead") == "true"
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			writeError(w, r, s.log, badParam("limit", "want a number from 1 to 10000"))
			return
		}
		limit = n
	}
	list, err := s.queueEntries(r.PathValue("name"), dead, limit)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func principalName(ctx context.Context) string {
	if p, ok := PrincipalFrom(ctx); ok {
		return p.Name
	}
	return ""
}
