package config

import (
	"sort"
	"strings"
)

// kind is the type of a configuration key's value.
type kind int

const (
	kindString kind = iota
	kindBool
	kindInt
	kindFloat
	kindList // list-valued: only settable from the YAML file
)

// keySpec describes one configuration key.
type keySpec struct {
	key    string
	kind   kind
	def    any // default value; nil means "no default" (unset unless given)
	usage  string
	secret bool // never echo the value in error messages
}

// specs lists every configuration key. Scalar keys can be set from the
// file, from PARLEY_* variables and from --flags; list keys only from the
// file. The tests check that this table and the Config struct agree.
var specs = []keySpec{
	{key: "org", kind: kindString, def: "localhost", usage: "organisation domain (lower-case DNS-like name)"},
	{key: "data_dir", kind: kindString, def: "./parley-data", usage: "directory for persistent data"},
	{key: "http.listen", kind: kindString, def: "127.0.0.1:8080", usage: "HTTP listen address (host:port)"},
	{key: "http.public_url", kind: kindString, def: "", usage: "public base URL (default: derived from http.listen)"},
	{key: "tls.cert_file", kind: kindString, def: "", usage: "TLS certificate file (set together with tls.key_file)"},
	{key: "tls.key_file", kind: kindString, def: "", usage: "TLS private key file (set together with tls.cert_file)"},
	{key: "ws.allowed_origins", kind: kindList, usage: "extra allowed WebSocket origins (file only)"},
	{key: "ws.max_frame_bytes", kind: kindInt, def: 65536, usage: "maximum WebSocket frame size in bytes (>= 1024)"},
	{key: "ws.write_delay_ms", kind: kindInt, def: 10, usage: "a connection writes at most once per this many ms on average, bursts of 4 allowed: under load pushes leave together in one write (the first after a quiet spell goes at once); 0: every push is written at once (0 to 100)"},
	{key: "registration.open", kind: kindBool, def: true, usage: "allow anyone to register an account"},
	{key: "cluster.node_id", kind: kindString, def: "node1", usage: "this node's id ([A-Za-z0-9_.-]{1,64}; when bootstrapping with cluster.peers, one of their ids)"},
	{key: "cluster.raft_listen", kind: kindString, def: "127.0.0.1:7000", usage: "Raft listen address (host:port)"},
	{key: "cluster.raft_advertise", kind: kindString, def: "", usage: "Raft address advertised to peers (default: cluster.raft_listen)"},
	{key: "cluster.bootstrap", kind: kindBool, def: nil, usage: "bootstrap a new cluster (default: true unless cluster.join is set)"},
	{key: "cluster.peers", kind: kindList, usage: "initial cluster members: list of {id, raft_addr} (file only)"},
	{key: "cluster.join", kind: kindString, def: "", usage: "HTTP address (host:port or URL) of any cluster member to join"},
	{key: "cluster.secret", kind: kindString, def: "", usage: "shared cluster secret (required when cluster.peers has more than one entry, cluster.join is set or cluster.raft_listen is not a loopback address)", secret: true},
	{key: "cluster.tls.cert_file", kind: kindString, def: "", usage: "this node's certificate for mutual TLS between nodes (with cluster.tls.key_file and cluster.tls.ca_file)"},
	{key: "cluster.tls.key_file", kind: kindString, def: "", usage: "this node's private key for mutual TLS between nodes"},
	{key: "cluster.tls.ca_file", kind: kindString, def: "", usage: "CA certificate that signs every node's certificate"},
	{key: "cluster.heartbeat_ms", kind: kindInt, def: 500, usage: "Raft heartbeat timeout in milliseconds (20 to 60000, at most cluster.election_ms)"},
	{key: "cluster.election_ms", kind: kindInt, def: 500, usage: "Raft election timeout in milliseconds (20 to 60000, at least cluster.heartbeat_ms)"},
	{key: "cluster.apply_timeout_ms", kind: kindInt, def: 5000, usage: "how long a write waits for a quorum before M_UNAVAILABLE, in milliseconds (100 to 3600000)"},
	{key: "cluster.snapshot_threshold", kind: kindInt, def: 8192, usage: "Raft log entries between snapshots (>= 16)"},
	{key: "cluster.trailing_logs", kind: kindInt, def: 10240, usage: "Raft log entries kept after a snapshot (>= 1)"},
	{key: "amqp.url", kind: kindString, def: "", usage: "RabbitMQ URL (amqp:// or amqps://)", secret: true},
	{key: "federation.key_file", kind: kindString, def: "", usage: "federation signing key file"},
	{key: "federation.peers", kind: kindList, usage: "federated orgs: list of {org, public_key, previous_keys} (file only; previous_keys: the org's keys from before a rotation, still accepted)"},
	{key: "federation.previous_keys", kind: kindList, usage: "this org's public keys from before a key rotation, so its own older events still verify (file only)"},
	{key: "limits.send_per_second", kind: kindFloat, def: 10.0, usage: "sustained writes (messages, typing, …) and new connections per second per user (> 0)"},
	{key: "limits.send_burst", kind: kindInt, def: 50, usage: "burst size of writes and of new connections per user (>= 1)"},
	{key: "limits.login_per_minute", kind: kindInt, def: 10, usage: "login attempts per account and per source address per minute (>= 1)"},
	{key: "limits.register_per_hour", kind: kindInt, def: 30, usage: "registrations per source address per hour (>= 1)"},
	{key: "limits.connections_per_user", kind: kindInt, def: 50, usage: "WebSocket connections per user on one node (>= 1)"},
	{key: "limits.connections_per_ip", kind: kindInt, def: 1000, usage: "WebSocket connections per source address on one node (>= 1)"},
	{key: "limits.rooms_per_hour", kind: kindInt, def: 60, usage: "rooms a user may create per hour (>= 1)"},
	{key: "limits.joins_per_hour", kind: kindInt, def: 600, usage: "joins per user per hour (>= 1)"},
	{key: "limits.unauthenticated_connections", kind: kindInt, def: 2000, usage: "WebSocket connections not yet authenticated, per node (>= 1)"},
	{key: "bridges", kind: kindList, usage: "AMQP bridges: list of {id, amqp_user, namespace, rooms} (file only)"},
	{key: "log.level", kind: kindString, def: "info", usage: "log level: debug, info, warn or error"},
	{key: "admin.listen", kind: kindString, def: "", usage: "admin/pprof listen address (host:port; empty disables it)"},
	{key: "memory.huge_pages", kind: kindBool, def: false, usage: "ask Linux for transparent huge pages for the heap's growth (the in-memory state): fewer page faults, but a fault may stall while the kernel compacts memory on a fragmented host; no effect where the kernel's mode is never"},
}

// listItemFields gives, for list keys whose items are mappings, the allowed
// fields of an item and whether each field is itself a list of strings.
// List keys not named here are lists of strings.
var listItemFields = map[string]map[string]bool{
	"cluster.peers":    {"id": false, "raft_addr": false},
	"federation.peers": {"org": false, "public_key": false, "previous_keys": true},
	"bridges":          {"id": false, "amqp_user": false, "namespace": false, "rooms": true},
}

var (
	specByKey = map[string]*keySpec{}
	sections  = map[string]bool{} // "http", "cluster", ...
	allKeys   []string            // sorted, for suggestions
)

func init() {
	for i := range specs {
		s := &specs[i]
		specByKey[s.key] = s
		allKeys = append(allKeys, s.key)
		parts := strings.Split(s.key, ".")
		for j := 1; j < len(parts); j++ {
			sections[strings.Join(parts[:j], ".")] = true
		}
	}
	sort.Strings(allKeys)
}

// EnvVar returns the environment variable that sets key:
// PARLEY_ + the key upper-cased with "." replaced by "_".
func EnvVar(key string) string {
	return "PARLEY_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// suggest returns the known key closest to an unknown one, or "".
func suggest(unknown string) string {
	best, bestDist := "", 3 // only suggest close matches
	for _, k := range allKeys {
		if d := editDistance(unknown, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best == "" {
		// A correct leaf under a wrong or missing section, e.g. "node_id"
		// at the top level: suggest it if exactly one key has that leaf.
		leaf := unknown[strings.LastIndexByte(unknown, '.')+1:]
		for _, k := range allKeys {
			if k[strings.LastIndexByte(k, '.')+1:] == leaf {
				if best != "" {
					return ""
				}
				best = k
			}
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 100 || len(b) > 100 {
		return 100
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
