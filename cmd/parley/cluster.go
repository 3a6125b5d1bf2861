package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/parley-chat/parley/consensus"
)

// clusterUsage lists the cluster subcommands: what a bare or mistyped `parley cluster` prints.
const clusterUsage = `usage: parley cluster status|join|remove|snapshot [flags]

  status   [--addr HTTP_ADDR] [--secret S]
  join     --addr HTTP_ADDR --node-id ID --raft-addr HOST:PORT [--secret S]
  remove   --addr HTTP_ADDR --node-id ID [--secret S]
  snapshot [--addr HTTP_ADDR] [--secret S]
`

// clusterCommandUsage is what `parley cluster COMMAND --help` prints above the flags.
var clusterCommandUsage = map[string]string{
	"status":   "usage: parley cluster status [--addr HTTP_ADDR] [--secret S]\n\nPrints the members, their roles, the leader, and the applied and commit index.\n",
	"join":     "usage: parley cluster join --addr HTTP_ADDR --node-id ID --raft-addr HOST:PORT [--secret S]\n\nAdds a node as a voter (once it has caught up with the leader's log).\n",
	"remove":   "usage: parley cluster remove --addr HTTP_ADDR --node-id ID [--secret S]\n\nRemoves a member.\n",
	"snapshot": "usage: parley cluster snapshot [--addr HTTP_ADDR] [--secret S]\n\nForces a Raft snapshot on that node (before a backup).\n",
}

func clusterCommand(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, "parley cluster: missing command\n"+clusterUsage)
		return 2
	}
	if args[0] == "-h" || args[0] == "--help" {
		fmt.Print(clusterUsage)
		return 0
	}
	usage, known := clusterCommandUsage[args[0]]
	if !known {
		fmt.Fprintf(os.Stderr, "parley cluster: unknown command %q\n%s", args[0], clusterUsage)
		return 2
	}
	fs := flag.NewFlagSet("cluster "+args[0], flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr := fs.String("addr", "127.0.0.1:8080", "`HTTP_ADDR` (HOST:PORT or URL) of any member")
	// Each subcommand takes only its own flags, which its --help lists.
	var nodeID, raftAddr string
	if args[0] == "join" || args[0] == "remove" {
		fs.StringVar(&nodeID, "node-id", "", "`ID` of the node (its cluster.node_id)")
	}
	if args[0] == "join" {
		fs.StringVar(&raftAddr, "raft-addr", "", "Raft address (`HOST:PORT`) of the joining node, as other nodes dial it")
	}
	var secret string
	fs.StringVar(&secret, "secret", "", "cluster secret `S` (default $PARLEY_CLUSTER_SECRET)")
	if code, done := parseFlags(fs, "cluster "+args[0], usage, args[1:]); done {
		return code
	}
	stringFromEnv(fs, "secret", "PARLEY_CLUSTER_SECRET", &secret)
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "parley cluster %s: unexpected argument %q (flags take the form --name value)\n", args[0], fs.Arg(0))
		return 2
	}
	base, err := baseURL(*addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "parley cluster %s: %v\n", args[0], err)
		return 2
	}
	c := adminClient{base: base, secret: secret}
	switch args[0] {
	case "status":
		return c.status()
	case "join":
		// Name the flag that is missing, as the contract asks of a usage error.
		if missing := missingFlags(map[string]string{"--node-id": nodeID, "--raft-addr": raftAddr}); missing != "" {
			fmt.Fprintf(os.Stderr, "parley cluster join: %s required\n", missing)
			return 2
		}
		return c.post("cluster join", "/v1/cluster/join", map[string]string{"node_id": nodeID, "raft_addr": raftAddr})
	case "snapshot":
		return c.post("cluster snapshot", "/v1/cluster/snapshot", map[string]string{})
	case "remove":
		if nodeID == "" {
			fmt.Fprintln(os.Stderr, "parley cluster remove: --node-id is required")
			return 2
		}
		return c.post("cluster remove", "/v1/cluster/remove", map[string]string{"node_id": nodeID})
	}
	fmt.Fprintf(os.Stderr, "parley cluster: unknown command %q\n%s", args[0], clusterUsage)
	return 2
}

// missingFlags names the empty ones among flags (name to value), "" when none is: "--a is" or
// "--a and --b are".
func missingFlags(flags map[string]string) string {
	var names []string
	for name, v := range flags {
		if v == "" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	switch len(names) {
	case 0:
		return ""
	case 1:
		return names[0] + " is"
	}
	return strings.Join(names, " and ") + " are"
}

// baseURL is the URL of the node at addr (HOST:PORT, or a URL); an error names --addr, so
// that an empty or malformed one is a usage error rather than a failed request.
func baseURL(addr string) (string, error) {
	base := "http://" + addr
	if strings.Contains(addr, "://") {
		base = strings.TrimRight(addr, "/")
	}
	u, err := url.Parse(base)
	if err == nil && u.Host == "" {
		err = errors.New("no host")
	}
	if err != nil {
		return "", fmt.Errorf("--addr %q is not a HOST:PORT or URL of a node: %w", addr, err)
	}
	return base, nil
}

type adminClient struct {
	base, secret string
}

func (c adminClient) do(method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.secret != "" {
		req.Header.Set("X-Parley-Cluster-Secret", c.secret)
	}
	client := &http.Client{Timeout: 20 * time.Second}
	return client.Do(req)
}

// post sends an admin request for the command name (e.g. "cluster join") and reports the answer.
func (c adminClient) post(name, path string, body any) int {
	resp, err := c.do(http.MethodPost, path, body)
	if err != nil {
		fmt.Fprintf(os.Stderr, "parley %s: %v\n", name, err)
		return 1
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "parley %s: %s: %s\n", name, resp.Status, describeError(data))
		return 1
	}
	fmt.Println("ok")
	return 0
}

// describeError renders a node's {"code","message"} error answer, or the raw body if it is not one.
func describeError(body []byte) string {
	var e struct{ Code, Message string }
	if json.Unmarshal(body, &e) == nil && e.Code != "" {
		return printable(e.Code + ": " + e.Message)
	}
	return printable(strings.TrimSpace(string(body)))
}

// printable is s as given when it is printable text without tabs or line breaks, else quoted
// (Go syntax): what a node answers must not add rows to a table, or reach the terminal as
// control sequences.
func printable(s string) string {
	if !utf8.ValidString(s) { // a lone 0x9b is a C1 control to some terminals, U+FFFD to range
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

func (c adminClient) status() int {
	resp, err := c.do(http.MethodGet, "/v1/cluster/status", nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "parley cluster status: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	var st consensus.Status // what the node's /v1/cluster/status writes
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(data, &st) != nil {
		// A refusal reads as the other commands' do (CODE: message), not as raw JSON.
		fmt.Fprintf(os.Stderr, "parley cluster status: %s: %s\n", resp.Status, describeError(data))
		return 1
	}
	cluster := "" // the cluster id, once the node knows it (an addition at the end of the line)
	if st.ClusterID != "" {
		cluster = "; cluster " + printable(st.ClusterID)
	}
	fmt.Printf("node %s is %s; leader %s; term %s; applied %d; commit %s%s\n",
		printable(st.NodeID), printable(st.Role), printable(st.Leader), printable(st.Term), st.AppliedIndex, printable(st.CommitIndex), cluster)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRAFT ADDRESS\tSUFFRAGE\tROLE")
	for _, m := range st.Members {
		role := "follower"
		if m.Leader {
			role = "leader"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", printable(m.ID), printable(m.RaftAddr), printable(m.Suffrage), role)
	}
	tw.Flush()
	return 0
}
