// Package mlproducertest provides an in-memory fake RabbitMQ broker that
// implements [transport.Dialer], so that a real mlproducer Producer (or any
// other user of package transport) can be tested with no broker.
//
// Its main purpose is fault injection, modelling what a real RabbitMQ does:
//
//   - refused and black-holed dials ([Broker.RefuseDials], [Broker.RefuseURL],
//     [Broker.HangDials]);
//   - dropped connections ([Broker.DropConnections]): the messages whose
//     confirm had not been delivered stay stored, never confirmed;
//   - a broker that completed the handshake but stops answering channel.open,
//     declarations and confirm.select ([Broker.HangChannels]), or refuses
//     channels ([Broker.FailChannels]);
//   - back-pressure with connection.blocked ([Broker.Block]) and without it,
//     as RabbitMQ's credit flow gives ([Broker.StallWrites]);
//   - nacks, lost, late, delayed and coalesced confirms, single and multiple
//     ([Broker.SetFaults], [Faults], [Broker.NackNext], [Broker.HoldConfirms]);
//   - basic.return of unroutable mandatory messages, carrying the
//     publishing's headers and body, and returns held together with the
//     acks in channel order, as a congested channel delivers them
//     ([Broker.HoldEvents]);
//   - channel errors: a publishing over the maximum message size
//     ([Broker.SetMaxMessageSize]: 406) or to a missing exchange (404)
//     closes its channel;
//   - topology that does not fit: a queue declared with other arguments
//     than the existing one's (for example one a consumer declared first,
//     [Broker.DeclareQueue]) gets 406 PRECONDITION_FAILED with RabbitMQ's
//     reply text naming the argument, and a passive declare of a missing
//     exchange ([transport.ExchangeChecker]) gets 404 NOT_FOUND; both close
//     the channel;
//   - length limits: a queue declared with x-max-length drops its oldest
//     message when full (x-overflow drop-head, the default) or, with
//     x-overflow reject-publish or reject-publish-dlx, makes the broker nack
//     new publishings while it is full (the broker's own dead-lettering is
//     not modelled).
//
// What reached the broker can be inspected with [Broker.Messages],
// [Broker.StoredIDs], [Broker.SendCounts], [Broker.Published],
// [Broker.Dials] and [Broker.DialTimes].
//
// # Model
//
// Topology (exchanges of kind direct, fanout and topic, queues, bindings) is
// shared by every connection of a Broker. A publishing is routed, stored and
// its outcome (ack, nack, return, lost confirm, delay) decided when Publish
// is called; only the delivery of the resulting events is asynchronous.
// Channel errors behave like RabbitMQ's and close the channel with an
// [*Error]: a declaration with other properties (406 PRECONDITION_FAILED)
// fails the call that made it; a publishing to a missing exchange (404
// NOT_FOUND) or over the maximum message size (406) does not fail its
// Publish, which has no answer in AMQP, but the channel's Closed callback
// gets the error after the events already due, and every later call on the
// channel fails with an error wrapping [ErrClosed] and the [*Error].
//
// # Concurrency
//
// A Broker and every connection and channel it returns are safe for
// concurrent use. Event callbacks ([transport.ChannelEvents],
// [transport.Config.OnBlocked], [transport.Config.OnClosed]) run on one
// goroutine per connection, one at a time and in order, never inside a call
// made on the connection or its channels. That goroutine ends after OnClosed
// has returned; [Broker.Close] waits for all of them.
//
// The fake uses only channels, timers and [time.Now], so it works inside a
// [testing/synctest] bubble; create the Broker inside the bubble that uses it.
package mlproducertest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mlproducer/mlproducer/transport"
)

// ErrClosed is returned (possibly wrapping the reason with %w) by calls on a
// channel or connection that has been closed, and by Dial after
// [Broker.Close].
var ErrClosed = errors.New("mlproducertest: channel or connection closed")

// Error is an AMQP exception raised by the fake broker, like amqp091's *Error.
// Channel errors (404, 406, 403, 503) close the channel they happen on.
type Error struct {
	// Code is the AMQP reply code, for example 404 (NOT_FOUND).
	Code uint16
	// Reason is the reply text, for example "NOT_FOUND - no exchange 'x' in vhost '/'".
	Reason string
}

// Error implements error.
func (e *Error) Error() string {
	return fmt.Sprintf("mlproducertest: exception (%d) %s", e.Code, e.Reason)
}

// ReplyCode returns e.Code; it makes *Error a [transport.ReplyCoder], so that
// [transport.ReplyCode] finds it.
func (e *Error) ReplyCode() uint16 { return e.Code }

var _ transport.ReplyCoder = (*Error)(nil)

// Delivery is a message stored in a queue, as the publisher sent it: the
// exchange and routing key it was published with, and the embedded
// [transport.Publishing], whose fields are promoted (d.MessageID,
// d.ContentType, d.Type, d.AppID, d.Timestamp, d.Persistent, d.Body,
// d.Headers).
//
// Headers is a [transport.Table], a map[string]any. The fake broker does not
// encode messages, so each value keeps the Go type the publisher gave it, no
// conversion: a header sent as an int32 reads back as an int32, never as the
// int64 or float64 a round trip through another encoding might give.
//
// By default the Producer of package mlproducer sets MessageID (the message
// id), ContentType ("application/json") and Persistent (true), and no
// headers of its own. With mlproducer.WithEnvelope it also sets Timestamp
// (the message's creation time), Type (the task type), AppID, and its
// attempt header, mlproducer.AttemptHeader ("x-mlproducer-attempt"), an
// int32: 1 for the first send, 2 for the next. Read it with
//
//	n, ok := d.Headers[mlproducer.AttemptHeader].(int32)
//
// [Broker.Messages] returns copies: changing one changes nothing stored.
type Delivery struct {
	// Exchange is the exchange it was published to ("" for the default one).
	Exchange string
	// RoutingKey is the routing key it was published with.
	RoutingKey string
	transport.Publishing
}

// Faults are the probabilistic confirm faults of [Broker.SetFaults]. They
// apply to channels in confirm mode only. The zero value means none: every
// routed publishing is stored and acked at once.
type Faults struct {
	// NackRate is the probability that a publishing is nacked (and not stored).
	NackRate float64
	// LoseConfirmRate is the probability that the confirm of a stored
	// publishing is never sent.
	LoseConfirmRate float64
	// ReturnRate is the probability that a routable mandatory publishing is
	// treated as unroutable: basic.return, then ack, and not stored.
	ReturnRate float64
	// ConfirmDelay delays each confirm by a random duration in
	// [0, ConfirmDelay]. Confirms may then arrive out of tag order, but a
	// Return always precedes the ack of the same publishing.
	ConfirmDelay time.Duration
	// MultipleAcks coalesces acks that are ready at the same time into one
	// Confirmation with Multiple set; see [Broker.SetFaults].
	MultipleAcks bool
	// MultipleNacks does the same for nacks: nacks of one channel ready at
	// the same time become one Confirmation{Ack: false, Multiple: true}, under
	// the rules of MultipleAcks. NackNext(n) with HoldConfirms gives a
	// multiple nack on release.
	MultipleNacks bool
	// Seed seeds the random source so that runs are reproducible; 0 is a
	// fixed default seed.
	Seed int64
}

// Broker is an in-memory fake RabbitMQ broker. Create it with [NewBroker];
// the zero value is not usable. All methods are safe for concurrent use and
// none of them blocks, except Dial under [Broker.HangDials] and
// [Broker.Close] (and, on connections and channels, the calls held by
// [Broker.HangChannels], [Broker.Block] and [Broker.StallWrites]).
type Broker struct {
	mu sync.Mutex
	wg sync.WaitGroup // one per connection goroutine

	closed    bool
	exchanges map[string]*exchange
	queues    map[string]*queue
	conns     map[*conn]struct{}

	refuseAll error
	routeBuf  []*queue // scratch for route, guarded by mu
	chanErr   error
	refuseURL map[string]error
	hung      chan struct{} // non-nil while dials hang; closed to release them
	hangChans chan struct{} // non-nil while channel RPCs hang; closed to release them
	dialTimes []time.Time
	published int
	sends     map[string]int // MessageID -> publishings received
	maxSize   int            // 0: no limit

	blockReason string
	unblocked   chan struct{} // non-nil while blocked; closed by Unblock
	stalled     chan struct{} // non-nil while writes stall; closed by StallWrites(false)

	faults     Faults
	rng        *rand.Rand
	nackNext   int
	hold       bool // confirms held (HoldConfirms)
	holdEvents bool // confirms and returns held (HoldEvents)
}

type exchange struct {
	kind     string
	durable  bool
	args     transport.Table
	bindings []binding
}

type binding struct{ queue, key string }

type queue struct {
	durable bool
	args    transport.Table
	msgs    []Delivery
}

// NewBroker returns an empty broker with no faults. Like RabbitMQ it has the
// default exchange "" and the exchanges amq.direct, amq.fanout and amq.topic.
func NewBroker() *Broker {
	b := &Broker{
		exchanges: make(map[string]*exchange),
		queues:    make(map[string]*queue),
		conns:     make(map[*conn]struct{}),
		refuseURL: make(map[string]error),
		sends:     make(map[string]int),
		rng:       newRand(0),
	}
	for _, k := range []string{"direct", "fanout", "topic"} {
		b.exchanges["amq."+k] = &exchange{kind: k, durable: true}
	}
	return b
}

func newRand(seed int64) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), 0x6d6c70726f647563))
}

// Dial implements [transport.Dialer]. While [Broker.HangDials] is on it
// waits for ctx. It fails with ctx's error if ctx is done, with the error set
// by [Broker.RefuseURL] or [Broker.RefuseDials], or with [ErrClosed] after
// [Broker.Close]. The url is not parsed. If the broker is blocked
// ([Broker.Block]) the new connection is told so at once through
// cfg.OnBlocked. Every call counts in [Broker.Dials] and [Broker.DialTimes].
func (b *Broker) Dial(ctx context.Context, url string, cfg transport.Config) (transport.Conn, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dialTimes = append(b.dialTimes, time.Now())
	for b.hung != nil && ctx.Err() == nil {
		hung := b.hung
		b.mu.Unlock()
		select {
		case <-hung:
		case <-ctx.Done():
		}
		b.mu.Lock()
	}
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case b.closed:
		return nil, ErrClosed
	case b.refuseURL[url] != nil:
		return nil, b.refuseURL[url]
	case b.refuseAll != nil:
		return nil, b.refuseAll
	}
	c := &conn{b: b, cfg: cfg, wake: make(chan struct{}, 1), done: make(chan struct{})}
	b.conns[c] = struct{}{}
	if b.unblocked != nil {
		c.pushLocked(event{kind: evBlocked, blocked: true, reason: b.blockReason, due: time.Now()})
	}
	b.wg.Add(1)
	go c.loop()
	return c, nil
}

// RefuseDials makes every later Dial fail with err; nil accepts dials again.
// Live connections are not affected.
func (b *Broker) RefuseDials(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refuseAll = err
}

// RefuseURL makes every later Dial of exactly url fail with err; nil accepts
// that url again. It takes precedence over [Broker.RefuseDials].
func (b *Broker) RefuseURL(url string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err == nil {
		delete(b.refuseURL, url)
	} else {
		b.refuseURL[url] = err
	}
}

// HangDials with true makes later and pending Dial calls wait until their
// ctx is done (like a TCP connect to a black-holed address), or until
// HangDials(false) or [Broker.Close] lets them proceed.
func (b *Broker) HangDials(hang bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if hang && b.hung == nil {
		b.hung = make(chan struct{})
	} else if !hang && b.hung != nil {
		close(b.hung)
		b.hung = nil
	}
}

// FailChannels makes every Conn.Channel call fail with err until
// FailChannels(nil), as a broker that has stopped answering would (a health
// probe opens a channel). Live channels are not affected.
func (b *Broker) FailChannels(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.chanErr = err
}

// HangChannels with true models a broker that completed the handshake (and
// still sends heartbeats) but stops answering: later and pending calls of
// Conn.Channel (channel.open), ExchangeDeclare, QueueDeclare, QueueBind and
// Confirm (confirm.select) block, with no deadline, as they do in amqp091-go.
// HangChannels(false) lets them proceed normally. A call blocked on a
// connection or channel that is closed meanwhile ([transport.Conn.Close],
// [transport.Channel.Close], [Broker.DropConnections], [Broker.Close]) returns
// an error wrapping [ErrClosed]. Publish and the events of live channels are
// not affected.
func (b *Broker) HangChannels(hang bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if hang && b.hangChans == nil {
		b.hangChans = make(chan struct{})
	} else if !hang && b.hangChans != nil {
		close(b.hangChans)
		b.hangChans = nil
	}
}

// Dials returns the number of Dial calls so far, successful or not.
func (b *Broker) Dials() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.dialTimes)
}

// DialTimes returns the time ([time.Now]) at which each Dial call so far was
// made, successful or not, in call order. Inside a synctest bubble these are
// the bubble's fake times, so a test can check the spacing of reconnects.
func (b *Broker) DialTimes() []time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.dialTimes)
}

// DropConnections closes every live connection as if the network had failed
// with err (nil means a 320 CONNECTION_FORCED [*Error]). Events not yet
// handed to a callback are discarded, so every publishing whose confirm has
// not been delivered is never confirmed; publishings were stored or not when
// they were published. Then, on each connection's goroutine, every channel in
// confirm mode gets Closed(err) and the connection OnClosed(err). A Publish
// held by [Broker.Block] or [Broker.StallWrites], and a call held by
// [Broker.HangChannels], returns an error wrapping [ErrClosed] and err.
// Later dials succeed unless refused.
func (b *Broker) DropConnections(err error) {
	if err == nil {
		err = &Error{Code: 320, Reason: "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.conns {
		c.closeLocked(err, true)
	}
}

// Block raises connection.blocked: every live connection, and every
// connection dialed until [Broker.Unblock], gets OnBlocked(true, reason).
// While blocked, Channel.Publish blocks, like TCP back-pressure from a real
// broker, ignoring its ctx (as amqp091-go does once it writes), until
// Unblock or until its channel or connection closes (then it returns an
// error wrapping [ErrClosed]). Calling Block while blocked only changes the
// reason given to new connections.
func (b *Broker) Block(reason string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.blockReason = reason
	if b.unblocked != nil {
		return
	}
	b.unblocked = make(chan struct{})
	for c := range b.conns {
		c.pushLocked(event{kind: evBlocked, blocked: true, reason: reason, due: time.Now()})
	}
}

// StallWrites with true models TCP back-pressure with no connection.blocked,
// as RabbitMQ's credit flow control applies it: Channel.Publish blocks,
// ignoring its ctx (as amqp091-go does once it writes), until
// StallWrites(false) or until its channel or connection closes; then it
// returns an error wrapping [ErrClosed] and the publishing never reached the
// broker (it is not stored and counts neither in [Broker.Published] nor in
// [Broker.SendCounts]). OnBlocked is not called. It is independent of
// [Broker.Block]: a Publish proceeds once neither holds it.
func (b *Broker) StallWrites(stall bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if stall && b.stalled == nil {
		b.stalled = make(chan struct{})
	} else if !stall && b.stalled != nil {
		close(b.stalled)
		b.stalled = nil
	}
}

// SetMaxMessageSize sets the largest body, in bytes, that the broker accepts
// (RabbitMQ's max_message_size); 0, the default, means no limit. A later
// publishing with a larger body is refused as RabbitMQ refuses it: the
// broker closes the channel with a 406 PRECONDITION_FAILED [*Error]
// ("message size X is larger than configured max size n"). Publish itself
// returns a delivery tag and a nil error, since basic.publish has no answer;
// the message is not stored, nothing published later on the channel is
// stored or confirmed (later calls fail with an error wrapping [ErrClosed]),
// and the channel's Closed callback gets the *Error after its events already
// due. Confirms still held or delayed at that moment are discarded.
func (b *Broker) SetMaxMessageSize(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.maxSize = max(n, 0)
}

// Unblock raises connection.unblocked: live connections get
// OnBlocked(false, "") and blocked Publish calls proceed. It does nothing if
// the broker is not blocked.
func (b *Broker) Unblock() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.unblocked == nil {
		return
	}
	close(b.unblocked)
	b.unblocked = nil
	for c := range b.conns {
		c.pushLocked(event{kind: evBlocked, due: time.Now()})
	}
}

// SetFaults sets the confirm faults for the publishings that follow and
// reseeds the random source with f.Seed. Rates are probabilities in [0, 1].
//
// With f.MultipleAcks, acks of one channel that are ready to be delivered
// together (because they were published faster than they are dispatched,
// or released by HoldConfirms(false)) are sent as one Confirmation with
// Multiple set and the highest tag, provided every lower tag of the channel
// has already been confirmed or is in that batch. A nack, a Return or a lost
// confirm ends the batch: a multiple ack never covers a lost confirm.
// f.MultipleNacks does the same for nacks (an ack ends their batch).
// MultipleAcks and MultipleNacks are read when confirms are delivered.
func (b *Broker) SetFaults(f Faults) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.faults = f
	b.rng = newRand(f.Seed)
}

// NackNext makes the next n publishings on channels in confirm mode be
// nacked (and not stored), regardless of the rates of [Broker.SetFaults].
func (b *Broker) NackNext(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.nackNext = max(n, 0)
}

// HoldConfirms with true stops the delivery of confirms (acks and nacks):
// they are kept, in order, until HoldConfirms(false) delivers them, or they
// are discarded when their channel or connection closes. Returns, Closed and
// OnBlocked are not held. Use it to model a broker that never confirms, a
// confirm that arrives after the client's timeout, or to batch acks for
// [Faults.MultipleAcks]. Confirm delays ([Faults.ConfirmDelay]) keep running
// while held. To hold returns too, see [Broker.HoldEvents].
//
// HoldConfirms (or HoldEvents) followed by [Broker.DropConnections] models a
// message that the broker stored but whose confirm was lost with the
// connection: it is in [Broker.Messages] and never confirmed.
func (b *Broker) HoldConfirms(hold bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.hold = hold
	if !hold {
		b.wakeAllLocked()
	}
}

// HoldEvents with true stops the delivery of confirms and returns together,
// as a congested channel or network delays the broker's basic.return and
// basic.ack frames: they are kept in channel order (a return before the ack
// of the same publishing, as RabbitMQ sends them; the confirms of other
// publishings interleaved as they were produced) until HoldEvents(false)
// delivers them in that order, or they are discarded when their channel or
// connection closes. Closed and OnBlocked are not held. Confirms stay held
// while [Broker.HoldConfirms] is on, whatever HoldEvents says; HoldConfirms
// itself does not hold returns.
func (b *Broker) HoldEvents(hold bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.holdEvents = hold
	if !hold {
		b.wakeAllLocked()
	}
}

func (b *Broker) wakeAllLocked() {
	for c := range b.conns {
		c.wakeUp()
	}
}

// heldLocked reports whether the delivery of e is held.
func (b *Broker) heldLocked(e event) bool {
	switch e.kind {
	case evConfirm:
		return b.hold || b.holdEvents
	case evReturn:
		return b.holdEvents
	}
	return false
}

// Messages returns copies of the messages stored in queue, in arrival order,
// or nil if there are none or the queue does not exist.
func (b *Broker) Messages(queue string) []Delivery {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.queues[queue]
	if q == nil || len(q.msgs) == 0 {
		return nil
	}
	out := make([]Delivery, len(q.msgs))
	for i, d := range q.msgs {
		out[i] = copyDelivery(d)
	}
	return out
}

// MessageIDs returns the MessageID of every message stored in queue, in
// arrival order.
func (b *Broker) MessageIDs(queue string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ids []string
	if q := b.queues[queue]; q != nil {
		for _, d := range q.msgs {
			ids = append(ids, d.MessageID)
		}
	}
	return ids
}

// StoredIDs returns, for each MessageID, how many copies of it are stored
// across all queues (a message routed to two queues counts twice).
func (b *Broker) StoredIDs() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]int)
	for _, q := range b.queues {
		for _, d := range q.msgs {
			out[d.MessageID]++
		}
	}
	return out
}

// Published returns the number of publishings the broker received on open
// channels, whatever became of them (stored, dropped, returned, nacked),
// except those refused with a channel error (missing exchange, over the
// maximum message size).
func (b *Broker) Published() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.published
}

// SendCounts returns, for each MessageID, the number of publishings the
// broker received with it, whatever became of them: stored, nacked,
// returned, lost, or refused with a channel error. A Publish that failed
// (on a closed channel, or ended by a close while held by [Broker.Block] or
// [Broker.StallWrites]) did not reach the broker and does not count.
func (b *Broker) SendCounts() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return maps.Clone(b.sends)
}

// Conns returns the number of live connections.
func (b *Broker) Conns() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

// Purge removes every stored message from every queue. Topology, counters
// and faults are kept.
func (b *Broker) Purge() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, q := range b.queues {
		q.msgs = nil
	}
}

// ExchangeKind returns the kind of the declared exchange name, if any.
func (b *Broker) ExchangeKind(name string) (kind string, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ex := b.exchanges[name]; ex != nil {
		return ex.kind, true
	}
	return "", false
}

// QueueArgs returns a copy of the arguments the queue name was declared
// with, and whether it exists.
func (b *Broker) QueueArgs(name string) (args transport.Table, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if q := b.queues[name]; q != nil {
		return cloneTable(q.args), true
	}
	return nil, false
}

// DeclareQueue declares a durable queue with args, as a consumer that owns
// its queues (or an operator) would before the Producer connects; a queue
// that exists is replaced, messages and bindings kept. A later QueueDeclare
// with other arguments then fails with 406 PRECONDITION_FAILED, as on
// RabbitMQ.
func (b *Broker) DeclareQueue(name string, args transport.Table) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if q := b.queues[name]; q != nil {
		q.durable, q.args = true, cloneTable(args)
		return
	}
	b.queues[name] = &queue{durable: true, args: cloneTable(args)}
}

// DeleteExchange deletes an exchange and its bindings, as an operator
// would; a later publishing to it closes its channel with a 404 channel
// error (see the package doc's Model).
func (b *Broker) DeleteExchange(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.exchanges, name)
}

// DeleteQueue deletes a queue, its messages and its bindings.
func (b *Broker) DeleteQueue(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.queues, name)
	for _, ex := range b.exchanges {
		ex.bindings = slices.DeleteFunc(ex.bindings, func(bd binding) bool { return bd.queue == name })
	}
}

// Close drops every connection like [Broker.DropConnections] with a 320
// CONNECTION_FORCED error, makes pending and later dials fail with
// [ErrClosed], and waits
// until every goroutine of the broker has ended (after the callbacks have
// returned). It must not be called from a callback. Safe to call more than
// once; it fits t.Cleanup(b.Close).
func (b *Broker) Close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.HangDials(false)
	b.DropConnections(&Error{Code: 320, Reason: "CONNECTION_FORCED - broker closed"})
	b.wg.Wait()
}

// chance draws a probability; it draws nothing for rate 0.
func (b *Broker) chance(rate float64) bool {
	return rate > 0 && b.rng.Float64() < rate
}

// route returns the queues a publishing reaches (ex nil: default exchange).
// The result reuses b.routeBuf: use it before the lock is released.
func (b *Broker) route(ex *exchange, key string) []*queue {
	out := b.routeBuf[:0]
	defer func() { b.routeBuf = out[:0] }()
	if ex == nil {
		if q := b.queues[key]; q != nil {
			out = append(out, q)
		}
		return out
	}
	for _, bd := range ex.bindings {
		q := b.queues[bd.queue]
		if q == nil || slices.Contains(out, q) {
			continue
		}
		if ex.kind == "fanout" || (ex.kind == "direct" && bd.key == key) ||
			(ex.kind == "topic" && topicMatch(strings.Split(bd.key, "."), strings.Split(key, "."))) {
			out = append(out, q)
		}
	}
	return out
}

// topicMatch matches a topic binding pattern ("*" one word, "#" zero or more).
func topicMatch(pat, words []string) bool {
	if len(pat) == 0 {
		return len(words) == 0
	}
	if pat[0] == "#" {
		for i := 0; i <= len(words); i++ {
			if topicMatch(pat[1:], words[i:]) {
				return true
			}
		}
		return false
	}
	return len(words) > 0 && (pat[0] == "*" || pat[0] == words[0]) && topicMatch(pat[1:], words[1:])
}

func cloneTable(t transport.Table) transport.Table {
	if t == nil {
		return nil
	}
	out := make(transport.Table, len(t))
	for k, v := range t {
		out[k] = v
	}
	return out
}

// argsDiff compares a declaration (durable, args) with what exists (was,
// current) as RabbitMQ does, and returns "" when they are equivalent, or the
// end of RabbitMQ's reply text for the first difference in name order, with
// "%s" where the entity goes: "'x-max-length' for %s in vhost '/': received
// '6' but current is '5'". Integers of any Go type compare by value, and for
// a queue a missing x-queue-type is "classic".
func argsDiff(was, durable bool, current, args transport.Table, queue bool) string {
	if was != durable {
		return fmt.Sprintf("'durable' for %%s in vhost '/': received '%t' but current is '%t'", durable, was)
	}
	norm := func(t transport.Table) map[string]any {
		out := make(map[string]any, len(t)+1)
		for k, v := range t {
			out[k] = normArg(v)
		}
		if _, ok := out["x-queue-type"]; queue && !ok {
			out["x-queue-type"] = "classic"
		}
		return out
	}
	cur, got := norm(current), norm(args)
	keys := slices.Sorted(maps.Keys(cur))
	for k := range got {
		if _, ok := cur[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		c, hasC := cur[k]
		g, hasG := got[k]
		switch {
		case hasC && hasG && reflect.DeepEqual(c, g):
			continue
		case hasC && hasG:
			return fmt.Sprintf("'%s' for %%s in vhost '/': received '%v' but current is '%v'", k, g, c)
		case hasG:
			return fmt.Sprintf("'%s' for %%s in vhost '/': received the value '%v' of type '%s' but current is none", k, g, argType(g))
		default:
			return fmt.Sprintf("'%s' for %%s in vhost '/': received none but current is the value '%v' of type '%s'", k, c, argType(c))
		}
	}
	return ""
}

// normArg gives every integer the type int64, so that values compare as
// RabbitMQ compares them.
func normArg(v any) any {
	switch n := v.(type) {
	case int:
		return int64(n)
	case int8:
		return int64(n)
	case int16:
		return int64(n)
	case int32:
		return int64(n)
	case uint8:
		return int64(n)
	case uint16:
		return int64(n)
	case uint32:
		return int64(n)
	}
	return v
}

// argType is the AMQP field type RabbitMQ names in its reply text.
func argType(v any) string {
	switch v.(type) {
	case string:
		return "longstr"
	case int64:
		return "long"
	case bool:
		return "bool"
	}
	return fmt.Sprintf("%T", v)
}

func copyDelivery(d Delivery) Delivery {
	d.Headers = cloneTable(d.Headers)
	d.Body = slices.Clone(d.Body)
	return d
}
