package amqp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"
)

// The integration tests run against a real RabbitMQ (3.10+) managed with rabbitmqctl on this
// host. Each test gets its own vhost, deleted afterwards, so tests run in parallel and do not
// disturb anything else using the broker. An unreachable broker fails the tests.

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func baseURL() string {
	if u := os.Getenv("PARLEY_TEST_AMQP_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func rabbitmqctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("rabbitmqctl %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// newVhost makes a fresh vhost for t (deleted when t ends) and returns the broker URL for it. It
// fails t if the broker is unreachable.
func newVhost(t *testing.T) string {
	t.Helper()
	u, err := url.Parse(baseURL())
	if err != nil {
		t.Fatalf("PARLEY_TEST_AMQP_URL: %v", err)
	}
	user := u.User.Username()
	if user == "" {
		user = "guest"
	}
	vhost := "parley-test-" + randHex(6)
	if out, err := rabbitmqctl("add_vhost", vhost); err != nil {
		t.Fatalf("broker unreachable? %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := rabbitmqctl("delete_vhost", vhost); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
	})
	if out, err := rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	u.Path = "/" + vhost
	u.RawPath = "/" + url.PathEscape(vhost)
	conn, err := amqp091.DialConfig(u.String(), amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("broker unreachable at %s: %v", u.Redacted(), err)
	}
	_ = conn.Close()
	return u.String()
}

// newConn dials a Conn that is closed when t ends; it waits until it is connected.
func newConn(t *testing.T, rawURL, name string, onReconnect func()) *Conn {
	t.Helper()
	c := Dial(context.Background(), Config{
		URL:         rawURL,
		Name:        name,
		Logger:      testLogger(t),
		MinBackoff:  20 * time.Millisecond,
		MaxBackoff:  500 * time.Millisecond,
		OnReconnect: onReconnect,
	})
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Conn.Close: %v", err)
		}
	})
	waitFor(t, 10*time.Second, "connected", c.Connected)
	return c
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitFor polls cond until it holds, failing t after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// declare runs fn on a fresh channel of c, failing t on error.
func declare(t *testing.T, c *Conn, fn func(ch *amqp091.Channel) error) {
	t.Helper()
	if err := c.Do(ctxTimeout(t, 10*time.Second), fn); err != nil {
		t.Fatal(err)
	}
}

// federationTopology declares the federation topology of the spec for org "acme".
func federationTopology(deliveryLimit int) func(ch *amqp091.Channel) error {
	return func(ch *amqp091.Channel) error {
		if err := DeclareTopicExchange(ch, "parley.federation"); err != nil {
			return err
		}
		if err := DeclareDLQ(ch, "parley.federation.dlx", "parley.fed.dlq"); err != nil {
			return err
		}
		return DeclareQuorumQueue(ch, QueueSpec{
			Name:               "parley.fed.acme",
			BindExchange:       "parley.federation",
			BindKeys:           []string{"acme"},
			DeadLetterExchange: "parley.federation.dlx",
			DeliveryLimit:      deliveryLimit,
		})
	}
}

func txn(id string) amqp091.Publishing {
	return amqp091.Publishing{
		ContentType: "application/json",
		MessageId:   id,
		Type:        "parley.txn.v1",
		Body:        []byte(`{"type":"parley.txn.v1","txn_id":"` + id + `"}`),
	}
}

// getOne polls queue with basic.get until a message arrives (acking it), failing t after d.
func getOne(t *testing.T, c *Conn, queue string, d time.Duration) amqp091.Delivery {
	t.Helper()
	ch, err := c.Channel(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ch.Close() }()
	deadline := time.Now().Add(d)
	for {
		m, ok, err := ch.Get(queue, false)
		if err != nil {
			t.Fatalf("get from %q: %v", queue, err)
		}
		if ok {
			if err := m.Ack(false); err != nil {
				t.Fatal(err)
			}
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("no message in %q after %v", queue, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// queueLen returns the number of ready messages in queue.
func queueLen(t *testing.T, c *Conn, queue string) int {
	t.Helper()
	var n int
	declare(t, c, func(ch *amqp091.Channel) error {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		n = q.Messages
		return err
	})
	return n
}

// killConnection has the broker close the connection named name (as an operator or a broker
// restart would), leaving every other connection alone.
func killConnection(t *testing.T, name string) {
	t.Helper()
	out, err := rabbitmqctl("list_connections", "-q", "pid", "client_properties")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := `{"connection_name","` + name + `"}`
	for _, line := range strings.Split(out, "\n") {
		pid, props, ok := strings.Cut(line, "\t")
		if !ok || !strings.Contains(props, want) {
			continue
		}
		if out, err := rabbitmqctl("close_connection", pid, "parley test: connection killed by the broker"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return
	}
	t.Fatalf("no connection named %q in:\n%s", name, out)
}

// recorder counts the deliveries of each message id.
type recorder struct {
	mu   sync.Mutex
	seen map[string]int
}

func (r *recorder) add(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = map[string]int{}
	}
	r.seen[id]++
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[id]
}
