// Command bridgesend publishes bridge commands to a Parley org's command queue, the way a
// bridge must: with the AMQP user_id property set to the user it connects as (RabbitMQ checks
// it), persistent, and waiting for the broker's confirm. It is what `amqp-publish` would be if
// it could set user_id (amqp-tools cannot, and the node refuses commands without it).
//
//	echo '{"type":"parley.bridge.v1","bridge":"irc","txn_id":"1","op":"send","room":"#lobby:acme.test",
//	       "sender":"@irc_bob:acme.test","content":{"msgtype":"m.text","body":"hi"}}' |
//	  go run ./bridge/examples/bridgesend -url amqp://irc:secret@localhost:5672/ -org acme.test
//
// Each line of standard input (or the -b body) is one command. The exit status is 0 once every
// command was confirmed by the broker; whether the node accepted it shows in the room, or in
// parley.ORG.bridge.dlq with header x-parley-error.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

func main() {
	amqpURL := flag.String("url", "amqp://guest:guest@127.0.0.1:5672/", "broker URL: the bridge's AMQP user and password")
	org := flag.String("org", "", "the org (domain) whose command queue parley.ORG.bridge.in to publish to (required)")
	userID := flag.String("user-id", "", "the user_id property (default: the URL's user)")
	body := flag.String("b", "", "one command to send (default: one per line of standard input)")
	flag.Parse()
	if *org == "" {
		fmt.Fprintln(os.Stderr, "bridgesend: -org is required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var in io.Reader = os.Stdin
	if *body != "" {
		in = bytes.NewBufferString(*body)
	}
	n, err := send(ctx, *amqpURL, *org, *userID, in)
	fmt.Fprintf(os.Stderr, "bridgesend: %d command(s) confirmed\n", n)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bridgesend:", err)
		os.Exit(1)
	}
}

// send publishes each non-empty line of in and returns how many the broker confirmed.
func send(ctx context.Context, amqpURL, org, userID string, in io.Reader) (int, error) {
	if userID == "" {
		u, err := url.Parse(amqpURL)
		if err != nil {
			return 0, fmt.Errorf("bad URL: %w", err)
		}
		userID = u.User.Username()
	}
	conn, err := amqp091.DialConfig(amqpURL, amqp091.Config{Dial: amqp091.DefaultDial(10 * time.Second),
		Properties: amqp091.Table{"connection_name": "bridgesend"}})
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	if err := ch.Confirm(false); err != nil {
		return 0, err
	}
	returns := ch.NotifyReturn(make(chan amqp091.Return, 1))
	queue := "parley." + org + ".bridge.in"
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var head struct {
			TxnID string `json:"txn_id"`
		}
		_ = json.Unmarshal(line, &head) // the node judges the command; the id only labels it
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		// Mandatory: a missing queue (wrong org, node never started) is an error, not a silent drop.
		dc, err := ch.PublishWithDeferredConfirmWithContext(pctx, "", queue, true, false, amqp091.Publishing{
			ContentType: "application/json", DeliveryMode: amqp091.Persistent, UserId: userID,
			MessageId: head.TxnID, Timestamp: time.Now(), Body: append([]byte(nil), line...)})
		if err == nil {
			var ack bool
			ack, err = dc.WaitContext(pctx)
			if err == nil && !ack {
				err = errors.New("the broker refused the message (nack)")
			}
		}
		cancel()
		select {
		case r := <-returns:
			return n, fmt.Errorf("unroutable: %s (is %s declared? start the node first)", r.ReplyText, queue)
		default:
		}
		if err != nil {
			return n, err
		}
		n++
	}
	return n, sc.Err()
}
