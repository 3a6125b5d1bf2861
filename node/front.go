package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// Front is a node's HTTP server from the moment its listener is bound. Opening the node (Raft,
// the replay of its log, a WAL migration) can take long on a big log, and a client whose
// connection waited in the listener's backlog meanwhile hung, where one refused at once tries
// another node. So until Open hands it the node, Front answers every request at once with 503:
// /v1/health as a node catching up (its contract shape, with the reason protocol.md adds), the
// rest, WebSocket upgrades included, M_UNAVAILABLE.
type Front struct {
	http    *http.Server
	handler atomic.Pointer[http.Handler]
	errc    chan error
}

// newHTTPServer is the HTTP server of a node. ReadTimeout bounds headers and body together
// (slowloris); WebSocket sessions set their own deadlines once upgraded.
func newHTTPServer(h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second,
		IdleTimeout: 120 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
}

// ServeFront serves ln from now on (HTTPS with certs when set), answering as a node that is
// not open yet until Open.
func ServeFront(ln net.Listener, certs *CertReloader, org, nodeID string, logger *slog.Logger) *Front {
	f := &Front{errc: make(chan error, 1)}
	var opening http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/health" {
			writeJSON(w, http.StatusServiceUnavailable,
				map[string]string{"status": "unavailable", "reason": "catching_up", "org": org, "node_id": nodeID})
			return
		}
		writeError(w, http.StatusServiceUnavailable, "M_UNAVAILABLE", "this node is starting; retry, or use another node")
	})
	f.handler.Store(&opening)
	f.http = newHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*f.handler.Load()).ServeHTTP(w, r)
	}), logger)
	if certs != nil {
		f.http.TLSConfig = ServerTLSConfig(certs)
	}
	go func() {
		var err error
		if certs != nil {
			err = f.http.ServeTLS(ln, "", "")
		} else {
			err = f.http.Serve(ln)
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		} else {
			err = fmt.Errorf("node: serve http: %w", err)
		}
		f.errc <- err
	}()
	return f
}

// Open hands the front to srv, before srv serves anything else: srv's routes answer from now on
// on the same server (its timeouts and connections), and srv's Shutdown stops it.
func (f *Front) Open(srv *Server) {
	h := srv.http.Handler
	f.handler.Store(&h)
	srv.http = f.http
}

// Err delivers the error serving ended with: nil once the server was shut down.
func (f *Front) Err() <-chan error { return f.errc }

// Close stops the front of a node that did not open.
func (f *Front) Close() error { return f.http.Close() }
