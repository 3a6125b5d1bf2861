package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/rabbitmq/amqp091-go"
)

// ErrClosed is returned by the operations of a Conn, Publisher or Consumer after Close.
var ErrClosed = errors.New("amqp: closed")

const (
	defaultMinBackoff  = 100 * time.Millisecond
	defaultMaxBackoff  = 10 * time.Second
	defaultHeartbeat   = 10 * time.Second
	defaultDialTimeout = 10 * time.Second
	closeTimeout       = 5 * time.Second
)

// Config configures a Conn.
type Config struct {
	URL  string // amqp://user:pass@host:port/vhost (amqps:// for TLS)
	Name string // connection name shown in the management UI (client property connection_name)
	// Logger is where the connection logs, with the caller's component attribute (e.g.
	// component=federation.amqp); the Conn adds none of its own, so that no line carries the key
	// twice. Default slog.Default() with component=amqp.
	Logger *slog.Logger

	// MinBackoff and MaxBackoff bound the delay between connection attempts (defaults 100ms, 10s):
	// exponential with full jitter, reset once a connection stayed up for MaxBackoff.
	MinBackoff, MaxBackoff time.Duration

	// OnReconnect is called after every successful (re)connect, from the Conn's goroutine; it
	// must not block. May be nil.
	OnReconnect func()

	// Heartbeat is the AMQP heartbeat interval (default 10s); a dead peer is noticed after about
	// two intervals. A heartbeat= parameter in URL takes precedence.
	Heartbeat time.Duration
	// DialTimeout bounds the TCP connect plus the AMQP handshake of one attempt (default 10s).
	DialTimeout time.Duration
}

func (cfg *Config) setDefaults() {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default().With("component", "amqp")
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = defaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = defaultMaxBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = defaultHeartbeat
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = defaultDialTimeout
	}
}

// Conn keeps one AMQP connection alive, redialing with exponential backoff and jitter until Close.
type Conn struct {
	cfg  Config
	log  *slog.Logger
	user string // the URL's user name, for DeadLetter's user_id check

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when run has returned
	bad    error         // a configuration error: never connects

	closeOnce sync.Once
	closeErr  error // set by run before done is closed
	closersMu sync.Mutex
	closers   sync.WaitGroup // closeChannel goroutines; they end when the connection does
	shut      bool           // set under closersMu once the connection is closed for good

	mu      sync.Mutex
	conn    *amqp091.Connection // current connection, nil while disconnected
	changed chan struct{}       // closed and replaced whenever conn changes
}

// Dial returns at once and connects in the background, redialing whenever the connection is lost,
// until Close is called or ctx is done (ctx bounds the Conn's whole life; Close must still be
// called to wait for its goroutine). Errors are logged; Channel waits for a connection.
func Dial(ctx context.Context, cfg Config) *Conn {
	cfg.setDefaults()
	c := &Conn{
		cfg:     cfg,
		done:    make(chan struct{}),
		changed: make(chan struct{}),
	}
	c.ctx, c.cancel = context.WithCancel(ctx)
	uri, err := amqp091.ParseURI(cfg.URL)
	if err != nil {
		// Never log the URL itself: it carries the password.
		c.bad = fmt.Errorf("amqp: invalid URL: %w", err)
		c.log = cfg.Logger.With("conn", cfg.Name)
		c.log.Error("amqp connection not started", "err", c.bad)
		close(c.done)
		return c
	}
	c.user = uri.Username
	c.log = cfg.Logger.With("conn", cfg.Name,
		"broker", net.JoinHostPort(uri.Host, fmt.Sprint(uri.Port)), "vhost", uri.Vhost)
	go c.run()
	return c
}

// Close stops redialing, closes the connection (and with it every channel opened on it) and waits
// for the Conn's goroutine to end. It returns the error of closing the connection, if any; later
// calls return nil.
func (c *Conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.cancel()
		<-c.done
		c.closersMu.Lock()
		c.shut = true // every channel died with the connection: no more closers
		c.closersMu.Unlock()
		c.closers.Wait()
		err = c.closeErr
	})
	return err
}

// Connected reports whether the Conn currently has an open connection.
func (c *Conn) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn != nil && !c.conn.IsClosed()
}

// frameMax is the frame_max of the current connection (the broker's default 128 KiB while
// there is none).
func (c *Conn) frameMax() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil && c.conn.Config.FrameSize > 0 {
		return c.conn.Config.FrameSize
	}
	return 131072
}

// Channel returns a fresh channel on the current connection, waiting (ctx-bounded) for a
// connection. The caller owns the channel and closes it; it dies with the connection.
func (c *Conn) Channel(ctx context.Context) (*amqp091.Channel, error) {
	if c.bad != nil {
		return nil, c.bad
	}
	for {
		if c.ctx.Err() != nil {
			return nil, ErrClosed
		}
		c.mu.Lock()
		conn, changed := c.conn, c.changed
		c.mu.Unlock()
		if conn != nil {
			ch, err := conn.Channel()
			if err == nil {
				return ch, nil
			}
			if !conn.IsClosed() {
				return nil, fmt.Errorf("amqp: open channel: %w", err)
			}
			// The connection died under us; wait for the run loop to notice and redial.
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("amqp: waiting for a connection: %w", ctx.Err())
		case <-c.ctx.Done():
			return nil, ErrClosed
		}
	}
}

// Do opens a channel (waiting for a connection as Channel does), calls fn with it and closes it.
// It suits one-off work such as declaring topology.
func (c *Conn) Do(ctx context.Context, fn func(ch *amqp091.Channel) error) error {
	ch, err := c.Channel(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = ch.Close() }()
	return fn(ch)
}

// closeChannel closes ch in the background and returns a channel closed when that is done.
// Closing a channel waits for the broker's close-ok, which a blocked or stalled broker may never
// send; the goroutine then ends when the connection dies or the Conn is closed.
func (c *Conn) closeChannel(ch *amqp091.Channel) <-chan struct{} {
	done := make(chan struct{})
	c.closersMu.Lock()
	defer c.closersMu.Unlock()
	if c.shut || ch.IsClosed() {
		close(done)
		return done
	}
	c.closers.Add(1)
	go func() {
		defer c.closers.Done()
		defer close(done)
		_ = ch.Close()
	}()
	return done
}

func (c *Conn) setConn(conn *amqp091.Connection) {
	c.mu.Lock()
	c.conn = conn
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// run is the Conn's one goroutine: dial, watch, redial with backoff.
func (c *Conn) run() {
	defer close(c.done)
	attempt, connects := 0, 0
	for {
		conn, err := c.dial()
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			d := backoff(c.cfg.MinBackoff, c.cfg.MaxBackoff, attempt)
			attempt++
			c.log.Warn("amqp connect failed", "err", err, "attempt", attempt, "retry_in", d)
			if !sleep(c.ctx, d) {
				return
			}
			continue
		}
		up := time.Now()
		closed := conn.NotifyClose(make(chan *amqp091.Error, 1))
		blocked := conn.NotifyBlocked(make(chan amqp091.Blocking, 4))
		c.setConn(conn)
		connects++
		c.log.Info("amqp connected", "connects", connects)
		if c.cfg.OnReconnect != nil {
			c.cfg.OnReconnect()
		}

		lost := c.watch(closed, blocked)
		c.setConn(nil)
		if !lost {
			err := conn.CloseDeadline(time.Now().Add(closeTimeout))
			if err != nil && !errors.Is(err, amqp091.ErrClosed) {
				c.closeErr = fmt.Errorf("amqp: close connection: %w", err)
			}
			c.log.Info("amqp connection closed")
			return
		}
		if time.Since(up) >= c.cfg.MaxBackoff {
			attempt = 0
		}
		d := backoff(c.cfg.MinBackoff, c.cfg.MaxBackoff, attempt)
		attempt++
		c.log.Info("amqp reconnecting", "retry_in", d)
		if !sleep(c.ctx, d) {
			return
		}
	}
}

// watch waits until the connection is lost (true) or the Conn is closed (false), draining the
// notification channels meanwhile.
func (c *Conn) watch(closed <-chan *amqp091.Error, blocked <-chan amqp091.Blocking) bool {
	for {
		select {
		case <-c.ctx.Done():
			return false
		case e := <-closed:
			if e != nil {
				c.log.Warn("amqp connection lost", "err", e)
			} else {
				c.log.Warn("amqp connection lost")
			}
			return true
		case b, ok := <-blocked:
			if !ok {
				blocked = nil
				continue
			}
			if b.Active {
				c.log.Warn("amqp connection blocked by the broker", "reason", b.Reason)
			} else {
				c.log.Info("amqp connection unblocked")
			}
		}
	}
}

// dial makes one connection attempt. Close aborts it, including a handshake in progress.
func (c *Conn) dial() (*amqp091.Connection, error) {
	var (
		mu sync.Mutex
		nc net.Conn
	)
	props := amqp091.NewConnectionProperties()
	if c.cfg.Name != "" {
		props.SetClientConnectionName(c.cfg.Name)
	}
	cfg := amqp091.Config{
		Heartbeat:  c.cfg.Heartbeat,
		Locale:     "en_US",
		Properties: props,
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: c.cfg.DialTimeout}
			conn, err := d.DialContext(c.ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// Heartbeats have not started yet: bound the handshake. amqp091 clears the
			// deadline once the connection is open.
			if err := conn.SetDeadline(time.Now().Add(c.cfg.DialTimeout)); err != nil {
				_ = conn.Close()
				return nil, err
			}
			mu.Lock()
			nc = conn
			mu.Unlock()
			return conn, nil
		},
	}
	stop := context.AfterFunc(c.ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if nc != nil {
			_ = nc.Close()
		}
	})
	conn, err := amqp091.DialConfig(c.cfg.URL, cfg)
	stop()
	if err != nil {
		return nil, fmt.Errorf("amqp: dial: %w", err)
	}
	if c.ctx.Err() != nil {
		_ = conn.CloseDeadline(time.Now().Add(closeTimeout))
		return nil, ErrClosed
	}
	return conn, nil
}

// backoff returns the delay before attempt n (0-based): uniformly random in [0, min(max, min·2ⁿ)]
// ("full jitter").
func backoff(minD, maxD time.Duration, n int) time.Duration {
	ceil := maxD
	if n < 62 {
		if d := minD << n; d > 0 && d < maxD && d>>n == minD {
			ceil = d
		}
	}
	return rand.N(ceil + 1)
}

// sleep waits d or until ctx is done; it reports whether the full d elapsed.
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

// waitAtMost waits until done is closed or d has passed.
func waitAtMost(done <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}
