// Package mlproducertest provides an in-memory fake RabbitMQ broker that
// implements [transport.Dialer], so that a real mlproducer Producer (or any
// other user of package transport) can be tested with no broker.
//
// Its main purpose is fault injection: refused dials ([Broker.RefuseDials],
// [Broker.RefuseURL]), dropped connections ([Broker.DropConnections]),
// connection.blocked back-pressure ([Broker.Block]), nacks, lost, late,
// delayed and coalesced confirms ([Broker.SetFaults], [Broker.NackNext],
// [Broker.HoldConfirms]) and basic.return of unroutable mandatory messages.
// What reached the queues can be inspected with [Broker.Messages].
//
// # Model
//
// Topology (exchanges of kind direct, fanout and topic, queues, bindings) is
// shared by every connection of a Broker. A publishing is routed, stored and
// its outcome (ack, nack, return, lost confirm, delay) decided when Publish
// is called; only the delivery of the resulting events is asynchronous.
// Channel errors behave like RabbitMQ's: publishing to a missing exchange
// (404 NOT_FOUND) or redeclaring with other properties (406
// PRECONDITION_FAILED) closes the channel and reports an [*Error].
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

// Delivery is a message stored in a queue.
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
	// Seed seeds the random source so that runs are reproducible; 0 is a
	// fixed default seed.
	Seed int64
}

// Broker is an in-memory fake RabbitMQ broker. Create it with [NewBroker];
// the zero value is not usable. All methods are safe for concurrent use and
// none of them blocks, except Dial under [Broker.HangDials] and
// [Broker.Close].
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
	dials     int
	published int

	blockReason string
	unblocked   chan struct{} // non-nil while blocked; closed by Unblock

	faults   Faults
	rng      *rand.Rand
	nackNext int
	hold     bool
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
// cfg.OnBlocked. Every call counts in [Broker.Dials].
func (b *Broker) Dial(ctx context.Context, url string, cfg transport.Config) (transport.Conn, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dials++
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
	c := &conn{b: b, cfg: cfg, wake: make(chan struct{}, 1)}
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

// Dials returns the number of Dial calls so far, successful or not.
func (b *Broker) Dials() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dials
}

// DropConnections closes every live connection as if the network had failed
// with err (nil means a 320 CONNECTION_FORCED [*Error]). Events not yet
// handed to a callback are discarded, so every publishing whose confirm has
// not been delivered is never confirmed; publishings were stored or not when
// they were published. Then, on each connection's goroutine, every channel in
// confirm mode gets Closed(err) and the connection OnClosed(err). A Publish
// blocked by [Broker.Block] returns an error wrapping [ErrClosed] and err.
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
// MultipleAcks is read when confirms are delivered.
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
// while held.
func (b *Broker) HoldConfirms(hold bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.hold = hold
	if !hold {
		for c := range b.conns {
			c.wakeUp()
		}
	}
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

// Published returns the number of publishings the broker received on open
// channels, whatever became of them (stored, dropped, returned, nacked),
// except those refused because their exchange did not exist.
func (b *Broker) Published() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.published
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

// DeleteExchange deletes an exchange and its bindings, as an operator
// would; later publishings to it fail with a 404 channel error.
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

func sameArgs(a, b transport.Table) bool {
	return (len(a) == 0 && len(b) == 0) || reflect.DeepEqual(a, b)
}

func copyDelivery(d Delivery) Delivery {
	d.Headers = cloneTable(d.Headers)
	d.Body = slices.Clone(d.Body)
	return d
}
