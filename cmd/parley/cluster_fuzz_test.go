package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"

	"github.com/parley-chat/parley/consensus"
)

// answerTransport answers every request with one status and body, as a node would; no network.
type answerTransport struct {
	status int
	body   []byte
}

func (a *answerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		req.Body.Close()
	}
	return &http.Response{StatusCode: a.status, Status: fmt.Sprintf("%d %s", a.status, http.StatusText(a.status)),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(bytes.NewReader(a.body)), ContentLength: int64(len(a.body)), Request: req}, nil
}

// captureOutput runs fn with os.Stdout and os.Stderr going to files, and returns what it wrote.
func captureOutput(t *testing.T, dir string, fn func()) (stdout, stderr string) {
	t.Helper()
	files := [2]*os.File{}
	for i, name := range []string{"stdout", "stderr"} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		files[i] = f
	}
	oldOut, oldErr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = files[0], files[1]
	defer func() { os.Stdout, os.Stderr = oldOut, oldErr }()
	fn()
	out := [2]string{}
	for i, f := range files {
		f.Close()
		b, err := os.ReadFile(f.Name())
		if err != nil {
			t.Fatal(err)
		}
		out[i] = string(b)
	}
	return out[0], out[1]
}

// clusterAnswerSeeds are answers of a node's /v1/cluster endpoints, as node/http.go writes them.
func clusterAnswerSeeds(tb testing.TB) [][]byte {
	tb.Helper()
	encode := func(v any) []byte {
		var buf bytes.Buffer
		if err := json.NewEncoder(&buf).Encode(v); err != nil { // writeJSON
			tb.Fatal(err)
		}
		return buf.Bytes()
	}
	return [][]byte{
		encode(&consensus.Status{NodeID: "n1", Role: "leader", Leader: "n1", Term: "3", AppliedIndex: 42, CommitIndex: "42",
			LastIndex: "42", Members: []consensus.Member{{ID: "n1", RaftAddr: "127.0.0.1:7001", Suffrage: "Voter", Leader: true},
				{ID: "n2", RaftAddr: "127.0.0.1:7002", Suffrage: "Voter"}}}),
		encode(&consensus.Status{NodeID: "n2", Role: "follower"}),
		encode(map[string]string{}),
		encode(map[string]string{"code": "M_FORBIDDEN", "message": "wrong or missing cluster secret"}), // writeError
		encode(map[string]string{"code": "M_UNAVAILABLE", "message": "consensus: add voter n4: leadership lost"}),
		[]byte("404 page not found\n"),
		[]byte(`{"code":"","message":"x"}`),
		[]byte(`{"members":[null,{"id":"a\tb\nc"}],"applied_index":-1}`),
		[]byte(`{"members":[null,{"id":"a\tb\nc","leader":true}],"applied_index":18446744073709551615,"last_log_index":7}`),
	}
}

// FuzzClusterAnswer gives parley cluster's commands a node's answer (status code and body).
// They never panic; status succeeds (0) exactly when the answer is 200 with a status it reads,
// and prints it; join, remove and snapshot succeed exactly on 200, printing "ok", and otherwise
// report the answer's status and its error (code: message, or the body as it is).
func FuzzClusterAnswer(f *testing.F) {
	for _, body := range clusterAnswerSeeds(f) {
		for _, status := range []int{200, 403, 503} {
			f.Add(status, body)
		}
	}
	f.Add(301, []byte{})
	f.Add(200, []byte("\xff\x00"))
	old := http.DefaultTransport
	f.Cleanup(func() { http.DefaultTransport = old })
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		if status < 100 || status > 599 || status >= 300 && status < 400 {
			return // a redirect would be followed, to nowhere
		}
		http.DefaultTransport = &answerTransport{status: status, body: body}
		c := adminClient{base: "http://node.invalid", secret: "s"}
		dir := t.TempDir()
		var code int
		stdout, stderr := captureOutput(t, dir, func() { code = c.status() })
		var st consensus.Status // as status reads it
		readable := status == http.StatusOK && json.Unmarshal(body, &st) == nil
		if (code == 0) != readable || (code == 0) != (stderr == "") {
			t.Fatalf("status: %d for a %d answer %q (stdout %q, stderr %q)", code, status, body, stdout, stderr)
		}
		// Whatever the node sends, it adds no rows and no control sequences: one line for the
		// node, the header and one per member, each printable but for spaces.
		for _, out := range []string{stdout, stderr} {
			for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
				if strings.ContainsFunc(line, func(r rune) bool { return !unicode.IsPrint(r) }) {
					t.Fatalf("status printed a control character: %q", line)
				}
			}
		}
		if code == 0 {
			if !strings.HasPrefix(stdout, "node "+printable(st.NodeID)+" is ") || !strings.Contains(stdout, "ID") {
				t.Fatalf("status printed %q", stdout)
			}
			if lines := strings.Count(stdout, "\n"); lines != 2+len(st.Members) {
				t.Fatalf("status printed %d lines for %d members: %q", lines, len(st.Members), stdout)
			}
			for _, m := range st.Members {
				if !strings.Contains(stdout, printable(m.ID)) {
					t.Fatalf("status printed %q without member %q", stdout, m.ID)
				}
			}
		} else if !strings.HasPrefix(stderr, "parley cluster status: ") {
			t.Fatalf("status reported %q", stderr)
		}

		stdout, stderr = captureOutput(t, dir, func() { code = c.post("cluster join", "/v1/cluster/join", map[string]string{"node_id": "n4"}) })
		if status == http.StatusOK {
			if code != 0 || stdout != "ok\n" || stderr != "" {
				t.Fatalf("join: %d %q %q for a 200 answer", code, stdout, stderr)
			}
			return
		}
		want := fmt.Sprintf("parley cluster join: %d %s: %s\n", status, http.StatusText(status), describeError(body))
		if code != 1 || stdout != "" || stderr != want {
			t.Fatalf("join: %d, stdout %q, stderr %q, want %q", code, stdout, stderr, want)
		}
		var e struct{ Code, Message string }
		if json.Unmarshal(body, &e) == nil && e.Code != "" && describeError(body) != printable(e.Code+": "+e.Message) {
			t.Fatalf("the error %q reads as %q", body, describeError(body))
		}
	})
}

// TestPrintable: a node's answer is printed as it is only when it is valid, printable UTF-8
// without tabs or line breaks; otherwise quoted (a lone 0x9b is a C1 control to some
// terminals, though range reads it as U+FFFD, which is printable).
func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"n1":             "n1",
		"node één":       "node één",
		"n1\tforged":     `"n1\tforged"`,
		"n1\nrow":        `"n1\nrow"`,
		"n1\x1b[2J":      `"n1\x1b[2J"`,
		"n1\x9b2J":       `"n1\x9b2J"`,
		"n1\u009b2J":     `"n1\u009b2J"`,
		"":               "",
		"127.0.0.1:7001": "127.0.0.1:7001",
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %s, want %s", in, got, want)
		}
	}
}
