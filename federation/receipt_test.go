package federation

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/consensus"
	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/loopback"
	"github.com/parley-chat/parley/consensus/state"
)

// settled is what became of a delivery once handled.
type settled string

const (
	acked     settled = "acked"
	requeued  settled = "requeued"
	unsettled settled = "neither acked nor requeued"
)

// deliverOnce publishes body to a fresh quorum queue of the broker at amqpURL, takes it back as
// a real delivery, hands it to handle and reports what handle did with it. What handle did is
// recorded on its way to the broker (not guessed from the queue after a fixed pause, which a
// broker slow to apply a reject misread as "unsettled"); a requeue is then confirmed by the
// broker holding the message again.
func deliverOnce(t *testing.T, amqpURL string, body []byte, handle func(amqp091.Delivery)) settled {
	t.Helper()
	conn, err := amqp091.Dial(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("receipt-test-"+randomID(), true, false, false, false, amqp091.Table{"x-queue-type": "quorum"})
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	conf, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", q.Name, true, false,
		amqp091.Publishing{ContentType: "application/json", Type: TypeTxn, DeliveryMode: amqp091.Persistent, Body: body})
	if err != nil || !conf.Wait() {
		t.Fatalf("publish: %v", err)
	}
	var d amqp091.Delivery
	waitFor(t, 5*time.Second, "the message", func() bool {
		var ok bool
		d, ok, err = ch.Get(q.Name, false)
		return err == nil && ok
	})
	rec := &settlement{Acknowledger: d.Acknowledger}
	d.Acknowledger = rec
	handle(d)
	switch got := rec.get(); got {
	case requeued:
		waitFor(t, 10*time.Second, "the requeued message back in its queue", func() bool {
			c2, err := conn.Channel()
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			q, err := c2.QueueDeclarePassive(q.Name, true, false, false, false, nil)
			if err != nil {
				t.Fatal(err)
			}
			return q.Messages == 1
		})
		return got
	case "":
		return unsettled
	default:
		return got
	}
}

// settlement records how a delivery was settled, and passes it on to the channel.
type settlement struct {
	amqp091.Acknowledger
	mu  sync.Mutex
	how settled
}

func (s *settlement) set(how settled) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.how == "" {
		s.how = how
	}
}

func (s *settlement) get() settled {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.how
}

func (s *settlement) Ack(tag uint64, multiple bool) error {
	s.set(acked)
	return s.Acknowledger.Ack(tag, multiple)
}

func (s *settlement) Nack(tag uint64, multiple, requeue bool) error {
	s.set(map[bool]settled{true: requeued, false: "dropped"}[requeue])
	return s.Acknowledger.Nack(tag, multiple, requeue)
}

func (s *settlement) Reject(tag uint64, requeue bool) error {
	s.set(map[bool]settled{true: requeued, false: "dropped"}[requeue])
	return s.Acknowledger.Reject(tag, requeue)
}

// receiptTxn is a signed transaction of origin to dest holding one m.receipt EDU.
func receiptTxn(t *testing.T, origin, dest string, key *SigningKey, r state.Receipt) []byte {
	t.Helper()
	content, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	txn := &Transaction{Type: TypeTxn, TxnID: "edu-" + randomID(), Origin: origin, Destination: dest, OriginTS: time.Now().UnixMilli(),
		PDUs: []*event.Event{}, EDUs: []EDU{{Type: "m.receipt", Content: content}}}
	if err := signMessage(txn, origin, key); err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(txn)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// TestReceiptNotCommittedIsRequeued: a receipt EDU whose commit fails (this org has no leader,
// as during a failover) goes back to the queue instead of being acked and lost; a receipt the
// room rules refuse, or a malformed one, is dropped (acked: it would be refused again), and a
// good one is committed and acked. Until 2026-12-07 the transaction was acked whatever became
// of its receipts.
func TestReceiptNotCommittedIsRequeued(t *testing.T) {
	amqpURL := testVhost(t)
	globexKey, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	peers := map[string]PeerKey{"globex.test": {KeyID: globexKey.KeyID, Public: globexKey.Private.Public().(ed25519.PublicKey)}}
	const bob = "@bob:globex.test"

	t.Run("no quorum", func(t *testing.T) {
		// One node of a two-voter org whose other voter never starts: never a leader.
		self, other := loopback.FreeAddr(t), loopback.FreeAddr(t)
		c, err := consensus.Open(consensus.Options{NodeID: "n1", DataDir: t.TempDir(), RaftBind: self, Bootstrap: true, Secret: "s3cret",
			Peers:            []consensus.Peer{{ID: "n1", RaftAddr: self}, {ID: "n2", RaftAddr: other}},
			HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		s := &Service{opts: Options{Org: "acme.test", Cluster: c, Peers: peers}, log: quiet}
		body := receiptTxn(t, "globex.test", "acme.test", globexKey, state.Receipt{RoomID: "!r:acme.test", UserID: bob, EventID: "$e"})
		got := deliverOnce(t, amqpURL, body, func(d amqp091.Delivery) { s.handleTxn(context.Background(), nil, d) })
		if got != requeued {
			t.Fatalf("a receipt not committed: %s, want requeued", got)
		}
	})

	t.Run("committed or refused", func(t *testing.T) {
		acme := startTestOrgs(t, amqpURL, "acme.test")["acme.test"]
		acme.svc.Close() // handled here, not by its inbox consumer
		s := &Service{opts: Options{Org: "acme.test", Cluster: acme.cluster, Peers: peers}, log: quiet}
		room := acme.createRoom(t, "@alice:acme.test", "public")
		b := bob
		acme.send(t, room, bob, "m.room.member", &b, map[string]string{"membership": state.Join})
		msg := acme.send(t, room, "@alice:acme.test", "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "hi"})
		for _, tc := range []struct {
			name   string
			r      state.Receipt
			stored bool
		}{
			{"good", state.Receipt{RoomID: room, UserID: bob, EventID: msg.EventID}, true},
			{"not a member", state.Receipt{RoomID: room, UserID: "@carol:globex.test", EventID: msg.EventID}, false},
			{"unknown event", state.Receipt{RoomID: room, UserID: bob, EventID: "$nope"}, false},
			{"user of another org", state.Receipt{RoomID: room, UserID: "@alice:acme.test", EventID: msg.EventID}, false},
		} {
			body := receiptTxn(t, "globex.test", "acme.test", globexKey, tc.r)
			got := deliverOnce(t, amqpURL, body, func(d amqp091.Delivery) { s.handleTxn(context.Background(), nil, d) })
			if got != acked {
				t.Errorf("%s: %s, want acked", tc.name, got)
			}
			if stored := slices.Contains(acme.committedReceipts(), tc.r); stored != tc.stored {
				t.Errorf("%s: stored %v, want %v", tc.name, stored, tc.stored)
			}
		}
	})
}
