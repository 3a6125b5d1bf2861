package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzLoadYAML feeds random bytes to Load as the YAML file: it must never
// panic or hang, and must return either a config or an *Error.
func FuzzLoadYAML(f *testing.F) {
	for _, seed := range []string{
		"",
		fullYAML,
		"org: example.com\nhttp: {listen: ':8080'}\n",
		"cluster:\n  peers:\n    - {id: a, raft_addr: 'h:1'}\n    - {id: b, raft_addr: 'h:2'}\n  secret: s\n",
		"bridges: [{id: b, amqp_user: u, namespace: '(', rooms: [a, {b: c}]}]",
		"federation: {peers: [{org: x.org, public_key: 'ed25519:k:AA'}, null, 3]}",
		"federation: {previous_keys: ['ed25519:a:AA', 7, null], peers: [{org: x.org, public_key: 'ed25519:k:AA', previous_keys: ['ed25519:k:BB', {x: 1}]}]}",
		"ws: {allowed_origins: [null, 1, [2], {a: b}]}",
		"http: [1, 2]\ntls: 3\n",
		"? [a, b]\n: c\n",
		"1: 2\ntrue: false\n",
		"a: &x [*x]\n",
		"x: !!binary aGVsbG8=\norg: !!binary aGVsbG8=\n",
		"org: 2001-12-14t21:59:43.10-05:00\n",
		"limits: {send_per_second: .inf, send_burst: 0x10}\n",
		"- a\n- b\n",
		"\x00\xff",
		"{{{{",
		"cluster.node_id: a\nhttp.listen: ':1'\n",
		"log: {level: ~}\ncluster: {bootstrap: ~, peers: ~}\n",
	} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "fuzz.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		var c *Config
		var err error
		done := make(chan struct{})
		go func() { defer close(done); c, err = Load([]string{"--config", path}, nil) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("Load did not return within 10s for %q", data)
		}
		if (c == nil) == (err == nil) {
			t.Fatalf("Load returned config %v and error %v", c, err)
		}
		if err != nil && len(configErrors(err)) == 0 {
			t.Fatalf("error is not a *config.Error: %T %v", err, err)
		}
	})
}
