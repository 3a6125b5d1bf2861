// Command echobot is a small bridge: it consumes the messages of its rooms from the org's
// events exchange and answers each with "echo: BODY", sent as the virtual user @bot_echo:ORG.
//
// Configure the node with a bridge for it (see docs/bridges.md), for example
//
//	bridges:
//	  - id: echo
//	    amqp_user: echobot
//	    namespace: "bot_echo"
//	    rooms: ["#lobby:acme.test"]
//
// and run it with that AMQP user:
//
//	go run ./bridge/examples/echobot -url amqp://echobot:secret@localhost:5672/ -org acme.test -bridge echo
//
// It declares a durable queue of its own (echobot.ORG by default), binds it to
// parley.ORG.events with ROOM.m_room_message for each -room (or *.m_room_message: every
// bridged room), and acks an event only once its answer is confirmed by the broker. The events
// exchange carries the rooms of every bridge of the org: where other bridges are configured,
// give the bot its rooms with -room, or its answers in their rooms are refused (dead-lettered
// "room not allowed"). The
// answer's txn_id is derived from the event id, so an event delivered twice is answered once.
// Notices (msgtype m.notice, which is what it sends) and its own messages are not answered.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// botConfig is what the bot needs to know.
type botConfig struct {
	URL      string   // broker URL with the bridge's AMQP user
	Org      string   // the org, e.g. acme.test
	Bridge   string   // the bridge id configured on the node
	Bot      string   // the bot's localpart (inside the bridge's namespace)
	Queue    string   // its own queue
	Rooms    []string // room ids to answer in; empty: every room the exchange carries
	Prefetch int
}

type roomList []string

func (r *roomList) String() string     { return strings.Join(*r, ",") }
func (r *roomList) Set(v string) error { *r = append(*r, v); return nil }

func main() {
	var cfg botConfig
	var rooms roomList
	flag.StringVar(&cfg.URL, "url", "amqp://guest:guest@127.0.0.1:5672/", "broker URL with the bridge's AMQP user")
	flag.StringVar(&cfg.Org, "org", "", "the org (domain), e.g. acme.test (required)")
	flag.StringVar(&cfg.Bridge, "bridge", "echo", "the bridge id configured on the node")
	flag.StringVar(&cfg.Bot, "bot", "bot_echo", "the bot's localpart (inside the bridge's namespace)")
	flag.StringVar(&cfg.Queue, "queue", "", "the bot's queue (default echobot.ORG)")
	flag.Var(&rooms, "room", "a room id to answer in (repeatable; default: every bridged room)")
	flag.IntVar(&cfg.Prefetch, "prefetch", 16, "unacked events at most")
	flag.Parse()
	if cfg.Org == "" {
		fmt.Fprintln(os.Stderr, "echobot: -org is required")
		os.Exit(2)
	}
	cfg.Rooms = rooms
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("echobot stopped", "err", err)
		os.Exit(1)
	}
}

// run serves until ctx ends, reconnecting with backoff when the broker goes away.
func run(ctx context.Context, cfg botConfig, log *slog.Logger) error {
	if cfg.Queue == "" {
		cfg.Queue = "echobot." + cfg.Org
	}
	if cfg.Prefetch <= 0 {
		cfg.Prefetch = 16
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return fmt.Errorf("bad URL: %w", err)
	}
	b := &bot{cfg: cfg, log: log, userID: u.User.Username(), sender: "@" + cfg.Bot + ":" + cfg.Org}
	wait := 100 * time.Millisecond
	for {
		start := time.Now()
		err := b.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 10*time.Second {
			wait = 100 * time.Millisecond
		}
		log.Warn("echobot: disconnected, reconnecting", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(wait*2, 10*time.Second)
	}
}

type bot struct {
	cfg    botConfig
	log    *slog.Logger
	userID string // the AMQP user: the user_id property of every command
	sender string // @bot:org
}

// session is one connection: declare, bind, consume, answer.
func (b *bot) session(ctx context.Context) error {
	conn, err := amqp091.DialConfig(b.cfg.URL, amqp091.Config{Dial: amqp091.DefaultDial(10 * time.Second),
		Heartbeat: 10 * time.Second, Properties: amqp091.Table{"connection_name": "echobot-" + b.cfg.Org}})
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	exchange := "parley." + b.cfg.Org + ".events"
	if _, err := ch.QueueDeclare(b.cfg.Queue, true, false, false, false, nil); err != nil {
		return err
	}
	keys := []string{"*.m_room_message"}
	if len(b.cfg.Rooms) > 0 {
		keys = keys[:0]
		for _, r := range b.cfg.Rooms {
			keys = append(keys, strings.ReplaceAll(r, ".", "_")+".m_room_message")
		}
	}
	for _, k := range keys {
		if err := ch.QueueBind(b.cfg.Queue, k, exchange, false, nil); err != nil {
			return fmt.Errorf("bind %s (is the node running with bridges configured?): %w", k, err)
		}
	}
	if err := ch.Qos(b.cfg.Prefetch, 0, false); err != nil {
		return err
	}
	// Answers go out on a channel of their own, in confirm mode.
	pub, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := pub.Confirm(false); err != nil {
		return err
	}
	deliveries, err := ch.Consume(b.cfg.Queue, "", false, false, false, false, nil)
	if err != nil {
		return err
	}
	b.log.Info("echobot: listening", "queue", b.cfg.Queue, "keys", keys, "as", b.sender)
	closed := conn.NotifyClose(make(chan *amqp091.Error, 1))
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-closed:
			if e == nil {
				return errors.New("connection closed")
			}
			return e
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("consumer cancelled")
			}
			if err := b.answer(ctx, pub, d); err != nil {
				_ = d.Nack(false, true)
				return err
			}
			if err := d.Ack(false); err != nil {
				return err
			}
		}
	}
}

// event is the part of a Parley event the bot reads.
type event struct {
	EventID string `json:"event_id"`
	RoomID  string `json:"room_id"`
	Sender  string `json:"sender"`
	Type    string `json:"type"`
	Content struct {
		MsgType string `json:"msgtype"`
		Body    string `json:"body"`
	} `json:"content"`
}

// answer sends "echo: BODY" for a text message of someone else and waits for the confirm.
func (b *bot) answer(ctx context.Context, pub *amqp091.Channel, d amqp091.Delivery) error {
	var ev event
	if err := json.Unmarshal(d.Body, &ev); err != nil {
		b.log.Warn("echobot: skipping a message that is not an event", "err", err)
		return nil
	}
	if ev.Type != "m.room.message" || ev.Sender == b.sender || ev.Content.MsgType == "m.notice" || ev.Content.Body == "" {
		return nil
	}
	cmd, _ := json.Marshal(map[string]any{
		"type": "parley.bridge.v1", "bridge": b.cfg.Bridge, "txn_id": "echo-" + ev.EventID, "op": "send",
		"room": ev.RoomID, "sender": b.sender,
		"content": map[string]any{"msgtype": "m.notice", "body": echoOf(ev.Content.Body)},
	})
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	dc, err := pub.PublishWithDeferredConfirmWithContext(pctx, "", "parley."+b.cfg.Org+".bridge.in", false, false,
		amqp091.Publishing{ContentType: "application/json", DeliveryMode: amqp091.Persistent,
			UserId: b.userID, MessageId: "echo-" + ev.EventID, Body: cmd})
	if err != nil {
		return err
	}
	ack, err := dc.WaitContext(pctx)
	if err != nil {
		return err
	}
	if !ack {
		return errors.New("answer refused by the broker (nack)")
	}
	b.log.Info("echobot: answered", "room", ev.RoomID, "event_id", ev.EventID)
	return nil
}

// maxBodyBytes is the node's limit on a message body (node/content.MaxBodyBytes): an answer over
// it would be refused.
const maxBodyBytes = 32 << 10

// echoOf is the answer to body: "echo: " and the body, cut at a character boundary to fit the
// node's body limit.
func echoOf(body string) string {
	echo := "echo: " + body
	if len(echo) <= maxBodyBytes {
		return echo
	}
	cut := maxBodyBytes
	for cut > 0 && !utf8.RuneStart(echo[cut]) {
		cut--
	}
	return echo[:cut]
}
