package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
)

// writeFile writes a YAML config into a temp dir and returns its path.
func writeFile(t testing.TB, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "parley.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// configErrors flattens err (possibly an errors.Join) into its *Errors.
func configErrors(err error) []*Error {
	var out []*Error
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if ce, ok := e.(*Error); ok {
			out = append(out, ce)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		walk(errors.Unwrap(e))
	}
	walk(err)
	return out
}

func mustLoad(t *testing.T, args, env []string) *Config {
	t.Helper()
	c, err := Load(args, env)
	if err != nil {
		t.Fatalf("Load(%q, %q): %v", args, env, err)
	}
	return c
}

func TestDefaults(t *testing.T) {
	got := mustLoad(t, nil, nil)
	want := &Config{
		Org:          "localhost",
		DataDir:      "./parley-data",
		HTTP:         HTTPConfig{Listen: "127.0.0.1:8080", PublicURL: "http://127.0.0.1:8080"},
		WS:           WSConfig{MaxFrameBytes: 65536, WriteDelayMS: 10},
		Registration: RegistrationConfig{Open: true},
		Cluster: ClusterConfig{
			NodeID:        "node1",
			RaftListen:    "127.0.0.1:7000",
			RaftAdvertise: "127.0.0.1:7000",
			Bootstrap:     true,
			HeartbeatMS:   500, ElectionMS: 500, ApplyTimeoutMS: 5000, SnapshotThreshold: 8192, TrailingLogs: 10240,
		},
		Limits: LimitsConfig{SendPerSecond: 10, SendBurst: 50, LoginPerMinute: 10, RegisterPerHour: 30, ConnectionsPerUser: 50,
			ConnectionsPerIP: 1000, RoomsPerHour: 60, JoinsPerHour: 600, UnauthenticatedConnections: 2000},
		Log: LogConfig{Level: "info"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("defaults:\n got %+v\nwant %+v", got, want)
	}
	if got.MultiNode() {
		t.Error("default config is multi-node")
	}
	if got.Cluster.BootstrapSet {
		t.Error("BootstrapSet true without configuration")
	}
	// Unrelated variables change nothing.
	got2 := mustLoad(t, []string{}, []string{"PATH=/bin", "PARLEY_TEST_AMQP_URL=amqp://x", "NOEQUALS"})
	if !reflect.DeepEqual(got2, want) {
		t.Fatalf("with unrelated env:\n got %+v\nwant %+v", got2, want)
	}
}

const fullYAML = `
org: example.com
data_dir: /var/lib/parley
http:
  listen: 0.0.0.0:443
  public_url: https://chat.example.com/
tls:
  cert_file: /etc/parley/cert.pem
  key_file: /etc/parley/key.pem
ws:
  allowed_origins: [https://app.example.com, "http://localhost:3000"]
  max_frame_bytes: 2048
registration:
  open: false
cluster:
  node_id: n1
  raft_listen: 0.0.0.0:7000
  raft_advertise: 10.0.0.1:7000
  bootstrap: true
  peers:
    - id: n1
      raft_addr: 10.0.0.1:7000
    - {id: n2, raft_addr: "10.0.0.2:7000"}
    - {ID: n3, Raft_Addr: "node3.internal:7000"}
  secret: s3cret
amqp:
  url: amqps://user:pw@mq.example.com:5671/vhost
federation:
  key_file: /etc/parley/fed.key
  peers:
    - org: other.org
      public_key: "ed25519:k1:AAAA+/"
limits:
  send_per_second: 2.5
  send_burst: 7
bridges:
  - id: irc
    amqp_user: bridge-irc
    namespace: '^irc_[a-z]+$'
    rooms: [general, random]
  - id: slack
    amqp_user: bridge-slack
    namespace: 'slack\..*'
log:
  level: DEBUG
admin:
  listen: 127.0.0.1:6060
memory:
  huge_pages: true
`

// A variable set to "" overrides the file (os.LookupEnv semantics): it clears keys for which
// empty is valid, and is refused, naming the variable, for keys for which it is not.
func TestEmptyEnvOverridesFile(t *testing.T) {
	path := writeFile(t, "amqp: {url: 'amqp://guest:guest@127.0.0.1:5672/'}\ncluster: {join: '10.0.0.1:8080', secret: s}\nlog: {level: debug}\n")
	got := mustLoad(t, []string{"--config", path}, []string{"PARLEY_AMQP_URL=", "PARLEY_CLUSTER_JOIN="})
	if got.AMQP.URL != "" || got.Cluster.Join != "" {
		t.Fatalf("empty variables did not clear the file's values: amqp.url %q, cluster.join %q", got.AMQP.URL, got.Cluster.Join)
	}
	if !got.Cluster.Bootstrap || got.MultiNode() {
		t.Fatalf("with cluster.join cleared the node should bootstrap alone: %+v", got.Cluster)
	}
	if got.Log.Level != "debug" || got.Cluster.Secret != "s" {
		t.Fatalf("unset variables changed file values: %+v", got)
	}
	for _, tc := range []struct{ env, key, substr string }{
		{"PARLEY_ORG=", "org", "(from PARLEY_ORG)"},
		{"PARLEY_HTTP_LISTEN=", "http.listen", "PARLEY_HTTP_LISTEN"},
		{"PARLEY_CLUSTER_HEARTBEAT_MS=", "cluster.heartbeat_ms", "must be an integer"},
		{"PARLEY_REGISTRATION_OPEN=", "registration.open", "must be true or false"},
	} {
		_, err := Load([]string{"--config", path}, []string{tc.env})
		assertKeyError(t, err, tc.key, tc.substr)
	}
}

func TestYAMLFile(t *testing.T) {
	path := writeFile(t, fullYAML)
	want := &Config{
		Org:     "example.com",
		DataDir: "/var/lib/parley",
		HTTP:    HTTPConfig{Listen: "0.0.0.0:443", PublicURL: "https://chat.example.com"},
		TLS:     TLSConfig{CertFile: "/etc/parley/cert.pem", KeyFile: "/etc/parley/key.pem"},
		WS: WSConfig{
			AllowedOrigins: []string{"https://app.example.com", "http://localhost:3000"},
			MaxFrameBytes:  2048,
			WriteDelayMS:   10,
		},
		Registration: RegistrationConfig{Open: false},
		Cluster: ClusterConfig{
			NodeID:        "n1",
			RaftListen:    "0.0.0.0:7000",
			RaftAdvertise: "10.0.0.1:7000",
			Bootstrap:     true,
			BootstrapSet:  true,
			Peers: []PeerConfig{
				{ID: "n1", RaftAddr: "10.0.0.1:7000"},
				{ID: "n2", RaftAddr: "10.0.0.2:7000"},
				{ID: "n3", RaftAddr: "node3.internal:7000"},
			},
			Secret:      "s3cret",
			HeartbeatMS: 500, ElectionMS: 500, ApplyTimeoutMS: 5000, SnapshotThreshold: 8192, TrailingLogs: 10240,
		},
		AMQP: AMQPConfig{URL: "amqps://user:pw@mq.example.com:5671/vhost"},
		Federation: FederationConfig{
			KeyFile: "/etc/parley/fed.key",
			Peers:   []FederationPeerConfig{{Org: "other.org", PublicKey: "ed25519:k1:AAAA+/"}},
		},
		Limits: LimitsConfig{SendPerSecond: 2.5, SendBurst: 7, LoginPerMinute: 10, RegisterPerHour: 30, ConnectionsPerUser: 50,
			ConnectionsPerIP: 1000, RoomsPerHour: 60, JoinsPerHour: 600, UnauthenticatedConnections: 2000},
		Bridges: []BridgeConfig{
			{ID: "irc", AMQPUser: "bridge-irc", Namespace: "^irc_[a-z]+$", Rooms: []string{"general", "random"}},
			{ID: "slack", AMQPUser: "bridge-slack", Namespace: `slack\..*`},
		},
		Log:    LogConfig{Level: "debug"},
		Admin:  AdminConfig{Listen: "127.0.0.1:6060"},
		Memory: MemoryConfig{HugePages: true},
	}
	for _, tc := range []struct {
		name string
		args []string
		env  []string
	}{
		{"flag", []string{"--config", path}, nil},
		{"flag=", []string{"--config=" + path}, nil},
		{"env", nil, []string{"PARLEY_CONFIG=" + path}},
		{"flag beats env", []string{"--config", path}, []string{"PARLEY_CONFIG=/nonexistent.yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mustLoad(t, tc.args, tc.env)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("\n got %+v\nwant %+v", got, want)
			}
			if !got.MultiNode() {
				t.Error("3 peers: MultiNode() = false")
			}
			if got.PublicURL() != "https://chat.example.com" {
				t.Errorf("PublicURL() = %q", got.PublicURL())
			}
		})
	}
}

// scalarCase gives three distinct valid values for one scalar key (as set in
// the file, by its variable and by its flag) and how to read it back.
type scalarCase struct {
	key     string
	envVar  string // spelled out to pin the naming rule
	values  [3]string
	want    [3]any
	get     func(*Config) any
	needEnv []string // other variables needed for a valid config without a file
	extra   []string // other flags needed for a valid config with the full file
}

var scalarCases = []scalarCase{
	{"org", "PARLEY_ORG", [3]string{"file.org", "env.org", "flag.org"}, [3]any{"file.org", "env.org", "flag.org"}, func(c *Config) any { return c.Org }, nil, nil},
	{"data_dir", "PARLEY_DATA_DIR", [3]string{"/f", "/e", "/g"}, [3]any{"/f", "/e", "/g"}, func(c *Config) any { return c.DataDir }, nil, nil},
	{"http.listen", "PARLEY_HTTP_LISTEN", [3]string{"127.0.0.1:1", ":2", "[::1]:3"}, [3]any{"127.0.0.1:1", ":2", "[::1]:3"}, func(c *Config) any { return c.HTTP.Listen }, nil, nil},
	{"http.public_url", "PARLEY_HTTP_PUBLIC_URL", [3]string{"https://f.example", "https://e.example/", "http://g.example:8080/chat"}, [3]any{"https://f.example", "https://e.example", "http://g.example:8080/chat"}, func(c *Config) any { return c.HTTP.PublicURL }, nil, nil},
	{"tls.cert_file", "PARLEY_TLS_CERT_FILE", [3]string{"f.pem", "e.pem", "g.pem"}, [3]any{"f.pem", "e.pem", "g.pem"}, func(c *Config) any { return c.TLS.CertFile }, []string{"PARLEY_TLS_KEY_FILE=k"}, nil},
	{"tls.key_file", "PARLEY_TLS_KEY_FILE", [3]string{"f.key", "e.key", "g.key"}, [3]any{"f.key", "e.key", "g.key"}, func(c *Config) any { return c.TLS.KeyFile }, []string{"PARLEY_TLS_CERT_FILE=c"}, nil},
	{"ws.max_frame_bytes", "PARLEY_WS_MAX_FRAME_BYTES", [3]string{"1024", "2000", " 4096 "}, [3]any{1024, 2000, 4096}, func(c *Config) any { return c.WS.MaxFrameBytes }, nil, nil},
	{"ws.write_delay_ms", "PARLEY_WS_WRITE_DELAY_MS", [3]string{"0", "5", "7"}, [3]any{0, 5, 7}, func(c *Config) any { return c.WS.WriteDelayMS }, nil, nil},
	{"registration.open", "PARLEY_REGISTRATION_OPEN", [3]string{"false", "true", "false"}, [3]any{false, true, false}, func(c *Config) any { return c.Registration.Open }, nil, nil},
	{"cluster.node_id", "PARLEY_CLUSTER_NODE_ID", [3]string{"f1", "e-1", "g.1"}, [3]any{"f1", "e-1", "g.1"}, func(c *Config) any { return c.Cluster.NodeID }, nil, nil},
	{"cluster.raft_listen", "PARLEY_CLUSTER_RAFT_LISTEN", [3]string{"127.0.0.1:7001", "127.0.0.2:7002", "10.1.1.1:7003"}, [3]any{"127.0.0.1:7001", "127.0.0.2:7002", "10.1.1.1:7003"}, func(c *Config) any { return c.Cluster.RaftListen }, []string{"PARLEY_CLUSTER_SECRET=s"}, nil},
	{"cluster.raft_advertise", "PARLEY_CLUSTER_RAFT_ADVERTISE", [3]string{"f.internal:7000", "e.internal:7000", "10.9.9.9:7000"}, [3]any{"f.internal:7000", "e.internal:7000", "10.9.9.9:7000"}, func(c *Config) any { return c.Cluster.RaftAdvertise }, nil, nil},
	{"cluster.bootstrap", "PARLEY_CLUSTER_BOOTSTRAP", [3]string{"false", "true", "false"}, [3]any{false, true, false}, func(c *Config) any { return c.Cluster.Bootstrap }, nil, []string{"--cluster.join="}},
	{"cluster.join", "PARLEY_CLUSTER_JOIN", [3]string{"10.0.0.1:8080", "https://e.example", "g.example:80"}, [3]any{"10.0.0.1:8080", "https://e.example", "g.example:80"}, func(c *Config) any { return c.Cluster.Join }, []string{"PARLEY_CLUSTER_SECRET=s"}, nil},
	{"cluster.secret", "PARLEY_CLUSTER_SECRET", [3]string{"fs", "es", "gs"}, [3]any{"fs", "es", "gs"}, func(c *Config) any { return c.Cluster.Secret }, nil, nil},
	{"cluster.tls.cert_file", "PARLEY_CLUSTER_TLS_CERT_FILE", [3]string{"f.pem", "e.pem", "g.pem"}, [3]any{"f.pem", "e.pem", "g.pem"}, func(c *Config) any { return c.Cluster.TLS.CertFile }, []string{"PARLEY_CLUSTER_TLS_KEY_FILE=k", "PARLEY_CLUSTER_TLS_CA_FILE=c"}, nil},
	{"cluster.tls.key_file", "PARLEY_CLUSTER_TLS_KEY_FILE", [3]string{"f.key", "e.key", "g.key"}, [3]any{"f.key", "e.key", "g.key"}, func(c *Config) any { return c.Cluster.TLS.KeyFile }, []string{"PARLEY_CLUSTER_TLS_CERT_FILE=c", "PARLEY_CLUSTER_TLS_CA_FILE=a"}, nil},
	{"cluster.tls.ca_file", "PARLEY_CLUSTER_TLS_CA_FILE", [3]string{"f.ca", "e.ca", "g.ca"}, [3]any{"f.ca", "e.ca", "g.ca"}, func(c *Config) any { return c.Cluster.TLS.CAFile }, []string{"PARLEY_CLUSTER_TLS_CERT_FILE=c", "PARLEY_CLUSTER_TLS_KEY_FILE=k"}, nil},
	{"cluster.heartbeat_ms", "PARLEY_CLUSTER_HEARTBEAT_MS", [3]string{"100", "200", "300"}, [3]any{100, 200, 300}, func(c *Config) any { return c.Cluster.HeartbeatMS }, nil, nil},
	// At least cluster.heartbeat_ms (500 by default, the values above with the file).
	{"cluster.election_ms", "PARLEY_CLUSTER_ELECTION_MS", [3]string{"500", "600", "700"}, [3]any{500, 600, 700}, func(c *Config) any { return c.Cluster.ElectionMS }, nil, nil},
	{"cluster.apply_timeout_ms", "PARLEY_CLUSTER_APPLY_TIMEOUT_MS", [3]string{"1000", "2000", "3000"}, [3]any{1000, 2000, 3000}, func(c *Config) any { return c.Cluster.ApplyTimeoutMS }, nil, nil},
	{"cluster.snapshot_threshold", "PARLEY_CLUSTER_SNAPSHOT_THRESHOLD", [3]string{"100", "200", "300"}, [3]any{100, 200, 300}, func(c *Config) any { return c.Cluster.SnapshotThreshold }, nil, nil},
	{"cluster.trailing_logs", "PARLEY_CLUSTER_TRAILING_LOGS", [3]string{"100", "200", "300"}, [3]any{100, 200, 300}, func(c *Config) any { return c.Cluster.TrailingLogs }, nil, nil},
	{"amqp.url", "PARLEY_AMQP_URL", [3]string{"amqp://f", "amqps://u:p@e:5671/v", "amqp://guest:guest@127.0.0.1:5672/"}, [3]any{"amqp://f", "amqps://u:p@e:5671/v", "amqp://guest:guest@127.0.0.1:5672/"}, func(c *Config) any { return c.AMQP.URL }, nil, nil},
	{"federation.key_file", "PARLEY_FEDERATION_KEY_FILE", [3]string{"f.key", "e.key", "g.key"}, [3]any{"f.key", "e.key", "g.key"}, func(c *Config) any { return c.Federation.KeyFile }, nil, nil},
	{"limits.send_per_second", "PARLEY_LIMITS_SEND_PER_SECOND", [3]string{"1", "0.5", "1e3"}, [3]any{1.0, 0.5, 1000.0}, func(c *Config) any { return c.Limits.SendPerSecond }, nil, nil},
	{"limits.send_burst", "PARLEY_LIMITS_SEND_BURST", [3]string{"1", "2", "3"}, [3]any{1, 2, 3}, func(c *Config) any { return c.Limits.SendBurst }, nil, nil},
	{"limits.login_per_minute", "PARLEY_LIMITS_LOGIN_PER_MINUTE", [3]string{"1", "2", "3"}, [3]any{1, 2, 3}, func(c *Config) any { return c.Limits.LoginPerMinute }, nil, nil},
	{"limits.register_per_hour", "PARLEY_LIMITS_REGISTER_PER_HOUR", [3]string{"1", "2", "3"}, [3]any{1, 2, 3}, func(c *Config) any { return c.Limits.RegisterPerHour }, nil, nil},
	{"limits.connections_per_user", "PARLEY_LIMITS_CONNECTIONS_PER_USER", [3]string{"1", "2", "3"}, [3]any{1, 2, 3}, func(c *Config) any { return c.Limits.ConnectionsPerUser }, nil, nil},
	{"limits.connections_per_ip", "PARLEY_LIMITS_CONNECTIONS_PER_IP", [3]string{"1", "2", "3"}, [3]any{1, 2, 3}, func(c *Config) any { return c.Limits.ConnectionsPerIP }, nil, nil},
	{"limits.rooms_per_hour", "PARLEY_LIMITS_ROOMS_PER_HOUR", [3]string{"1", "2", "3"}, [3]any{1, 2, 3}, func(c *Config) any { return c.Limits.RoomsPerHour }, nil, nil},
	{"limits.joins_per_hour", "PARLEY_LIMITS_JOINS_PER_HOUR", [3]string{"1", "2", "3"}, [3]any{1, 2, 3}, func(c *Config) any { return c.Limits.JoinsPerHour }, nil, nil},
	{"limits.unauthenticated_connections", "PARLEY_LIMITS_UNAUTHENTICATED_CONNECTIONS", [3]string{"1", "2", "3"}, [3]any{1, 2, 3}, func(c *Config) any { return c.Limits.UnauthenticatedConnections }, nil, nil},
	{"log.level", "PARLEY_LOG_LEVEL", [3]string{"warn", "error", "Debug"}, [3]any{"warn", "error", "debug"}, func(c *Config) any { return c.Log.Level }, nil, nil},
	{"admin.listen", "PARLEY_ADMIN_LISTEN", [3]string{"127.0.0.1:6060", ":6061", "localhost:6062"}, [3]any{"127.0.0.1:6060", ":6061", "localhost:6062"}, func(c *Config) any { return c.Admin.Listen }, nil, nil},
	{"memory.huge_pages", "PARLEY_MEMORY_HUGE_PAGES", [3]string{"false", "true", "false"}, [3]any{false, true, false}, func(c *Config) any { return c.Memory.HugePages }, nil, nil},
}

// fileWithAll writes a valid file setting every scalar key to its "file"
// value.
func fileWithAll(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	sections := map[string][]string{}
	var order []string
	for _, sc := range scalarCases {
		sec, leaf, nested := strings.Cut(sc.key, ".")
		if !nested {
			fmt.Fprintf(&b, "%s: %q\n", sc.key, sc.values[0])
			continue
		}
		if _, ok := sections[sec]; !ok {
			order = append(order, sec)
		}
		sections[sec] = append(sections[sec], fmt.Sprintf("  %s: %q\n", leaf, sc.values[0]))
	}
	for _, sec := range order {
		b.WriteString(sec + ":\n")
		for _, line := range sections[sec] {
			b.WriteString(line)
		}
	}
	return writeFile(t, b.String())
}

// TestEveryScalarKey checks, for every scalar key, nested ones included,
// that the file sets it, its PARLEY_ variable overrides the file (and
// works without a file and without a default), and its flag overrides the
// variable.
func TestEveryScalarKey(t *testing.T) {
	path := fileWithAll(t)
	for _, sc := range scalarCases {
		t.Run(sc.key, func(t *testing.T) {
			if got := EnvVar(sc.key); got != sc.envVar {
				t.Fatalf("EnvVar(%q) = %q, want %q", sc.key, got, sc.envVar)
			}
			fileArgs := append([]string{"--config", path}, sc.extra...)
			env := []string{sc.envVar + "=" + sc.values[1]}
			flag := "--" + sc.key + "=" + sc.values[2]

			if got := sc.get(mustLoad(t, fileArgs, nil)); got != sc.want[0] {
				t.Errorf("file: got %#v, want %#v", got, sc.want[0])
			}
			if got := sc.get(mustLoad(t, fileArgs, env)); got != sc.want[1] {
				t.Errorf("env over file: got %#v, want %#v", got, sc.want[1])
			}
			if got := sc.get(mustLoad(t, append(fileArgs, flag), env)); got != sc.want[2] {
				t.Errorf("flag over env: got %#v, want %#v", got, sc.want[2])
			}
			// Flag with a separate value argument (not for booleans, whose
			// bare flag means true).
			if specByKey[sc.key].kind != kindBool {
				if got := sc.get(mustLoad(t, append(fileArgs, "--"+sc.key, sc.values[2]), env)); got != sc.want[2] {
					t.Errorf("flag (two args) over env: got %#v, want %#v", got, sc.want[2])
				}
			}
			// No file: the variable alone must work, even for nested keys
			// without a default (viper's AutomaticEnv misses those).
			if got := sc.get(mustLoad(t, nil, append(slices.Clone(sc.needEnv), env...))); got != sc.want[1] {
				t.Errorf("env without file: got %#v, want %#v", got, sc.want[1])
			}
			if got := sc.get(mustLoad(t, []string{flag}, sc.needEnv)); got != sc.want[2] {
				t.Errorf("flag without file: got %#v, want %#v", got, sc.want[2])
			}
		})
	}
}

// scalarLeaves lists the dotted mapstructure names of the scalar fields of
// a struct type, and the list-valued ones separately.
func scalarLeaves(t reflect.Type, prefix string) (scalars, lists []string) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
		if name == "-" {
			continue
		}
		key := prefix + name
		switch f.Type.Kind() {
		case reflect.Struct:
			s, l := scalarLeaves(f.Type, key+".")
			scalars, lists = append(scalars, s...), append(lists, l...)
		case reflect.Slice:
			lists = append(lists, key)
		default:
			scalars = append(scalars, key)
		}
	}
	return scalars, lists
}

// TestKeysCoverStruct keeps the key table, the Config struct and the
// per-key test table in step.
func TestKeysCoverStruct(t *testing.T) {
	scalars, lists := scalarLeaves(reflect.TypeOf(Config{}), "")
	var specScalars, specLists, tested []string
	for _, s := range specs {
		if s.kind == kindList {
			specLists = append(specLists, s.key)
		} else {
			specScalars = append(specScalars, s.key)
		}
	}
	for _, sc := range scalarCases {
		tested = append(tested, sc.key)
	}
	for _, l := range [][]string{scalars, lists, specScalars, specLists, tested} {
		sort.Strings(l)
	}
	if !slices.Equal(scalars, specScalars) {
		t.Errorf("scalar keys: struct %v, key table %v", scalars, specScalars)
	}
	if !slices.Equal(lists, specLists) {
		t.Errorf("list keys: struct %v, key table %v", lists, specLists)
	}
	if !slices.Equal(tested, specScalars) {
		t.Errorf("TestEveryScalarKey covers %v, want every scalar key %v", tested, specScalars)
	}
	// Every scalar key has a flag; list keys have none.
	fs := newFlagSet()
	for _, k := range specScalars {
		if fs.Lookup(k) == nil {
			t.Errorf("no flag --%s", k)
		}
	}
	for _, k := range specLists {
		if fs.Lookup(k) != nil {
			t.Errorf("list key %s has a flag", k)
		}
	}
}

func TestListKeysFromFile(t *testing.T) {
	path := writeFile(t, `
ws:
  allowed_origins: ["https://a.example", "http://b.example:8080"]
cluster:
  node_id: a
  peers: [{id: a, raft_addr: "127.0.0.1:7000"}, {id: b, raft_addr: "127.0.0.1:7001"}]
  secret: x
federation:
  peers: [{org: b.example, public_key: "ed25519:key_2:def+/9", previous_keys: ["ed25519:key_1:abc+/9"]}]
  previous_keys: ["ed25519:own_1:xyz"]
bridges:
  - {id: b1, amqp_user: u1, namespace: "^x", rooms: [r1]}
  - {id: 2, amqp_user: u2, namespace: ".*"}
`)
	c := mustLoad(t, []string{"--config", path}, nil)
	if want := []string{"https://a.example", "http://b.example:8080"}; !slices.Equal(c.WS.AllowedOrigins, want) {
		t.Errorf("ws.allowed_origins = %q, want %q", c.WS.AllowedOrigins, want)
	}
	if want := []PeerConfig{{"a", "127.0.0.1:7000"}, {"b", "127.0.0.1:7001"}}; !slices.Equal(c.Cluster.Peers, want) {
		t.Errorf("cluster.peers = %+v, want %+v", c.Cluster.Peers, want)
	}
	if want := []FederationPeerConfig{{"b.example", "ed25519:key_2:def+/9", []string{"ed25519:key_1:abc+/9"}}}; !reflect.DeepEqual(c.Federation.Peers, want) {
		t.Errorf("federation.peers = %+v, want %+v", c.Federation.Peers, want)
	}
	if want := []string{"ed25519:own_1:xyz"}; !slices.Equal(c.Federation.PreviousKeys, want) {
		t.Errorf("federation.previous_keys = %q, want %q", c.Federation.PreviousKeys, want)
	}
	want := []BridgeConfig{{ID: "b1", AMQPUser: "u1", Namespace: "^x", Rooms: []string{"r1"}}, {ID: "2", AMQPUser: "u2", Namespace: ".*"}}
	if !reflect.DeepEqual(c.Bridges, want) {
		t.Errorf("bridges = %+v, want %+v", c.Bridges, want)
	}
	if !c.MultiNode() || !c.Cluster.Bootstrap || c.Cluster.BootstrapSet {
		t.Errorf("MultiNode=%v Bootstrap=%v BootstrapSet=%v, want true true false", c.MultiNode(), c.Cluster.Bootstrap, c.Cluster.BootstrapSet)
	}

	// List keys cannot be set by variables or flags.
	for _, k := range []string{"ws.allowed_origins", "cluster.peers", "federation.peers", "bridges"} {
		_, err := Load(nil, []string{EnvVar(k) + "=x"})
		assertKeyError(t, err, k, "config file")
		_, err = Load([]string{"--" + k + "=x"}, nil)
		assertKeyError(t, err, k, "unknown flag")
	}
}

func assertKeyError(t *testing.T, err error, key, substr string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one for %s", key)
	}
	for _, ce := range configErrors(err) {
		if ce.Key == key {
			if !strings.Contains(ce.Problem, substr) {
				t.Errorf("%s: problem %q does not contain %q", key, ce.Problem, substr)
			}
			prefix := "config: " + key + ": "
			if key == "config" { // the file's own problems name it after one "config: "
				prefix = "config: "
			}
			if !strings.HasPrefix(ce.Error(), prefix) || strings.HasPrefix(ce.Error(), "config: config:") {
				t.Errorf("Error() = %q", ce.Error())
			}
			if !strings.Contains(err.Error(), ce.Error()) {
				t.Errorf("err.Error() %q lacks %q", err.Error(), ce.Error())
			}
			return
		}
	}
	t.Errorf("error %q does not name key %s", err, key)
}

func TestBadValues(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		env    []string
		yaml   string // written to a file and passed with --config if set
		key    string
		substr string
	}{
		// Scalars, from each source.
		{"org upper", nil, []string{"PARLEY_ORG=Example.com"}, "", "org", "lower-case"},
		{"org space", []string{"--org", "a b"}, nil, "", "org", "DNS"},
		{"org empty", []string{"--org="}, nil, "", "org", "must be set"},
		{"org dash", nil, nil, "org: -x.com", "org", "DNS"},
		// A DNS name of 201-253 bytes: AMQP's 255-byte names and routing keys cannot hold it.
		{"org long", nil, []string{"PARLEY_ORG=" + strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 60) + "." + strings.Repeat("d", 20)}, "", "org", "at most 200 bytes"},
		{"data_dir empty", []string{"--data_dir", ""}, nil, "", "data_dir", "must be set"},
		{"http.listen no port", nil, []string{"PARLEY_HTTP_LISTEN=localhost"}, "", "http.listen", "host:port"},
		{"http.listen bad port", nil, nil, "http: {listen: 'x:99999'}", "http.listen", "host:port"},
		{"http.listen port name", []string{"--http.listen=x:http"}, nil, "", "http.listen", "host:port"},
		{"http.public_url relative", nil, []string{"PARLEY_HTTP_PUBLIC_URL=/chat"}, "", "http.public_url", "URL"},
		{"http.public_url ftp", nil, nil, "http: {public_url: 'ftp://x'}", "http.public_url", "http://"},
		{"http.public_url query", []string{"--http.public_url=https://x/?a=b"}, nil, "", "http.public_url", "query"},
		// The pair's missing key has no source of its own: the one that was set is named (before,
		// "(from default)").
		{"tls cert only", nil, []string{"PARLEY_TLS_CERT_FILE=c.pem"}, "", "tls.key_file", "must be set when tls.cert_file is set (from PARLEY_TLS_CERT_FILE): set both or neither"},
		{"tls key only", nil, nil, "tls: {key_file: k.pem}", "tls.cert_file", "must be set when tls.key_file is set (from config file "},
		{"ws.max_frame_bytes small", nil, []string{"PARLEY_WS_MAX_FRAME_BYTES=1023"}, "", "ws.max_frame_bytes", "at least 1024"},
		{"ws.max_frame_bytes text", []string{"--ws.max_frame_bytes=64k"}, nil, "", "ws.max_frame_bytes", "integer"},
		{"ws.max_frame_bytes float", nil, nil, "ws: {max_frame_bytes: 2048.5}", "ws.max_frame_bytes", "integer"},
		{"ws.max_frame_bytes huge", nil, nil, "ws: {max_frame_bytes: 1e300}", "ws.max_frame_bytes", "integer"},
		{"registration.open", nil, []string{"PARLEY_REGISTRATION_OPEN=maybe"}, "", "registration.open", "true or false"},
		{"registration.open list", nil, nil, "registration: {open: [true]}", "registration.open", "single value"},
		{"cluster.node_id chars", []string{"--cluster.node_id=a/b"}, nil, "", "cluster.node_id", "A-Z"},
		{"cluster.node_id long", nil, []string{"PARLEY_CLUSTER_NODE_ID=" + strings.Repeat("a", 65)}, "", "cluster.node_id", "64"},
		{"cluster.raft_listen", nil, []string{"PARLEY_CLUSTER_RAFT_LISTEN=7000"}, "", "cluster.raft_listen", "host:port"},
		{"cluster.raft_listen wildcard", nil, []string{"PARLEY_CLUSTER_RAFT_LISTEN=0.0.0.0:7000"}, "", "cluster.raft_advertise", "reach"},
		{"cluster.raft_advertise wildcard", []string{"--cluster.raft_advertise=[::]:7000"}, nil, "", "cluster.raft_advertise", "reach"},
		{"cluster.raft_advertise syntax", []string{"--cluster.raft_advertise=x"}, nil, "", "cluster.raft_advertise", "host:port"},
		{"cluster.bootstrap", nil, []string{"PARLEY_CLUSTER_BOOTSTRAP=yes please"}, "", "cluster.bootstrap", "true or false"},
		{"cluster.bootstrap with join", []string{"--cluster.bootstrap"}, []string{"PARLEY_CLUSTER_JOIN=10.0.0.1:8080", "PARLEY_CLUSTER_SECRET=s"}, "", "cluster.bootstrap", "cluster.join"},
		{"cluster.join bad", nil, []string{"PARLEY_CLUSTER_JOIN=nope", "PARLEY_CLUSTER_SECRET=s"}, "", "cluster.join", "host:port"},
		{"cluster.join wildcard", nil, []string{"PARLEY_CLUSTER_JOIN=0.0.0.0:8080", "PARLEY_CLUSTER_SECRET=s"}, "", "cluster.join", "host:port"},
		{"cluster.join ftp", nil, []string{"PARLEY_CLUSTER_JOIN=ftp://x", "PARLEY_CLUSTER_SECRET=s"}, "", "cluster.join", "URL"},
		{"cluster.secret join", nil, []string{"PARLEY_CLUSTER_JOIN=10.0.0.1:8080"}, "", "cluster.secret", "must be set"},
		{"cluster.secret peers", nil, nil, "cluster: {node_id: a, peers: [{id: a, raft_addr: 'h:1'}, {id: b, raft_addr: 'h:2'}]}", "cluster.secret", "must be set"},
		{"cluster.secret raft_listen", nil, []string{"PARLEY_CLUSTER_RAFT_LISTEN=10.0.0.1:7000"}, "", "cluster.secret", "not a loopback address"},
		{"cluster.secret raft_listen wildcard", nil, []string{"PARLEY_CLUSTER_RAFT_LISTEN=0.0.0.0:7000", "PARLEY_CLUSTER_RAFT_ADVERTISE=10.0.0.1:7000"}, "", "cluster.secret", "not a loopback address"},
		{"cluster.secret raft_listen all interfaces", nil, []string{"PARLEY_CLUSTER_RAFT_LISTEN=:7000", "PARLEY_CLUSTER_RAFT_ADVERTISE=10.0.0.1:7000"}, "", "cluster.secret", "not a loopback address"},
		{"cluster.secret raft_listen name", []string{"--cluster.raft_listen=node1.internal:7000"}, nil, "", "cluster.secret", "not a loopback address"},
		// Millisecond keys: bounded, so that none becomes an overflowing time.Duration.
		{"ws.write_delay_ms big", nil, []string{"PARLEY_WS_WRITE_DELAY_MS=101"}, "", "ws.write_delay_ms", "at most 100 (100ms)"},
		{"cluster.heartbeat_ms big", nil, []string{"PARLEY_CLUSTER_HEARTBEAT_MS=60001", "PARLEY_CLUSTER_ELECTION_MS=60001"}, "", "cluster.heartbeat_ms", "at most 60000 (1m0s)"},
		{"cluster.election_ms big", []string{"--cluster.election_ms=9300000000000"}, nil, "", "cluster.election_ms", "at most 60000 (1m0s)"},
		{"cluster.apply_timeout_ms big", nil, []string{"PARLEY_CLUSTER_APPLY_TIMEOUT_MS=9300000000000"}, "", "cluster.apply_timeout_ms", "at most 3600000 (1h0m0s)"},
		{"cluster.apply_timeout_ms big file", nil, nil, "cluster: {apply_timeout_ms: 3600001}", "cluster.apply_timeout_ms", "at most 3600000"},
		// Raft refuses an election timeout below the heartbeat timeout: the key that was set is named.
		{"cluster.heartbeat_ms above default election", nil, []string{"PARLEY_CLUSTER_HEARTBEAT_MS=1000"}, "", "cluster.heartbeat_ms", "at most cluster.election_ms, which is 500 (the default)"},
		{"cluster.election_ms below default heartbeat", nil, []string{"PARLEY_CLUSTER_ELECTION_MS=100"}, "", "cluster.election_ms", "at least cluster.heartbeat_ms, which is 500 (the default)"},
		{"cluster.election_ms below heartbeat", nil, []string{"PARLEY_CLUSTER_HEARTBEAT_MS=1000"}, "cluster: {election_ms: 600}", "cluster.election_ms", "at least cluster.heartbeat_ms, which is 1000 (from PARLEY_CLUSTER_HEARTBEAT_MS)"},
		// Bootstrapping from cluster.peers: this node must be one of them.
		{"cluster.node_id not in peers", nil, []string{"PARLEY_CLUSTER_SECRET=s"}, "cluster: {peers: [{id: n1, raft_addr: '10.0.0.1:7000'}, {id: n2, raft_addr: '10.0.0.2:7000'}, {id: n3, raft_addr: '10.0.0.3:7000'}]}", "cluster.node_id", `one of cluster.peers ("n1", "n2", "n3")`},
		{"cluster.node_id not the one peer", []string{"--cluster.node_id=b"}, nil, "cluster: {peers: [{id: a, raft_addr: '127.0.0.1:7000'}]}", "cluster.node_id", `one of cluster.peers ("a")`},
		{"cluster.node_id not in peers, bootstrap set", []string{"--cluster.bootstrap=true"}, []string{"PARLEY_CLUSTER_SECRET=s"}, "cluster: {node_id: n4, peers: [{id: n1, raft_addr: 'h:1'}, {id: n2, raft_addr: 'h:2'}]}", "cluster.node_id", "bootstraps"},
		{"amqp.url scheme", nil, []string{"PARLEY_AMQP_URL=http://x"}, "", "amqp.url", "amqp://"},
		{"amqp.url no host", []string{"--amqp.url=amqp://"}, nil, "", "amqp.url", "amqp://"},
		{"limits.send_per_second zero", nil, []string{"PARLEY_LIMITS_SEND_PER_SECOND=0"}, "", "limits.send_per_second", "greater than 0"},
		{"limits.send_per_second nan", []string{"--limits.send_per_second=NaN"}, nil, "", "limits.send_per_second", "finite"},
		{"limits.send_per_second text", nil, nil, "limits: {send_per_second: fast}", "limits.send_per_second", "number"},
		{"limits.send_burst zero", nil, []string{"PARLEY_LIMITS_SEND_BURST=0"}, "", "limits.send_burst", "at least 1"},
		{"limits.send_burst text", nil, nil, "limits: {send_burst: lots}", "limits.send_burst", "integer"},
		{"log.level", nil, []string{"PARLEY_LOG_LEVEL=verbose"}, "", "log.level", "debug, info, warn, error"},
		{"admin.listen", []string{"--admin.listen=6060"}, nil, "", "admin.listen", "host:port"},

		// Lists.
		{"origin with path", nil, nil, "ws: {allowed_origins: ['https://x.example/app']}", "ws.allowed_origins[0]", "origin"},
		{"origin not url", nil, nil, "ws: {allowed_origins: ['https://ok.example', 'example.com']}", "ws.allowed_origins[1]", "origin"},
		{"origins scalar", nil, nil, "ws: {allowed_origins: https://x.example}", "ws.allowed_origins", "must be a list"},
		{"origin mapping", nil, nil, "ws: {allowed_origins: [{a: b}]}", "ws.allowed_origins[0]", "string"},
		{"peer id", nil, nil, "cluster: {peers: [{id: 'a b', raft_addr: 'h:1'}]}", "cluster.peers[0].id", "A-Z"},
		{"peer id missing", nil, nil, "cluster: {peers: [{raft_addr: 'h:1'}]}", "cluster.peers[0].id", "must be set"},
		{"peer addr", nil, nil, "cluster: {peers: [{id: a, raft_addr: 'h'}]}", "cluster.peers[0].raft_addr", "host:port"},
		{"peer addr wildcard", nil, nil, "cluster: {peers: [{id: a, raft_addr: '0.0.0.0:7000'}]}", "cluster.peers[0].raft_addr", "reach"},
		{"peer unknown field", nil, nil, "cluster: {peers: [{id: a, raft_adr: 'h:1'}]}", "cluster.peers[0].raft_adr", "unknown key"},
		{"peer not mapping", nil, nil, "cluster: {peers: ['a=h:1']}", "cluster.peers[0]", "mapping"},
		{"peer dup id", nil, []string{"PARLEY_CLUSTER_SECRET=s"}, "cluster: {peers: [{id: a, raft_addr: 'h:1'}, {id: a, raft_addr: 'h:2'}]}", "cluster.peers[1].id", "duplicate"},
		{"peer dup addr", nil, []string{"PARLEY_CLUSTER_SECRET=s"}, "cluster: {peers: [{id: a, raft_addr: 'h:1'}, {id: b, raft_addr: 'h:1'}]}", "cluster.peers[1].raft_addr", "duplicate"},
		{"fed key format", nil, nil, "federation: {peers: [{org: b.example, public_key: 'ed25519:k:AA=='}]}", "federation.peers[0].public_key", "ed25519"},
		{"fed key algo", nil, nil, "federation: {peers: [{org: b.example, public_key: 'rsa:k:AA'}]}", "federation.peers[0].public_key", "ed25519"},
		{"fed org", nil, nil, "federation: {peers: [{org: B.example, public_key: 'ed25519:k:AA'}]}", "federation.peers[0].org", "lower-case"},
		{"fed org long", nil, nil, "federation: {peers: [{org: " + strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 60) + "." + strings.Repeat("d", 20) + ", public_key: 'ed25519:k:AA'}]}", "federation.peers[0].org", "at most 200 bytes"},
		{"fed org self", nil, nil, "org: a.example\nfederation: {peers: [{org: a.example, public_key: 'ed25519:k:AA'}]}", "federation.peers[0].org", "own org"},
		{"fed previous key format", nil, nil, "federation: {peers: [{org: b.example, public_key: 'ed25519:k:AA', previous_keys: ['ed25519:old']}]}", "federation.peers[0].previous_keys[0]", "ed25519"},
		{"fed previous keys scalar", nil, nil, "federation: {peers: [{org: b.example, public_key: 'ed25519:k:AA', previous_keys: 'ed25519:old:AA'}]}", "federation.peers[0].previous_keys", "list of strings"},
		{"fed previous key same id", nil, nil, "federation: {peers: [{org: b.example, public_key: 'ed25519:k:AA', previous_keys: ['ed25519:k:BB']}]}", "federation.peers[0].previous_keys[0]", "also used by federation.peers[0].public_key"},
		{"fed previous keys dup id", nil, nil, "federation: {peers: [{org: b.example, public_key: 'ed25519:k:AA', previous_keys: ['ed25519:j:BB', 'ed25519:j:CC']}]}", "federation.peers[0].previous_keys[1]", "also used by federation.peers[0].previous_keys[0]"},
		{"own previous key format", nil, nil, "federation: {previous_keys: ['rsa:k:AA']}", "federation.previous_keys[0]", "ed25519"},
		{"own previous keys dup id", nil, nil, "federation: {previous_keys: ['ed25519:j:BB', 'ed25519:j:CC']}", "federation.previous_keys[1]", "also used"},
		{"own previous keys by env", nil, []string{"PARLEY_FEDERATION_PREVIOUS_KEYS=ed25519:j:BB"}, "", "federation.previous_keys", "config file"},
		{"fed dup org", nil, nil, "federation: {peers: [{org: b.example, public_key: 'ed25519:k:AA'}, {org: b.example, public_key: 'ed25519:k:BB'}]}", "federation.peers[1].org", "duplicate"},
		{"bridge regexp", nil, nil, "bridges: [{id: b, amqp_user: u, namespace: 'a(b'}]", "bridges[0].namespace", "regular expression"},
		{"bridge no user", nil, nil, "bridges: [{id: b, namespace: 'x'}]", "bridges[0].amqp_user", "must be set"},
		{"bridge rooms scalar", nil, nil, "bridges: [{id: b, amqp_user: u, namespace: x, rooms: general}]", "bridges[0].rooms", "list of strings"},
		{"bridge room empty", nil, nil, "bridges: [{id: b, amqp_user: u, namespace: x, rooms: ['']}]", "bridges[0].rooms[0]", "must be set"},
		{"bridge room mapping", nil, nil, "bridges: [{id: b, amqp_user: u, namespace: x, rooms: [{a: 1}]}]", "bridges[0].rooms[0]", "string"},
		{"bridge dup", nil, nil, "bridges: [{id: b, amqp_user: u, namespace: x}, {id: b, amqp_user: v, namespace: y}]", "bridges[1].id", "duplicate"},
		{"bridges mapping", nil, nil, "bridges: {id: b}", "bridges", "must be a list"},

		// File structure.
		{"unknown top-level key", nil, nil, "orgg: example.com", "orgg", "unknown key (did you mean org?"},
		{"unknown nested key", nil, nil, "http:\n  listne: ':1'", "http.listne", "did you mean http.listen?"},
		{"unknown section", nil, nil, "htp: {listen: ':1'}", "htp.listen", "unknown key"},
		{"misplaced key", nil, nil, "node_id: a", "node_id", "cluster.node_id"},
		{"section scalar", nil, nil, "http: 8080", "http", "mapping"},
		{"scalar mapping", nil, nil, "org: {name: x}", "org", "not a mapping"},
		{"scalar list", nil, nil, "org: [a]", "org", "not a list"},
		{"list key mapping", nil, nil, "cluster: {peers: {a: b}}", "cluster.peers", "must be a list"},
		{"not a mapping", nil, nil, "- a\n- b", "config", "YAML"},
		{"bad yaml", nil, nil, "org: [", "config", "YAML"},

		// Arguments.
		{"missing file", []string{"--config", "/nonexistent/parley.yaml"}, nil, "", "config", "cannot read"},
		{"missing file env", nil, []string{"PARLEY_CONFIG=/nonexistent/parley.yaml"}, "", "config", "cannot read"},
		{"unknown flag", []string{"--http.lisen=:1"}, nil, "", "http.lisen", "unknown flag (did you mean --http.listen?)"},
		{"unknown flag plain", []string{"--verbose"}, nil, "", "verbose", "unknown flag"},
		{"unknown shorthand", []string{"-v"}, nil, "", "v", "unknown flag"},
		{"flag needs value", []string{"--org"}, nil, "", "org", "needs a value"},
		{"config needs value", []string{"--config"}, nil, "", "config", "--config needs a file name"},
		{"positional", []string{"serve"}, nil, "", "args", "unexpected argument"},
		{"bool then value", []string{"--registration.open", "false"}, nil, "", "registration.open", "--registration.open=false"},
		{"value without flag", []string{"--org=a.test", "stray"}, nil, "", "args", "--key=value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.yaml != "" {
				args = append([]string{"--config", writeFile(t, tc.yaml)}, args...)
			}
			c, err := Load(args, tc.env)
			if err == nil {
				t.Fatalf("no error; config %+v", c)
			}
			if c != nil {
				t.Errorf("non-nil config with error")
			}
			assertKeyError(t, err, tc.key, tc.substr)
		})
	}
}

// TestErrorMessages checks that messages say where a value came from and
// never echo secrets.
func TestErrorMessages(t *testing.T) {
	_, err := Load([]string{"--ws.max_frame_bytes=12"}, nil)
	if want := `config: ws.max_frame_bytes: must be at least 1024, got 12 (from --ws.max_frame_bytes)`; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	_, err = Load(nil, []string{"PARLEY_HTTP_LISTEN=nope"})
	if err == nil || !strings.Contains(err.Error(), `got "nope" (from PARLEY_HTTP_LISTEN)`) {
		t.Errorf("got %v", err)
	}
	path := writeFile(t, "log: {level: loud}")
	_, err = Load([]string{"--config", path}, nil)
	if err == nil || !strings.Contains(err.Error(), "(from config file "+path+")") {
		t.Errorf("got %v", err)
	}
	_, err = Load(nil, []string{"PARLEY_AMQP_URL=http://user:hunter2@x/"})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("secret echoed or no error: %v", err)
	}
	// Several problems are all reported.
	_, err = Load(nil, []string{"PARLEY_ORG=A", "PARLEY_LOG_LEVEL=x", "PARLEY_LIMITS_SEND_BURST=0"})
	var keys []string
	for _, ce := range configErrors(err) {
		keys = append(keys, ce.Key)
	}
	if want := []string{"org", "limits.send_burst", "log.level"}; !slices.Equal(keys, want) {
		t.Errorf("keys %v, want %v (err %v)", keys, want, err)
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.Key != "org" {
		t.Errorf("errors.As: %v", ce)
	}
}

func TestHelp(t *testing.T) {
	for _, a := range []string{"-h", "--help"} {
		if _, err := Load([]string{a}, nil); !errors.Is(err, ErrHelp) {
			t.Errorf("%s: err = %v, want ErrHelp", a, err)
		}
	}
	u := Usage()
	for _, s := range specs {
		if s.kind != kindList && !strings.Contains(u, "--"+s.key+" ") {
			t.Errorf("usage lacks --%s:\n%s", s.key, u)
		}
	}
}

func TestPublicURL(t *testing.T) {
	for _, tc := range []struct {
		listen, publicURL string
		tls               bool
		want              string
	}{
		{"127.0.0.1:8080", "", false, "http://127.0.0.1:8080"},
		{"0.0.0.0:8080", "", false, "http://localhost:8080"},
		{":8080", "", false, "http://localhost:8080"},
		{"[::]:8080", "", false, "http://localhost:8080"},
		{"[::1]:8080", "", false, "http://[::1]:8080"},
		{"chat.example.com:443", "", true, "https://chat.example.com:443"},
		{"0.0.0.0:443", "", true, "https://localhost:443"},
		{":1", "https://chat.example.com/", false, "https://chat.example.com"},
		{":1", "http://x.example/sub/", true, "http://x.example/sub"},
	} {
		args := []string{"--http.listen", tc.listen}
		if tc.publicURL != "" {
			args = append(args, "--http.public_url", tc.publicURL)
		}
		if tc.tls {
			args = append(args, "--tls.cert_file=c", "--tls.key_file=k")
		}
		c := mustLoad(t, args, nil)
		if got := c.PublicURL(); got != tc.want {
			t.Errorf("%v: PublicURL() = %q, want %q", args, got, tc.want)
		}
		if c.HTTP.PublicURL != tc.want {
			t.Errorf("%v: HTTP.PublicURL = %q, want %q", args, c.HTTP.PublicURL, tc.want)
		}
		// The method also derives on a hand-built config.
		c.HTTP.PublicURL = tc.publicURL
		if got := c.PublicURL(); got != tc.want {
			t.Errorf("%v: hand-built PublicURL() = %q, want %q", args, got, tc.want)
		}
	}
}

func TestClusterDerived(t *testing.T) {
	for _, tc := range []struct {
		name          string
		env           []string
		yaml          string
		bootstrap     bool
		bootstrapSet  bool
		multiNode     bool
		advertise     string
		joinURL       string
		wantNoSecrets bool
	}{
		{name: "default", bootstrap: true, advertise: "127.0.0.1:7000"},
		{name: "join", env: []string{"PARLEY_CLUSTER_JOIN=10.0.0.1:8080", "PARLEY_CLUSTER_SECRET=s"}, multiNode: true, advertise: "127.0.0.1:7000", joinURL: "http://10.0.0.1:8080"},
		{name: "join url", env: []string{"PARLEY_CLUSTER_JOIN=https://a.example/", "PARLEY_CLUSTER_SECRET=s"}, multiNode: true, advertise: "127.0.0.1:7000", joinURL: "https://a.example"},
		{name: "join explicit false", env: []string{"PARLEY_CLUSTER_JOIN=a:1", "PARLEY_CLUSTER_SECRET=s", "PARLEY_CLUSTER_BOOTSTRAP=false"}, bootstrapSet: true, multiNode: true, advertise: "127.0.0.1:7000", joinURL: "http://a:1"},
		{name: "explicit false", env: []string{"PARLEY_CLUSTER_BOOTSTRAP=0"}, bootstrapSet: true, advertise: "127.0.0.1:7000"},
		{name: "explicit true", yaml: "cluster: {bootstrap: true}", bootstrap: true, bootstrapSet: true, advertise: "127.0.0.1:7000"},
		{name: "one peer", yaml: "cluster: {peers: [{id: node1, raft_addr: '127.0.0.1:7000'}]}", bootstrap: true, advertise: "127.0.0.1:7000"},
		{name: "advertise", env: []string{"PARLEY_CLUSTER_RAFT_LISTEN=0.0.0.0:7000", "PARLEY_CLUSTER_RAFT_ADVERTISE=10.0.0.5:7000", "PARLEY_CLUSTER_SECRET=s"}, bootstrap: true, advertise: "10.0.0.5:7000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var args []string
			if tc.yaml != "" {
				args = []string{"--config", writeFile(t, tc.yaml)}
			}
			c := mustLoad(t, args, tc.env)
			if c.Cluster.Bootstrap != tc.bootstrap || c.Cluster.BootstrapSet != tc.bootstrapSet {
				t.Errorf("Bootstrap=%v BootstrapSet=%v, want %v %v", c.Cluster.Bootstrap, c.Cluster.BootstrapSet, tc.bootstrap, tc.bootstrapSet)
			}
			if c.MultiNode() != tc.multiNode {
				t.Errorf("MultiNode() = %v", c.MultiNode())
			}
			if c.Cluster.RaftAdvertise != tc.advertise {
				t.Errorf("RaftAdvertise = %q, want %q", c.Cluster.RaftAdvertise, tc.advertise)
			}
			if c.Cluster.JoinURL() != tc.joinURL {
				t.Errorf("JoinURL() = %q, want %q", c.Cluster.JoinURL(), tc.joinURL)
			}
		})
	}
}

// TestClusterRulesAccept: what the cross-key cluster rules must still accept.
func TestClusterRulesAccept(t *testing.T) {
	peers := "cluster: {peers: [{id: n1, raft_addr: '127.0.0.1:7001'}, {id: n2, raft_addr: '127.0.0.1:7002'}, {id: n3, raft_addr: '127.0.0.1:7003'}]}"
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		yaml string
	}{
		// The single local node: loopback Raft, no secret (what the tests and `parley serve` with
		// no configuration run).
		{name: "default"},
		{name: "loopback v4", env: []string{"PARLEY_CLUSTER_RAFT_LISTEN=127.0.0.5:7000"}},
		{name: "loopback v6", env: []string{"PARLEY_CLUSTER_RAFT_LISTEN=[::1]:7000"}},
		{name: "localhost", args: []string{"--cluster.raft_listen=localhost:7000"}},
		{name: "port 0", env: []string{"PARLEY_CLUSTER_RAFT_LISTEN=127.0.0.1:0"}},
		{name: "one peer, itself", yaml: "cluster: {node_id: a, peers: [{id: a, raft_addr: '127.0.0.1:7000'}]}"},
		// Not bootstrapping: cluster.peers is not used, so it need not name this node.
		{name: "peers without bootstrap", env: []string{"PARLEY_CLUSTER_BOOTSTRAP=false", "PARLEY_CLUSTER_SECRET=s"}, yaml: peers},
		{name: "peers when joining", env: []string{"PARLEY_CLUSTER_JOIN=127.0.0.1:8081", "PARLEY_CLUSTER_NODE_ID=n4", "PARLEY_CLUSTER_SECRET=s"}, yaml: peers},
		// scripts/bench.sh and the system tests: three nodes on loopback with a secret.
		{name: "three nodes on loopback", env: []string{"PARLEY_CLUSTER_NODE_ID=n2", "PARLEY_CLUSTER_RAFT_LISTEN=127.0.0.1:7002", "PARLEY_CLUSTER_SECRET=bench",
			"PARLEY_CLUSTER_HEARTBEAT_MS=1000", "PARLEY_CLUSTER_ELECTION_MS=1000"}, yaml: peers},
		// The peer entry may name this node differently from its advertised address (Raft goes by id).
		{name: "peer entry by name", env: []string{"PARLEY_CLUSTER_NODE_ID=n1", "PARLEY_CLUSTER_RAFT_LISTEN=10.0.0.1:7000", "PARLEY_CLUSTER_SECRET=s"},
			yaml: "cluster: {peers: [{id: n1, raft_addr: 'n1.internal:7000'}, {id: n2, raft_addr: 'n2.internal:7000'}]}"},
		{name: "non-loopback with secret", env: []string{"PARLEY_CLUSTER_RAFT_LISTEN=0.0.0.0:7000", "PARLEY_CLUSTER_RAFT_ADVERTISE=10.0.0.1:7000", "PARLEY_CLUSTER_SECRET=s"}},
		{name: "heartbeat equals election", env: []string{"PARLEY_CLUSTER_HEARTBEAT_MS=400", "PARLEY_CLUSTER_ELECTION_MS=400"}},
		{name: "largest timings", env: []string{"PARLEY_CLUSTER_HEARTBEAT_MS=60000", "PARLEY_CLUSTER_ELECTION_MS=60000", "PARLEY_CLUSTER_APPLY_TIMEOUT_MS=3600000", "PARLEY_WS_WRITE_DELAY_MS=100"}},
		{name: "docs/cluster.md", env: []string{"PARLEY_CLUSTER_NODE_ID=n1", "PARLEY_CLUSTER_RAFT_LISTEN=10.0.0.1:7000", "PARLEY_HTTP_LISTEN=10.0.0.1:8080"},
			yaml: "org: acme.test\ndata_dir: /var/lib/parley\ncluster:\n  secret: \"s\"\n  peers:\n    - {id: n1, raft_addr: \"10.0.0.1:7000\"}\n    - {id: n2, raft_addr: \"10.0.0.2:7000\"}\n    - {id: n3, raft_addr: \"10.0.0.3:7000\"}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.yaml != "" {
				args = append([]string{"--config", writeFile(t, tc.yaml)}, args...)
			}
			mustLoad(t, args, tc.env)
		})
	}
}

// TestClusterRuleMessages pins whole messages of the cross-key rules: each names one key, says
// where the values came from, and never echoes the secret's absence as a value.
func TestClusterRuleMessages(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"PARLEY_CLUSTER_HEARTBEAT_MS=1000"}, "config: cluster.heartbeat_ms: must be at most cluster.election_ms, which is 500 (the default), " +
			"since Raft refuses an election timeout shorter than the heartbeat timeout, got 1000 (from PARLEY_CLUSTER_HEARTBEAT_MS)"},
		{[]string{"PARLEY_CLUSTER_APPLY_TIMEOUT_MS=9300000000000"}, "config: cluster.apply_timeout_ms: must be at most 3600000 (1h0m0s), got 9300000000000 (from PARLEY_CLUSTER_APPLY_TIMEOUT_MS)"},
		{[]string{"PARLEY_CLUSTER_RAFT_LISTEN=10.0.0.1:7000"}, `config: cluster.secret: must be set, because cluster.raft_listen "10.0.0.1:7000" (from PARLEY_CLUSTER_RAFT_LISTEN) ` +
			"is not a loopback address (other hosts can reach its Raft port): node-to-node traffic must present the shared secret"},
	} {
		if _, err := Load(nil, tc.env); err == nil || err.Error() != tc.want {
			t.Errorf("%q:\n got %v\nwant %s", tc.env, err, tc.want)
		}
	}
	path := writeFile(t, "cluster: {peers: [{id: n1, raft_addr: '10.0.0.1:7000'}, {id: n2, raft_addr: '10.0.0.2:7000'}], secret: s}")
	_, err := Load([]string{"--config", path}, nil)
	want := `config: cluster.node_id: must be the id of one of cluster.peers ("n1", "n2") when this node bootstraps the cluster, ` +
		`or Raft refuses to bootstrap a membership without it, got "node1" (from default)`
	if err == nil || err.Error() != want {
		t.Errorf("node_id not in peers:\n got %v\nwant %s", err, want)
	}
}

// TestFileScalarTypes checks that YAML scalars of other types are accepted
// where they make sense.
func TestFileScalarTypes(t *testing.T) {
	path := writeFile(t, `
CLUSTER:
  Node_ID: 42
registration: {open: "false"}
limits: {send_per_second: 3, send_burst: "9"}
ws: {max_frame_bytes: 4096.0}
http: ~
tls: {}
`)
	c := mustLoad(t, []string{"--config", path}, nil)
	if c.Cluster.NodeID != "42" || c.Registration.Open || c.Limits.SendPerSecond != 3 || c.Limits.SendBurst != 9 || c.WS.MaxFrameBytes != 4096 {
		t.Errorf("got %+v", c)
	}
	if c.HTTP.Listen != "127.0.0.1:8080" {
		t.Errorf("null section lost the default: %q", c.HTTP.Listen)
	}
	// An empty file is fine.
	mustLoad(t, []string{"--config", writeFile(t, "")}, nil)
	mustLoad(t, []string{"--config", writeFile(t, "# nothing\n")}, nil)
}
