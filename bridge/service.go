package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/bridge/amqp"
	"github.com/parley-chat/parley/config"
	"github.com/parley-chat/parley/consensus"
	"github.com/parley-chat/parley/consensus/event"
)

// Topology names of amqp.md for org ORG.

// EventsExchange is the topic exchange every committed event of a bridged room is published to.
func EventsExchange(org string) string { return "parley." + org + ".events" }

// CommandQueue is the quorum queue bridges send commands to (through the default exchange,
// routing key = the queue's name).
func CommandQueue(org string) string { return "parley." + org + ".bridge.in" }

// DeadLetterExchange receives refused commands.
func DeadLetterExchange(org string) string { return "parley." + org + ".bridge.dlx" }

// DeadLetterQueue keeps refused commands for an operator.
func DeadLetterQueue(org string) string { return "parley." + org + ".bridge.dlq" }

// RemoteRooms is what the federation service offers for membership in rooms of other orgs,
// whose home org decides it (amqp.md).
type RemoteRooms interface {
	// IsPeer reports whether org is a federation peer of this org.
	IsPeer(org string) bool
	// Join has the home org of room (an id or alias) admit userID and commits the room here;
	// it returns the room id.
	Join(ctx context.Context, userID, room string) (string, error)
	// SendState has the home org authorize and commit a state change (a leave), then commits
	// it here.
	SendState(ctx context.Context, e *event.Event) error
	// DeclineInvite sends the leave that declines an invite into a room known here only
	// through it to the home org; the caller commits it here once accepted.
	DeclineInvite(ctx context.Context, leave *event.Event) error
}

// Options configure the bridge service of one node.
type Options struct {
	Org     string
	Cluster *consensus.Cluster
	AMQPURL string
	Bridges []config.BridgeConfig
	Logger  *slog.Logger
	// Remote reaches rooms of other orgs through their home org (the federation service):
	// virtual users join, leave and decline invites there as clients do. nil: bridges join and
	// leave only rooms of Org.
	Remote RemoteRooms
	// OnTyping shows a virtual user's typing to the room (node.Server.SetRemoteTyping, and to
	// other orgs through federation); nil drops typing commands after checking them.
	OnTyping func(room, user string, typing bool, timeout time.Duration)

	// Prefetch bounds the unacked commands the broker hands this node (default 32).
	Prefetch int
	// BatchSize bounds the events published between two waits for confirms (default 256).
	BatchSize int
	// DeliveryLimit is the command queue's x-delivery-limit (default 20), the backstop for a
	// command that keeps failing to commit.
	DeliveryLimit int
	// CommitTimeout bounds one commit through Raft (default 10s).
	CommitTimeout time.Duration
	// ConnName names the AMQP connection (default "parley-bridge-ORG-NODEID").
	ConnName string
	// MinBackoff and MaxBackoff bound the waits after broker or commit failures (defaults
	// 100ms, 10s).
	MinBackoff, MaxBackoff time.Duration
	// OnDeadLetter, OnPublished and OnReconnect (after every AMQP connect) feed metrics; may
	// be nil.
	OnDeadLetter func(code string)
	OnPublished  func(events int)
	OnReconnect  func()
	// OnBacklog reports how many events of the org's stream are yet to be published or passed
	// over (0 when caught up, and when this node stops relaying); may be nil.
	OnBacklog func(events int64)

	// failRecord, set by tests only (nil otherwise), runs before a command's record is
	// proposed: an error stands for a commit that failed, and requeues the command.
	failRecord func(cmd *Command) error
}

func (o *Options) defaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Prefetch <= 0 {
		o.Prefetch = 32
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 256
	}
	if o.DeliveryLimit <= 0 {
		o.DeliveryLimit = amqp.DefaultDeliveryLimit
	}
	if o.CommitTimeout <= 0 {
		o.CommitTimeout = 10 * time.Second
	}
	if o.ConnName == "" {
		o.ConnName = "parley-bridge-" + o.Org + "-" + o.Cluster.NodeID()
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(10*time.Second, o.MinBackoff)
	}
}

// bridgeConf is one configured bridge, ready to check commands against.
type bridgeConf struct {
	id       string
	amqpUser string
	ns       *regexp.Regexp // anchored: ^(?:namespace)$
	rooms    []string       // room ids or aliases, as configured
}

func compile(list []config.BridgeConfig) (map[string]*bridgeConf, error) {
	out := make(map[string]*bridgeConf, len(list))
	for i, b := range list {
		if b.ID == "" || b.AMQPUser == "" {
			return nil, fmt.Errorf("bridge: bridges[%d]: id and amqp_user are required", i)
		}
		if _, dup := out[b.ID]; dup {
			return nil, fmt.Errorf("bridge: bridges[%d]: duplicate id %q", i, b.ID)
		}
		// Compiled alone first: wrapped only, "irc_.*)|(.*" would close the group early and
		// match every localpart, the anchors no longer around the whole expression.
		if _, err := regexp.Compile(b.Namespace); err != nil {
			return nil, fmt.Errorf("bridge: bridges[%d].namespace: %w", i, err)
		}
		ns, err := regexp.Compile(`^(?:` + b.Namespace + `)$`)
		if err != nil {
			return nil, fmt.Errorf("bridge: bridges[%d].namespace: %w", i, err)
		}
		out[b.ID] = &bridgeConf{id: b.ID, amqpUser: b.AMQPUser, ns: ns, rooms: append([]string(nil), b.Rooms...)}
	}
	return out, nil
}

// Service relays the events of bridged rooms to the events exchange and applies commands from
// the command queue. Both run only on the Raft leader; every node declares the topology.
type Service struct {
	opts    Options
	log     *slog.Logger
	conn    *amqp.Conn
	bridges map[string]*bridgeConf
	users   map[string]bool // configured amqp users

	ctx      context.Context // done when the service closes
	shutdown context.CancelFunc
	done     chan struct{} // closed when the leader watch returned

	closers sync.WaitGroup // channel closes in the background (see closeChannel)
	once    sync.Once

	// unaskedTokens: claims this node proposed without learning of their commit (remote.go),
	// bridge NUL txn_id -> token.
	unaskedMu     sync.Mutex
	unaskedTokens map[string]string
}

// Start checks the bridges' configuration, connects to the broker in the background and
// begins watching for leadership. Close it before the node's cluster.
func Start(opts Options) (*Service, error) {
	if opts.Cluster == nil || opts.Org == "" {
		return nil, errors.New("bridge: Org and Cluster are required")
	}
	if opts.AMQPURL == "" {
		return nil, errors.New("bridge: no AMQP URL")
	}
	opts.defaults()
	bridges, err := compile(opts.Bridges)
	if err != nil {
		return nil, err
	}
	s := &Service{opts: opts, log: opts.Logger.With("component", "bridge"), bridges: bridges,
		users: map[string]bool{}, done: make(chan struct{})}
	s.ctx, s.shutdown = context.WithCancel(context.Background())
	for _, b := range bridges {
		s.users[b.amqpUser] = true
	}
	s.conn = amqp.Dial(context.Background(), amqp.Config{URL: opts.AMQPURL, Name: opts.ConnName, Logger: opts.Logger.With("component", "bridge.amqp"),
		MinBackoff: opts.MinBackoff, MaxBackoff: opts.MaxBackoff, OnReconnect: opts.OnReconnect})
	go func() {
		defer close(s.done)
		opts.Cluster.WhileLeading(s.ctx, s.log, s.declare, s.lead)
	}()
	return s, nil
}

// Close stops relaying and consuming (unacked commands return to the queue) and closes the
// broker connection. It is safe to call more than once.
func (s *Service) Close() {
	s.once.Do(func() {
		s.shutdown()
		<-s.done
		_ = s.conn.Close()
		s.closers.Wait()
	})
}

// declare makes the bridge topology; idempotent, so every node does it at every start.
func (s *Service) declare(ctx context.Context) error {
	org := s.opts.Org
	return s.conn.Do(ctx, func(ch *amqp091.Channel) error {
		if err := amqp.DeclareTopicExchange(ch, EventsExchange(org)); err != nil {
			return err
		}
		if err := amqp.DeclareDLQ(ch, DeadLetterExchange(org), DeadLetterQueue(org)); err != nil {
			return err
		}
		return amqp.DeclareQuorumQueue(ch, amqp.QueueSpec{Name: CommandQueue(org),
			DeadLetterExchange: DeadLetterExchange(org), DeliveryLimit: s.opts.DeliveryLimit})
	})
}

// lead relays events and consumes commands while this node leads, until ctx ends.
func (s *Service) lead(ctx context.Context) {
	s.log.Info("bridge: relaying and consuming as leader", "bridges", len(s.bridges))
	var wg sync.WaitGroup
	wg.Go(func() { s.relay(ctx) })
	wg.Go(func() { s.consume(ctx) })
	wg.Wait()
	s.log.Info("bridge: stopped leader work")
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
