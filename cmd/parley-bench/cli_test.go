package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	cases := map[string]float64{"100": 100, "100/s": 100, " 6000/m ": 100, "0.5/s": 0.5, "7200/h": 2}
	for in, want := range cases {
		got, err := parseRate(in)
		if err != nil || got != want {
			t.Errorf("parseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x/s", "10/d", "NaN", "Inf/s"} {
		if _, err := parseRate(bad); err == nil {
			t.Errorf("parseRate(%q) accepted", bad)
		}
	}
}

func TestParseDuration(t *testing.T) {
	cases := map[string]time.Duration{"10s": 10 * time.Second, "30": 30 * time.Second, "0.5": 500 * time.Millisecond, "2m": 2 * time.Minute, " 0 ": 0}
	for in, want := range cases {
		if got, err := parseDuration(in); err != nil || got != want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "ten", "1e300", "5 s"} {
		if _, err := parseDuration(bad); err == nil {
			t.Errorf("parseDuration(%q) accepted", bad)
		}
	}
}

func TestParseArgs(t *testing.T) {
	var errb bytes.Buffer
	o, err := parseArgs([]string{"latency", "--rate", "250/s", "--subs", "7", "--duration", "3s"}, &errb)
	if err != nil {
		t.Fatal(err)
	}
	if o.scenario != "latency" || float64(o.rate) != 250 || o.subs != 7 || o.duration != 3*time.Second || o.addr != "127.0.0.1:8080" {
		t.Fatalf("%+v", o)
	}
	if !strings.HasPrefix(o.userPrefix, "bench") || o.connsPerUser != 50 || o.pubs != 4 {
		t.Fatalf("defaults: %+v", o)
	}
	o, err = parseArgs([]string{"--subs", "3", "--scenario=fanout"}, &errb)
	if err != nil || o.scenario != "fanout" || o.subs != 3 || o.window != 4 || o.maxBacklog != 512 {
		t.Fatalf("--scenario= form: %+v %v", o, err)
	}
	o, err = parseArgs([]string{"--scenario", "cluster", "--addrs", "a:1, b:2,,c:3"}, &errb)
	if err != nil || len(o.clusterAddrs()) != 3 || o.window != 1 {
		t.Fatalf("cluster: %+v %v", o, err)
	}
	o, err = parseArgs([]string{"federation", "--peer-addr", "b:1"}, &errb)
	if err != nil || o.subs != 1 || float64(o.rate) != 10 || o.joinTimeout != 30*time.Second {
		t.Fatalf("federation defaults: %+v %v", o, err)
	}
	o, err = parseArgs([]string{"conns", "--hold", "30"}, &errb)
	if err != nil || o.conns != 1000 || o.hold != 30*time.Second || o.procs != 0 || o.duration != 10*time.Second {
		t.Fatalf("conns defaults: %+v %v", o, err)
	}

	bad := [][]string{
		{"nope"},
		{"fanout", "--subs", "0"},
		{"fanout", "--duration", "2h"},
		{"latency", "--rate", "0"},
		{"federation"},
		{"federation", "--peer-addr", "x:1", "--alias", "Bad=Alias"},
		{"conns", "--conns", "2000000"},
		{"conns", "--user-prefix", "UPPER"},
		{"conns", "--password", "short"},
		{"fanout", "--subs", "100000", "--max-msgs", "10000000"},
		{"fanout", "stray"},
		{"fanout", "--max-backlog", "-1"},
		{"fanout", "--max-backlog", "1000000"},
		{"latency", "--max-backlog", "10"}, // fanout only
		{"--scenario"},
		{"fanout", "--no-such-flag"},
	}
	for _, args := range bad {
		if _, err := parseArgs(args, &errb); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

func TestRunUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(nil, strings.NewReader(""), &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "scenarios:") {
		t.Fatalf("no args: %d %s", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"help"}, strings.NewReader(""), &out, &errb); code != exitOK || !strings.Contains(errb.String(), "PARLEY_LIMITS_SEND_PER_SECOND") {
		t.Fatalf("help: %d %s", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"fanout", "-h"}, strings.NewReader(""), &out, &errb); code != exitOK || !strings.Contains(errb.String(), "-window") || strings.Contains(errb.String(), "-peer-addr") {
		t.Fatalf("fanout -h: %d %s", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"fanout", "--subs", "-1"}, strings.NewReader(""), &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "--subs -1") {
		t.Fatalf("bad flag: %d %s", code, errb.String())
	}
	if out.Len() != 0 {
		t.Fatalf("usage errors wrote to stdout: %q", out.String())
	}
}

func TestBudgetCoversEveryPhase(t *testing.T) {
	o := &options{scenario: "conns", setupTimeout: time.Minute, duration: 10 * time.Second, timeout: 10 * time.Second, hold: time.Minute, settle: time.Second}
	if b := o.budget(); b < o.setupTimeout+o.duration+o.hold+o.settle {
		t.Fatalf("budget %s", b)
	}
	if childReleaseBound(o) >= o.budget() {
		t.Fatal("a child must give up waiting before its own watchdog fires")
	}
}

func TestPickSourceIPs(t *testing.T) {
	ips, note := pickSourceIPs("auto", "127.0.0.1")
	if len(ips) == 0 || note != "" && len(ips) == 8 {
		t.Fatalf("auto on loopback: %v %q", ips, note)
	}
	if ips, _ := pickSourceIPs("auto", "node.example"); ips != nil {
		t.Fatal("auto must not pick loopback sources for a remote host")
	}
	if ips, _ := pickSourceIPs("none", "127.0.0.1"); ips != nil {
		t.Fatal("none")
	}
	ips, _ = pickSourceIPs("127.0.0.1, 127.0.0.3", "x")
	if len(ips) != 2 || ips[1].String() != "127.0.0.3" {
		t.Fatalf("explicit: %v", ips)
	}
	if ips, note := pickSourceIPs("banana", "x"); ips != nil || !strings.Contains(note, "banana") {
		t.Fatalf("bad value: %v %q", ips, note)
	}
	if ips, note := pickSourceIPs("192.0.2.1", "x"); len(ips) != 0 || !strings.Contains(note, "192.0.2.1") {
		t.Fatalf("unbindable: %v %q", ips, note)
	}
}

func TestErrKey(t *testing.T) {
	if k := errKey(nil); k != "ok" {
		t.Fatal(k)
	}
	c := newErrCounter()
	for i := 0; i < maxErrKeys+10; i++ {
		c.addKey(strings.Repeat("k", i+1), 1)
	}
	if s := c.snapshot(); len(s) != maxErrKeys+1 || s["other"] != 10 {
		t.Fatalf("error keys not bounded: %d, other=%d", len(s), s["other"])
	}
}

func TestMessageBody(t *testing.T) {
	b := encodeBody(42, 1700000000123456789, 0)
	if b != "pb1 42 1700000000123456789" {
		t.Fatal(b)
	}
	seq, ts, ok := parseBody(b)
	if !ok || seq != 42 || ts != 1700000000123456789 {
		t.Fatal(seq, ts, ok)
	}
	p := encodeBody(7, 99, 100)
	if len(p) != 100 {
		t.Fatalf("padded length %d", len(p))
	}
	if seq, ts, ok := parseBody(p); !ok || seq != 7 || ts != 99 {
		t.Fatal("padded body does not parse")
	}
	for _, bad := range []string{"", "hello", "pb1 ", "pb1 x 1", "pb1 1", "pb1 -1 5", "pbw 1"} {
		if _, _, ok := parseBody(bad); ok {
			t.Errorf("parsed %q", bad)
		}
	}
	if !isWarmup(warmupBody(3)) || isWarmup(b) {
		t.Fatal("warm-up detection")
	}
}

// Flags given without a scenario, a --source-ips that is not a list of addresses, or an
// output file that cannot be created (found at the start, not after the run) are usage
// errors (exit 2) that name the flag; the top-level help alone is not an error.
func TestRunUsageErrorsNameTheFlag(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--conns", "5"}, "--conns"},
		{[]string{"--bogus"}, "--bogus"},
		{[]string{"--duration", "5s", "conns"}, "--duration"},
		{[]string{"conns", "--source-ips", "1.2.3"}, "--source-ips"},
		{[]string{"fanout", "--source-ips", "127.0.0.2,nope"}, "--source-ips"},
		// --addr: nothing listens there, so that a tool that took these for valid fails at once.
		{[]string{"latency", "--addr", "127.0.0.1:1", "--json", "/nonexistent-parley-bench-dir/r.json"}, "--json"},
		{[]string{"conns", "--addr", "127.0.0.1:1", "--html", "/nonexistent-parley-bench-dir/r.html"}, "--html"},
		{[]string{"cluster", "--addr", "127.0.0.1:1", "--cpuprofile", "/nonexistent-parley-bench-dir/cpu.out"}, "--cpuprofile"},
		{[]string{"fanout", "--addr", "127.0.0.1:1", "--json", os.TempDir()}, "--json"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := run(c.args, strings.NewReader(""), &out, &errb)
		if code != exitUsage || !strings.Contains(errb.String(), "parley-bench: "+c.want) {
			t.Errorf("%v: exit %d, want %d and an error naming %s:\n%s", c.args, code, exitUsage, c.want, errb.String())
		}
	}
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		var out, errb bytes.Buffer
		if code := run(args, strings.NewReader(""), &out, &errb); code != exitOK || !strings.Contains(errb.String(), "scenarios:") {
			t.Errorf("%v: exit %d\n%s", args, code, errb.String())
		}
	}
}
