package mlproducertest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/mlproducer/mlproducer/transport"
)

type eventKind int

const (
	evConfirm eventKind = iota
	evReturn
	evClosed     // ChannelEvents.Closed
	evBlocked    // Config.OnBlocked
	evConnClosed // Config.OnClosed; the last event of a connection
)

// event is one callback to make on the connection's goroutine once due.
type event struct {
	due     time.Time
	kind    eventKind
	ch      *channel // nil for connection events
	conf    transport.Confirmation
	ret     transport.Return
	err     error
	blocked bool
	reason  string
}

// conn is a connection. Its fields are guarded by b.mu.
type conn struct {
	b      *Broker
	cfg    transport.Config
	wake   chan struct{} // cap 1: events changed
	done   chan struct{} // closed when the connection closes
	closed bool
	err    error
	chans  []*channel
	events []event // sorted by due, then by push order
}

// channel is an AMQP channel. Its fields are guarded by c.b.mu.
type channel struct {
	c       *conn
	done    chan struct{} // closed when the channel closes
	closed  bool
	err     error
	confirm bool
	ev      transport.ChannelEvents
	tag     uint64              // last delivery tag
	acked   uint64              // every tag <= acked has been confirmed
	above   map[uint64]struct{} // confirmed tags > acked
}

var (
	_ transport.Dialer          = (*Broker)(nil)
	_ transport.ExchangeChecker = (*channel)(nil)
)

func closedErr(cause error) error {
	if cause == nil {
		return ErrClosed
	}
	return fmt.Errorf("%w: %w", ErrClosed, cause)
}

func (c *conn) wakeUp() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *conn) pushLocked(e event) {
	i := sort.Search(len(c.events), func(i int) bool { return c.events[i].due.After(e.due) })
	c.events = slices.Insert(c.events, i, e)
	c.wakeUp()
}

// closeLocked ends the connection. network discards every pending event but
// the Closed of channels closed before; otherwise events already due (and
// not held) are still delivered first.
func (c *conn) closeLocked(err error, network bool) {
	if c.closed {
		return
	}
	now := time.Now()
	if network {
		c.events = slices.DeleteFunc(c.events, func(e event) bool { return e.kind != evClosed })
	}
	for len(c.chans) > 0 {
		c.chans[0].closeLocked(err, now)
	}
	c.closed, c.err = true, err
	close(c.done)
	delete(c.b.conns, c)
	c.pushLocked(event{kind: evConnClosed, err: err, due: now})
}

// closeLocked closes the channel with err, discarding its events that are
// not due yet or held, and queues its Closed event.
func (ch *channel) closeLocked(err error, now time.Time) {
	if ch.closed {
		return
	}
	c := ch.c
	ch.closed, ch.err = true, err
	close(ch.done)
	c.chans = slices.DeleteFunc(c.chans, func(x *channel) bool { return x == ch })
	c.events = slices.DeleteFunc(c.events, func(e event) bool {
		return e.ch == ch && (e.due.After(now) || c.b.heldLocked(e))
	})
	if ch.confirm {
		c.pushLocked(event{kind: evClosed, ch: ch, err: err, due: now})
	}
}

// lock locks the broker for a channel RPC: it waits while
// [Broker.HangChannels] holds RPCs, and fails if the channel is closed. The
// broker is locked on return in every case.
func (ch *channel) lock() (*Broker, error) {
	b := ch.c.b
	b.mu.Lock()
	for !ch.closed && b.hangChans != nil {
		hang := b.hangChans
		b.mu.Unlock()
		select {
		case <-hang:
		case <-ch.done:
		}
		b.mu.Lock()
	}
	if ch.closed {
		return b, closedErr(ch.err)
	}
	return b, nil
}

// failLocked closes the channel with an AMQP channel error and returns it.
func (ch *channel) failLocked(code uint16, format string, args ...any) error {
	err := &Error{Code: code, Reason: fmt.Sprintf(format, args...)}
	ch.closeLocked(err, time.Now())
	return err
}

// loop delivers the connection's events in order until OnClosed.
func (c *conn) loop() {
	defer c.b.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		c.b.mu.Lock()
		e, ok, wait := c.nextLocked(time.Now())
		c.b.mu.Unlock()
		if ok {
			if c.deliver(e) {
				return
			}
			continue
		}
		var tick <-chan time.Time
		if wait > 0 {
			timer.Reset(wait)
			tick = timer.C
		}
		select {
		case <-c.wake:
		case <-tick:
		}
		timer.Stop()
	}
}

// deliver makes one callback; it reports whether it was the last one.
func (c *conn) deliver(e event) bool {
	switch e.kind {
	case evConfirm:
		e.ch.ev.Confirm(e.conf)
	case evReturn:
		e.ch.ev.Return(e.ret)
	case evClosed:
		e.ch.ev.Closed(e.err)
	case evBlocked:
		if c.cfg.OnBlocked != nil {
			c.cfg.OnBlocked(e.blocked, e.reason)
		}
	case evConnClosed:
		if c.cfg.OnClosed != nil {
			c.cfg.OnClosed(e.err)
		}
		return true
	}
	return false
}

// nextLocked removes and returns the first deliverable event, or reports how
// long until the next one is due (0: none is scheduled).
func (c *conn) nextLocked(now time.Time) (event, bool, time.Duration) {
	for i, e := range c.events {
		if e.due.After(now) {
			return event{}, false, e.due.Sub(now)
		}
		if e.kind == evClosed { // nothing of the channel may follow Closed
			c.events = slices.DeleteFunc(c.events, func(x event) bool { return x.ch == e.ch })
			return e, true, 0
		}
		if c.b.heldLocked(e) {
			continue
		}
		if e.kind != evConfirm {
			c.events = slices.Delete(c.events, i, i+1)
			return e, true, 0
		}
		if (e.conf.Ack && c.b.faults.MultipleAcks) || (!e.conf.Ack && c.b.faults.MultipleNacks) {
			if m, ok := c.coalesceLocked(i, now); ok {
				return m, true, 0
			}
		}
		c.events = slices.Delete(c.events, i, i+1)
		e.ch.confirmedLocked(e.conf.DeliveryTag)
		return e, true, 0
	}
	return event{}, false, 0
}

// coalesceLocked turns the due acks (or nacks, as events[i] is) of one
// channel that follow events[i] (up to the channel's next other event) into
// one multiple confirm, if that covers at least two of them and no
// unconfirmed tag outside them.
func (c *conn) coalesceLocked(i int, now time.Time) (event, bool) {
	ch, ack := c.events[i].ch, c.events[i].conf.Ack
	run := map[uint64]int{} // tag -> index in c.events
	for j := i; j < len(c.events) && !c.events[j].due.After(now); j++ {
		e := c.events[j]
		if e.ch != ch {
			continue
		}
		if e.kind != evConfirm || e.conf.Ack != ack {
			break
		}
		run[e.conf.DeliveryTag] = j
	}
	top, n := ch.acked, 0
	for {
		if _, ok := run[top+1]; ok {
			n++
		} else if _, ok := ch.above[top+1]; !ok {
			break
		}
		top++
	}
	if n < 2 {
		return event{}, false
	}
	drop := map[int]bool{}
	for tag, j := range run {
		if tag <= top {
			drop[j] = true
			ch.confirmedLocked(tag)
		}
	}
	kept := c.events[:0]
	for j, e := range c.events {
		if !drop[j] {
			kept = append(kept, e)
		}
	}
	clear(c.events[len(kept):])
	c.events = kept
	return event{kind: evConfirm, ch: ch, conf: transport.Confirmation{DeliveryTag: top, Ack: ack, Multiple: true}}, true
}

// confirmedLocked records that the confirm of tag has been delivered.
func (ch *channel) confirmedLocked(tag uint64) {
	if tag <= ch.acked {
		return
	}
	ch.above[tag] = struct{}{}
	for {
		if _, ok := ch.above[ch.acked+1]; !ok {
			return
		}
		delete(ch.above, ch.acked+1)
		ch.acked++
	}
}

// Channel implements [transport.Conn]. It waits while [Broker.HangChannels]
// holds channel RPCs, and fails after the connection closed or while
// [Broker.FailChannels] says so.
func (c *conn) Channel() (transport.Channel, error) {
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	for !c.closed && b.hangChans != nil {
		hang := b.hangChans
		b.mu.Unlock()
		select {
		case <-hang:
		case <-c.done:
		}
		b.mu.Lock()
	}
	if c.closed {
		return nil, closedErr(c.err)
	}
	if c.b.chanErr != nil {
		return nil, c.b.chanErr
	}
	ch := &channel{c: c, done: make(chan struct{}), above: map[uint64]struct{}{}}
	c.chans = append(c.chans, ch)
	return ch, nil
}

// Close implements [transport.Conn]: a graceful close. Events already due are
// delivered, then every channel in confirm mode gets Closed(nil) and the
// connection OnClosed(nil), on the connection's goroutine. It does not wait
// for them, so it may be called from a callback.
func (c *conn) Close() error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	c.closeLocked(nil, false)
	return nil
}

// ExchangeDeclare implements [transport.Channel]. Kinds direct, fanout and
// topic are supported. It waits while [Broker.HangChannels] holds RPCs.
func (ch *channel) ExchangeDeclare(name, kind string, durable bool, args transport.Table) error {
	b, err := ch.lock()
	defer b.mu.Unlock()
	if err != nil {
		return err
	}
	if name == "" {
		return ch.failLocked(403, "ACCESS_REFUSED - operation not permitted on the default exchange")
	}
	if kind != "direct" && kind != "fanout" && kind != "topic" {
		return ch.failLocked(503, "COMMAND_INVALID - unknown exchange type '%s'", kind)
	}
	if ex := b.exchanges[name]; ex != nil {
		if ex.kind != kind {
			return ch.failLocked(406, "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '%s' in vhost '/': received '%s' but current is '%s'", name, kind, ex.kind)
		}
		if diff := argsDiff(ex.durable, durable, ex.args, args, false); diff != "" {
			return ch.failLocked(406, "PRECONDITION_FAILED - inequivalent arg %s", strings.Replace(diff, "%s", "exchange '"+name+"'", 1))
		}
		return nil
	}
	b.exchanges[name] = &exchange{kind: kind, durable: durable, args: cloneTable(args)}
	return nil
}

// ExchangeDeclarePassive implements [transport.ExchangeChecker]: nil when the
// exchange exists; otherwise, like RabbitMQ, a 404 NOT_FOUND channel error
// ("NOT_FOUND - no exchange 'name' in vhost '/'") that closes the channel. It
// waits while [Broker.HangChannels] holds RPCs.
func (ch *channel) ExchangeDeclarePassive(name string) error {
	b, err := ch.lock()
	defer b.mu.Unlock()
	if err != nil {
		return err
	}
	if name != "" && b.exchanges[name] == nil {
		return ch.failLocked(404, "NOT_FOUND - no exchange '%s' in vhost '/'", name)
	}
	return nil
}

// QueueDeclare implements [transport.Channel]. Server-named queues (name "")
// are not supported. Declaring a queue that exists with other properties
// fails like RabbitMQ does, with a 406 PRECONDITION_FAILED channel error that
// closes the channel and whose reply text names the first argument in
// conflict, for example "PRECONDITION_FAILED - inequivalent arg
// 'x-queue-type' for queue 'q' in vhost '/': received 'quorum' but current is
// 'classic'" (see [Broker.DeclareQueue]). It waits while
// [Broker.HangChannels] holds RPCs.
func (ch *channel) QueueDeclare(name string, durable bool, args transport.Table) error {
	b, err := ch.lock()
	defer b.mu.Unlock()
	if err != nil {
		return err
	}
	if name == "" {
		return ch.failLocked(403, "ACCESS_REFUSED - server-named queues are not supported by mlproducertest")
	}
	if q := b.queues[name]; q != nil {
		if diff := argsDiff(q.durable, durable, q.args, args, true); diff != "" {
			return ch.failLocked(406, "PRECONDITION_FAILED - inequivalent arg %s", strings.Replace(diff, "%s", "queue '"+name+"'", 1))
		}
		return nil
	}
	b.queues[name] = &queue{durable: durable, args: cloneTable(args)}
	return nil
}

// QueueBind implements [transport.Channel]. It waits while
// [Broker.HangChannels] holds RPCs.
func (ch *channel) QueueBind(queue, key, exchange string) error {
	b, err := ch.lock()
	defer b.mu.Unlock()
	if err != nil {
		return err
	}
	ex := b.exchanges[exchange]
	switch {
	case exchange == "":
		return ch.failLocked(403, "ACCESS_REFUSED - operation not permitted on the default exchange")
	case ex == nil:
		return ch.failLocked(404, "NOT_FOUND - no exchange '%s' in vhost '/'", exchange)
	case b.queues[queue] == nil:
		return ch.failLocked(404, "NOT_FOUND - no queue '%s' in vhost '/'", queue)
	}
	if bd := (binding{queue, key}); !slices.Contains(ex.bindings, bd) {
		ex.bindings = append(ex.bindings, bd)
	}
	return nil
}

// Confirm implements [transport.Channel]. Every function of ev must be set.
// It may be called once per channel. It waits while [Broker.HangChannels]
// holds RPCs.
func (ch *channel) Confirm(ev transport.ChannelEvents) error {
	_, err := ch.lock()
	defer ch.c.b.mu.Unlock()
	switch {
	case err != nil:
		return err
	case ev.Confirm == nil || ev.Return == nil || ev.Closed == nil:
		return errors.New("mlproducertest: every ChannelEvents function must be set")
	case ch.confirm:
		return errors.New("mlproducertest: channel already in confirm mode")
	}
	ch.confirm, ch.ev = true, ev
	return nil
}

// Publish implements [transport.Channel]. It fails at once if ctx is already
// done; then, while the broker is blocked ([Broker.Block]) or writes stall
// ([Broker.StallWrites]), it waits (ignoring ctx) for the pressure to end or
// for the channel to close. The publishing is routed, stored and its confirm
// scheduled before Publish returns; the tag is 0 outside confirm mode.
// A publishing the broker refuses with a channel error (unknown exchange:
// 404; body over [Broker.SetMaxMessageSize]: 406) is not stored and closes
// the channel, but Publish still returns its tag and a nil error, as on a
// real broker; the channel's Closed callback reports the [*Error].
func (ch *channel) Publish(ctx context.Context, exName, key string, mandatory bool, msg transport.Publishing) (uint64, error) {
	if ctx != nil && ctx.Err() != nil {
		return 0, ctx.Err()
	}
	b := ch.c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	for !ch.closed && (b.unblocked != nil || b.stalled != nil) {
		wait := b.unblocked
		if wait == nil {
			wait = b.stalled
		}
		b.mu.Unlock()
		select {
		case <-wait:
		case <-ch.done:
		}
		b.mu.Lock()
	}
	if ch.closed {
		return 0, closedErr(ch.err)
	}
	b.sends[msg.MessageID]++
	if ch.confirm {
		ch.tag++
	}
	var ex *exchange
	switch {
	case b.maxSize > 0 && len(msg.Body) > b.maxSize:
		ch.failLocked(406, "PRECONDITION_FAILED - message size %d is larger than configured max size %d", len(msg.Body), b.maxSize)
		return ch.tag, nil
	case exName != "":
		if ex = b.exchanges[exName]; ex == nil {
			ch.failLocked(404, "NOT_FOUND - no exchange '%s' in vhost '/'", exName)
			return ch.tag, nil
		}
	}
	b.published++
	queues := b.route(ex, key)
	if !ch.confirm {
		storeLocked(slices.DeleteFunc(slices.Clone(queues), (*queue).rejects), exName, key, &msg)
		return 0, nil
	}
	now, f := time.Now(), b.faults
	nack := b.nackNext > 0 || b.chance(f.NackRate)
	if b.nackNext > 0 {
		b.nackNext--
	}
	// A queue at its x-max-length that rejects publishes (x-overflow
	// reject-publish or reject-publish-dlx) makes the broker nack; the
	// queues with room still get the message, as on RabbitMQ.
	if !nack && rejectingLocked(queues) {
		nack = true
		storeLocked(slices.DeleteFunc(slices.Clone(queues), (*queue).rejects), exName, key, &msg)
	}
	lost := false
	switch {
	case nack:
	case mandatory && (len(queues) == 0 || b.chance(f.ReturnRate)):
		ch.c.pushLocked(event{kind: evReturn, ch: ch, due: now, ret: transport.Return{
			ReplyCode: 312, ReplyText: "NO_ROUTE", Exchange: exName, RoutingKey: key, MessageID: msg.MessageID,
			Headers: cloneTable(msg.Headers), Body: slices.Clone(msg.Body),
		}})
	default:
		storeLocked(queues, exName, key, &msg)
		lost = b.chance(f.LoseConfirmRate)
	}
	if !lost {
		due := now
		if f.ConfirmDelay > 0 {
			due = now.Add(time.Duration(b.rng.Int64N(int64(f.ConfirmDelay) + 1)))
		}
		ch.c.pushLocked(event{kind: evConfirm, ch: ch, due: due, conf: transport.Confirmation{DeliveryTag: ch.tag, Ack: !nack}})
	}
	return ch.tag, nil
}

// Close implements [transport.Channel]: a graceful close. Events already due
// are delivered, then Closed(nil) if the channel is in confirm mode.
func (ch *channel) Close() error {
	b := ch.c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	ch.closeLocked(nil, time.Now())
	return nil
}

// storeLocked puts a copy of msg in each queue; a queue at its x-max-length
// drops its oldest message first (x-overflow drop-head, RabbitMQ's default;
// dead-lettering is not modelled). Called with the broker's lock held.
func storeLocked(queues []*queue, exName, key string, msg *transport.Publishing) {
	for _, q := range queues {
		if max, ok := q.maxLength(); ok && int64(len(q.msgs)) >= max {
			q.msgs = slices.Delete(q.msgs, 0, len(q.msgs)-int(max)+1)
		}
		q.msgs = append(q.msgs, copyDelivery(Delivery{Exchange: exName, RoutingKey: key, Publishing: *msg}))
	}
}

// maxLength returns the queue's x-max-length, if it has one.
func (q *queue) maxLength() (int64, bool) {
	n, ok := normArg(q.args["x-max-length"]).(int64)
	return max(n, 0), ok
}

// rejects reports whether the queue is full and refuses new messages.
func (q *queue) rejects() bool {
	max, ok := q.maxLength()
	o := q.args["x-overflow"]
	return ok && int64(len(q.msgs)) >= max && (o == "reject-publish" || o == "reject-publish-dlx")
}

// rejectingLocked reports whether any of the queues refuses a new message.
func rejectingLocked(queues []*queue) bool {
	return slices.ContainsFunc(queues, (*queue).rejects)
}
