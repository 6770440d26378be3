package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"chainmail/archive"
)

// apiClient is the CLI's client of a node's HTTP API (docs/api.md).
type apiClient struct {
	base *url.URL
	// Exactly one way of authenticating is used: the token if set, else
	// Basic with user and password if a password is set.
	token, user, password string
	http                  *http.Client
}

// apiError is an error answer of the API.
type apiError struct {
	Status int
	Msg    string // the API's "error" text, or the status text
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Msg)
}

func newAPIClient(base, token, user, password string) (*apiClient, error) {
	u, err := url.Parse(strings.TrimRight(base, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--api %q: want a URL like http://127.0.0.1:8090", base)
	}
	return &apiClient{
		base: u, token: token, user: user, password: password,
		http: &http.Client{
			// No overall timeout: a download of a large message may take
			// long. Connecting and the answer's first byte are bounded.
			Transport: &http.Transport{
				Proxy:                 http.ProxyFromEnvironment,
				DialContext:           (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
				TLSHandshakeTimeout:   10 * time.Second,
				ResponseHeaderTimeout: 2 * time.Minute,
				IdleConnTimeout:       30 * time.Second,
				MaxIdleConnsPerHost:   4,
			},
		},
	}, nil
}

// do sends a GET for path (already escaped) and query, and returns the
// response if it is 200; any other status becomes an *apiError.
func (c *apiClient) do(ctx context.Context, path string, query url.Values) (*http.Response, error) {
	return c.send(ctx, http.MethodGet, path, query)
}

// post sends a POST without a body and decodes the JSON answer into v.
func (c *apiClient) post(ctx context.Context, path string, v any) error {
	resp, err := c.send(ctx, http.MethodPost, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("decode answer of %s: %w", path, err)
	}
	return nil
}

func (c *apiClient) send(ctx context.Context, method, path string, query url.Values) (*http.Response, error) {
	u := *c.base
	// path is escaped (an id segment could hold anything a user typed):
	// set the escaped form and its decoding together so neither is lost.
	u.RawPath = strings.TrimRight(c.base.EscapedPath(), "/") + path
	var err error
	if u.Path, err = url.PathUnescape(u.RawPath); err != nil {
		return nil, fmt.Errorf("path %q: %w", path, err)
	}
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	switch {
	case c.token != "":
		req.Header.Set("Authorization", "Bearer "+c.token)
	case c.password != "":
		req.SetBasicAuth(c.user, c.password)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	e := &apiError{Status: resp.StatusCode, Msg: http.StatusText(resp.StatusCode)}
	var body struct {
		Error string `json:"error"`
		Ref   string `json:"ref"`
	}
	if json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body) == nil && body.Error != "" {
		e.Msg = body.Error
		if body.Ref != "" {
			e.Msg += " (ref " + body.Ref + " in the node's log)"
		}
	}
	if e.Status == http.StatusUnauthorized && c.token == "" && c.password == "" {
		e.Msg += "; give --token (or CHAINMAIL_TOKEN), or --password for the console admin"
	}
	return nil, e
}

func (c *apiClient) getJSON(ctx context.Context, path string, query url.Values, v any) error {
	resp, err := c.do(ctx, path, query)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("decode answer of %s: %w", path, err)
	}
	return nil
}

func (c *apiClient) search(ctx context.Context, q url.Values) (archive.Page, error) {
	var p archive.Page
	err := c.getJSON(ctx, "/api/v1/archive/messages", q, &p)
	return p, err
}

func (c *apiClient) message(ctx context.Context, id string) (json.RawMessage, error) {
	var m json.RawMessage
	err := c.getJSON(ctx, "/api/v1/archive/messages/"+url.PathEscape(id), nil, &m)
	return m, err
}

// nodeInfo is the part of GET /api/v1/node the CLI uses.
type nodeInfo struct {
	Node    string        `json:"node"`
	Archive archive.Stats `json:"archive"`
}

func (c *apiClient) node(ctx context.Context) (nodeInfo, error) {
	var n nodeInfo
	err := c.getJSON(ctx, "/api/v1/node", nil, &n)
	return n, err
}

func (c *apiClient) digest(ctx context.Context) (archive.Digest, error) {
	var d archive.Digest
	err := c.getJSON(ctx, "/api/v1/archive/digest", nil, &d)
	return d, err
}

// download is an open /raw answer.
type download struct {
	body io.ReadCloser
	size int64 // the announced Content-Length, -1 if none
	// part is X-Chainmail-Part: original, report, decrypted or message
	// ("" from a node older than the header).
	part string
	// sum is the SHA-256 the body must have: the ETag for an original or
	// a decrypted copy, else the id.
	sum string
}

// raw opens a message's bytes, or a part of a journal report (part is
// original, report, decrypted, or "" for the node's default, the
// original). The caller closes the body.
func (c *apiClient) raw(ctx context.Context, id, part string) (*download, error) {
	var q url.Values
	if part != "" {
		q = url.Values{"part": {part}}
	}
	resp, err := c.do(ctx, "/api/v1/archive/messages/"+url.PathEscape(id)+"/raw", q)
	if err != nil {
		return nil, err
	}
	d := &download{body: resp.Body, size: resp.ContentLength, part: resp.Header.Get("X-Chainmail-Part"), sum: id}
	if d.part == "original" || d.part == "decrypted" {
		d.sum = strings.Trim(resp.Header.Get("ETag"), `"`)
		if _, err := checkID(d.sum); err != nil {
			resp.Body.Close()
			return nil, fmt.Errorf("download %s: the node sent the %s without its SHA-256 (ETag %q)", id, d.part, d.sum)
		}
	}
	return d, nil
}

// searchAll calls fn for every hit of q, following the cursors. It stops
// at fn's first error.
func (c *apiClient) searchAll(ctx context.Context, q url.Values, fn func(archive.Summary) error) error {
	q = cloneValues(q)
	for {
		p, err := c.search(ctx, q)
		if err != nil {
			return err
		}
		for _, m := range p.Messages {
			if err := fn(m); err != nil {
				return err
			}
		}
		if p.NextCursor == "" {
			return nil
		}
		if p.NextCursor == q.Get("cursor") {
			return errors.New("the API returned the same cursor twice")
		}
		q.Set("cursor", p.NextCursor)
	}
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}
