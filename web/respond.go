package web

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/sirupsen/logrus"
)

// Error is an answer a caller can act on: its status and a message safe to
// show. Operations return it for bad input and missing things; any other
// error is internal and is shown only as a reference id (the details go to
// the log, once, with the same id).
type Error struct {
	Status int
	Msg    string
	// Param names the query parameter or path segment at fault.
	Param string
	// Fields names each faulty key of a configuration change.
	Fields map[string]string
}

func (e *Error) Error() string {
	if e.Param != "" {
		return e.Param + ": " + e.Msg
	}
	return e.Msg
}

// badParam is a 400 naming the parameter.
func badParam(param, msg string) *Error {
	return &Error{Status: http.StatusBadRequest, Param: param, Msg: msg}
}

// errorBody is the JSON of every error answer.
type errorBody struct {
	Error  string            `json:"error"`
	Param  string            `json:"param,omitempty"`
	Fields map[string]string `json:"fields,omitempty"`
	Ref    string            `json:"ref,omitempty"`
}

// writeError answers err as JSON. An *Error keeps its status and text;
// anything else is a 500 whose details are logged here with a reference id
// (context cancellation by the client is not worth a log line).
func writeError(w http.ResponseWriter, r *http.Request, log *logrus.Entry, err error) {
	var e *Error
	if errors.As(err, &e) {
		writeJSON(w, e.Status, errorBody{Error: e.Error(), Param: e.Param, Fields: e.Fields})
		return
	}
	if r.Context().Err() != nil {
		// The client went away; nobody reads the answer.
		return
	}
	ref := rand.Text()[:10]
	log.WithError(err).WithFields(logrus.Fields{"ref": ref, "path": r.URL.Path}).
		Error("web: request failed")
	writeJSON(w, http.StatusInternalServerError, errorBody{Error: "internal error", Ref: ref})
}

// writeJSON answers v as JSON with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	// An encoding error here means the client went away mid-answer.
	_ = json.NewEncoder(w).Encode(v)
}
