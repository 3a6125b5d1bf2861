// Package config loads a Parley node's configuration from a YAML file,
// PARLEY_* environment variables and flags, applies defaults that run out
// of the box, and validates it.
//
// Precedence, lowest first: built-in defaults, the YAML file (--config FILE
// or PARLEY_CONFIG), environment variables, flags. Every scalar key, nested
// ones included, can be set by the variable PARLEY_ + the key upper-cased
// with "." replaced by "_" (http.listen: PARLEY_HTTP_LISTEN) and by the flag
// --KEY (--http.listen). List-valued keys (ws.allowed_origins,
// cluster.peers, federation.peers, bridges) come from the file only.
//
// Every problem is reported as an *Error naming the offending key; a
// program should exit with ExitCode when Load fails.
package config

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// ExitCode is the process exit code for bad configuration.
const ExitCode = 2

// Config is a Parley node's configuration.
type Config struct {
	Org          string             `mapstructure:"org" validate:"required,org"`
	DataDir      string             `mapstructure:"data_dir" validate:"required"`
	HTTP         HTTPConfig         `mapstructure:"http"`
	TLS          TLSConfig          `mapstructure:"tls"`
	WS           WSConfig           `mapstructure:"ws"`
	Registration RegistrationConfig `mapstructure:"registration"`
	Cluster      ClusterConfig      `mapstructure:"cluster"`
	AMQP         AMQPConfig         `mapstructure:"amqp"`
	Federation   FederationConfig   `mapstructure:"federation"`
	Limits       LimitsConfig       `mapstructure:"limits"`
	Bridges      []BridgeConfig     `mapstructure:"bridges" validate:"dive"`
	Log          LogConfig          `mapstructure:"log"`
	Admin        AdminConfig        `mapstructure:"admin"`
	Memory       MemoryConfig       `mapstructure:"memory"`
}

// HTTPConfig is the client-facing HTTP/WebSocket listener.
type HTTPConfig struct {
	Listen string `mapstructure:"listen" validate:"required,hostport"`
	// PublicURL is the externally visible base URL, without a trailing
	// slash. Load fills it in from Listen when it is not configured.
	PublicURL string `mapstructure:"public_url" validate:"omitempty,httpurl"`
}

// TLSConfig enables HTTPS when both files are set.
type TLSConfig struct {
	CertFile string `mapstructure:"cert_file"`
	KeyFile  string `mapstructure:"key_file"`
}

// Enabled reports whether TLS is configured.
func (t TLSConfig) Enabled() bool { return t.CertFile != "" && t.KeyFile != "" }

// WSConfig configures WebSocket connections.
type WSConfig struct {
	// AllowedOrigins are origins (scheme://host[:port]) accepted in
	// addition to the public URL's own origin.
	AllowedOrigins []string `mapstructure:"allowed_origins" validate:"dive,origin"`
	MaxFrameBytes  int      `mapstructure:"max_frame_bytes" validate:"min=1024"`
	// WriteDelayMS coalesces pushes into fewer writes (an addition).
	WriteDelayMS int `mapstructure:"write_delay_ms" validate:"min=0,max=100"`
}

// RegistrationConfig controls account sign-up.
type RegistrationConfig struct {
	Open bool `mapstructure:"open"`
}

// ClusterConfig configures Raft clustering.
type ClusterConfig struct {
	NodeID     string `mapstructure:"node_id" validate:"required,nodeid"`
	RaftListen string `mapstructure:"raft_listen" validate:"required,hostport"`
	// RaftAdvertise is the Raft address other nodes dial. Load fills it in
	// from RaftListen when it is not configured.
	RaftAdvertise string `mapstructure:"raft_advertise" validate:"omitempty,hostport"`
	// Bootstrap is the effective value: as configured, or else true when
	// Join is empty. BootstrapSet reports whether it was configured.
	Bootstrap    bool         `mapstructure:"bootstrap"`
	BootstrapSet bool         `mapstructure:"-"`
	Peers        []PeerConfig `mapstructure:"peers" validate:"dive"`
	// Join is the HTTP address (host:port or http(s) URL) of any member.
	Join   string `mapstructure:"join" validate:"omitempty,joinaddr"`
	Secret string `mapstructure:"secret"`
	// TLS between nodes (an addition): all three files, or none.
	TLS ClusterTLSConfig `mapstructure:"tls"`
	// Raft tuning (additions to the contract). The millisecond keys have upper bounds: past
	// them a value makes no sense for a chat cluster, and far past them the time.Duration it
	// becomes overflows (a negative timeout fails every wait at once). ElectionMS must also be
	// at least HeartbeatMS (validate.go), or Raft refuses to start.
	HeartbeatMS       int `mapstructure:"heartbeat_ms" validate:"min=20,max=60000"`
	ElectionMS        int `mapstructure:"election_ms" validate:"min=20,max=60000"`
	ApplyTimeoutMS    int `mapstructure:"apply_timeout_ms" validate:"min=100,max=3600000"`
	SnapshotThreshold int `mapstructure:"snapshot_threshold" validate:"min=16"`
	TrailingLogs      int `mapstructure:"trailing_logs" validate:"min=1"`
}

// JoinURL returns Join as a URL: a bare host:port becomes http://host:port.
// It returns "" when Join is empty.
func (c ClusterConfig) JoinURL() string {
	if c.Join == "" || strings.Contains(c.Join, "://") {
		return strings.TrimRight(c.Join, "/")
	}
	return "http://" + c.Join
}

// ClusterTLSConfig enables mutual TLS for Raft and forwarding.
type ClusterTLSConfig struct {
	CertFile string `mapstructure:"cert_file"`
	KeyFile  string `mapstructure:"key_file"`
	CAFile   string `mapstructure:"ca_file"`
}

// Enabled reports whether mutual TLS between nodes is configured.
func (t ClusterTLSConfig) Enabled() bool {
	return t.CertFile != "" && t.KeyFile != "" && t.CAFile != ""
}

// PeerConfig is one initial cluster member.
type PeerConfig struct {
	ID       string `mapstructure:"id" validate:"required,nodeid"`
	RaftAddr string `mapstructure:"raft_addr" validate:"required,dialaddr"`
}

// AMQPConfig configures the RabbitMQ connection.
type AMQPConfig struct {
	URL string `mapstructure:"url" validate:"omitempty,amqpurl"`
}

// FederationConfig configures federation with other orgs.
type FederationConfig struct {
	KeyFile string                 `mapstructure:"key_file"`
	Peers   []FederationPeerConfig `mapstructure:"peers" validate:"dive"`
	// PreviousKeys are this org's earlier public keys (an addition to the contract): its own
	// events signed before a key rotation still verify when they come back to it.
	PreviousKeys []string `mapstructure:"previous_keys" validate:"dive,fedkey"`
}

// FederationPeerConfig is a trusted remote org.
type FederationPeerConfig struct {
	Org       string `mapstructure:"org" validate:"required,org"`
	PublicKey string `mapstructure:"public_key" validate:"required,fedkey"`
	// PreviousKeys are keys the org signed with before a rotation (an addition to the
	// contract): transactions and events signed by them are still accepted.
	PreviousKeys []string `mapstructure:"previous_keys" validate:"dive,fedkey"`
}

// LimitsConfig configures per-user rate limits.
type LimitsConfig struct {
	SendPerSecond float64 `mapstructure:"send_per_second" validate:"gt=0"`
	SendBurst     int     `mapstructure:"send_burst" validate:"min=1"`
	// Abuse limits (additions to the contract).
	LoginPerMinute             int `mapstructure:"login_per_minute" validate:"min=1"`
	RegisterPerHour            int `mapstructure:"register_per_hour" validate:"min=1"`
	ConnectionsPerUser         int `mapstructure:"connections_per_user" validate:"min=1"`
	ConnectionsPerIP           int `mapstructure:"connections_per_ip" validate:"min=1"`
	RoomsPerHour               int `mapstructure:"rooms_per_hour" validate:"min=1"`
	JoinsPerHour               int `mapstructure:"joins_per_hour" validate:"min=1"`
	UnauthenticatedConnections int `mapstructure:"unauthenticated_connections" validate:"min=1"`
}

// BridgeConfig is an AMQP bridge account.
type BridgeConfig struct {
	ID       string `mapstructure:"id" validate:"required,nodeid"`
	AMQPUser string `mapstructure:"amqp_user" validate:"required"`
	// Namespace is a Go regular expression.
	Namespace string   `mapstructure:"namespace" validate:"required,goregexp"`
	Rooms     []string `mapstructure:"rooms" validate:"dive,required"`
}

// LogConfig configures logging.
type LogConfig struct {
	Level string `mapstructure:"level" validate:"oneof=debug info warn error"`
}

// AdminConfig configures the opt-in admin/pprof listener.
type AdminConfig struct {
	Listen string `mapstructure:"listen" validate:"omitempty,hostport"`
}

// MemoryConfig tunes how the node's process uses memory.
type MemoryConfig struct {
	// HugePages backs the heap's growth with transparent huge pages (node/hugeheap).
	HugePages bool `mapstructure:"huge_pages"`
}

// Error is a configuration problem with one key.
type Error struct {
	Key     string // dotted key, e.g. "http.listen" or "cluster.peers[1].id"; or a flag name
	Problem string // what is wrong
}

func (e *Error) Error() string {
	if e.Key == "config" { // the file itself: its problem names it, and "config: config:" would stutter
		return "config: " + e.Problem
	}
	return "config: " + e.Key + ": " + e.Problem
}

// PublicURL returns the externally visible base URL without a trailing
// slash: http.public_url if set, otherwise derived from http.listen
// ("https://" when TLS is configured; an empty or unspecified host such as
// 0.0.0.0 becomes "localhost").
func (c *Config) PublicURL() string {
	if c.HTTP.PublicURL != "" {
		return strings.TrimRight(c.HTTP.PublicURL, "/")
	}
	scheme := "http://"
	if c.TLS.Enabled() {
		scheme = "https://"
	}
	host, port, err := net.SplitHostPort(c.HTTP.Listen)
	if err != nil {
		return scheme + c.HTTP.Listen
	}
	if host == "" {
		host = "localhost"
	} else if a, err := netip.ParseAddr(host); err == nil && a.IsUnspecified() {
		host = "localhost"
	}
	return scheme + net.JoinHostPort(host, port)
}

// MultiNode reports whether this node is part of a multi-node cluster:
// more than one configured peer, or joining an existing cluster.
func (c *Config) MultiNode() bool {
	return len(c.Cluster.Peers) > 1 || c.Cluster.Join != ""
}

// String describes where a value came from, for error messages.
func (s source) String() string {
	switch s.kind {
	case fromFile:
		return "config file " + s.name
	case fromEnv:
		return s.name
	case fromFlag:
		return "--" + s.name
	}
	return "default"
}

type sourceKind int

const (
	fromDefault sourceKind = iota
	fromFile
	fromEnv
	fromFlag
)

type source struct {
	kind sourceKind
	name string
}

func describeValue(v any) string {
	if s, ok := v.(string); ok {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprint(v)
}
