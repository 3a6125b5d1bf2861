package main

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// The admin listener's timeouts, the public listener's (tests shorten them): a client that
// connects and stalls in its header or body, or goes quiet between requests, does not hold a
// connection for ever. There is no WriteTimeout: /debug/pprof/profile and /debug/pprof/trace
// answer only after their ?seconds= (30 by default), and the ReadTimeout does not cut them short.
var (
	adminReadHeaderTimeout = 10 * time.Second
	adminReadTimeout       = 10 * time.Second
	adminIdleTimeout       = 120 * time.Second
)

// startAdmin serves pprof on the opt-in admin listener (admin.listen); it is never on the
// public HTTP listener. It returns a function that stops it.
func startAdmin(addr string, log *slog.Logger) (func(), error) {
	if addr == "" {
		return func() {}, nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: adminReadHeaderTimeout, ReadTimeout: adminReadTimeout,
		IdleTimeout: adminIdleTimeout}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin listener failed", "err", err)
		}
	}()
	log.Info("admin listener (pprof) on " + ln.Addr().String())
	return func() { _ = srv.Close() }, nil
}
