//go:build linux || darwin || freebsd

package main

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/loopback"
)

// The tests below run the tool against a real node: the parley binary, built once per test
// binary, started as a process of its own on loopback, as an operator would run it.

// realNode is a single-node org served by a parley process.
type realNode struct {
	addr string
	cmd  *exec.Cmd
	log  *syncBuffer
}

// startRealNode starts a node with the load limits raised, as scripts/bench.sh does, plus
// env (later entries win), and waits for /v1/health.
func startRealNode(t *testing.T, env ...string) *realNode {
	t.Helper()
	return startRealNodeArgs(t, nil, env...)
}

// startRealNodeArgs is startRealNode with more arguments to parley serve.
func startRealNodeArgs(t *testing.T, args []string, env ...string) *realNode {
	t.Helper()
	bin := buildParley(t)
	n := &realNode{addr: loopback.FreeAddr(t), log: &syncBuffer{}}
	n.cmd = exec.Command(bin, append([]string{"serve"}, args...)...)
	n.cmd.Env = append(os.Environ(),
		"PARLEY_DATA_DIR="+t.TempDir(),
		"PARLEY_HTTP_LISTEN="+n.addr,
		"PARLEY_CLUSTER_RAFT_LISTEN="+loopback.FreeAddr(t),
		"PARLEY_LOG_LEVEL=warn",
		"PARLEY_LIMITS_SEND_PER_SECOND=100000", "PARLEY_LIMITS_SEND_BURST=100000",
		"PARLEY_LIMITS_REGISTER_PER_HOUR=100000", "PARLEY_LIMITS_LOGIN_PER_MINUTE=100000",
		"PARLEY_LIMITS_CONNECTIONS_PER_USER=100000", "PARLEY_LIMITS_CONNECTIONS_PER_IP=100000")
	n.cmd.Env = append(n.cmd.Env, env...)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = n.cmd.Process.Signal(syscall.SIGCONT) // a test may have stopped it
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = n.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = n.cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("node log:\n%s", n.log.String())
		}
	})
	hc := &http.Client{Timeout: time.Second}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := hc.Get("http://" + n.addr + "/v1/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return n
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s not healthy after 20 s:\n%s", n.addr, n.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pause stops the node's process (SIGSTOP): it holds its connections and answers nothing,
// as a node stalled by its host would; resume ends that.
func (n *realNode) pause() error { return n.cmd.Process.Signal(syscall.SIGSTOP) }

func (n *realNode) resume() { _ = n.cmd.Process.Signal(syscall.SIGCONT) }

// inPhase calls do (on a goroutine of its own) 300 ms after the tool's progress on stderr
// shows phase, unless the run ended first (runEnded closed). The returned channel is closed
// once it is done or given up, with do's error, if any.
func inPhase(stderr *syncBuffer, phase string, runEnded <-chan struct{}, do func() error) <-chan error {
	out := make(chan error, 1)
	go func() {
		defer close(out)
		for !strings.Contains(stderr.String(), phase) {
			select {
			case <-runEnded:
				out <- fmt.Errorf("the run ended before its phase %q", phase)
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		time.Sleep(300 * time.Millisecond) // some sends succeed first
		if err := do(); err != nil {
			out <- err
		}
	}()
	return out
}

// A node that stalls in the middle of the send phase: the sends it does not answer time out.
// The run must still end within its bounds, and must not pass: its rate and percentiles
// leave out the sends that failed.
func TestLatencyFailsWhenSendsFail(t *testing.T) {
	n := startRealNode(t)
	stderr := &syncBuffer{}
	runEnded := make(chan struct{})
	paused := inPhase(stderr, "latency run", runEnded, n.pause)
	start := time.Now()
	r := runBenchTee(t, stderr, "latency", "--addr", n.addr, "--subs", "4", "--pubs", "1", "--conns-per-user", "4",
		"--rate", "20/s", "--duration", "3s", "--timeout", "1s", "--grace", "300ms", "--setup-timeout", "30s")
	close(runEnded)
	if err := <-paused; err != nil {
		t.Fatalf("pausing the node: %v\n%s", err, r.dump())
	}
	n.resume()
	if took := time.Since(start); took > 40*time.Second {
		t.Errorf("the run took %s", took)
	}
	if r.code != exitFailure {
		t.Fatalf("exit %d, want %d: sends failed\n%s", r.code, exitFailure, r.dump())
	}
	if r.metric(t, "send_failed") == 0 || r.metric(t, "send_ok") == 0 {
		t.Fatalf("want some sends ok and some failed\n%s", r.dump())
	}
	if !strings.Contains(strings.Join(r.rep.Failures, "\n"), "sends failed") {
		t.Fatalf("failures %q", r.rep.Failures)
	}
}

// A node that goes away in the middle of the send phase closes every connection: the sends
// the open loop still schedules cannot be made. The run ends within its bounds, and fails.
func TestLatencyFailsWhenTheNodeGoesAway(t *testing.T) {
	n := startRealNode(t)
	stderr := &syncBuffer{}
	runEnded := make(chan struct{})
	killed := inPhase(stderr, "latency run", runEnded, n.cmd.Process.Kill)
	start := time.Now()
	r := runBenchTee(t, stderr, "latency", "--addr", n.addr, "--subs", "4", "--pubs", "1", "--conns-per-user", "4",
		"--rate", "20/s", "--duration", "3s", "--timeout", "1s", "--grace", "300ms", "--setup-timeout", "30s")
	close(runEnded)
	if err := <-killed; err != nil {
		t.Fatalf("killing the node: %v\n%s", err, r.dump())
	}
	if took := time.Since(start); took > 40*time.Second {
		t.Errorf("the run took %s", took)
	}
	if r.code != exitFailure {
		t.Fatalf("exit %d, want %d: the node closed the connections\n%s", r.code, exitFailure, r.dump())
	}
	if r.metric(t, "send_skipped") == 0 || !strings.Contains(strings.Join(r.rep.Failures, "\n"), "connection had been closed") {
		t.Fatalf("failures %q\n%s", r.rep.Failures, r.dump())
	}
}

// The report states how the node's per-user send limit was raised for the run, when the
// operator (scripts/bench.sh) says so with --node-limits.
func TestReportStatesRaisedSendLimit(t *testing.T) {
	n := startRealNode(t)
	const limits = "limits.send_per_second=100000 limits.send_burst=100000 (PARLEY_LIMITS_*)"
	r := runBench(t, "latency", "--addr", n.addr, "--subs", "2", "--pubs", "1", "--conns-per-user", "2",
		"--rate", "20/s", "--duration", "500ms", "--node-limits", limits)
	if r.code != exitOK || r.rep == nil {
		t.Fatal(r.dump())
	}
	stated := false
	for _, note := range r.rep.Notes {
		stated = stated || strings.Contains(note, "send limit was raised through configuration for this run ("+limits+")")
	}
	if !stated || !strings.Contains(r.stdout, "node limits") || strings.Contains(r.stdout, "expects the operator to raise") {
		t.Fatalf("the report does not state the raised limit:\n%s", r.stdout)
	}
}

// amqpURL is the RabbitMQ the federation test uses (guest/guest on loopback unless
// PARLEY_TEST_AMQP_URL says otherwise).
func amqpURL() string {
	if u := os.Getenv("PARLEY_TEST_AMQP_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// startFederatedPair starts two single-node orgs peered over RabbitMQ, as scripts/bench.sh
// does: org names unique to the run, so that runs sharing the broker do not meet.
func startFederatedPair(t *testing.T) (a, b *realNode) {
	t.Helper()
	u, err := url.Parse(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", u.Host, time.Second); err != nil {
		// Never skipped: scripts/test.sh finds or starts a broker; without one this fails loudly.
		t.Fatalf("no RabbitMQ at %s (set PARLEY_TEST_AMQP_URL, or run scripts/test.sh, which starts one): %v", u.Host, err)
	} else {
		c.Close()
	}
	bin := buildParley(t)
	dir := t.TempDir()
	suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
	orgs := []string{"pba-" + suffix + ".test", "pbb-" + suffix + ".test"}
	keys, pubs := make([]string, 2), make([]string, 2)
	for i := range orgs {
		keys[i] = filepath.Join(dir, strconv.Itoa(i)+".key")
		out, err := exec.Command(bin, "keygen", "--out", keys[i]).Output()
		if err != nil {
			t.Fatalf("keygen: %v", err)
		}
		pubs[i] = strings.TrimSpace(string(out))
	}
	nodes := make([]*realNode, 2)
	for i := range orgs {
		cfg := filepath.Join(dir, strconv.Itoa(i)+".yaml")
		body := fmt.Sprintf("org: %s\namqp: {url: %q}\nfederation:\n  key_file: %s\n  peers:\n    - {org: %s, public_key: %q}\n",
			orgs[i], amqpURL(), keys[i], orgs[1-i], pubs[1-i])
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		nodes[i] = startRealNodeArgs(t, []string{"--config", cfg})
	}
	return nodes[0], nodes[1]
}

// The federation report has the relay's own lag, from A's ok to B's push, besides A send → B
// push (which also holds A's commit): every push of an acked send is one sample of it.
func TestFederationReportsOkToPush(t *testing.T) {
	a, b := startFederatedPair(t)
	r := runBench(t, "federation", "--addr", a.addr, "--peer-addr", b.addr, "--subs", "2", "--conns-per-user", "2",
		"--rate", "20/s", "--duration", "1s", "--grace", "5s")
	if r.code != exitOK || r.rep == nil {
		t.Fatal(r.dump())
	}
	var sendPush, okPush *Latency
	for i := range r.rep.Latencies {
		switch r.rep.Latencies[i].Key {
		case "send_push":
			sendPush = &r.rep.Latencies[i]
		case "ok_push":
			okPush = &r.rep.Latencies[i]
		}
	}
	if sendPush == nil || okPush == nil {
		t.Fatalf("no send_push or ok_push distribution\n%s", r.stdout)
	}
	if want := int64(r.metric(t, "send_ok") * 2); okPush.MS.Count != want || sendPush.MS.Count != want {
		t.Fatalf("A ok → B push has %d samples, send→push %d; want %d (2 subscribers × sends ok)", okPush.MS.Count, sendPush.MS.Count, want)
	}
	if okPush.MS.P50 > sendPush.MS.P50 || r.metric(t, "fed_ok_push_p99_ms") <= 0 || r.metric(t, "fed_ok_push_p99_ms") > sendPush.MS.P99 {
		t.Fatalf("A ok → B push %+v against A send → B push %+v", okPush.MS, sendPush.MS)
	}
}

// A node that does not answer at all (stopped) fails the setup after one request timeout: the
// users not yet registered are not tried in rounds of --setup-concurrency, each waiting out its
// own timeout, until --setup-timeout.
func TestSetupStopsAtTheFirstFailure(t *testing.T) {
	n := startRealNode(t)
	if err := n.pause(); err != nil {
		t.Fatal(err)
	}
	defer n.resume()
	start := time.Now()
	r := runBench(t, "latency", "--addr", n.addr, "--pubs", "80", "--subs", "1", "--setup-concurrency", "4",
		"--timeout", "1s", "--setup-timeout", "60s")
	took := time.Since(start)
	if r.code != exitFailure || !strings.Contains(r.stderr, "could not be registered") || !strings.Contains(r.stderr, "deadline exceeded") {
		t.Fatal(r.dump())
	}
	if took > 8*time.Second {
		t.Fatalf("the setup took %s against a node that answers nothing, with --timeout 1s (81 users, 4 at a time)", took)
	}
}

// A node whose limits refuse connections: the conns report says which limits to raise.
func TestConnsReportNamesTheLimitsThatRefused(t *testing.T) {
	n := startRealNode(t, "PARLEY_LIMITS_CONNECTIONS_PER_IP=5")
	r := runBench(t, "conns", "--addr", n.addr, "--conns", "20", "--conns-per-user", "10", "--source-ips", "none",
		"--hold", "0s", "--settle", "0s", "--duration", "10s", "--timeout", "2s")
	if r.code != exitFailure || r.rep == nil {
		t.Fatal(r.dump())
	}
	if got := r.metric(t, "connected"); got != 5 {
		t.Fatalf("connected %v, want the 5 the node allows one address\n%s", got, r.dump())
	}
	if !strings.Contains(strings.Join(r.rep.Notes, "\n"), "limits.connections_per_ip") {
		t.Fatalf("no note naming the limit:\n%s", r.stdout)
	}
}
