package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/parley-chat/parley/cmd/parley-bench/internal/client"
)

// env is what every scenario shares: options, output, HTTP client,
// progress line, source-address rotation.
type env struct {
	opt    *options
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	prog   *progress
	hc     *http.Client
	runID  string
	wpool  websocket.BufferPool

	srcMu  sync.Mutex
	srcIPs map[string][]net.IP // by target host
	srcN   atomic.Uint64
	notes  []string

	pollOnce sync.Once
	poller   *client.Poller // reads every connection; nil until the first, or where there is no epoll
}

func newEnv(o *options, stdin io.Reader, stdout, stderr io.Writer) *env {
	if _, isFile := stderr.(*os.File); !isFile {
		// The progress line, the scenario and child processes all write
		// to stderr; a file is safe for that, anything else gets a lock.
		stderr = &lockedWriter{w: stderr}
	}
	e := &env{
		opt:    o,
		stdin:  stdin,
		stdout: stdout,
		stderr: stderr,
		prog:   newProgress(stderr, !o.quiet && !o.child),
		hc:     client.NewHTTPClient(o.insecure, o.timeout, o.setupConc),
		runID:  strconv.FormatInt(time.Now().UnixNano(), 36),
		wpool:  &sync.Pool{},
		srcIPs: map[string][]net.IP{},
	}
	return e
}

// lockedWriter serializes writes to a writer that is not safe for
// concurrent use.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// close ends the run's shared resources, once its connections are closed.
func (e *env) close() {
	e.prog.Stop()
	e.hc.CloseIdleConnections()
	e.pollOnce.Do(func() {}) // none is started from here on
	e.poller.Close()
}

// connPoller is the run's Poller, started on first use. Subscribers receive every event
// of their rooms, and senders an ok per send (and, as room members, their own events): a
// few epoll loops read them for much less CPU than a goroutine per connection (senders
// too: 14% less of the tool's CPU per event in the one-at-a-time cluster row,
// docs/performance.md). nil where there is no epoll.
func (e *env) connPoller() *client.Poller {
	e.pollOnce.Do(func() {
		p, err := client.NewPoller()
		if err != nil {
			if !errors.Is(err, errors.ErrUnsupported) {
				e.note("connections read by a goroutine each: %v", err)
			}
			return
		}
		e.poller = p
	})
	return e.poller
}

func (e *env) note(format string, a ...any) {
	e.srcMu.Lock()
	e.notes = append(e.notes, fmt.Sprintf(format, a...))
	e.srcMu.Unlock()
}

func (e *env) runScenario(ctx context.Context) (*Report, error) {
	if soft, hard, err := raiseFileLimit(); err != nil {
		e.note("could not raise the open-file limit: %v", err)
	} else if soft < hard {
		e.note("open-file limit %d (hard %d)", soft, hard)
	}
	var (
		rep *Report
		err error
	)
	switch e.opt.scenario {
	case "conns":
		rep, err = runConns(ctx, e)
	case "fanout":
		rep, err = runFanout(ctx, e)
	case "latency":
		rep, err = runLatency(ctx, e)
	case "cluster":
		rep, err = runCluster(ctx, e)
	case "federation":
		rep, err = runFederation(ctx, e)
	case "machine":
		rep, err = runMachine(ctx, e)
	default:
		err = fmt.Errorf("unknown scenario %q", e.opt.scenario)
	}
	e.prog.Stop()
	if rep != nil {
		e.srcMu.Lock()
		rep.Notes = append(rep.Notes, e.notes...)
		e.srcMu.Unlock()
	}
	return rep, err
}

// emit prints the table and writes the optional JSON and HTML files.
func (e *env) emit(rep *Report) error {
	table := e.stdout
	if e.opt.jsonFile == "-" {
		table = e.stderr
	}
	if err := rep.WriteText(table); err != nil {
		return err
	}
	if e.opt.jsonFile == "-" {
		if err := rep.WriteJSON(e.stdout); err != nil {
			return err
		}
	} else if e.opt.jsonFile != "" {
		if err := writeFile(e.opt.jsonFile, rep.WriteJSON); err != nil {
			return fmt.Errorf("--json: %w", err)
		}
	}
	if e.opt.htmlFile != "" {
		if err := writeFile(e.opt.htmlFile, rep.WriteHTML); err != nil {
			return fmt.Errorf("--html: %w", err)
		}
	}
	return nil
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (e *env) target(addr string) client.Target {
	return client.Target{Addr: addr, TLS: e.opt.tls}
}

func (e *env) api(t client.Target) (*client.API, error) {
	base, _, err := t.URLs()
	if err != nil {
		return nil, err
	}
	return &client.API{Base: base, HC: e.hc}, nil
}

// sourceIPsFor returns the source addresses to rotate through for a target.
func (e *env) sourceIPsFor(t client.Target) []net.IP {
	host := t.Host()
	e.srcMu.Lock()
	defer e.srcMu.Unlock()
	if ips, ok := e.srcIPs[host]; ok {
		return ips
	}
	ips, note := pickSourceIPs(e.opt.sourceIPs, host)
	if note != "" {
		e.notes = append(e.notes, note)
	}
	e.srcIPs[host] = ips
	return ips
}

// pickSourceIPs turns --source-ips into a list of usable local addresses
// for connections to host. Addresses that cannot be bound are dropped
// (with a note).
func pickSourceIPs(flagVal, host string) ([]net.IP, string) {
	var cands []net.IP
	switch strings.TrimSpace(flagVal) {
	case "", "none":
		return nil, ""
	case "auto":
		if !isLoopbackV4Host(host) {
			return nil, ""
		}
		for i := 1; i <= 8; i++ {
			cands = append(cands, net.IPv4(127, 0, 0, byte(i)))
		}
	default:
		for _, s := range splitList(flagVal) {
			ip := net.ParseIP(s)
			if ip == nil {
				return nil, fmt.Sprintf("--source-ips: %q is not an IP address; letting the kernel pick", s)
			}
			cands = append(cands, ip)
		}
	}
	var ok []net.IP
	var dropped []string
	for _, ip := range cands {
		l, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
		if err != nil {
			dropped = append(dropped, ip.String())
			continue
		}
		l.Close()
		ok = append(ok, ip)
	}
	note := ""
	if len(dropped) > 0 {
		note = fmt.Sprintf("source addresses not usable on this host, skipped: %s", strings.Join(dropped, ", "))
	}
	return ok, note
}

func isLoopbackV4Host(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.To4() != nil && ip.IsLoopback()
}

// dial opens one authenticated connection, rotating source addresses.
func (e *env) dial(ctx context.Context, t client.Target, token string, onEvent func(*client.Event, time.Time)) (*client.Conn, error) {
	_, wsURL, err := t.URLs()
	if err != nil {
		return nil, err
	}
	o := client.DialOptions{
		Insecure:        e.opt.insecure,
		TokenInQuery:    e.opt.tokenInQuery,
		Timeout:         e.opt.timeout,
		ReadBufferSize:  2048,
		WriteBufferSize: 2048,
		WriteBufferPool: e.wpool,
		OnEvent:         onEvent,
	}
	if onEvent != nil {
		// Room members receive every event, and the node gathers a connection's queued
		// frames into one write: a buffer that holds a whole batch is one read(2) per batch
		// (the poller reads into such a buffer of its own; this one is the fallback's).
		o.ReadBufferSize = 64 << 10
		// The room scenarios' subscriber keeps no string of an event but its id, which it
		// copies (subscriber.recordID); the body it only parses.
		o.EventViews = true
	}
	o.Poller = e.connPoller()
	if ips := e.sourceIPsFor(t); len(ips) > 0 {
		o.LocalIP = ips[e.srcN.Add(1)%uint64(len(ips))]
	}
	return client.Dial(ctx, wsURL, token, o)
}

// closeAll closes connections in parallel (bounded), waiting for every
// reader goroutine to end. closed (optional) counts the closed ones.
func closeAll(conns []*client.Conn, closed *atomic.Int64) {
	const par = 256
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for _, c := range conns {
		if c == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func(c *client.Conn) {
			defer wg.Done()
			defer func() { <-sem }()
			c.Close(300 * time.Millisecond)
			if closed != nil {
				closed.Add(1)
			}
		}(c)
	}
	wg.Wait()
}

// forEach runs f(i) for i in [0,n) with at most par at once, stopping early
// (leaving the rest undone) when ctx ends. It returns when all started
// calls have returned.
func forEach(ctx context.Context, n, par int, f func(i int)) {
	if par < 1 {
		par = 1
	}
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			f(i)
		}(i)
	}
	wg.Wait()
}

// errCounter counts errors by a short key, with a bounded number of keys.
type errCounter struct {
	mu sync.Mutex
	m  map[string]int64
}

const maxErrKeys = 40

func newErrCounter() *errCounter { return &errCounter{m: map[string]int64{}} }

func (c *errCounter) add(phase string, err error) { c.addKey(phase+": "+errKey(err), 1) }

func (c *errCounter) addKey(key string, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[key]; !ok && len(c.m) >= maxErrKeys {
		key = "other"
	}
	c.m[key] += n
}

func (c *errCounter) merge(m map[string]int64) {
	for k, v := range m {
		c.addKey(k, v)
	}
}

func (c *errCounter) snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int64, len(c.m))
	for k, v := range c.m {
		out[k] = v
	}
	return out
}

// errKey reduces an error to a short, low-cardinality key.
func errKey(err error) string {
	if err == nil {
		return "ok"
	}
	if code := client.Code(err); code != "" {
		return code
	}
	var ae *client.APIError
	if errors.As(err, &ae) {
		if ae.Code != "" {
			return fmt.Sprintf("HTTP %d %s", ae.Status, ae.Code)
		}
		return fmt.Sprintf("HTTP %d", ae.Status)
	}
	var ce *client.ClosedError
	if errors.As(err, &ce) && ce.Code != 0 {
		return fmt.Sprintf("closed %d %s", ce.Code, ce.Reason)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return "timeout"
	}
	if errors.Is(err, context.Canceled) {
		return "canceled"
	}
	s := err.Error()
	for _, k := range []string{"connection refused", "connection reset", "too many open files",
		"cannot assign requested address", "broken pipe", "i/o timeout", "EOF", "no such host"} {
		if strings.Contains(s, k) {
			return k
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	if errors.As(err, &ce) {
		return "connection closed"
	}
	if len(s) > 60 {
		s = s[:60] + "…"
	}
	return s
}

func sortedKeys(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
