// Package client is a small, load-test oriented client of the Parley client
// protocol, version 1: the HTTP calls (register, login, health, metrics) and
// a WebSocket connection that multiplexes request/reply pairs by id and hands
// pushed events to a callback. It depends on nothing of the server.
package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Target is one node's address as the bench tool was given it.
type Target struct {
	// Addr is host:port, or a URL with scheme http, https, ws or wss
	// (the scheme then decides TLS).
	Addr string
	// TLS selects https/wss when Addr has no scheme.
	TLS bool
}

// URLs returns the HTTP base (no trailing slash) and WebSocket URLs.
func (t Target) URLs() (httpBase, wsURL string, err error) {
	addr := strings.TrimSpace(t.Addr)
	if addr == "" {
		return "", "", errors.New("empty address")
	}
	secure := t.TLS
	host := addr
	if i := strings.Index(addr, "://"); i >= 0 {
		u, err := url.Parse(addr)
		if err != nil {
			return "", "", fmt.Errorf("address %q: %w", addr, err)
		}
		switch u.Scheme {
		case "http", "ws":
			secure = false
		case "https", "wss":
			secure = true
		default:
			return "", "", fmt.Errorf("address %q: unsupported scheme %q", addr, u.Scheme)
		}
		host = u.Host
	}
	if host == "" || strings.ContainsAny(host, "/?#") {
		return "", "", fmt.Errorf("address %q: want host:port", addr)
	}
	if secure {
		return "https://" + host, "wss://" + host + "/v1/ws", nil
	}
	return "http://" + host, "ws://" + host + "/v1/ws", nil
}

// Host returns the host part (no port) of the target.
func (t Target) Host() string {
	base, _, err := t.URLs()
	if err != nil {
		return ""
	}
	u, err := url.Parse(base)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

// APIError is an error answer of the HTTP API: {"code","message"}.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("HTTP %d: %s", e.Status, e.Message)
	}
	return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Message)
}

// Session is what register and login return.
type Session struct {
	UserID      string `json:"user_id"`
	AccessToken string `json:"access_token"`
}

// Org returns the part of the user id after the first colon (the org).
func (s Session) Org() string {
	if i := strings.IndexByte(s.UserID, ':'); i >= 0 {
		return s.UserID[i+1:]
	}
	return ""
}

// Health is GET /v1/health.
type Health struct {
	Status string `json:"status"`
	Org    string `json:"org"`
	NodeID string `json:"node_id"`
	Role   string `json:"role"`
	Leader string `json:"leader"`
}

// TLSConfig returns the TLS configuration for the given options.
func TLSConfig(insecure bool) *tls.Config {
	return &tls.Config{InsecureSkipVerify: insecure} //nolint:gosec // opt-in flag for self-signed test nodes
}

// NewHTTPClient returns an HTTP client suited to many parallel calls to a
// few hosts. Proxies from the environment are not used: a load tool talks
// to the node directly.
func NewHTTPClient(insecure bool, timeout time.Duration, maxConnsPerHost int) *http.Client {
	if maxConnsPerHost <= 0 {
		maxConnsPerHost = 16
	}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     TLSConfig(insecure),
		MaxIdleConns:        4 * maxConnsPerHost,
		MaxIdleConnsPerHost: maxConnsPerHost,
		IdleConnTimeout:     30 * time.Second,
		TLSHandshakeTimeout: timeout,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// API calls one node's HTTP API.
type API struct {
	Base string // e.g. http://127.0.0.1:8080
	HC   *http.Client
}

// Register creates a user: POST /v1/register.
func (a *API) Register(ctx context.Context, username, password string) (Session, error) {
	var s Session
	err := a.postJSON(ctx, "/v1/register", map[string]string{"username": username, "password": password}, &s)
	return s, err
}

// Login logs a user in: POST /v1/login.
func (a *API) Login(ctx context.Context, username, password string) (Session, error) {
	var s Session
	err := a.postJSON(ctx, "/v1/login", map[string]string{"username": username, "password": password}, &s)
	return s, err
}

// Health reads GET /v1/health (a 503 answer is returned as an APIError).
func (a *API) Health(ctx context.Context) (Health, error) {
	var h Health
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.Base+"/v1/health", nil)
	if err != nil {
		return h, err
	}
	err = a.do(req, &h)
	return h, err
}

func (a *API) postJSON(ctx context.Context, path string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.Base+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return a.do(req, out)
}

func (a *API) do(req *http.Request, out any) error {
	resp, err := a.HC.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return parseAPIError(resp.StatusCode, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: bad JSON answer: %w", req.Method, req.URL.Path, err)
	}
	return nil
}

func parseAPIError(status int, data []byte) error {
	e := &APIError{Status: status}
	var body struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(data, &body) == nil && body.Code != "" {
		e.Code, e.Message = body.Code, body.Message
	} else {
		msg := strings.TrimSpace(string(data))
		if len(msg) > 200 {
			msg = msg[:200] + "…"
		}
		e.Message = msg
	}
	return e
}

// ErrMetricNotFound is returned by FetchMetric when the exposition has no
// sample of the metric.
var ErrMetricNotFound = errors.New("metric not found")

// FetchMetric GETs a Prometheus text exposition and returns the value of
// the first sample of the named metric (any labels).
func FetchMetric(ctx context.Context, hc *http.Client, metricsURL, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, parseAPIError(resp.StatusCode, data)
	}
	return ParseMetric(io.LimitReader(resp.Body, 64<<20), name)
}

// ParseMetric scans Prometheus text format for the first sample of name.
func ParseMetric(r io.Reader, name string) (float64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			rest = rest[end+1:]
		case strings.HasPrefix(rest, " "), strings.HasPrefix(rest, "\t"):
		default:
			continue // a longer metric name with the same prefix
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return 0, fmt.Errorf("metric %s: bad value %q", name, fields[0])
		}
		return v, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%w: %s", ErrMetricNotFound, name)
}
