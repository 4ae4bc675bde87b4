package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// AMQP is the default [Dialer], backed by github.com/rabbitmq/amqp091-go with
// its automatic recovery left off: the Producer reconnects by itself so that
// delivery tags never restart behind its back.
type AMQP struct {
	// ConfirmBuffer is the capacity of each channel's confirmation buffer. It
	// must be at least the number of publishings in flight on a channel so
	// that amqp091-go never waits on a slow listener (it gives up after 5 s
	// and the confirm is lost). Zero means 65536.
	ConfirmBuffer int
}

// closeTimeout bounds the connection.close handshake; after it the socket is
// closed outright, which also ends a write blocked by broker back-pressure.
const closeTimeout = 2 * time.Second

// Dial implements [Dialer].
func (d AMQP) Dial(ctx context.Context, url string, cfg Config) (Conn, error) {
	var (
		mu  sync.Mutex
		raw *watchedConn
	)
	acfg := amqp.Config{
		Heartbeat: cfg.Heartbeat,
		// amqp091-go writes ServerName into the config it is given: a
		// copy keeps the caller's intact and each URL's name its own.
		TLSClientConfig: cfg.TLS.Clone(),
		Properties:      amqp.NewConnectionProperties(),
		Locale:          "en_US",
		Dial: func(network, addr string) (net.Conn, error) {
			var nd net.Dialer
			c, err := nd.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			if dl, ok := ctx.Deadline(); ok {
				// Bounds the TLS and AMQP handshakes; amqp091-go clears it
				// once the connection is open.
				if err := c.SetDeadline(dl); err != nil {
					c.Close()
					return nil, err
				}
			}
			wc := newWatchedConn(c)
			mu.Lock()
			raw = wc
			mu.Unlock()
			return wc, nil
		},
	}
	if cfg.ConnectionName != "" {
		acfg.Properties.SetClientConnectionName(cfg.ConnectionName)
	}
	// A cancelled ctx ends a handshake that is stuck on a silent peer.
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if raw != nil {
			raw.Close()
		}
	})
	ac, err := amqp.DialConfig(url, acfg)
	if !stop() && err == nil {
		ac.Close()
		return nil, ctx.Err()
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, err
	}
	c := &amqpConn{c: ac, raw: raw, confirmBuffer: d.ConfirmBuffer}
	if c.confirmBuffer <= 0 {
		c.confirmBuffer = 1 << 16
	}
	closes := ac.NotifyClose(make(chan *amqp.Error, 1))
	blocks := ac.NotifyBlocked(make(chan amqp.Blocking, 8))
	if cfg.Heartbeat > 0 {
		go raw.watch(cfg.Heartbeat)
	}
	go watchConn(closes, blocks, cfg, raw)
	return c, nil
}

// watchedConn records when the broker last sent anything. RabbitMQ sends a
// heartbeat every half interval on an idle connection, so silence for two
// intervals means the peer or the path is gone (a black hole: no FIN, no
// RST). amqp091-go's heartbeater usually notices first (its read deadline is
// one and a half intervals once a frame has arrived); watch is the bound that
// holds whatever amqp091-go does: it closes the socket after two silent
// intervals, which ends the connection with [ErrMissedHeartbeats].
//
// It also coalesces writes: between cork and uncork, the frames amqp091-go
// flushes one publishing at a time are gathered and written together, so a
// batch of publishings costs one system call instead of one each.
type watchedConn struct {
	net.Conn
	lastRead atomic.Int64 // unix nanos
	stalled  atomic.Bool
	done     chan struct{}
	doneOnce sync.Once

	wmu    sync.Mutex // orders writes; held across a write to the socket
	corked bool
	buf    []byte
}

// corkLimit bounds what a corked connection holds before it writes anyway.
const corkLimit = 256 << 10

func (w *watchedConn) Write(b []byte) (int, error) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if w.corked {
		if len(w.buf)+len(b) > corkLimit {
			if err := w.flushLocked(); err != nil {
				return 0, err
			}
		}
		if len(b) <= corkLimit {
			w.buf = append(w.buf, b...)
			return len(b), nil
		}
	}
	return w.Conn.Write(b)
}

func (w *watchedConn) flushLocked() error {
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.Conn.Write(w.buf)
	if cap(w.buf) > 4*corkLimit {
		w.buf = nil
	} else {
		w.buf = w.buf[:0]
	}
	return err
}

func (w *watchedConn) cork() {
	w.wmu.Lock()
	w.corked = true
	w.wmu.Unlock()
}

func (w *watchedConn) uncork() error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	w.corked = false
	return w.flushLocked()
}

// ErrMissedHeartbeats ends a connection on which the broker sent nothing,
// not even a heartbeat, for two heartbeat intervals.
var ErrMissedHeartbeats = errors.New("transport: no data from the broker for two heartbeat intervals; connection presumed dead")

func newWatchedConn(c net.Conn) *watchedConn {
	w := &watchedConn{Conn: c, done: make(chan struct{})}
	w.lastRead.Store(time.Now().UnixNano())
	return w
}

func (w *watchedConn) Read(b []byte) (int, error) {
	n, err := w.Conn.Read(b)
	if n > 0 {
		w.lastRead.Store(time.Now().UnixNano())
	}
	return n, err
}

func (w *watchedConn) Close() error {
	w.doneOnce.Do(func() { close(w.done) })
	return w.Conn.Close()
}

// watch closes the connection once the broker has been silent for two
// heartbeat intervals. It checks every quarter interval, so the silence is
// noticed at most two intervals after the last byte arrived.
func (w *watchedConn) watch(heartbeat time.Duration) {
	limit := 2*heartbeat - heartbeat/4
	t := time.NewTicker(heartbeat / 4)
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return
		case now := <-t.C:
			if now.Sub(time.Unix(0, w.lastRead.Load())) > limit {
				w.stalled.Store(true)
				w.Close()
				return
			}
		}
	}
}

// watchConn forwards connection events until amqp091-go closes its notify
// channels, which it does when the connection shuts down.
func watchConn(closes <-chan *amqp.Error, blocks <-chan amqp.Blocking, cfg Config, raw *watchedConn) {
	for {
		select {
		case b, ok := <-blocks:
			if !ok {
				blocks = nil
				continue
			}
			if cfg.OnBlocked != nil {
				cfg.OnBlocked(b.Active, b.Reason)
			}
		case e, ok := <-closes:
			// Drain blocks so its sender never waits on us.
			if blocks != nil {
				go func() {
					for range blocks {
					}
				}()
			}
			// The socket is done with either way: stop the heartbeat watch.
			raw.doneOnce.Do(func() { close(raw.done) })
			if cfg.OnClosed != nil {
				switch {
				case raw.stalled.Load():
					cfg.OnClosed(ErrMissedHeartbeats)
				case ok && e != nil:
					cfg.OnClosed(e)
				default:
					cfg.OnClosed(nil)
				}
			}
			return
		}
	}
}

type amqpConn struct {
	c             *amqp.Connection
	raw           *watchedConn
	confirmBuffer int
	closeOnce     sync.Once
}

func (c *amqpConn) Channel() (Channel, error) {
	ch, err := c.c.Channel()
	if err != nil {
		return nil, err
	}
	return &amqpChannel{ch: ch, raw: c.raw, confirmBuffer: c.confirmBuffer}, nil
}

func (c *amqpConn) Close() error { return c.CloseDeadline(time.Now().Add(closeTimeout)) }

// CloseDeadline implements [DeadlineCloser]: the connection.close handshake
// gets until deadline, at most the usual two seconds.
func (c *amqpConn) CloseDeadline(deadline time.Time) error {
	if limit := time.Now().Add(closeTimeout); deadline.After(limit) {
		deadline = limit
	}
	var err error
	c.closeOnce.Do(func() {
		err = c.c.CloseDeadline(deadline)
		if c.raw != nil {
			c.raw.Close()
		}
		if errors.Is(err, amqp.ErrClosed) {
			err = nil
		}
	})
	return err
}

var _ ExchangeChecker = (*amqpChannel)(nil)

type amqpChannel struct {
	ch            *amqp.Channel
	raw           *watchedConn
	confirmBuffer int

	// In confirm mode, the publishings whose confirm watchChannel has not
	// forwarded yet, by delivery tag: their DeferredConfirmation holds the
	// broker's answer (see outcome). Publish adds, watchChannel takes.
	dcMu    sync.Mutex
	dcs     map[uint64]*amqp.DeferredConfirmation
	dcAdded chan struct{} // kicked after each add
}

// BeginBatch implements [Batcher].
func (c *amqpChannel) BeginBatch() { c.raw.cork() }

// EndBatch implements [Batcher].
func (c *amqpChannel) EndBatch() error { return c.raw.uncork() }

func (c *amqpChannel) ExchangeDeclare(name, kind string, durable bool, args Table) error {
	return c.ch.ExchangeDeclare(name, kind, durable, false, false, false, amqp.Table(args))
}

// ExchangeDeclarePassive implements [ExchangeChecker]. RabbitMQ ignores the
// kind and flags of a passive declare, so they are not asked for.
func (c *amqpChannel) ExchangeDeclarePassive(name string) error {
	return c.ch.ExchangeDeclarePassive(name, "direct", true, false, false, false, nil)
}

func (c *amqpChannel) QueueDeclare(name string, durable bool, args Table) error {
	_, err := c.ch.QueueDeclare(name, durable, false, false, false, amqp.Table(args))
	return err
}

func (c *amqpChannel) QueueBind(queue, key, exchange string) error {
	return c.ch.QueueBind(queue, key, exchange, false, nil)
}

func (c *amqpChannel) Confirm(ev ChannelEvents) error {
	c.dcMu.Lock()
	c.dcs = make(map[uint64]*amqp.DeferredConfirmation)
	c.dcAdded = make(chan struct{}, 1)
	c.dcMu.Unlock()
	confirms := c.ch.NotifyPublish(make(chan amqp.Confirmation, c.confirmBuffer))
	returns := c.ch.NotifyReturn(make(chan amqp.Return, 256))
	closes := c.ch.NotifyClose(make(chan *amqp.Error, 1))
	if err := c.ch.Confirm(false); err != nil {
		return err
	}
	go c.watchChannel(confirms, returns, closes, ev)
	return nil
}

// outcome returns whether the broker acked the publishing that cf is the
// confirm of. cf comes from amqp091-go's NotifyPublish stream, which delivers
// one confirm per tag in tag order but takes the answer of a range from the
// multiple ack or nack that ends it: a tag the broker nacked singly while an
// earlier tag was unconfirmed is held back, then reported with the answer of
// the next multiple (RabbitMQ nacks the messages of a quorum queue without a
// leader at once, and acks the others later, coalesced: the nack became an
// ack and the message was counted confirmed). The publishing's
// DeferredConfirmation has the broker's own answer for its tag: amqp091-go
// settles it on the ack or nack that names or covers it, before it notifies
// the stream. Publish records it right after the write, so it can be a
// moment late: outcome waits for it unless the channel closes meanwhile
// (*closes set to nil, the error in *closeErr).
func (c *amqpChannel) outcome(cf amqp.Confirmation, closes *<-chan *amqp.Error, closeErr *error) bool {
	for {
		c.dcMu.Lock()
		dc := c.dcs[cf.DeliveryTag]
		delete(c.dcs, cf.DeliveryTag)
		c.dcMu.Unlock()
		if dc != nil {
			select {
			case <-dc.Done():
				return dc.Acked()
			default:
				return cf.Ack // not settled: cannot be, amqp091-go settles first
			}
		}
		if *closes == nil {
			return cf.Ack // the channel is gone: its Publish failed
		}
		select {
		case <-c.dcAdded:
		case e, ok := <-*closes:
			if ok && e != nil {
				*closeErr = e
			}
			*closes = nil
		}
	}
}

// watchChannel forwards one channel's events in the order the broker sent
// them. amqp091-go hands a basic.return to the returns channel before it hands
// the matching basic.ack to the confirms channel (both from its reader
// goroutine), so pending returns are drained before each confirm is passed on.
func (c *amqpChannel) watchChannel(confirms <-chan amqp.Confirmation, returns <-chan amqp.Return, closes <-chan *amqp.Error, ev ChannelEvents) {
	forwardReturn := func(r amqp.Return) {
		ev.Return(Return{ReplyCode: r.ReplyCode, ReplyText: r.ReplyText, Exchange: r.Exchange, RoutingKey: r.RoutingKey, MessageID: r.MessageId, Headers: Table(r.Headers), Body: r.Body})
	}
	var closeErr error
	for confirms != nil || returns != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			forwardReturn(r)
		case cf, ok := <-confirms:
			if !ok {
				confirms = nil
				continue
			}
		drain:
			for returns != nil {
				select {
				case r, ok := <-returns:
					if !ok {
						returns = nil
						break drain
					}
					forwardReturn(r)
				default:
					break drain
				}
			}
			ev.Confirm(Confirmation{DeliveryTag: cf.DeliveryTag, Ack: c.outcome(cf, &closes, &closeErr)})
		case e, ok := <-closes:
			if ok && e != nil {
				closeErr = e
			}
			closes = nil
		}
	}
	// amqp091-go closes the confirm and return listeners on shutdown, after
	// it has sent any close error.
	if closes != nil {
		select {
		case e, ok := <-closes:
			if ok && e != nil {
				closeErr = e
			}
		default:
		}
	}
	if closeErr == nil {
		closeErr = amqp.ErrClosed
	}
	ev.Closed(closeErr)
}

func (c *amqpChannel) Publish(ctx context.Context, exchange, key string, mandatory bool, msg Publishing) (uint64, error) {
	p := amqp.Publishing{
		ContentType:   msg.ContentType,
		MessageId:     msg.MessageID,
		CorrelationId: msg.CorrelationID,
		Timestamp:     msg.Timestamp,
		Type:          msg.Type,
		AppId:         msg.AppID,
		Priority:      msg.Priority,
		Expiration:    msg.Expiration,
		Headers:       amqp.Table(msg.Headers),
		Body:          msg.Body,
	}
	if msg.Persistent {
		p.DeliveryMode = amqp.Persistent
	}
	dc, err := c.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, mandatory, false, p)
	if err != nil {
		return 0, err
	}
	if dc == nil {
		return 0, nil
	}
	c.dcMu.Lock()
	added := c.dcAdded
	if c.dcs != nil {
		c.dcs[dc.DeliveryTag] = dc
	}
	c.dcMu.Unlock()
	if added != nil {
		select {
		case added <- struct{}{}:
		default:
		}
	}
	return dc.DeliveryTag, nil
}

func (c *amqpChannel) Close() error {
	err := c.ch.Close()
	if errors.Is(err, amqp.ErrClosed) {
		return nil
	}
	return err
}

// ReplyCode returns the AMQP reply code of the broker exception in err's
// chain (a [ReplyCoder] or an amqp091-go *amqp.Error), or 0 when err is not a
// broker exception (a network failure, a timeout, nil).
func ReplyCode(err error) uint16 {
	var rc ReplyCoder
	if errors.As(err, &rc) {
		return rc.ReplyCode()
	}
	var ae *amqp.Error
	if errors.As(err, &ae) {
		return uint16(ae.Code)
	}
	return 0
}
