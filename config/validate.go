package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-playground/validator/v10"
)

var (
	orgLabelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	nodeIDRE   = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
	hostnameRE = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$`)
	fedKeyRE   = regexp.MustCompile(`^ed25519:[A-Za-z0-9_]+:[A-Za-z0-9+/]+$`)
)

// MaxOrgLen bounds an org's name, shorter than DNS's 253: AMQP names and routing keys are at most
// 255 bytes, and the longest built from an org are parley.ORG.bridge.dlq and, on the events
// exchange, a room id's routing key ("!" + 16 characters + ":" + ORG + "." + TYPE). A longer
// name made the client library close the node's whole AMQP connection at each publish.
const MaxOrgLen = 200

// validOrg reports whether s is a lower-case DNS-like domain name of at most MaxOrgLen bytes.
func validOrg(s string) bool {
	if s == "" || len(s) > MaxOrgLen {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if !orgLabelRE.MatchString(label) {
			return false
		}
	}
	return true
}

// validHost accepts an empty host, an IP address or a DNS-like name.
func validHost(h string) bool {
	if h == "" {
		return true
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	return len(h) <= 253 && hostnameRE.MatchString(h)
}

// loopbackHost reports whether h names only this host: localhost or a loopback address.
func loopbackHost(h string) bool {
	if strings.EqualFold(strings.TrimSuffix(h, "."), "localhost") {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.Unmap().IsLoopback()
}

func unspecifiedHost(h string) bool {
	if h == "" {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.IsUnspecified()
}

// validHostPort accepts host:port with a numeric port; host may be empty
// (all interfaces).
func validHostPort(s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return false
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return false
	}
	return validHost(host)
}

// validDialAddr accepts host:port that another machine can dial: the host
// must be given and must not be an unspecified address like 0.0.0.0.
func validDialAddr(s string) bool {
	if !validHostPort(s) {
		return false
	}
	host, _, _ := net.SplitHostPort(s)
	return !unspecifiedHost(host)
}

// parseHTTPURL parses an absolute http(s) URL with a host.
func parseHTTPURL(s string) (*url.URL, bool) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "" ||
		u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.User != nil {
		return nil, false
	}
	if !validHost(u.Hostname()) || u.Hostname() == "" {
		return nil, false
	}
	if p := u.Port(); p != "" {
		if _, err := strconv.ParseUint(p, 10, 16); err != nil {
			return nil, false
		}
	}
	return u, true
}

func validOrigin(s string) bool {
	u, ok := parseHTTPURL(s)
	return ok && u.Path == "" && u.RawPath == ""
}

func validJoin(s string) bool {
	if strings.Contains(s, "://") {
		_, ok := parseHTTPURL(s)
		return ok
	}
	return validDialAddr(s)
}

func validAMQPURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "amqp" || u.Scheme == "amqps") && u.Host != "" && validHost(u.Hostname())
}

var (
	validateOnce sync.Once
	validate     *validator.Validate
)

func stringFunc(f func(string) bool) validator.Func {
	return func(fl validator.FieldLevel) bool { return f(fl.Field().String()) }
}

func getValidator() *validator.Validate {
	validateOnce.Do(func() {
		v := validator.New(validator.WithRequiredStructEnabled())
		v.RegisterTagNameFunc(func(f reflect.StructField) string {
			name, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
			if name == "-" {
				return ""
			}
			return name
		})
		for tag, fn := range map[string]func(string) bool{
			"org":      validOrg,
			"nodeid":   nodeIDRE.MatchString,
			"hostport": validHostPort,
			"dialaddr": validDialAddr,
			"httpurl":  func(s string) bool { _, ok := parseHTTPURL(s); return ok },
			"origin":   validOrigin,
			"joinaddr": validJoin,
			"amqpurl":  validAMQPURL,
			"fedkey":   fedKeyRE.MatchString,
			"goregexp": func(s string) bool { _, err := regexp.Compile(s); return err == nil },
		} {
			if err := v.RegisterValidation(tag, stringFunc(fn)); err != nil {
				panic(err)
			}
		}
		validate = v
	})
	return validate
}

// problemFor turns a validator failure into a human description.
func problemFor(fe validator.FieldError) string {
	switch fe.Tag() {
	case "required":
		return "must be set"
	case "org":
		return fmt.Sprintf("must be a lower-case DNS-like domain name such as example.com, at most %d bytes", MaxOrgLen)
	case "nodeid":
		return "must be 1 to 64 characters from A-Z a-z 0-9 _ . -"
	case "hostport":
		return "must be host:port (host may be empty or an IP address; port 0-65535)"
	case "dialaddr":
		return "must be host:port with a host other nodes can reach (not empty or 0.0.0.0)"
	case "httpurl":
		return "must be an absolute http:// or https:// URL without query or fragment"
	case "origin":
		return "must be an origin like https://example.com[:port] (scheme and host only, no path)"
	case "joinaddr":
		return "must be host:port or an http:// or https:// URL of a cluster member"
	case "amqpurl":
		return "must be an amqp:// or amqps:// URL with a host"
	case "fedkey":
		return `must match ^ed25519:[A-Za-z0-9_]+:[A-Za-z0-9+/]+$`
	case "goregexp":
		_, err := regexp.Compile(fmt.Sprint(fe.Value()))
		if err != nil {
			return "must be a valid Go regular expression: " + err.Error()
		}
		return "must be a valid Go regular expression"
	case "min":
		return "must be at least " + fe.Param()
	case "max":
		p := "must be at most " + fe.Param()
		if n, err := strconv.Atoi(fe.Param()); err == nil && strings.HasSuffix(fe.Field(), "_ms") {
			p += " (" + (time.Duration(n) * time.Millisecond).String() + ")"
		}
		return p
	case "gt":
		return "must be greater than " + fe.Param()
	case "oneof":
		return "must be one of: " + strings.Join(strings.Fields(fe.Param()), ", ")
	}
	return fmt.Sprintf("failed check %q", fe.Tag())
}

// validate checks c with struct tags and cross-field rules.
func (l *loader) validate(c *Config) []error {
	var errs []error
	if err := getValidator().Struct(c); err != nil {
		var ves validator.ValidationErrors
		if !errors.As(err, &ves) {
			return []error{&Error{Key: "config", Problem: err.Error()}}
		}
		for _, fe := range ves {
			// Namespace is "Config.http.listen" or "Config.cluster.peers[0].id".
			_, key, _ := strings.Cut(fe.Namespace(), ".")
			if (key == "cluster.raft_advertise" && l.derivedAdvertise) || (key == "http.public_url" && l.derivedPublicURL) {
				// Derived from another key, which is reported itself.
				continue
			}
			errs = append(errs, l.fail(key, problemFor(fe), fe.Value()))
		}
	}

	if ct := c.Cluster.TLS; (ct.CertFile != "" || ct.KeyFile != "" || ct.CAFile != "") && !ct.Enabled() {
		for key, v := range map[string]string{"cluster.tls.cert_file": ct.CertFile, "cluster.tls.key_file": ct.KeyFile, "cluster.tls.ca_file": ct.CAFile} {
			if v == "" {
				errs = append(errs, &Error{Key: key, Problem: "must be set: mutual TLS between nodes needs cluster.tls.cert_file, key_file and ca_file"})
			}
		}
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		missing, set := "tls.key_file", "tls.cert_file"
		if c.TLS.CertFile == "" {
			missing, set = set, missing
		}
		// Name where the key that is set came from; the missing one's source only when it was
		// set empty: "(from default)" said nothing of use.
		problem := "must be set when " + set + " is set" + l.from(set) + ": set both or neither"
		if l.src[missing].kind == fromDefault {
			errs = append(errs, &Error{Key: missing, Problem: problem})
		} else {
			errs = append(errs, l.fail(missing, problem, nil))
		}
	}

	if validHostPort(c.Cluster.RaftAdvertise) && !validDialAddr(c.Cluster.RaftAdvertise) {
		if l.derivedAdvertise {
			errs = append(errs, &Error{Key: "cluster.raft_advertise", Problem: fmt.Sprintf(
				"must be set to an address other nodes can reach, because cluster.raft_listen %q has no specific host", c.Cluster.RaftListen)})
		} else {
			errs = append(errs, l.fail("cluster.raft_advertise", "must name a host other nodes can reach (not empty or 0.0.0.0)", c.Cluster.RaftAdvertise))
		}
	}

	if c.Cluster.BootstrapSet && c.Cluster.Bootstrap && c.Cluster.Join != "" {
		errs = append(errs, l.fail("cluster.bootstrap", "must not be true when cluster.join is set (a joining node does not bootstrap a new cluster)", nil))
	}

	errs = append(errs, l.validateRaftTimes(c)...)

	// The secret is what keeps strangers out of Raft: it is needed as soon as this node is not
	// a single node reachable from its own host only.
	if c.Cluster.Secret == "" {
		var why []string
		if len(c.Cluster.Peers) > 1 {
			why = append(why, "cluster.peers has more than one entry")
		}
		if c.Cluster.Join != "" {
			why = append(why, "cluster.join is set")
		}
		if host, _, err := net.SplitHostPort(c.Cluster.RaftListen); err == nil && validHostPort(c.Cluster.RaftListen) && !loopbackHost(host) {
			why = append(why, fmt.Sprintf("cluster.raft_listen %q%s is not a loopback address (other hosts can reach its Raft port)",
				c.Cluster.RaftListen, l.from("cluster.raft_listen")))
		}
		if len(why) > 0 {
			errs = append(errs, &Error{Key: "cluster.secret", Problem: "must be set, because " + strings.Join(why, " and ") +
				": node-to-node traffic must present the shared secret"})
		}
	}

	// Raft bootstraps a cluster only from a membership that has this node as a voter; it
	// finds its own entry in cluster.peers by id. (Its raft_addr need not be cluster.raft_advertise
	// character for character: Raft goes by ids, and a name and the address it resolves to
	// both work.)
	if c.Cluster.Bootstrap && len(c.Cluster.Peers) > 0 && nodeIDRE.MatchString(c.Cluster.NodeID) {
		var ids []string
		found := false
		for _, p := range c.Cluster.Peers {
			found = found || p.ID == c.Cluster.NodeID
			if p.ID != "" {
				ids = append(ids, strconv.Quote(p.ID))
			}
		}
		if !found {
			if len(ids) > 10 {
				ids = append(ids[:10], "…")
			}
			errs = append(errs, l.fail("cluster.node_id", fmt.Sprintf(
				"must be the id of one of cluster.peers (%s) when this node bootstraps the cluster, or Raft refuses to bootstrap a membership without it",
				strings.Join(ids, ", ")), c.Cluster.NodeID))
		}
	}

	ids, addrs := map[string]int{}, map[string]int{}
	for i, p := range c.Cluster.Peers {
		if j, dup := ids[p.ID]; dup && p.ID != "" {
			errs = append(errs, &Error{Key: fmt.Sprintf("cluster.peers[%d].id", i), Problem: fmt.Sprintf("duplicate id %q (also cluster.peers[%d])", p.ID, j)})
		}
		ids[p.ID] = i
		if j, dup := addrs[p.RaftAddr]; dup && p.RaftAddr != "" {
			errs = append(errs, &Error{Key: fmt.Sprintf("cluster.peers[%d].raft_addr", i), Problem: fmt.Sprintf("duplicate address %q (also cluster.peers[%d])", p.RaftAddr, j)})
		}
		addrs[p.RaftAddr] = i
	}

	orgs := map[string]int{}
	for i, p := range c.Federation.Peers {
		if j, dup := orgs[p.Org]; dup && p.Org != "" {
			errs = append(errs, &Error{Key: fmt.Sprintf("federation.peers[%d].org", i), Problem: fmt.Sprintf("duplicate org %q (also federation.peers[%d])", p.Org, j)})
		}
		orgs[p.Org] = i
		if p.Org == c.Org && p.Org != "" {
			errs = append(errs, &Error{Key: fmt.Sprintf("federation.peers[%d].org", i), Problem: fmt.Sprintf("must not be this node's own org %q", p.Org)})
		}
		errs = append(errs, distinctKeyIDs(fmt.Sprintf("federation.peers[%d]", i), p.PublicKey, p.PreviousKeys)...)
	}
	errs = append(errs, distinctKeyIDs("federation", "", c.Federation.PreviousKeys)...)

	bridges := map[string]int{}
	for i, b := range c.Bridges {
		if j, dup := bridges[b.ID]; dup && b.ID != "" {
			errs = append(errs, &Error{Key: fmt.Sprintf("bridges[%d].id", i), Problem: fmt.Sprintf("duplicate id %q (also bridges[%d])", b.ID, j)})
		}
		bridges[b.ID] = i
	}
	return errs
}

// Bounds of the Raft timing keys, as in the struct tags of ClusterConfig.
const (
	minRaftMS = 20
	maxRaftMS = 60000
)

// validateRaftTimes checks that cluster.election_ms is at least cluster.heartbeat_ms, which Raft
// requires at start (hashicorp/raft's ValidateConfig). It names the key that was set: the
// heartbeat when only it was, else the election timeout. Values out of their own bounds are
// reported by the struct tags alone.
func (l *loader) validateRaftTimes(c *Config) []error {
	hb, el := c.Cluster.HeartbeatMS, c.Cluster.ElectionMS
	if hb <= el || hb < minRaftMS || el < minRaftMS || hb > maxRaftMS || el > maxRaftMS {
		return nil
	}
	const why = "Raft refuses an election timeout shorter than the heartbeat timeout"
	if l.src["cluster.heartbeat_ms"].kind != fromDefault && l.src["cluster.election_ms"].kind == fromDefault {
		return []error{l.fail("cluster.heartbeat_ms", fmt.Sprintf("must be at most cluster.election_ms, which is %d%s, since %s",
			el, l.from("cluster.election_ms"), why), hb)}
	}
	return []error{l.fail("cluster.election_ms", fmt.Sprintf("must be at least cluster.heartbeat_ms, which is %d%s, since %s",
		hb, l.from("cluster.heartbeat_ms"), why), el)}
}

// from says where another key's value came from, for a message about the key it constrains,
// in the form fail uses: " (from PARLEY_X)", " (from --x)", " (from config file F)", or
// " (the default)".
func (l *loader) from(key string) string {
	src, ok := l.src[key]
	if !ok || src.kind == fromDefault {
		return " (the default)"
	}
	return " (from " + src.String() + ")"
}

// distinctKeyIDs checks that an org's keys (current, then previous_keys) each have their own
// key id: a signature names the key that made it by id, so two keys with one id are ambiguous.
func distinctKeyIDs(prefix, current string, previous []string) []error {
	var errs []error
	seen := map[string]string{}
	if id, ok := fedKeyID(current); ok {
		seen[id] = prefix + ".public_key"
	}
	for i, k := range previous {
		id, ok := fedKeyID(k)
		if !ok {
			continue // the format check reports it
		}
		key := fmt.Sprintf("%s.previous_keys[%d]", prefix, i)
		if other, dup := seen[id]; dup {
			errs = append(errs, &Error{Key: key, Problem: fmt.Sprintf("key id %q is also used by %s", id, other)})
			continue
		}
		seen[id] = key
	}
	return errs
}

// fedKeyID is the KEYID of a well-formed "ed25519:KEYID:BASE64".
func fedKeyID(k string) (string, bool) {
	if !fedKeyRE.MatchString(k) {
		return "", false
	}
	return strings.Split(k, ":")[1], true
}
