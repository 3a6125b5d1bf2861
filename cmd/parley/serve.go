package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/parley-chat/parley/bridge"
	"github.com/parley-chat/parley/config"
	"github.com/parley-chat/parley/consensus"
	"github.com/parley-chat/parley/federation"
	"github.com/parley-chat/parley/node"
	"github.com/parley-chat/parley/node/hugeheap"
)

func serve(args []string) int {
	cfg, err := config.Load(args, os.Environ())
	if errors.Is(err, config.ErrHelp) {
		fmt.Print(serveUsage + config.Usage())
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "parley serve: %v\n", err)
		return config.ExitCode
	}
	log := newLogger(cfg.Log.Level)
	if cfg.Memory.HugePages { // first, while the heap is small and fresh (hugeheap.Reserve)
		reserveHugePages(log)
	}
	// The files the configuration names are read before Raft touches data_dir, so that a bad
	// one is reported as the configuration problem it is (exit 2, naming its key).
	if err := checkKeyFile(cfg.Federation.KeyFile); err != nil {
		fmt.Fprintf(os.Stderr, "parley serve: %v\n", err)
		return config.ExitCode
	}
	var certs *node.CertReloader
	if cfg.TLS.Enabled() {
		if certs, err = loadCert(cfg.TLS); err != nil {
			fmt.Fprintf(os.Stderr, "parley serve: %v\n", err)
			return config.ExitCode
		}
	}
	copts := clusterOptions(cfg)
	if cfg.Cluster.TLS.Enabled() {
		if copts.ServerTLS, copts.ClientTLS, err = clusterTLS(cfg.Cluster.TLS); err != nil {
			fmt.Fprintf(os.Stderr, "parley serve: %v\n", err)
			return config.ExitCode
		}
	}
	// The listeners come before Raft opens data_dir: a port already taken must leave an empty
	// data_dir empty, not bootstrapped (TestServeThatCannotListenLeavesDataDir).
	stopAdmin, err := startAdmin(cfg.Admin.Listen, log)
	if err != nil {
		log.Error("cannot listen", "admin.listen", cfg.Admin.Listen, "err", err)
		return 1
	}
	defer stopAdmin()
	ln, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		log.Error("cannot listen", "addr", cfg.HTTP.Listen, "err", err)
		return 1
	}
	// Served at once: until the node is open (a long replay of a big log), every request is
	// answered 503 rather than left waiting in the backlog (TestHTTPAnswersWhileTheNodeOpens).
	front := node.ServeFront(ln, certs, cfg.Org, cfg.Cluster.NodeID, log)
	srv, err := node.New(nodeOptions(cfg, log), copts)
	if err != nil {
		log.Error("cannot start the node", "err", err)
		_ = front.Close()
		return 1
	}
	fed, err := startFederation(cfg, srv, log)
	if err != nil {
		log.Error("cannot start federation", "err", err)
		_ = front.Close()
		_ = srv.Shutdown(context.Background())
		return config.ExitCode
	}
	br, err := startBridges(cfg, srv, fed, log)
	if err != nil {
		log.Error("cannot start bridges", "err", err)
		_ = front.Close()
		if fed != nil {
			fed.Close()
		}
		_ = srv.Shutdown(context.Background())
		return config.ExitCode
	}
	front.Open(srv)
	errc := front.Err()
	log.Info("Parley is running: point a browser at "+cfg.PublicURL()+"/",
		"org", cfg.Org, "node_id", cfg.Cluster.NodeID, "websocket", webSocketURL(cfg.PublicURL()), "data_dir", cfg.DataDir)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	joinRefused := make(chan error, 1)
	if cfg.Cluster.Join != "" {
		go func() {
			if err := joinCluster(ctx, log, cfg); err != nil {
				joinRefused <- err
			}
		}()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	code := 0
wait:
	for {
		select {
		case <-hup:
			if certs == nil {
				continue
			}
			if err := certs.Reload(); err != nil {
				log.Error("certificate reload failed; keeping the old one", "err", err)
			} else {
				log.Info("TLS certificate reloaded")
			}
		case <-ctx.Done():
			log.Info("shutting down")
			break wait
		case err := <-errc:
			log.Error("http server failed", "err", err)
			code = 1
			break wait
		case err := <-joinRefused:
			// Serving on would run this node apart from the cluster it was told to join, under
			// the same org name: with a cluster of its own in its data_dir, a split brain.
			log.Error("cluster join refused for good: stopping", "via", cfg.Cluster.Join, "err", err)
			code = 1
			break wait
		}
	}
	if br != nil {
		br.Close() // stop relaying and consuming before Raft goes away
	}
	if fed != nil {
		fed.Close() // stop relaying and consuming before Raft goes away
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		log.Error("shutdown", "err", err)
		code = 1
	}
	return code
}

const serveUsage = `usage: parley serve [--config FILE] [--KEY=VALUE ...]

Every key is also set by its PARLEY_* variable (see docs/operations.md). A boolean flag takes
its value only as --KEY=VALUE (a bare --KEY means true); other flags take --KEY VALUE as well.

flags:
`

// webSocketURL is the ws:// (wss:// behind TLS) address of the WebSocket endpoint under publicURL.
func webSocketURL(publicURL string) string {
	if rest, ok := strings.CutPrefix(publicURL, "https://"); ok {
		return "wss://" + rest + "/v1/ws"
	}
	return "ws://" + strings.TrimPrefix(publicURL, "http://") + "/v1/ws"
}

// checkKeyFile reads and parses federation.key_file, when set.
func checkKeyFile(path string) error {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return &config.Error{Key: "federation.key_file", Problem: err.Error()}
	}
	if _, err := federation.ParseKey(data); err != nil {
		return &config.Error{Key: "federation.key_file", Problem: fmt.Sprintf("%s: %v", path, err)}
	}
	return nil
}

// loadCert loads the HTTPS certificate, naming the key whose file is at fault: the error of
// tls.LoadX509KeyPair names neither.
func loadCert(c config.TLSConfig) (*node.CertReloader, error) {
	certPEM, err := os.ReadFile(c.CertFile)
	if err != nil {
		return nil, &config.Error{Key: "tls.cert_file", Problem: err.Error()}
	}
	keyPEM, err := os.ReadFile(c.KeyFile)
	if err != nil {
		return nil, &config.Error{Key: "tls.key_file", Problem: err.Error()}
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		if !holdsCertificate(certPEM) {
			return nil, &config.Error{Key: "tls.cert_file", Problem: fmt.Sprintf("%s: no PEM certificate in the file (%v)", c.CertFile, err)}
		}
		return nil, &config.Error{Key: "tls.key_file", Problem: fmt.Sprintf("%s: not the private key of the certificate in tls.cert_file (%v)", c.KeyFile, err)}
	}
	certs, err := node.NewCertReloader(c.CertFile, c.KeyFile)
	if err != nil { // the files changed since they were checked
		return nil, &config.Error{Key: "tls.cert_file", Problem: err.Error()}
	}
	return certs, nil
}

// holdsCertificate reports whether data's first PEM certificate block parses.
func holdsCertificate(data []byte) bool {
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			return false
		}
		if b.Type == "CERTIFICATE" {
			_, err := x509.ParseCertificate(b.Bytes)
			return err == nil
		}
	}
}

// startFederation connects the node to its peers over AMQP when amqp.url is set.
func startFederation(cfg *config.Config, srv *node.Server, log *slog.Logger) (*federation.Service, error) {
	if cfg.AMQP.URL == "" {
		return nil, nil
	}
	peers := make(map[string]federation.PeerKey, len(cfg.Federation.Peers))
	for i, p := range cfg.Federation.Peers {
		keyID, pub, err := federation.ParsePublicKey(p.PublicKey)
		if err != nil {
			return nil, &config.Error{Key: fmt.Sprintf("federation.peers[%d].public_key", i), Problem: err.Error()}
		}
		previous, err := parsePublicKeys(fmt.Sprintf("federation.peers[%d].previous_keys", i), p.PreviousKeys)
		if err != nil {
			return nil, err
		}
		peers[p.Org] = federation.PeerKey{KeyID: keyID, Public: pub, Previous: previous}
	}
	ownPrevious, err := parsePublicKeys("federation.previous_keys", cfg.Federation.PreviousKeys)
	if err != nil {
		return nil, err
	}
	svc, err := federation.Start(federation.Options{Org: cfg.Org, Cluster: srv.Cluster(), Keys: srv.Keys(),
		AMQPURL: cfg.AMQP.URL, Peers: peers, PreviousKeys: ownPrevious, Logger: log, OnTyping: srv.SetRemoteTyping,
		OnPresence: srv.SetRemotePresence, OnlineUsers: srv.OnlineUsers,
		OnRelayed:    srv.ObserveRelay,
		OnBacklog:    srv.SetRelayBacklog,
		OnDeadLetter: func(code string) { srv.CountDeadLetter("federation", code) },
		OnReconnect:  func() { srv.CountReconnect("federation") }})
	if err != nil {
		return nil, err
	}
	srv.SetRemoteRooms(svc)
	srv.SetPresenceSender(svc.SendPresence) // local users' presence to the orgs sharing a room
	return svc, nil
}

// startBridges connects the org's rooms to external systems over AMQP when amqp.url is set and
// bridges are configured.
func startBridges(cfg *config.Config, srv *node.Server, fed *federation.Service, log *slog.Logger) (*bridge.Service, error) {
	if len(cfg.Bridges) == 0 {
		return nil, nil
	}
	if cfg.AMQP.URL == "" {
		log.Warn("bridges are configured but amqp.url is not: bridges are off", "bridges", len(cfg.Bridges))
		return nil, nil
	}
	onTyping := srv.SetRemoteTyping
	if fed != nil {
		onTyping = func(room, user string, typing bool, timeout time.Duration) {
			srv.SetRemoteTyping(room, user, typing, timeout)
			fed.SendTyping(room, user, typing, timeout)
		}
	}
	opts := bridge.Options{Org: cfg.Org, Cluster: srv.Cluster(), AMQPURL: cfg.AMQP.URL,
		Bridges: cfg.Bridges, Logger: log, OnTyping: onTyping,
		OnDeadLetter: func(code string) { srv.CountDeadLetter("bridge", code) },
		OnReconnect:  func() { srv.CountReconnect("bridge") },
		OnPublished:  srv.CountBridgePublished, OnBacklog: srv.SetBridgeBacklog}
	if fed != nil {
		opts.Remote = fed // virtual users join and leave rooms of peer orgs through their home org
	}
	return bridge.Start(opts)
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

func nodeOptions(cfg *config.Config, log *slog.Logger) node.Options {
	return node.Options{
		Org:              cfg.Org,
		PublicURL:        cfg.PublicURL(),
		Listen:           cfg.HTTP.Listen,
		AllowedOrigins:   cfg.WS.AllowedOrigins,
		MaxFrameBytes:    cfg.WS.MaxFrameBytes,
		WriteDelay:       time.Duration(cfg.WS.WriteDelayMS) * time.Millisecond,
		RegistrationOpen: cfg.Registration.Open,
		SendPerSecond:    cfg.Limits.SendPerSecond,
		SendBurst:        cfg.Limits.SendBurst,
		ClusterSecret:    cfg.Cluster.Secret,
		KeyFile:          cfg.Federation.KeyFile,
		PreviousKeys:     cfg.Federation.PreviousKeys,
		Limits: node.Limits{
			LoginPerMinute: cfg.Limits.LoginPerMinute, RegisterPerHour: cfg.Limits.RegisterPerHour,
			ConnsPerUser: cfg.Limits.ConnectionsPerUser, ConnsPerIP: cfg.Limits.ConnectionsPerIP,
			RoomsPerHour: cfg.Limits.RoomsPerHour, JoinsPerHour: cfg.Limits.JoinsPerHour,
			MaxUnauthenticated: cfg.Limits.UnauthenticatedConnections,
		},
		WriteTimeout: time.Duration(cfg.Cluster.ApplyTimeoutMS+1000) * time.Millisecond,
		Logger:       log,
	}
}

func clusterOptions(cfg *config.Config) consensus.Options {
	peers := make([]consensus.Peer, 0, len(cfg.Cluster.Peers))
	for _, p := range cfg.Cluster.Peers {
		peers = append(peers, consensus.Peer{ID: p.ID, RaftAddr: p.RaftAddr})
	}
	return consensus.Options{
		NodeID:    cfg.Cluster.NodeID,
		DataDir:   cfg.DataDir,
		RaftBind:  cfg.Cluster.RaftListen,
		Advertise: cfg.Cluster.RaftAdvertise,
		Secret:    cfg.Cluster.Secret,
		Bootstrap: cfg.Cluster.Bootstrap,
		Peers:     peers,

		HeartbeatTimeout:  time.Duration(cfg.Cluster.HeartbeatMS) * time.Millisecond,
		ElectionTimeout:   time.Duration(cfg.Cluster.ElectionMS) * time.Millisecond,
		ApplyTimeout:      time.Duration(cfg.Cluster.ApplyTimeoutMS) * time.Millisecond,
		SnapshotThreshold: uint64(cfg.Cluster.SnapshotThreshold),
		TrailingLogs:      uint64(cfg.Cluster.TrailingLogs),
	}
}

// reserveHugePages asks for transparent huge pages for the heap's growth and logs the outcome.
func reserveHugePages(log *slog.Logger) {
	r, err := hugeheap.Reserve(hugeheap.DefaultReserve)
	switch {
	case err != nil:
		log.Warn("heap stays on ordinary pages", "err", err)
	case r.Strict:
		log.Info("heap stays on ordinary pages: memory is committed strictly (vm.overcommit_memory=2)")
	case r.Reserved > 0:
		log.Info("heap growth backed by transparent huge pages", "reserved_mib", r.Reserved>>20, "thp_mode", r.Mode)
	default:
		log.Info("heap stays on ordinary pages: transparent huge pages unavailable", "thp_mode", r.Mode)
	}
}

// clusterTLS builds mutual TLS for node-to-node traffic: each side presents its certificate and
// accepts only peers whose certificates the cluster CA signed.
func clusterTLS(c config.ClusterTLSConfig) (server, client *tls.Config, err error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, nil, &config.Error{Key: "cluster.tls.cert_file", Problem: err.Error()}
	}
	caPEM, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, nil, &config.Error{Key: "cluster.tls.ca_file", Problem: err.Error()}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, nil, &config.Error{Key: "cluster.tls.ca_file", Problem: "no PEM certificate in the file"}
	}
	server = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	client = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, RootCAs: pool}
	return server, client, nil
}

// joinCluster asks a member to add this node, retrying until it succeeds or the node stops
// (nil either way). A refusal no retry can change (409, this node's data_dir holds a cluster of
// its own or another cluster's) is returned.
func joinCluster(ctx context.Context, log *slog.Logger, cfg *config.Config) error {
	body, _ := json.Marshal(map[string]string{"node_id": cfg.Cluster.NodeID, "raft_addr": cfg.Cluster.RaftAdvertise})
	client := &http.Client{Timeout: 20 * time.Second}
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, cfg.Cluster.JoinURL()+"/v1/cluster/join", bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("bad join address %q: %w", cfg.Cluster.Join, err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Parley-Cluster-Secret", cfg.Cluster.Secret)
		resp, err := client.Do(req)
		if err == nil {
			answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				log.Info("joined the cluster", "via", cfg.Cluster.Join)
				return nil
			}
			// The member says why (an address another member holds, a node it cannot reach):
			// the operator reads it here.
			err = fmt.Errorf("%s: %s", resp.Status, describeError(answer))
			if resp.StatusCode == http.StatusConflict && conflictKind(answer) == "cluster" {
				// This node's data_dir holds a cluster of its own or another cluster's: no retry
				// changes that, an operator must. (A raft address another member holds may
				// free up, when that member moves: that one is retried.)
				return err
			}
		}
		log.Warn("cluster join failed, retrying", "via", cfg.Cluster.Join, "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// conflictKind is the "conflict" of a member's 409 answer to a join: "cluster" or "address".
func conflictKind(answer []byte) string {
	var a struct {
		Conflict string `json:"conflict"`
	}
	_ = json.Unmarshal(answer, &a)
	return a.Conflict
}

// parsePublicKeys parses a list of "ed25519:KEYID:BASE64" keys from the configuration key key.
func parsePublicKeys(key string, list []string) ([]federation.PublicKey, error) {
	var out []federation.PublicKey
	for i, s := range list {
		keyID, pub, err := federation.ParsePublicKey(s)
		if err != nil {
			return nil, &config.Error{Key: fmt.Sprintf("%s[%d]", key, i), Problem: err.Error()}
		}
		out = append(out, federation.PublicKey{KeyID: keyID, Public: pub})
	}
	return out, nil
}
