package main

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"go.uber.org/goleak"

	"github.com/parley-chat/parley/bridge"
	"github.com/parley-chat/parley/bridge/internal/bridgetest"
	"github.com/parley-chat/parley/config"
	"github.com/parley-chat/parley/node/client"
	"github.com/parley-chat/parley/node/content"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The echo bot, run against a real node with a bridge configured for it, answers a message
// in the room once, as its virtual user, and ignores its own answers.
func TestEchoBot(t *testing.T) {
	const org = "echo.test"
	vhost := bridgetest.NewVhost(t)
	n := bridgetest.StartCluster(t, org, 1)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, tok, err := client.Register(ctx, n.BaseURL(), "alice", "correct horse battery")
	if err != nil {
		t.Fatal(err)
	}
	alice, err := client.Dial(ctx, n.WSURL(), tok, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	r, err := alice.Request(ctx, client.Frame{"op": "create_room", "alias": "lobby", "visibility": "public"})
	if err != nil {
		t.Fatal(err)
	}
	room := r["room_id"].(string)

	u, _ := url.Parse(vhost.URL)
	svc, err := bridge.Start(bridge.Options{Org: org, Cluster: n.Srv.Cluster(), AMQPURL: vhost.URL,
		Logger: bridgetest.Logger(t), MinBackoff: 20 * time.Millisecond,
		Bridges: []config.BridgeConfig{{ID: "echo", AMQPUser: u.User.Username(), Namespace: "bot_echo", Rooms: []string{"#lobby:" + org}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()

	botCtx, stopBot := context.WithCancel(ctx)
	botDone := make(chan error, 1)
	go func() {
		botDone <- run(botCtx, botConfig{URL: vhost.URL, Org: org, Bridge: "echo", Bot: "bot_echo", Rooms: []string{room}},
			bridgetest.Logger(t))
	}()
	defer func() {
		stopBot()
		if err := <-botDone; err != nil {
			t.Error(err)
		}
	}()

	// The bot binds its queue once the exchange exists; send until it answers.
	answers := 0
	deadline := time.After(30 * time.Second)
	sent := 0
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	if _, err := alice.Send(ctx, room, "ping-0", "ping 0"); err != nil {
		t.Fatal(err)
	}
	for answers == 0 {
		select {
		case f := <-alice.Pushes():
			if f["op"] != "event" {
				continue
			}
			ev := f["event"].(map[string]any)
			if ev["sender"] != "@bot_echo:"+org || ev["type"] != "m.room.message" {
				continue
			}
			c := ev["content"].(map[string]any)
			if c["msgtype"] != "m.notice" || len(c["body"].(string)) < 6 || c["body"].(string)[:6] != "echo: " {
				t.Fatalf("answer %v", ev)
			}
			answers++
		case <-tick.C:
			sent++
			if _, err := alice.Send(ctx, room, "ping-"+string(rune('0'+sent)), "ping"); err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatal("no answer from the bot")
		}
	}
	// One answer per message, no answers to answers.
	if _, err := alice.Send(ctx, room, "final", "final"); err != nil {
		t.Fatal(err)
	}
	finals := 0
	quiet := time.After(2 * time.Second)
	for done := false; !done; {
		select {
		case f := <-alice.Pushes():
			if ev, ok := f["event"].(map[string]any); ok && ev["sender"] == "@bot_echo:"+org {
				if ev["content"].(map[string]any)["body"] == "echo: final" {
					finals++
				}
			}
		case <-quiet:
			done = true
		}
	}
	if finals != 1 {
		t.Fatalf("%d answers to the final message, want 1", finals)
	}
}

// An answer to a body at the node's limit is cut to fit it, at a character boundary.
func TestEchoFitsTheBodyLimit(t *testing.T) {
	if maxBodyBytes != content.MaxBodyBytes {
		t.Fatalf("the bot's body limit %d is not the node's %d", maxBodyBytes, content.MaxBodyBytes)
	}
	if got := echoOf("ping"); got != "echo: ping" {
		t.Fatalf("echo of ping: %q", got)
	}
	for _, body := range []string{strings.Repeat("a", content.MaxBodyBytes), strings.Repeat("é", content.MaxBodyBytes/2)} {
		got := echoOf(body)
		if len(got) > content.MaxBodyBytes || !utf8.ValidString(got) || !strings.HasPrefix(got, "echo: ") {
			t.Fatalf("echo of %d bytes: %d bytes, valid UTF-8 %v", len(body), len(got), utf8.ValidString(got))
		}
		if err := content.CheckText("body", got, content.MaxBodyBytes); err != nil {
			t.Fatalf("the node would refuse the echo: %v", err)
		}
	}
}
