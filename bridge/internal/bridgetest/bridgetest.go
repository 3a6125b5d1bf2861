// Package bridgetest starts what the bridge tests need: real nodes (in-process, on loopback
// ports, data in temp dirs) and a fresh vhost on the real RabbitMQ at PARLEY_TEST_AMQP_URL
// (default amqp://guest:guest@127.0.0.1:5672/), managed with rabbitmqctl. A broker that cannot
// be reached fails the test; it is never skipped.
package bridgetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"golang.org/x/crypto/bcrypt"

	"github.com/parley-chat/parley/consensus"
	"github.com/parley-chat/parley/consensus/loopback"
	"github.com/parley-chat/parley/node"
)

// BaseURL is the broker the tests use.
func BaseURL() string {
	if u := os.Getenv("PARLEY_TEST_AMQP_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// RandHex returns 2n random hex digits.
func RandHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Rabbitmqctl runs rabbitmqctl (bounded to a minute).
func Rabbitmqctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("rabbitmqctl %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// Vhost is a fresh vhost, deleted when the test ends.
type Vhost struct {
	Name string
	URL  string // BaseURL's user on this vhost
}

// URLFor is the broker URL of this vhost for another user.
func (v *Vhost) URLFor(user, password string) string {
	u, _ := url.Parse(v.URL)
	u.User = url.UserPassword(user, password)
	return u.String()
}

// NewVhost makes a vhost with full permissions for the base URL's user; the test fails if the
// broker cannot be reached.
func NewVhost(t testing.TB) *Vhost {
	t.Helper()
	u, err := url.Parse(BaseURL())
	if err != nil {
		t.Fatalf("PARLEY_TEST_AMQP_URL: %v", err)
	}
	user := u.User.Username()
	if user == "" {
		user = "guest"
	}
	name := "parley-bridge-test-" + RandHex(6)
	if out, err := Rabbitmqctl("add_vhost", name); err != nil {
		t.Fatalf("broker unreachable? %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := Rabbitmqctl("delete_vhost", name); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
	})
	if out, err := Rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	u.Path = "/" + name
	u.RawPath = "/" + url.PathEscape(name)
	conn, err := amqp091.DialConfig(u.String(), amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("broker unreachable at %s: %v", u.Redacted(), err)
	}
	_ = conn.Close()
	return &Vhost{Name: name, URL: u.String()}
}

// AddUser creates a broker user with the given permissions (configure, write, read regexps)
// on v, deleted when the test ends, and returns its password.
func AddUser(t testing.TB, v *Vhost, user, configure, write, read string) string {
	t.Helper()
	pass := RandHex(12)
	if out, err := Rabbitmqctl("add_user", user, pass); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := Rabbitmqctl("delete_user", user); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
	})
	if out, err := Rabbitmqctl("set_permissions", "-p", v.Name, user, configure, write, read); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return pass
}

// KillConnection has the broker close the connection named name (as an operator or a broker
// restart would), leaving every other connection alone.
func KillConnection(t testing.TB, name string) {
	t.Helper()
	CloseConnection(t, ConnectionPID(t, name))
}

// ConnectionPID finds the broker's pid of the open connection named name (rabbitmqctl takes
// about a second: look it up before the moment to close it).
func ConnectionPID(t testing.TB, name string) string {
	t.Helper()
	out, err := Rabbitmqctl("list_connections", "-q", "name", "pid", "client_properties")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := `{"connection_name","` + name + `"}`
	for _, line := range strings.Split(out, "\n") {
		fields := strings.SplitN(line, "\t", 3)
		if len(fields) == 3 && strings.Contains(fields[2], want) {
			return fields[1]
		}
	}
	t.Fatalf("no connection named %q in:\n%s", name, out)
	return ""
}

// CloseConnection has the broker close the connection with the given pid.
func CloseConnection(t testing.TB, pid string) {
	t.Helper()
	if out, err := Rabbitmqctl("close_connection", pid, "parley test: connection closed by the broker"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// Logger logs to the test at warn level (debug with PARLEY_TEST_LOG=debug).
func Logger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("PARLEY_TEST_LOG") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: level}))
}

// Node is a running node of a test org.
type Node struct {
	Srv  *node.Server
	Addr string // HTTP host:port

	t    testing.TB
	done chan error
}

// BaseURL is the node's HTTP base URL.
func (n *Node) BaseURL() string { return "http://" + n.Addr }

// WSURL is the node's WebSocket URL.
func (n *Node) WSURL() string { return "ws://" + n.Addr + "/v1/ws" }

// Stop shuts the node down (idempotent; also done when the test ends).
func (n *Node) Stop() {
	if n.Srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := n.Srv.Shutdown(ctx); err != nil {
		n.t.Errorf("shutdown: %v", err)
	}
	if err := <-n.done; err != nil {
		n.t.Errorf("serve: %v", err)
	}
	n.Srv = nil
}

func freeAddr(t testing.TB) string { return loopback.FreeAddr(t) }

// StartCluster starts an org of size nodes (open registration, fast elections), waits for a
// leader and the org signing key, and stops the nodes when the test ends.
func StartCluster(t testing.TB, org string, size int) []*Node {
	t.Helper()
	// Elections: fast, but not so fast that a loaded CI machine (-race, 2 cores) flaps.
	timeout := 150 * time.Millisecond
	if size > 1 {
		timeout = 400 * time.Millisecond
	}
	raftAddrs := make([]string, size)
	var peers []consensus.Peer
	for i := range raftAddrs {
		raftAddrs[i] = freeAddr(t)
		if size > 1 {
			peers = append(peers, consensus.Peer{ID: fmt.Sprintf("n%d", i+1), RaftAddr: raftAddrs[i]})
		}
	}
	nodes := make([]*Node, 0, size)
	for i := range size {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		srv, err := node.New(node.Options{Org: org, PublicURL: "http://" + addr, RegistrationOpen: true,
			PasswordCost: bcrypt.MinCost, SendPerSecond: 10000, SendBurst: 10000, Logger: Logger(t)},
			consensus.Options{NodeID: fmt.Sprintf("n%d", i+1), DataDir: t.TempDir(), RaftBind: raftAddrs[i],
				Bootstrap: true, Peers: peers, Secret: "bridge test cluster secret", HeartbeatTimeout: timeout, ElectionTimeout: timeout})
		if err != nil {
			ln.Close()
			t.Fatal(err)
		}
		n := &Node{Srv: srv, Addr: addr, t: t, done: make(chan error, 1)}
		go func() { n.done <- srv.Serve(ln) }()
		t.Cleanup(n.Stop)
		nodes = append(nodes, n)
	}
	WaitLeader(t, nodes)
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range nodes {
		for _, ok := n.Srv.Keys().Current(); !ok; _, ok = n.Srv.Keys().Current() {
			if time.Now().After(deadline) {
				t.Fatal("no org signing key")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nodes
}

// WaitLeader waits for one of the running nodes to lead and returns it.
func WaitLeader(t testing.TB, nodes []*Node) *Node {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, n := range nodes {
			if n.Srv != nil && n.Srv.Cluster().IsLeader() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := n.Srv.Cluster().CaughtUp(ctx)
				cancel()
				if err == nil {
					return n
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WaitFor polls cond until it holds, failing the test after d.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
