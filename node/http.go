package node

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/parley-chat/parley/consensus"
	"github.com/parley-chat/parley/consensus/state"
	"github.com/parley-chat/parley/web"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/crypto/bcrypt"
)

const (
	maxBodyBytes     = 64 << 10
	failedLoginDelay = 300 * time.Millisecond
)

// httpWriteTimeout (nanoseconds; tests shorten it) bounds how long an HTTP answer may take
// to write, counted from the start of its request. The server has no WriteTimeout of its
// own: without this a client that asks for a large answer (the browser client's script,
// /metrics) and never reads it held the handler's goroutine, its buffers and the socket's
// full send buffer for as long as it kept the connection open.
var httpWriteTimeout atomic.Int64

func init() { httpWriteTimeout.Store(int64(30 * time.Second)) }

func (srv *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/register", srv.handleRegister)
	mux.HandleFunc("POST /v1/login", srv.handleLogin)
	mux.HandleFunc("POST /v1/logout", srv.handleLogout)
	mux.HandleFunc("GET /v1/health", srv.handleHealth)
	mux.HandleFunc("GET /v1/federation/key", srv.handleFederationKey)
	mux.HandleFunc("GET /v1/ws", srv.handleWebSocket)
	mux.HandleFunc("GET /v1/cluster/status", srv.clusterAdmin(srv.handleClusterStatus))
	mux.HandleFunc("POST /v1/cluster/join", srv.clusterAdmin(srv.handleClusterJoin))
	mux.HandleFunc("POST /v1/cluster/remove", srv.clusterAdmin(srv.handleClusterRemove))
	mux.HandleFunc("POST /v1/admin/users", srv.clusterAdmin(srv.handleAddUser))
	mux.HandleFunc("POST /v1/cluster/snapshot", srv.clusterAdmin(srv.handleSnapshot))
	mux.Handle("GET /metrics", promhttp.HandlerFor(srv.metrics.reg, promhttp.HandlerOpts{}))
	mux.Handle("GET /", web.Handler())
	return jsonRouteErrors(mux)
}

// jsonRouteErrors answers the requests mux does not route to an API handler (an unknown
// /v1/ path; a method a path does not take) with the contract's JSON errors: left to
// itself, net/http answers them in plain text, and the browser client's catch-all "GET /"
// takes every GET.
func jsonRouteErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// (A WebSocket upgrade clears the connection's deadlines once it has hijacked it.)
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(time.Duration(httpWriteTimeout.Load())))
		_, pattern := mux.Handler(r)
		api := strings.HasPrefix(r.URL.Path, "/v1/")
		if pattern != "" && (pattern != "GET /" || !api) {
			mux.ServeHTTP(w, r)
			return
		}
		allow := routedMethods(mux, r, api)
		if len(allow) == 0 {
			writeError(w, http.StatusNotFound, "M_NOT_FOUND", "no such endpoint: "+r.URL.Path)
			return
		}
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, http.StatusMethodNotAllowed, "M_UNRECOGNIZED", r.Method+" is not allowed on "+r.URL.Path)
	})
}

// routedMethods lists the methods that have a route on r's path, as net/http's 405 answer
// would in Allow; on an API path, less GET and HEAD when only the browser client's
// catch-all takes them.
func routedMethods(mux *http.ServeMux, r *http.Request, api bool) []string {
	probe := r.Clone(r.Context())
	probe.Method = "PARLEY-PROBE" // no route takes it: mux answers 405 with Allow
	rec := &allowRecorder{header: http.Header{}}
	h, _ := mux.Handler(probe)
	h.ServeHTTP(rec, probe)
	allow := strings.Split(rec.header.Get("Allow"), ", ")
	probe.Method = http.MethodGet
	catchAll := false
	if _, p := mux.Handler(probe); api && p == "GET /" {
		catchAll = true
	}
	return slices.DeleteFunc(allow, func(m string) bool {
		return m == "" || (catchAll && (m == http.MethodGet || m == http.MethodHead))
	})
}

// allowRecorder keeps the headers a handler sets and drops the rest of its answer.
type allowRecorder struct{ header http.Header }

func (a *allowRecorder) Header() http.Header         { return a.header }
func (a *allowRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (a *allowRecorder) WriteHeader(int)             {}

// upgradeError answers a failed WebSocket upgrade (not an upgrade request, a bad handshake)
// in the contract's JSON error shape.
func upgradeError(w http.ResponseWriter, r *http.Request, status int, reason error) {
	w.Header().Set("Sec-Websocket-Version", "13")
	code := "M_UNRECOGNIZED"
	if status == http.StatusForbidden {
		code = "M_FORBIDDEN"
	}
	writeError(w, status, code, "/v1/ws needs a WebSocket upgrade: "+reason.Error())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	// Errors echo what the client sent (a path, a method): never to be read as anything else.
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"code": code, "message": msg})
}

// readBody decodes a bounded JSON body into v, answering the error itself.
func readBody(w http.ResponseWriter, r *http.Request, v any) bool {
	r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "request body over 64 KiB")
			return false
		}
		writeError(w, http.StatusBadRequest, "M_BAD_JSON", "could not read the body")
		return false
	}
	if !LosslessJSON(data) {
		// JSON is UTF-8; encoding/json would read each bad byte, and each lone surrogate
		// escaped, as U+FFFD, so that passwords differing only there would be one.
		writeError(w, http.StatusBadRequest, "M_BAD_JSON", "the body must be JSON in UTF-8, without lone surrogates (\\ud800 alone)")
		return false
	}
	if err := json.Unmarshal(data, v); err != nil {
		writeError(w, http.StatusBadRequest, "M_BAD_JSON", "the body must be a JSON object: "+describeJSONError(err))
		return false
	}
	return true
}

type credentials struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// passwordKey pre-hashes a password so any length fits bcrypt's 72-byte input.
func passwordKey(password string) []byte {
	sum := sha256.Sum256([]byte(password))
	return []byte(base64.RawStdEncoding.EncodeToString(sum[:]))
}

func (srv *Server) handleRegister(w http.ResponseWriter, r *http.Request) {
	if !srv.opts.RegistrationOpen {
		writeError(w, http.StatusForbidden, "M_FORBIDDEN", "registration is closed on this server")
		return
	}
	if wait, ok := srv.registerIP.allow(sourceKey(r)); !ok {
		srv.metrics.rateLimited.WithLabelValues("register").Inc()
		writeLimited(w, wait, "registrations from this address")
		return
	}
	srv.createAccount(w, r)
}

// handleAddUser makes an account whatever registration.open says (parley user add); it is an
// admin route (see clusterAdmin).
func (srv *Server) handleAddUser(w http.ResponseWriter, r *http.Request) {
	srv.createAccount(w, r)
}

func (srv *Server) createAccount(w http.ResponseWriter, r *http.Request) {
	var c credentials
	if !readBody(w, r, &c) {
		return
	}
	if !localpartChars.MatchString(c.Username) {
		writeError(w, http.StatusBadRequest, "M_INVALID_USERNAME", "username must match [a-z0-9._=-]{1,64}")
		return
	}
	if len([]rune(c.Password)) < 8 {
		writeError(w, http.StatusBadRequest, "M_WEAK_PASSWORD", "password must have at least 8 characters")
		return
	}
	if len(c.Password) > 1024 {
		writeError(w, http.StatusBadRequest, "M_INVALID_PARAM", "password over 1024 bytes")
		return
	}
	userID := "@" + c.Username + ":" + srv.opts.Org
	if _, exists := srv.cluster.Store().Account(userID); exists {
		writeError(w, http.StatusConflict, "M_USER_IN_USE", "that username is taken")
		return
	}
	var hash []byte
	err := srv.slowHash(r.Context(), func() {
		var herr error
		hash, herr = bcrypt.GenerateFromPassword(passwordKey(c.Password), srv.opts.PasswordCost)
		if herr != nil {
			hash = nil
		}
	})
	if err == nil && hash == nil {
		err = errors.New("bcrypt failed")
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "M_UNKNOWN", "could not hash the password")
		return
	}
	token, tokenHash := newToken()
	_, oerr := srv.commit(&state.Command{Kind: state.KindRegister, Register: &state.Register{
		UserID: userID, PasswordHash: hash, TokenHash: tokenHash, CreatedTS: time.Now().UnixMilli()}})
	if oerr != nil {
		writeOpError(w, oerr)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"user_id": userID, "access_token": token})
}

func writeOpError(w http.ResponseWriter, oerr *opError) {
	status := http.StatusInternalServerError
	switch oerr.code {
	case "M_USER_IN_USE":
		status = http.StatusConflict
	case "M_FORBIDDEN":
		status = http.StatusForbidden
	case "M_UNKNOWN_TOKEN":
		status = http.StatusUnauthorized
	case "M_UNAVAILABLE":
		status = http.StatusServiceUnavailable
	case "M_INVALID_PARAM", "M_BAD_JSON":
		status = http.StatusBadRequest
	case "M_LIMIT_EXCEEDED":
		status = http.StatusTooManyRequests
	}
	writeError(w, status, oerr.code, oerr.msg)
}

// dummyHash keeps login time the same for unknown users and wrong passwords.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("parley-no-such-user"), bcrypt.DefaultCost)

func (srv *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	var c credentials
	if !readBody(w, r, &c) {
		return
	}
	if wait, ok := srv.loginIP.allow(sourceKey(r)); !ok {
		srv.metrics.rateLimited.WithLabelValues("login").Inc()
		writeLimited(w, wait, "login attempts from this address")
		return
	}
	// Per account: only a username that can name an account is counted (no other can be
	// guessed at), so the limiter keeps no key a client made up, up to the 64 KiB of a body.
	if localpartChars.MatchString(c.Username) {
		if wait, ok := srv.loginAcct.allow(c.Username); !ok {
			srv.metrics.rateLimited.WithLabelValues("login").Inc()
			writeLimited(w, wait, "login attempts for this account")
			return
		}
	}
	userID := "@" + c.Username + ":" + srv.opts.Org
	acc, ok := srv.cluster.Store().Account(userID)
	if !ok && localpartChars.MatchString(c.Username) {
		// An account registered a moment ago through another node, or before a restart this
		// node is still replaying, is not here yet: look again once this node has applied what
		// is committed, rather than call a real account's password wrong.
		if !srv.settleMiss() {
			writeError(w, http.StatusServiceUnavailable, "M_UNAVAILABLE", "this node cannot reach a quorum; retry")
			return
		}
		acc, ok = srv.cluster.Store().Account(userID)
	}
	hash := dummyHash
	if ok && localpartChars.MatchString(c.Username) {
		hash = acc.PasswordHash
	}
	match := false
	if err := srv.slowHash(r.Context(), func() {
		match = bcrypt.CompareHashAndPassword(hash, passwordKey(c.Password)) == nil
	}); err != nil {
		return // the client went away while queued
	}
	if !match || !ok {
		time.Sleep(failedLoginDelay) // slows guessing before the limit refuses it
		writeError(w, http.StatusForbidden, "M_FORBIDDEN", "unknown user or wrong password")
		return
	}
	token, tokenHash := newToken()
	if _, oerr := srv.commit(&state.Command{Kind: state.KindLogin, Login: &state.Login{UserID: userID, TokenHash: tokenHash}}); oerr != nil {
		writeOpError(w, oerr)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"user_id": userID, "access_token": token})
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

func (srv *Server) handleLogout(w http.ResponseWriter, r *http.Request) {
	token := bearer(r)
	if _, ok, unavailable := srv.userByToken(token); !ok {
		if unavailable {
			writeError(w, http.StatusServiceUnavailable, "M_UNAVAILABLE", "this node cannot reach a quorum; retry")
			return
		}
		writeError(w, http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "unknown or revoked token")
		return
	}
	if _, oerr := srv.commit(&state.Command{Kind: state.KindLogout, Logout: &state.Logout{TokenHash: hashToken(token)}}); oerr != nil {
		writeOpError(w, oerr)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{})
}

func (srv *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	role := "follower"
	if srv.cluster.IsLeader() {
		role = "leader"
	}
	leader, _ := srv.cluster.Leader()
	body := map[string]string{"status": "ok", "org": srv.opts.Org, "node_id": srv.cluster.NodeID(), "role": role, "leader": leader}
	if !srv.cluster.Healthy() {
		body["status"] = "unavailable"
		if srv.cluster.CatchingUp() {
			// An addition to the contract: in contact with a quorum, but still applying the
			// log it started with, so what it would serve is not yet current.
			body["reason"] = "catching_up"
		}
		writeJSON(w, http.StatusServiceUnavailable, body)
		return
	}
	writeJSON(w, http.StatusOK, body)
}

func (srv *Server) handleFederationKey(w http.ResponseWriter, r *http.Request) {
	key, ok := srv.keys.Current()
	if !ok {
		writeError(w, http.StatusServiceUnavailable, "M_UNAVAILABLE", "the org signing key is not made yet")
		return
	}
	body := map[string]any{"org": srv.opts.Org, "public_key": key.PublicKeyString()}
	if len(srv.opts.PreviousKeys) > 0 {
		body["previous_keys"] = srv.opts.PreviousKeys // an addition to the contract: see docs/federation.md
	}
	writeJSON(w, http.StatusOK, body)
}

// clusterAdmin guards the admin routes: with the cluster secret when one is set, and to
// loopback clients only when none is (a single node run by the person at the keyboard).
func (srv *Server) clusterAdmin(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if srv.opts.ClusterSecret == "" && !isLoopback(sourceIP(r)) {
			writeError(w, http.StatusForbidden, "M_FORBIDDEN", "set cluster.secret to use the admin routes from another host")
			return
		}
		if srv.opts.ClusterSecret != "" {
			got := r.Header.Get("X-Parley-Cluster-Secret")
			if subtle.ConstantTimeCompare([]byte(got), []byte(srv.opts.ClusterSecret)) != 1 {
				writeError(w, http.StatusForbidden, "M_FORBIDDEN", "cluster secret required")
				return
			}
		}
		// An operator's call may take longer than httpWriteTimeout (a snapshot of a large
		// state, a join waiting for its node to catch up): its answer must not be cut off.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
		next(w, r)
	}
}

func (srv *Server) handleClusterStatus(w http.ResponseWriter, r *http.Request) {
	st, err := srv.cluster.Status()
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "M_UNAVAILABLE", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// joinNodeIDRE is config's nodeid rule for cluster.node_id.
var joinNodeIDRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

func (srv *Server) handleClusterJoin(w http.ResponseWriter, r *http.Request) {
	var req struct {
		NodeID   string `json:"node_id"`
		RaftAddr string `json:"raft_addr"`
	}
	if !readBody(w, r, &req) {
		return
	}
	if req.NodeID == "" || req.RaftAddr == "" {
		writeError(w, http.StatusBadRequest, "M_INVALID_PARAM", "node_id and raft_addr are required")
		return
	}
	if !joinNodeIDRE.MatchString(req.NodeID) {
		// What cluster.node_id allows (config): an id that a node could not be configured
		// with would sit in the membership, and print into an operator's terminal, as given.
		writeError(w, http.StatusBadRequest, "M_INVALID_PARAM", "node_id must be 1-64 of A-Z a-z 0-9 _ . -")
		return
	}
	if err := consensus.ValidateRaftAddr(req.RaftAddr); err != nil {
		// config's dialaddr rule: a voter nobody can dial would count toward the quorum.
		writeError(w, http.StatusBadRequest, "M_INVALID_PARAM",
			"raft_addr must be host:port that other nodes can dial (a host other than 0.0.0.0 or ::, a port from 1 to 65535)")
		return
	}
	if srv.opts.ClusterSecret == "" {
		// Without a secret, node-to-node traffic would be guarded by a publicly known proof
		// (cluster.secret is required when there is more than one node).
		writeError(w, http.StatusForbidden, "M_FORBIDDEN",
			"this node has no cluster.secret: set the same cluster.secret on every node (and restart) before adding a node")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	if err := srv.cluster.AddVoter(ctx, req.NodeID, req.RaftAddr); err != nil {
		writeMembershipError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{})
}

// handleSnapshot forces a Raft snapshot on this node (before copying its data_dir as a backup).
func (srv *Server) handleSnapshot(w http.ResponseWriter, r *http.Request) {
	if err := srv.cluster.Snapshot(); err != nil {
		writeError(w, http.StatusServiceUnavailable, "M_UNAVAILABLE", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{})
}

func (srv *Server) handleClusterRemove(w http.ResponseWriter, r *http.Request) {
	var req struct {
		NodeID string `json:"node_id"`
	}
	if !readBody(w, r, &req) {
		return
	}
	if req.NodeID == "" {
		writeError(w, http.StatusBadRequest, "M_INVALID_PARAM", "node_id is required")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	if err := srv.cluster.RemoveServer(ctx, req.NodeID); err != nil {
		writeMembershipError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{})
}

// writeMembershipError answers a refused join or remove: 400 for an address nobody can dial,
// 409 for one another member holds, a node that leads a cluster of its own or the removal of
// the only voter, 404 for an
// unknown node id (nothing changed in those), and 503 M_UNAVAILABLE for anything else (a
// joining node that does not answer, no leader, no quorum, a timeout).
func writeMembershipError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, consensus.ErrInvalidRaftAddr):
		writeError(w, http.StatusBadRequest, "M_INVALID_PARAM", err.Error())
	case errors.Is(err, consensus.ErrJoinerLeads):
		// "conflict" (an addition) tells a joining node's retry loop which 409 this is: this
		// one no retry changes, the node's data_dir has to be emptied.
		writeJSON(w, http.StatusConflict, map[string]string{"code": "M_INVALID_PARAM", "message": err.Error(), "conflict": "cluster"})
	case errors.Is(err, consensus.ErrRaftAddrConflict):
		writeJSON(w, http.StatusConflict, map[string]string{"code": "M_INVALID_PARAM", "message": err.Error(), "conflict": "address"})
	case errors.Is(err, consensus.ErrLastVoter):
		writeError(w, http.StatusConflict, "M_INVALID_PARAM", err.Error())
	case errors.Is(err, consensus.ErrNotMember):
		writeError(w, http.StatusNotFound, "M_NOT_FOUND", err.Error())
	default:
		writeError(w, http.StatusServiceUnavailable, "M_UNAVAILABLE", err.Error())
	}
}

// allowedOrigins builds the set of browser origins that may open a WebSocket, each as
// canonicalOrigin writes it.
func allowedOrigins(o Options) map[string]bool {
	set := map[string]bool{}
	if u, err := url.Parse(o.PublicURL); err == nil {
		if origin, ok := canonicalOrigin(u); ok {
			set[origin] = true
		}
	}
	// The loopback origins follow http.listen (the contract), not the public URL: that one is
	// http://localhost:PORT also for a node listening on 0.0.0.0, which must not allow them.
	if host, port, err := net.SplitHostPort(o.Listen); err == nil && isLoopback(host) {
		set["http://localhost:"+port] = true
		set["http://127.0.0.1:"+port] = true
		if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
			set["http://[::1]:"+port] = true
		}
	}
	for _, origin := range o.AllowedOrigins {
		if u, err := url.Parse(origin); err == nil {
			if c, ok := canonicalOrigin(u); ok {
				set[c] = true
			}
		}
	}
	return set
}

// canonicalOrigin writes u's origin as scheme://host[:port], scheme and host lower case and
// without the scheme's default port, so that origins equal by RFC 6454 are equal strings.
func canonicalOrigin(u *url.URL) (string, bool) {
	host := u.Hostname()
	// Browsers write origins in ASCII; anything else is no origin of ours. Checked before
	// lowering the case: strings.ToLower folds some non-ASCII letters (U+212A KELVIN SIGN)
	// into ASCII ones. A % (an escape, an IPv6 zone) would not survive being written back.
	if host == "" || u.User != nil || u.Scheme == "" || !isASCIIHost(host) {
		return "", false
	}
	host = strings.ToLower(host)
	scheme, port := strings.ToLower(u.Scheme), u.Port()
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	if strings.Contains(host, ":") {
		if net.ParseIP(host) == nil {
			return "", false // brackets around something else: no IPv6 address
		}
		host = "[" + host + "]"
	}
	if port != "" {
		host += ":" + port
	}
	return scheme + "://" + host, true
}

// isASCIIHost reports whether host is printable ASCII without a %.
func isASCIIHost(host string) bool {
	for i := 0; i < len(host); i++ {
		if c := host[i]; c <= ' ' || c >= 0x7f || c == '%' {
			return false
		}
	}
	return true
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (srv *Server) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true // not a browser
	}
	u, err := url.Parse(origin)
	if err != nil || u.Opaque != "" || u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		return false // "null", or not an origin at all
	}
	c, ok := canonicalOrigin(u)
	return ok && srv.origins[c]
}

func (srv *Server) handleWebSocket(w http.ResponseWriter, r *http.Request) {
	if !srv.checkOrigin(r) {
		writeError(w, http.StatusForbidden, "M_FORBIDDEN", "origin not allowed")
		return
	}
	ip := sourceKey(r)
	if !srv.connsIP.acquire(ip, srv.opts.Limits.ConnsPerIP) {
		srv.metrics.rateLimited.WithLabelValues("connections_per_ip").Inc()
		writeLimited(w, 10*time.Second, "connections from this address")
		return
	}
	released := false
	defer func() {
		if !released {
			srv.connsIP.release(ip)
		}
	}()
	var user, tokenHash string
	sweeps := srv.hub.sweepsBegun()
	if token := r.URL.Query().Get("access_token"); token != "" {
		u, ok, unavailable := srv.userByToken(token)
		if !ok {
			if unavailable {
				writeError(w, http.StatusServiceUnavailable, "M_UNAVAILABLE", "this node cannot reach a quorum; retry")
				return
			}
			writeError(w, http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "unknown or revoked token")
			return
		}
		user, tokenHash = u, hashToken(token)
	}
	conn, err := srv.upgr.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered
	}
	s := newSession(srv, conn)
	s.user, s.tokenHash, s.sweepsAtAuth, s.addr = user, tokenHash, sweeps, ip
	srv.connMu.Lock()
	if srv.shutting { // Shutdown has closed the sessions it knew of, or is about to
		srv.connMu.Unlock()
		_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "server shutting down"),
			time.Now().Add(closeFrameTimeout))
		conn.Close()
		return
	}
	srv.conns[s] = struct{}{}
	srv.connWG.Add(1)
	srv.connMu.Unlock()
	srv.metrics.connections.Inc()
	released = true
	// The session gets a goroutine of its own and this handler returns: net/http then lets
	// go of the hijacked connection's request, response and buffers (about 10 KiB) and of
	// this deep stack, which would otherwise live as long as the WebSocket.
	go s.run(func() {
		srv.metrics.connections.Dec()
		srv.connMu.Lock()
		delete(srv.conns, s)
		srv.connMu.Unlock()
		srv.connsIP.release(ip)
		srv.connWG.Done()
	})
}
