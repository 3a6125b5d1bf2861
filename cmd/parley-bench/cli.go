package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure, or a correctness check failed (lost, duplicate, missing events)
	exitUsage   = 2
	exitStuck   = 3 // the watchdog had to end a run that outlived its own bounds
)

// Hard caps on what one run may ask for. They keep every loop bounded even
// when a flag is mistyped.
const (
	maxDuration     = time.Hour
	maxConns        = 1_000_000
	maxSubs         = 100_000
	maxPubs         = 10_000
	maxMsgsCap      = 10_000_000
	maxRate         = 1_000_000
	maxBodySize     = 32 * 1024
	maxWindow       = 1_000
	maxInflightCap  = 100_000
	maxProcs        = 64
	maxTrackerBytes = 2 << 30 // subs × max-msgs bits of delivery bitsets
)

var scenarios = []struct{ name, help string }{
	{"conns", "N idle authenticated WebSocket connections: connect rate, failures, node memory per connection"},
	{"fanout", "S subscribers in one public room, P publishers sending as fast as allowed: deliveries/s"},
	{"latency", "fixed send rate into a room with S subscribers: send→push and send→ok latency percentiles, lost, duplicates"},
	{"cluster", "C senders spread over several nodes of one org: committed events/s, ok latency, exactly-once push check per node"},
	{"federation", "send on org A at a fixed rate, receive on org B: A send → B push and A ok → B push (relay) latency"},
	{"machine", "what this machine's kernel charges for what every event pays (system call, new page, thread wake-up, write+fsync); no node needed"},
}

// options holds every flag; each scenario registers the ones it uses.
type options struct {
	scenario string

	// common
	addr         string
	tls          bool
	insecure     bool
	userPrefix   string
	password     string
	duration     time.Duration
	jsonFile     string
	htmlFile     string
	quiet        bool
	cpuProfile   string
	connsPerUser int
	setupConc    int
	setupTimeout time.Duration
	timeout      time.Duration
	sourceIPs    string
	tokenInQuery bool
	metricsURL   string
	nodeLimits   string

	// conns
	conns    int
	hold     time.Duration
	procs    int
	dialConc int
	settle   time.Duration
	child    bool

	// room scenarios (fanout, latency, cluster, federation)
	subs        int
	pubs        int
	maxMsgs     int
	window      int
	maxBacklog  int
	grace       time.Duration
	warmup      time.Duration
	bodySize    int
	rate        rateValue
	maxInflight int
	joinTimeout time.Duration

	// cluster
	addrs   string
	senders int
	rooms   int

	// machine
	dir string

	// federation
	peerAddr string
	alias    string
}

// rateValue parses "100", "100/s", "6000/m", "0.5/s".
type rateValue float64

func (r *rateValue) String() string { return strconv.FormatFloat(float64(*r), 'g', -1, 64) + "/s" }

func (r *rateValue) Set(s string) error {
	v, err := parseRate(s)
	if err != nil {
		return err
	}
	*r = rateValue(v)
	return nil
}

func parseRate(s string) (float64, error) {
	s = strings.TrimSpace(s)
	per := 1.0
	num := s
	if i := strings.IndexByte(s, '/'); i >= 0 {
		num = s[:i]
		switch strings.TrimSpace(s[i+1:]) {
		case "s", "sec", "second":
		case "m", "min", "minute":
			per = 60
		case "h", "hour":
			per = 3600
		default:
			return 0, fmt.Errorf("rate %q: unit must be /s, /m or /h", s)
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("rate %q: want a number per second such as 100/s", s)
	}
	return v / per, nil
}

// durationValue is a time.Duration flag that also takes a bare number of
// seconds ("--hold 30").
type durationValue time.Duration

func (d *durationValue) String() string { return time.Duration(*d).String() }

func (d *durationValue) Set(s string) error {
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	*d = durationValue(v)
	return nil
}

func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if v, err := time.ParseDuration(s); err == nil {
		return v, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || math.Abs(f) > float64(math.MaxInt64/int64(time.Second)) {
		return 0, fmt.Errorf("%q: want a duration such as 10s, 500ms, 2m, or a number of seconds", s)
	}
	return time.Duration(f * float64(time.Second)), nil
}

func durationVar(fs *flag.FlagSet, p *time.Duration, name string, def time.Duration, usage string) {
	*p = def
	fs.Var((*durationValue)(p), name, usage+" (a `duration` such as 500ms, 2m, or seconds)")
}

func defaultUserPrefix(now time.Time) string {
	return "bench" + strconv.FormatInt(now.Unix(), 10)
}

// flagSet registers the common flags and the scenario's own.
func flagSet(scenario string, o *options, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("parley-bench "+scenario, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		for _, s := range scenarios {
			if s.name == scenario {
				fmt.Fprintf(out, "parley-bench %s: %s\n\nflags:\n", scenario, s.help)
			}
		}
		fs.PrintDefaults()
	}
	fs.StringVar(&o.addr, "addr", "127.0.0.1:8080", "node HTTP address host:port (or http(s)://, ws(s):// URL)")
	fs.BoolVar(&o.tls, "tls", false, "use https:// and wss://")
	fs.BoolVar(&o.insecure, "insecure", false, "skip TLS certificate verification")
	fs.StringVar(&o.userPrefix, "user-prefix", defaultUserPrefix(time.Now()), "prefix of the user names this run registers (or logs in, if taken)")
	fs.StringVar(&o.password, "password", "parley-bench-password", "password of the bench users (8+ characters)")
	durationVar(fs, &o.duration, "duration", 10*time.Second, "bound on the measured phase (connect phase for conns; send phase otherwise)")
	fs.StringVar(&o.jsonFile, "json", "", "also write the report as JSON to FILE (\"-\": JSON on stdout instead of the table)")
	fs.StringVar(&o.htmlFile, "html", "", "also write an HTML report with latency histograms to FILE")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress line on stderr")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write the load tool's own CPU profile to FILE (to see what the generator costs)")
	fs.IntVar(&o.connsPerUser, "conns-per-user", 50, "connections sharing one user (a node may limit connections per user)")
	fs.IntVar(&o.setupConc, "setup-concurrency", 16, "parallel registrations, logins, joins and subscriber dials during setup")
	durationVar(fs, &o.setupTimeout, "setup-timeout", 2*time.Minute, "bound on the setup phase (users, room, subscribers)")
	durationVar(fs, &o.timeout, "timeout", 10*time.Second, "bound on one request (HTTP call, dial+auth, send→ok)")
	fs.StringVar(&o.sourceIPs, "source-ips", "auto", "comma-separated local source addresses for WebSocket connections; auto: 127.0.0.1..127.0.0.8 when the target is loopback; none: let the kernel pick")
	fs.BoolVar(&o.tokenInQuery, "token-in-query", false, "authenticate with ?access_token= instead of an auth frame")
	fs.StringVar(&o.metricsURL, "metrics-url", "", "Prometheus endpoint read for process_resident_memory_bytes (default: --addr + /metrics)")
	fs.StringVar(&o.nodeLimits, "node-limits", "", "how the nodes' per-user send limit was raised through configuration for this run, stated in the report (e.g. \"limits.send_per_second=100000 limits.send_burst=100000\"; scripts/bench.sh sets it)")

	switch scenario {
	case "conns":
		fs.IntVar(&o.conns, "conns", 1000, "number of idle authenticated connections")
		durationVar(fs, &o.hold, "hold", 5*time.Second, "how long to hold the connections open once connected")
		fs.IntVar(&o.procs, "procs", 0, "processes sharing the connections (0: as many as the open-file limit needs)")
		fs.IntVar(&o.dialConc, "dial-concurrency", 100, "connections being opened at once (across all processes)")
		durationVar(fs, &o.settle, "settle", time.Second, "pause between the last connect and the second memory reading")
		fs.BoolVar(&o.child, "child", false, "internal: run as a child process of a --procs run")
	case "fanout":
		// Many publishers, as many users sending at once: the node commits a connection's
		// pipelined sends in order, so one publisher's window is one ordered stream.
		o.registerRoomFlags(fs, 1000, 64, 0, 2*time.Second, 10*time.Second, 10*time.Second)
		fs.IntVar(&o.window, "window", 4, "sends in flight per publisher (each waits for its ok)")
		fs.IntVar(&o.maxBacklog, "max-backlog", 512, "publishers wait while this many acknowledged messages have not reached the slowest subscriber (0: no bound)")
	case "latency":
		o.registerRoomFlags(fs, 100, 4, 100, 2*time.Second, 10*time.Second, 10*time.Second)
	case "cluster":
		fs.StringVar(&o.addrs, "addrs", "", "comma-separated HTTP addresses of the org's nodes (default: --addr)")
		fs.IntVar(&o.senders, "senders", 64, "concurrent senders, spread round-robin over --addrs, each keeping --window sends in flight")
		fs.IntVar(&o.rooms, "rooms", 1, "rooms the senders are spread over (sender i sends to room i % rooms); watchers join all")
		fs.IntVar(&o.maxMsgs, "max-msgs", 100_000, "bound on the number of messages sent")
		durationVar(fs, &o.grace, "grace", 5*time.Second, "how long to wait after the last ok for pushes still in flight")
		durationVar(fs, &o.warmup, "warmup", 10*time.Second, "bound on waiting for every watcher to see a warm-up message")
		fs.IntVar(&o.bodySize, "body-size", 0, "pad message bodies to this many bytes")
		durationVar(fs, &o.joinTimeout, "join-timeout", 10*time.Second, "bound on one join")
		// 1: each sender waits for its ok before the next send (a person typing); more: a
		// sender pipelines (a bridge or bot), and the node commits its sends in order.
		fs.IntVar(&o.window, "window", 1, "sends in flight per sender (each waits for its ok)")
	case "machine":
		fs.StringVar(&o.dir, "dir", "", "directory for the fsync probe, on the disk the nodes' data_dir is on (default: the system's temporary directory)")
	case "federation":
		fs.StringVar(&o.peerAddr, "peer-addr", "", "HTTP address of a node of org B (required)")
		fs.StringVar(&o.alias, "alias", "", "alias localpart of the room on org A (default: <user-prefix>-fed)")
		o.registerRoomFlags(fs, 1, 1, 10, 5*time.Second, 30*time.Second, 30*time.Second)
	}
	return fs
}

func (o *options) registerRoomFlags(fs *flag.FlagSet, subs, pubs int, rate float64, grace, warmup, joinTimeout time.Duration) {
	fs.IntVar(&o.subs, "subs", subs, "subscriber connections in the room")
	fs.IntVar(&o.pubs, "pubs", pubs, "publishers (one user and connection each; sends are spread over them)")
	fs.IntVar(&o.maxMsgs, "max-msgs", 100_000, "bound on the number of messages sent")
	durationVar(fs, &o.grace, "grace", grace, "how long to wait after the last send for pushes still in flight")
	durationVar(fs, &o.warmup, "warmup", warmup, "bound on waiting for every subscriber to see a warm-up message")
	fs.IntVar(&o.bodySize, "body-size", 0, "pad message bodies to this many bytes")
	durationVar(fs, &o.joinTimeout, "join-timeout", joinTimeout, "bound on one join")
	if rate > 0 {
		o.rate = rateValue(rate)
		fs.Var(&o.rate, "rate", "send `rate`, e.g. 100/s or 6000/m (spread over the publishers)")
		fs.IntVar(&o.maxInflight, "max-inflight", 1000, "sends awaiting their ok at once; beyond it a scheduled send is skipped and counted")
	}
}

func (o *options) validate() error {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	inRange := func(name string, v, lo, hi int) {
		if v < lo || v > hi {
			bad("--%s %d: must be in [%d, %d]", name, v, lo, hi)
		}
	}
	durRange := func(name string, v, lo, hi time.Duration) {
		if v < lo || v > hi {
			bad("--%s %s: must be in [%s, %s]", name, v, lo, hi)
		}
	}
	durRange("duration", o.duration, time.Millisecond, maxDuration)
	durRange("setup-timeout", o.setupTimeout, time.Second, maxDuration)
	durRange("timeout", o.timeout, 10*time.Millisecond, 10*time.Minute)
	inRange("conns-per-user", o.connsPerUser, 1, maxConns)
	inRange("setup-concurrency", o.setupConc, 1, 1000)
	if len(o.password) < 8 {
		bad("--password: must be at least 8 characters")
	}
	// Output files are written at the end of a run: a path that cannot be written should not
	// cost the operator the run first.
	for _, f := range []struct{ flag, path string }{{"json", o.jsonFile}, {"html", o.htmlFile}, {"cpuprofile", o.cpuProfile}} {
		if f.path == "" || f.path == "-" && f.flag == "json" {
			continue
		}
		if fi, err := os.Stat(filepath.Dir(f.path)); err != nil || !fi.IsDir() {
			bad("--%s %q: directory %q does not exist", f.flag, f.path, filepath.Dir(f.path))
		} else if fi, err := os.Stat(f.path); err == nil && fi.IsDir() {
			bad("--%s %q: is a directory", f.flag, f.path)
		}
	}
	if len(o.nodeLimits) > 500 || strings.ContainsAny(o.nodeLimits, "\n\r") {
		bad("--node-limits: must be one line of at most 500 bytes")
	}
	if !validLocalpart(o.userPrefix) || len(o.userPrefix) > 48 {
		bad("--user-prefix %q: must match [a-z0-9._=-]{1,48}", o.userPrefix)
	}
	switch v := strings.TrimSpace(o.sourceIPs); v {
	case "", "auto", "none":
	default:
		for _, s := range splitList(v) {
			if net.ParseIP(s) == nil {
				bad("--source-ips %q: %q is not an IP address (want a list such as 127.0.0.2,127.0.0.3, or auto, or none)", o.sourceIPs, s)
				break
			}
		}
	}
	switch o.scenario {
	case "conns":
		inRange("conns", o.conns, 1, maxConns)
		durRange("hold", o.hold, 0, maxDuration)
		durRange("settle", o.settle, 0, time.Minute)
		inRange("procs", o.procs, 0, maxProcs)
		inRange("dial-concurrency", o.dialConc, 1, 10000)
	case "fanout", "latency", "federation":
		inRange("subs", o.subs, 1, maxSubs)
		inRange("pubs", o.pubs, 1, maxPubs)
		o.validateRoom(bad, inRange, durRange)
		if o.scenario == "fanout" {
			inRange("window", o.window, 1, maxWindow)
			inRange("max-backlog", o.maxBacklog, 0, maxInflightCap)
		} else {
			if o.rate <= 0 || o.rate > maxRate {
				bad("--rate %v: must be in (0, %d]/s", float64(o.rate), maxRate)
			}
			inRange("max-inflight", o.maxInflight, 1, maxInflightCap)
		}
		if o.scenario == "federation" {
			if o.peerAddr == "" {
				bad("--peer-addr: required (a node of the second org)")
			}
			if o.alias != "" && !validAlias(o.alias) {
				bad("--alias %q: must match [a-z0-9._-]{1,64}", o.alias)
			}
		}
	case "machine":
		if o.dir != "" {
			if fi, err := os.Stat(o.dir); err != nil || !fi.IsDir() {
				bad("--dir %q: not a directory", o.dir)
			}
		}
	case "cluster":
		inRange("senders", o.senders, 1, maxPubs)
		inRange("rooms", o.rooms, 1, 256)
		o.validateRoom(bad, inRange, durRange)
		if len(o.clusterAddrs()) == 0 {
			bad("--addrs: no address")
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}

func (o *options) validateRoom(bad func(string, ...any), inRange func(string, int, int, int), durRange func(string, time.Duration, time.Duration, time.Duration)) {
	inRange("max-msgs", o.maxMsgs, 1, maxMsgsCap)
	inRange("body-size", o.bodySize, 0, maxBodySize)
	durRange("grace", o.grace, 0, 10*time.Minute)
	durRange("warmup", o.warmup, time.Second, 10*time.Minute)
	durRange("join-timeout", o.joinTimeout, time.Second, 10*time.Minute)
	subs := o.subs
	if o.scenario == "cluster" {
		subs = len(o.clusterAddrs())
	}
	if int64(subs)*int64(o.maxMsgs)/8 > maxTrackerBytes {
		bad("--subs × --max-msgs = %d × %d needs more than %d MiB of delivery bookkeeping: lower one of them", subs, o.maxMsgs, maxTrackerBytes>>20)
	}
}

func (o *options) clusterAddrs() []string {
	s := o.addrs
	if s == "" {
		s = o.addr
	}
	return splitList(s)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func validLocalpart(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '=' || c == '-') {
			return false
		}
	}
	return true
}

func validAlias(s string) bool {
	return validLocalpart(s) && !strings.Contains(s, "=")
}

// budget is the longest a run with these options may take; the watchdog
// ends the process some time after it.
func (o *options) budget() time.Duration {
	b := o.setupTimeout + o.duration + o.timeout + 30*time.Second
	switch o.scenario {
	case "conns":
		b += o.hold + o.settle + o.timeout
	default:
		b += o.grace + o.warmup
	}
	return b
}

func usage(w io.Writer) {
	fmt.Fprintf(w, `parley-bench: load tool for Parley nodes (client protocol only)

usage:
  parley-bench SCENARIO [flags]
  parley-bench --scenario SCENARIO [flags]
  parley-bench SCENARIO -h        flags of one scenario

scenarios:
`)
	for _, s := range scenarios {
		fmt.Fprintf(w, "  %-11s %s\n", s.name, s.help)
	}
	fmt.Fprintf(w, `
Every run is bounded in count and time. Progress goes to stderr, the result
table to stdout; --json FILE and --html FILE write machine and HTML reports.
Exit status: 0 ok, 1 failure (including lost, duplicate or missing events), 2 usage.

Sending scenarios expect the node's per-user send limits raised for the run:
  PARLEY_LIMITS_SEND_PER_SECOND=100000 PARLEY_LIMITS_SEND_BURST=100000 parley serve
and --node-limits says how, so that the report states it (scripts/bench.sh does both).
`)
}

var errTopHelp = errors.New("help requested")

func isHelpFlag(a string) bool {
	switch a {
	case "-h", "-help", "--help":
		return true
	}
	return false
}

// parseArgs picks the scenario (first argument, or --scenario anywhere)
// and parses its flags.
func parseArgs(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	rest := args
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		o.scenario, rest = args[0], args[1:]
	} else {
		rest = nil
		for i := 0; i < len(args); i++ {
			a := args[i]
			switch {
			case a == "--scenario" || a == "-scenario":
				if i+1 >= len(args) {
					return nil, errors.New("--scenario needs a value")
				}
				o.scenario = args[i+1]
				i++
			case strings.HasPrefix(a, "--scenario=") || strings.HasPrefix(a, "-scenario="):
				o.scenario = a[strings.IndexByte(a, '=')+1:]
			default:
				rest = append(rest, a)
			}
		}
	}
	switch o.scenario {
	case "help", "-h", "-help", "--help":
		return nil, errTopHelp
	case "":
		// Flags without a scenario: a mistake, unless all that was asked is the help.
		if len(rest) == 0 || len(rest) == 1 && isHelpFlag(rest[0]) {
			return nil, errTopHelp
		}
		return nil, fmt.Errorf("%s: no scenario given; name it first (parley-bench SCENARIO [flags]) or with --scenario", rest[0])
	}
	known := false
	for _, s := range scenarios {
		known = known || s.name == o.scenario
	}
	if !known {
		return nil, fmt.Errorf("unknown scenario %q", o.scenario)
	}
	fs := flagSet(o.scenario, o, stderr)
	if err := fs.Parse(rest); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	return o, nil
}

// run is main without os.Exit, for tests.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	o, err := parseArgs(args, stderr)
	if errors.Is(err, errTopHelp) {
		usage(stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	if errors.Is(err, flag.ErrHelp) { // SCENARIO -h: the flag set printed its usage
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "parley-bench: %v\n", err)
		fmt.Fprintln(stderr, "run `parley-bench help` for usage")
		return exitUsage
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.budget())
	defer cancel()
	wd := startWatchdog(o.budget()+20*time.Second, stderr)
	defer wd.Stop()

	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "parley-bench: --cpuprofile: %v\n", err)
			return exitUsage
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(stderr, "parley-bench: cpu profile: %v\n", err)
			return exitFailure
		}
		defer pprof.StopCPUProfile()
	}
	e := newEnv(o, stdin, stdout, stderr)
	defer e.close()
	rep, err := e.runScenario(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "parley-bench %s: %v\n", o.scenario, err)
		return exitFailure
	}
	if rep == nil { // a child process reports on its own
		return exitOK
	}
	if err := e.emit(rep); err != nil {
		fmt.Fprintf(stderr, "parley-bench: %v\n", err)
		return exitFailure
	}
	if len(rep.Failures) > 0 {
		return exitFailure
	}
	return exitOK
}

// startWatchdog ends the process if a run outlives its own bounds by far:
// a last line of defence against a stuck goroutine.
func startWatchdog(after time.Duration, stderr io.Writer) *time.Timer {
	return time.AfterFunc(after, func() {
		fmt.Fprintf(stderr, "\nparley-bench: watchdog: run exceeded %s, exiting\n", after)
		os.Exit(exitStuck)
	})
}
