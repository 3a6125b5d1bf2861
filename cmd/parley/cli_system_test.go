package main

// Command-line behaviour: usage, version, and configuration errors found before a node starts.

import (
	"context"
	"debug/buildinfo"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

// runParley runs the binary with args and extra environment in dir and returns its exit code
// and combined output.
func runParley(t *testing.T, dir string, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &exit):
		return exit.ExitCode(), string(out)
	}
	t.Fatalf("parley %v: %v\n%s", args, err, out)
	return 0, ""
}

func TestVersionFromBuildInfo(t *testing.T) {
	info := &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.modified", Value: "true"}}}
	for _, tc := range []struct {
		v, c, wantV, wantC string
		info               *debug.BuildInfo
	}{
		{"dev", "unknown", "v1.2.3", "0123abcd-dirty", info},
		{"v9", "feed", "v9", "feed", info}, // ldflags win
		{"dev", "unknown", "dev", "0123abcd", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.modified", Value: "false"}}}},
		{"dev", "unknown", "dev", "unknown", &debug.BuildInfo{}},
	} {
		if v, c := fromBuildInfo(tc.v, tc.c, tc.info); v != tc.wantV || c != tc.wantC {
			t.Errorf("fromBuildInfo(%q, %q) = %q, %q; want %q, %q", tc.v, tc.c, v, c, tc.wantV, tc.wantC)
		}
	}
}

// A binary built without -ldflags prints the commit Go recorded in it. The test builds its
// own, with VCS stamping on: the environment may turn it off (GOFLAGS=-buildvcs=false).
func TestVersionPrintsCommit(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "parley")
	if out, err := exec.Command("go", "build", "-buildvcs=true", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Skipf("cannot build with VCS stamping (no git, or not a repository?): %v\n%s", err, out)
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	rev := ""
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" {
			rev = s.Value
		}
	}
	if rev == "" {
		t.Skip("the binary has no VCS stamp")
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "(commit "+rev) {
		t.Fatalf("parley version: %v: printed %q, want commit %s", err, out, rev)
	}
}

func TestServeHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--help"} {
		code, out := runParley(t, t.TempDir(), nil, "serve", arg)
		if code != 0 || strings.Contains(out, "pflag") || !strings.Contains(out, "--http.listen") || !strings.Contains(out, "--config") {
			t.Errorf("parley serve %s: exit %d, want 0 and the flags\n%s", arg, code, out)
		}
	}
}

// Positional arguments the subcommands do not take are usage errors, not ignored.
func TestExtraArgumentsRefused(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"keygen", "acme.key"},
		{"keygen", "--out", "x.key", "extra"},
		{"cluster", "status", "extra"},
		{"cluster", "join", "--node-id", "n2", "--raft-addr", "127.0.0.1:1", "extra"},
		{"user", "add", "--username", "carol", "--password", "password123", "extra"},
		{"version", "extra"},
	} {
		code, out := runParley(t, dir, nil, args...)
		if code != 2 || !strings.Contains(out, "unexpected argument") {
			t.Errorf("parley %v: exit %d, want 2 and a usage message\n%s", args, code, out)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) > 0 {
		t.Errorf("a refused command wrote %v", entries)
	}
}

// Empty or malformed flag values and unknown subcommands are usage errors (exit 2) that name the
// flag or command. Before, `keygen --out=` failed as "open : no such file or directory" and an
// empty or host-less --addr as a failed request ("no Host in request URL"), both exit 1;
// `user bogus` printed the usage alone; `serve --config` with no value named no flag.
func TestBadFlagValuesAreUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--config"}, "parley serve: config: --config needs a file name"},
		{[]string{"keygen", "--out="}, "parley keygen: --out needs a file name"},
		{[]string{"user"}, "parley user: missing command\nusage: parley user add"},
		{[]string{"user", "bogus"}, "parley user: unknown command \"bogus\"\nusage: parley user add"},
		{[]string{"user", "add", "--username", "carol", "--password", "password123", "--addr="}, "parley user add: --addr \"\" is not a HOST:PORT or URL"},
		{[]string{"cluster", "status", "--addr="}, "parley cluster status: --addr \"\" is not a HOST:PORT or URL"},
		{[]string{"cluster", "snapshot", "--addr", "http://"}, "parley cluster snapshot: --addr \"http://\" is not a HOST:PORT or URL"},
		{[]string{"cluster", "remove", "--addr", "%zz", "--node-id", "n2"}, "parley cluster remove: --addr \"%zz\" is not a HOST:PORT or URL"},
		{[]string{"cluster", "bogus", "--addr="}, "parley cluster: unknown command \"bogus\""},
	} {
		code, out := runParley(t, dir, nil, tc.args...)
		if code != 2 || !strings.HasPrefix(out, tc.want) {
			t.Errorf("parley %q: exit %d, want 2 and a message starting %q\n%s", tc.args, code, tc.want, out)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) > 0 {
		t.Errorf("a refused command wrote %v", entries)
	}
}

// Bad file-valued keys are configuration errors (exit 2, naming the key), found before Raft
// writes anything to data_dir.
func TestBadFileKeys(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := newTestCA(t)
	crt, key := ca.issue(t, "node")
	_, otherKey := ca.issue(t, "other")
	missing := filepath.Join(dir, "missing")
	for _, tc := range []struct {
		name string
		env  []string
		key  string
	}{
		{"key_file missing", []string{"PARLEY_FEDERATION_KEY_FILE=" + missing}, "federation.key_file"},
		{"key_file malformed", []string{"PARLEY_FEDERATION_KEY_FILE=" + garbage}, "federation.key_file"},
		{"cert missing", []string{"PARLEY_TLS_CERT_FILE=" + missing, "PARLEY_TLS_KEY_FILE=" + key}, "tls.cert_file"},
		{"cert malformed", []string{"PARLEY_TLS_CERT_FILE=" + garbage, "PARLEY_TLS_KEY_FILE=" + key}, "tls.cert_file"},
		{"key missing", []string{"PARLEY_TLS_CERT_FILE=" + crt, "PARLEY_TLS_KEY_FILE=" + missing}, "tls.key_file"},
		{"key of another cert", []string{"PARLEY_TLS_CERT_FILE=" + crt, "PARLEY_TLS_KEY_FILE=" + otherKey}, "tls.key_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			// Port 0: the node is not meant to get as far as listening.
			env := append([]string{"PARLEY_DATA_DIR=" + data, "PARLEY_HTTP_LISTEN=127.0.0.1:0",
				"PARLEY_CLUSTER_RAFT_LISTEN=127.0.0.1:0", "PARLEY_CLUSTER_SECRET="}, tc.env...)
			code, out := runParley(t, dir, env, "serve")
			if code != 2 || !strings.Contains(out, "config: "+tc.key+": ") {
				t.Fatalf("exit %d, want 2 and a message naming %s\n%s", code, tc.key, out)
			}
			if entries, _ := os.ReadDir(data); len(entries) > 0 {
				t.Errorf("data_dir was set up before the check: %v", entries)
			}
		})
	}
}

// A config file that cannot be read or parsed is a configuration error (exit 2) whose message
// names the file and says "config:" once. It used to say "config: config: ".
func TestConfigFileErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("org: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.yaml")
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"invalid YAML", []string{"--config", bad}, nil, "parley serve: config: " + bad + ": invalid YAML"},
		{"missing file", []string{"--config", missing}, nil, "parley serve: config: cannot read config file " + missing + ": no such file"},
		{"missing file from the environment", nil, []string{"PARLEY_CONFIG=" + missing}, "parley serve: config: cannot read config file " + missing + ": no such file"},
		{"a directory", []string{"--config", dir}, nil, "parley serve: config: cannot read config file " + dir + ": is a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := runParley(t, dir, tc.env, append([]string{"serve"}, tc.args...)...)
			if code != 2 || !strings.HasPrefix(out, tc.want) || strings.Count(out, "config:") != 1 {
				t.Fatalf("exit %d, want 2 and a message starting %q, with one \"config:\"\n%s", code, tc.want, out)
			}
		})
	}
}

// Cluster settings Raft or the cluster would refuse only later (an election timeout below the
// heartbeat, a timeout that overflows time.Duration, a bootstrap membership without this node,
// Raft reachable from other hosts without a secret) are configuration errors: exit 2 naming the
// key, before anything is written to data_dir. Before config checked them, the first and third
// exited 1 from Raft naming no key, the second made every write fail at once, and the last ran.
func TestBadClusterKeys(t *testing.T) {
	dir := t.TempDir()
	peers := filepath.Join(dir, "peers.yaml")
	if err := os.WriteFile(peers, []byte("cluster:\n  peers:\n    - {id: n1, raft_addr: \"127.0.0.1:1\"}\n    - {id: n2, raft_addr: \"127.0.0.1:2\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		key  string
	}{
		{"heartbeat above election", nil, []string{"PARLEY_CLUSTER_HEARTBEAT_MS=1000"}, "cluster.heartbeat_ms"},
		{"apply timeout overflows", nil, []string{"PARLEY_CLUSTER_APPLY_TIMEOUT_MS=9300000000000"}, "cluster.apply_timeout_ms"},
		{"node_id not among the peers", []string{"--config", peers}, []string{"PARLEY_CLUSTER_SECRET=s"}, "cluster.node_id"},
		{"raft on all interfaces without a secret", nil, []string{"PARLEY_CLUSTER_RAFT_LISTEN=0.0.0.0:0", "PARLEY_CLUSTER_RAFT_ADVERTISE=10.0.0.1:7000"}, "cluster.secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			env := append([]string{"PARLEY_DATA_DIR=" + data, "PARLEY_HTTP_LISTEN=127.0.0.1:0",
				"PARLEY_CLUSTER_RAFT_LISTEN=127.0.0.1:0", "PARLEY_CLUSTER_SECRET="}, tc.env...)
			code, out := runParley(t, dir, env, append([]string{"serve"}, tc.args...)...)
			if code != 2 || !strings.Contains(out, "config: "+tc.key+": ") {
				t.Fatalf("exit %d, want 2 and a message naming %s\n%s", code, tc.key, out)
			}
			if entries, _ := os.ReadDir(data); len(entries) > 0 {
				t.Errorf("data_dir was set up before the check: %v", entries)
			}
		})
	}
}

// A node without cluster.secret refuses to add a voter, and `parley cluster join` says why.
func TestClusterJoinRefusedWithoutSecret(t *testing.T) {
	p := startSingle(t, "alone")
	waitLeader(t, p)
	if !strings.Contains(p.logs(), "websocket=ws://"+p.http+"/v1/ws") {
		t.Errorf("the startup line does not give the ws:// URL:\n%s", p.logs())
	}
	code, out := runParley(t, "", nil, "cluster", "join", "--addr", p.http, "--node-id", "n2", "--raft-addr", "127.0.0.1:1")
	if code != 1 || !strings.Contains(out, "M_FORBIDDEN") || !strings.Contains(out, "cluster.secret") {
		t.Fatalf("cluster join: exit %d, want 1 and the refusal\n%s", code, out)
	}
	st, stOut := runParley(t, "", nil, "cluster", "status", "--addr", p.http)
	if st != 0 || strings.Contains(stOut, "n2") {
		t.Fatalf("cluster status after the refused join: exit %d\n%s", st, stOut)
	}
}

func TestWebSocketURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:8080":  "ws://127.0.0.1:8080/v1/ws",
		"https://chat.example":   "wss://chat.example/v1/ws",
		"https://chat.example/p": "wss://chat.example/p/v1/ws",
	} {
		if got := webSocketURL(in); got != want {
			t.Errorf("webSocketURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// The cluster commands' usage errors name what is wrong (exit 2), and a node's refusal of
// `cluster status` reads as the other commands' refusals do, CODE: message, not raw JSON.
func TestClusterCommandMessages(t *testing.T) {
	code, out := runParley(t, "", nil, "cluster")
	if code != 2 || !strings.HasPrefix(out, "parley cluster: missing command") || !strings.Contains(out, "usage: parley cluster status|join|remove|snapshot") {
		t.Errorf("parley cluster: exit %d, want 2 and the cluster commands\n%s", code, out)
	}
	code, out = runParley(t, "", nil, "cluster", "join", "--node-id", "n2")
	if code != 2 || !strings.Contains(out, "--raft-addr is required") || strings.Contains(out, "--node-id") {
		t.Errorf("cluster join without --raft-addr: exit %d, want 2 naming --raft-addr alone\n%s", code, out)
	}

	p := startSingle(t, "guarded", "PARLEY_CLUSTER_SECRET=s3cret-of-this-test")
	waitLeader(t, p)
	code, out = runParley(t, "", []string{"PARLEY_CLUSTER_SECRET="}, "cluster", "status", "--addr", p.http)
	if code != 1 || !strings.Contains(out, "403 Forbidden: M_FORBIDDEN: cluster secret required") || strings.Contains(out, "{") {
		t.Errorf("cluster status without the secret: exit %d, want 1 and the refusal as CODE: message\n%s", code, out)
	}
}

// --help (and -h) on every subcommand prints its usage and flags to stdout and exits 0, as
// `serve --help` does; the secret's default from the environment is not printed. Before, the
// flag subcommands printed "flag: help requested" and `version --help` "unexpected argument",
// both exit 2.
func TestSubcommandHelp(t *testing.T) {
	env := []string{"PARLEY_CLUSTER_SECRET=s3cret-not-for-help", "PARLEY_USER_PASSWORD=pw-not-for-help"}
	for _, tc := range []struct {
		args  []string
		flags []string // what the usage must list
	}{
		{[]string{"cluster", "status"}, []string{"usage: parley cluster status", "--addr", "--secret", "127.0.0.1:8080"}},
		{[]string{"cluster", "join"}, []string{"usage: parley cluster join", "--addr", "--node-id", "--raft-addr", "--secret"}},
		{[]string{"cluster", "remove"}, []string{"usage: parley cluster remove", "--node-id", "--secret"}},
		{[]string{"cluster", "snapshot"}, []string{"usage: parley cluster snapshot", "--addr", "--secret"}},
		{[]string{"cluster"}, []string{"usage: parley cluster status|join|remove|snapshot"}},
		{[]string{"user", "add"}, []string{"usage: parley user add", "--username", "--password", "--addr", "--secret"}},
		{[]string{"user"}, []string{"usage: parley user add"}},
		{[]string{"keygen"}, []string{"usage: parley keygen", "--out", "./signing.key"}},
		{[]string{"version"}, []string{"usage: parley version"}},
	} {
		for _, h := range []string{"--help", "-h"} {
			args := append(append([]string(nil), tc.args...), h)
			cmd := exec.Command(binary, args...)
			cmd.Env = append(os.Environ(), env...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil || stderr.Len() > 0 {
				t.Errorf("parley %v: %v, stderr %q; want exit 0 and the usage on stdout", args, err, stderr.String())
			}
			for _, want := range tc.flags {
				if !strings.Contains(string(out), want) {
					t.Errorf("parley %v printed no %q:\n%s", args, want, out)
				}
			}
			if strings.Contains(string(out), "not-for-help") {
				t.Errorf("parley %v printed a secret from the environment:\n%s", args, out)
			}
		}
	}
	// The top-level usage lists --secret where the commands take it.
	_, out := runParley(t, "", nil, "help")
	for _, line := range strings.Split(out, "\n") {
		if (strings.Contains(line, "  cluster ") || strings.Contains(line, "  user add")) && !strings.Contains(line, "[--secret S]") {
			t.Errorf("top-level usage line without --secret: %q", line)
		}
	}
}

// TestServeThatCannotListenLeavesDataDir: a port already taken (HTTP, or admin.listen) stops
// serve with exit 1 before Raft touches data_dir. Before, it bootstrapped a new cluster in the
// empty data_dir first ("raft cluster bootstrapped"), and only then failed to listen.
func TestServeThatCannotListenLeavesDataDir(t *testing.T) {
	for _, key := range []string{"PARLEY_HTTP_LISTEN", "PARLEY_ADMIN_LISTEN"} {
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := &proc{id: "n1", http: freeAddr(t), raft: freeAddr(t), dir: filepath.Join(t.TempDir(), "data")}
		env := append(nodeEnv(p, ""), key+"="+taken.Addr().String())
		code, out := runParley(t, t.TempDir(), env, "serve")
		taken.Close()
		if code != 1 || !strings.Contains(out, "cannot listen") || strings.Contains(out, "bootstrapped") {
			t.Errorf("%s taken: exit %d, want 1 and cannot listen, before any bootstrap\n%s", key, code, out)
		}
		if _, err := os.Stat(p.dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s taken: data_dir %s made (%v)\n%s", key, p.dir, err, out)
		}
	}
}
