package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parley-chat/parley/bridge/amqp"
	"github.com/parley-chat/parley/bridge/internal/bridgetest"
)

// syncBuffer is a bytes.Buffer safe to read while a process writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The external system is Debian's amqp-tools, connected as a broker user with the
// permissions docs/bridges.md gives a bridge: amqp-consume receives the room's messages (a
// WebSocket user's and the bridge's own) from the events exchange; a command sent with
// examples/bridgesend (which sets user_id, as amqp-publish cannot) reaches the WebSocket user;
// amqp-publish's command, which has no user_id, ends in the DLQ with M_FORBIDDEN, as does its
// malformed one with M_BAD_JSON.
func TestAMQPToolsEndToEnd(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"amqp-consume", "amqp-publish"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: install Debian's amqp-tools (apt-get install -y amqp-tools): %v", tool, err)
		}
	}
	bridgesend := buildBridgesend(t)
	e := newEnv(t, withIRCUser())
	ircURL := e.vhost.URLFor(e.ircUser, e.ircPass)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// amqp-consume binds a server-named queue to the lobby's messages and prints 2 bodies.
	key := RoutingKey(e.lobby, "m.room.message")
	var out, stderr syncBuffer
	consume := exec.CommandContext(ctx, "amqp-consume", "--url="+ircURL, "-e", EventsExchange(org), "-r", key, "-c", "2", "cat")
	consume.Stdout, consume.Stderr = &out, &stderr
	if err := consume.Start(); err != nil {
		t.Fatal(err)
	}
	consumed := make(chan error, 1)
	go func() { consumed <- consume.Wait() }()
	bridgetest.WaitFor(t, 30*time.Second, "amqp-consume's binding", func() bool {
		bindings, err := bridgetest.Rabbitmqctl("list_bindings", "-q", "-p", e.vhost.Name, "source_name", "routing_key")
		return err == nil && strings.Contains(bindings, EventsExchange(org)+"\t"+key)
	})

	// A WebSocket user and the bridge speak.
	if _, err := e.alice.Send(ctx, e.lobby, "tools-1", "hello amqp-tools"); err != nil {
		t.Fatal(err)
	}
	command, _ := json.Marshal(cmd("tools-2", "@irc_bob:"+org, "hello from the command line"))
	send := exec.CommandContext(ctx, bridgesend, "-url", ircURL, "-org", org)
	send.Stdin = bytes.NewReader(append(command, '\n'))
	if b, err := send.CombinedOutput(); err != nil {
		t.Fatalf("bridgesend: %v\n%s", err, b)
	}
	msg := nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return ev["sender"] == "@irc_bob:"+org })
	if body(msg) != "hello from the command line" {
		t.Fatalf("message %v", msg)
	}

	select {
	case err := <-consumed:
		if err != nil {
			t.Fatalf("amqp-consume: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("amqp-consume did not get 2 messages; stdout %q stderr %q", out.String(), stderr.String())
	}
	dec := json.NewDecoder(strings.NewReader(out.String()))
	got := map[string]string{}
	for {
		var ev map[string]any
		if err := dec.Decode(&ev); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("amqp-consume printed %q: %v", out.String(), err)
			}
			break
		}
		got[body(ev)], _ = ev["sender"].(string)
	}
	if got["hello amqp-tools"] != "@alice:"+org || got["hello from the command line"] != "@irc_bob:"+org {
		t.Fatalf("amqp-consume got %v", got)
	}

	// amqp-publish cannot set user_id: its commands are refused, and say why.
	command, _ = json.Marshal(cmd("tools-3", "@irc_bob:"+org, "no user_id"))
	for _, b := range []string{string(command), `{"type":"parley.bridge.v1",`} {
		pub := exec.CommandContext(ctx, "amqp-publish", "--url="+ircURL, "-r", CommandQueue(org), "-p", "-C", "application/json", "-b", b)
		if out, err := pub.CombinedOutput(); err != nil {
			t.Fatalf("amqp-publish: %v\n%s", err, out)
		}
	}
	dead := e.deadLetters(2)
	var reasons []string
	for _, d := range dead {
		r, _ := d.Headers[amqp.HeaderError].(string)
		reasons = append(reasons, r)
	}
	joined := strings.Join(reasons, " | ")
	if !strings.Contains(joined, "M_FORBIDDEN: the command has no user_id property") || strings.Count(joined, "M_FORBIDDEN") != 2 {
		t.Fatalf("dead letters: %s", joined)
	}
	if b := e.bodies(e.lobby); b["no user_id"] != 0 {
		t.Fatal("a command without user_id was applied")
	}
}

// buildBridgesend builds examples/bridgesend into a temp dir.
func buildBridgesend(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to build examples/bridgesend: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "bridgesend")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, goTool, "build", "-o", bin, "./examples/bridgesend").CombinedOutput(); err != nil {
		t.Fatalf("go build bridgesend: %v\n%s", err, out)
	}
	return bin
}
