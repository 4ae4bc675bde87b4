package mlproducer

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mlproducer/mlproducer/transport"
)

// AttemptHeader is the AMQP header that carries the attempt number of a
// message (1 for the first send) when the Producer is made with
// [WithEnvelope]([EnvelopeAttempt]); the default envelope has no headers.
// Consumers may read it; the message ID stays the same across attempts.
const AttemptHeader = "x-mlproducer-attempt"

// DeliveryState says how far a published message got when the call returned.
type DeliveryState uint8

const (
	// Confirmed: the broker confirmed the message (basic.ack).
	Confirmed DeliveryState = iota + 1
	// Pending: the message was handed to the connection but ctx ended, or
	// the confirm timeout passed since the hand-off, before its confirm (a
	// write held by back-pressure, a slow confirm). The Producer still owns
	// it and will retry it if needed.
	Pending
	// Queued: the message waits in the retry queue (no connection, a blocked
	// one, an open circuit breaker, or a failed attempt). The Producer owns
	// it.
	Queued
	// DeadLettered: the message's attempts ran out before the call returned
	// (only with [WithMaxRetries](0)); it went to the dead-letter hook.
	DeadLettered
)

func (s DeliveryState) String() string {
	switch s {
	case Confirmed:
		return "confirmed"
	case Pending:
		return "pending"
	case Queued:
		return "queued"
	case DeadLettered:
		return "dead-lettered"
	}
	return "unknown"
}

// MarshalText encodes the state as its name.
func (s DeliveryState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Receipt tells the caller of a publish which message it was given and how far
// it got.
type Receipt struct {
	MessageID string        `json:"messageId"`
	State     DeliveryState `json:"state"`
}

const (
	finalConfirmed = 1
	finalDead      = 2
)

// message is one accepted message, shared by all its attempts.
type message struct {
	id      string
	typ     TaskType
	body    []byte
	pooled  *[]byte                // body's buffer from Producer.bodies; nil if not pooled
	created int64                  // unix nanos
	key     uint64                 // the spool's key; 0 without a spool
	meta    *msgMeta               // the publish options' metadata; nil for none
	trace   atomic.Pointer[traced] // the publish's span until it ends; nil untraced
	acc     uint64                 // acceptance number, for Flush: the spool key with a spool
	dlv     *Delivery              // PublishAsync's; nil for Publish

	final    atomic.Uint32 // 0 live, finalConfirmed or finalDead
	notified atomic.Bool
	outcome  atomic.Uint32
	done     chan struct{}
	sends    atomic.Int32
	sentAt   atomic.Int64 // unix nanos of the last send, for latency

	// first is the attempt of the first hand-off, kept here to save an
	// allocation per message; firstUsed is touched only by the goroutine
	// handing the message off, one at a time.
	first     attempt
	firstUsed bool

	// Guarded by Producer.rmu.
	attempts  int
	lastErr   error
	due       int64 // unix nanos
	seq       uint64
	heapIndex int
	backoff   backoff.BackOff
}

// recycle gives the message's pooled body back to pool. Call it only once
// nothing can read the body again: when the message was never handed off,
// or when it was confirmed by the ack of its only attempt (see onConfirm). A
// body that went to the dead-letter hook, or that a retry or a timed-out
// attempt may still read, is never recycled.
func (m *message) recycle(pool *bodyPool) {
	if m.pooled == nil {
		return
	}
	h := m.pooled
	m.pooled, m.body = nil, nil
	pool.put(h)
}

// noteSent records that attempt n of m was written: sends only grows, so
// that a write counted late (its confirm came first) or by a session that
// has since been replaced does not lower it.
func (m *message) noteSent(n int32) {
	for {
		cur := m.sends.Load()
		if cur >= n || m.sends.CompareAndSwap(cur, n) {
			return
		}
	}
}

// signal reports the first outcome to a waiting caller; later ones are
// ignored.
func (m *message) signal(s DeliveryState) {
	if m.notified.CompareAndSwap(false, true) {
		m.outcome.Store(uint32(s))
		if m.done != nil {
			close(m.done)
		}
	}
}

// Producer publishes ML tasks to RabbitMQ. It is safe for concurrent use. Create
// one with [New] and stop it with [Producer.Close].
type Producer struct {
	cfg     config
	log     *slog.Logger
	dialer  transport.Dialer
	metrics counters
	tracing *tracing

	sess  atomic.Pointer[session]
	epoch uint64

	rmu   sync.Mutex // guards retry, deadq, seq and the rmu fields of messages
	retry retryStore
	// queued is retry.len(), stored under rmu after every change, for a
	// look without the lock: a confirm wakes the retry loop only when it
	// has messages waiting for the slot the confirm freed.
	queued atomic.Int64
	spool  *spool // nil without WithSpool
	// bodies recycles the copies of bodies; nil (no pooling) with a spool,
	// which keeps and reloads bodies of its own.
	bodies *bodyPool

	// capCount and capBytes bound the messages held (see hold).
	capCount int64
	capBytes int64
	deadq    []*message
	seq      uint64

	// admit is held shared by every publish from its admission to its
	// hand-off, so that Close, which takes it once after setting closing,
	// knows that no message enters the Producer after it looked.
	admit     sync.RWMutex
	owned     atomic.Int64 // publishes admitted and messages not yet final
	held      atomic.Int64 // messages accepted and not yet final
	heldBytes atomic.Int64 // their bodies' size
	drain     drainRate    // the recent confirm rate, for RetryAfter
	closing   atomic.Bool
	closeBy   atomic.Int64    // unix nanos by which Close must be done; 0 none
	stopCtx   context.Context // done when Close stops the goroutines
	stopAll   context.CancelFunc
	drained   chan struct{}
	retryWake chan struct{}
	stop      chan struct{}
	wg        sync.WaitGroup

	stmu      sync.Mutex
	state     ConnectionState
	stateCh   chan struct{} // closed and replaced at every state change
	lastErr   string
	cfgErr    string // the configuration error in force (a declare refused), "" when none
	url       string
	ever      bool
	collector prometheus.Collector
	breaker   *breaker
	headers   [8]transport.Table // read-only attempt headers for attempts 1..8

	closeMu  sync.Mutex
	closed   bool
	closeErr error
	closedCh chan struct{} // closed when Close has returned its outcome

	// PublishAsync and Flush (async.go): the acceptance numbers without a
	// spool (with one, the spool's keys), the messages not yet final by
	// Flush generation, and the waiters for room.
	acc   atomic.Uint64
	flush flushGens
	room  roomSignal

	// The dead-letter hook's queue and goroutine (deadletter.go); nil
	// hookDone without a hook. hookq is bounded by the Producer's capacity:
	// a message in it is still held.
	hookMu      sync.Mutex
	hookCond    *sync.Cond // signalled on hookMu: an item, hookStop or hookAbandon
	hookq       []deadItem
	hookStop    bool // Close: return once hookq is empty
	hookAbandon bool // Close gave up waiting: take no more items
	hookDone    chan struct{}
}

// New validates the options and starts connecting in the background. It does
// not wait for the broker and does not fail because the broker is down; use
// [Producer.WaitConnected] to wait. The only errors are bad options.
func New(opts ...Option) (*Producer, error) {
	cfg := defaultConfig()
	cfg.logger = slog.New(slog.DiscardHandler)
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.urls = orderURLs(cfg.urls, cfg.urlsInOrder)
	p := &Producer{
		cfg:       cfg,
		log:       cfg.logger,
		dialer:    cfg.dialer,
		retry:     &memRetryStore{},
		drained:   make(chan struct{}, 1),
		retryWake: make(chan struct{}, 1),
		stop:      make(chan struct{}),
		state:     Connecting,
		stateCh:   make(chan struct{}),
		closedCh:  make(chan struct{}),
		tracing:   newTracing(&cfg),
	}
	p.flush.init()
	if p.dialer == nil {
		p.dialer = transport.AMQP{ConfirmBuffer: cfg.maxInFlight + 1024}
	}
	for i := range p.headers {
		p.headers[i] = transport.Table{AttemptHeader: int32(i + 1)}
	}
	p.capCount = int64(cfg.retryCapCount + cfg.maxInFlight)
	p.capBytes = int64(cfg.retryCapBytes)
	if cfg.spoolDir == "" {
		p.bodies = new(bodyPool)
	} else {
		sp, left, err := openSpool(cfg.spoolDir, p.log)
		if err != nil {
			return nil, err
		}
		st := &spoolRetryStore{sp: sp, spill: spillHeap(left)}
		heap.Init(&st.spill)
		for _, e := range left {
			st.sb += int(e.size)
			p.heldBytes.Add(int64(e.size))
		}
		p.held.Add(int64(len(left)))
		p.owned.Add(int64(len(left)))
		p.flush.add(int64(len(left))) // their keys are below every new one
		p.spool, p.retry = sp, st
		p.queued.Store(int64(st.len()))
		p.capCount, p.capBytes = int64(cfg.spoolCapCount), cfg.spoolCapBytes
		if len(left) > 0 {
			p.log.Info("mlproducer: sending the messages left in the spool",
				slog.String("dir", cfg.spoolDir), slog.Int("messages", len(left)))
		}
	}
	if cfg.buffered() && p.capBytes < int64(p.cfg.limits.bodyLimit()) {
		p.cfg.limits.holdBytes = int(p.capBytes)
	}
	p.stopCtx, p.stopAll = context.WithCancel(context.Background())
	p.breaker = newBreaker(p)
	p.collector = newCollector(p)
	if cfg.registerer != nil {
		if err := cfg.registerer.Register(p.collector); err != nil {
			return nil, fmt.Errorf("mlproducer: register metrics: %w (give each Producer on one registerer its own WithConnectionName)", err)
		}
	}
	p.startHooks() // before the retry loop, which may dead-letter at once
	p.wg.Add(2)
	go p.supervise()
	go p.retryLoop()
	return p, nil
}

func (p *Producer) nextSeq() uint64 { p.seq++; return p.seq }

// attemptHeaders returns the headers of attempt n. The tables of the first
// attempts are built once and shared: the transport only reads them.
func (p *Producer) attemptHeaders(n int32) transport.Table {
	if n >= 1 && int(n) <= len(p.headers) {
		return p.headers[n-1]
	}
	return transport.Table{AttemptHeader: n}
}

func (p *Producer) newRetryBackoff() backoff.BackOff {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(p.cfg.retryInitial),
		backoff.WithMaxInterval(p.cfg.retryMax),
		backoff.WithRandomizationFactor(0.5),
		backoff.WithMultiplier(2),
		backoff.WithMaxElapsedTime(0),
	)
	return b
}

// Publish publishes a task whose JSON body the caller built. The typed methods
// ([Producer.PublishSummarization] and the others) are built on it.
//
// Publish waits for the confirm at most until ctx ends or the confirm timeout
// passes, whichever is first; it never waits for a connection: while there is
// none, the broker blocks publishers, or the circuit breaker is open, the
// message goes to the retry queue and Publish returns at once with [Queued],
// for as long as the queue has room.
//
// Every outcome is one of these (the list is the same in the package doc and
// the README). An error means the message was not taken; nothing was sent or
// kept:
//   - an [*InvalidTaskError], wrapping [ErrInvalidTask], and [ErrTooLarge] as
//     well for content or a body over its limit;
//   - [ErrClosed]: [Producer.Close] has begun;
//   - [ErrCircuitOpen]: the breaker is open, only without a buffer
//     ([WithRetryQueueCapacity](0, 0)); [RetryAfter] gives the remaining
//     cooldown;
//   - [ErrRetryQueueFull]: the message would have to wait and the buffer is
//     full (or there is none); [RetryAfter] gives an estimate of the wait;
//   - [ErrSpoolUnavailable]: with [WithSpool], the disk refused the write;
//   - ctx's error: ctx ended before the hand-off.
//
// A nil error means the Producer took the message and owns it until the
// broker confirms it or it is handed to the dead-letter hook; the [Receipt]
// says how far it got:
//   - [Confirmed]: the broker confirmed it;
//   - [Pending]: sent, not yet confirmed when ctx ended or the confirm
//     timeout passed; the Producer keeps tracking it;
//   - [Queued]: waiting in the retry queue;
//   - [DeadLettered]: its attempts ran out before the call returned (only
//     with [WithMaxRetries](0)); it went to the dead-letter hook.
func (p *Producer) Publish(ctx context.Context, msg Message, opts ...PublishOption) (Receipt, error) {
	meta, err := p.checkMessage(&msg, opts)
	if err != nil {
		return Receipt{}, err
	}
	done, err := p.begin(ctx, msg.Type)
	if err != nil {
		return Receipt{}, err
	}
	id, err := messageID(msg.ID)
	if err != nil {
		p.abandon(done)
		return Receipt{}, err
	}
	// The caller may reuse its buffer once Publish returns: keep a copy of
	// the bytes that were validated.
	body, pooled := p.bodies.clone(msg.Body)
	return p.submit(ctx, done, id, msg.Type, body, pooled, time.Now(), meta)
}

// checkMessage validates a generic message and its publish options (a
// refusal is counted), and sets msg.ID from WithMessageID. It returns the
// options' metadata.
func (p *Producer) checkMessage(msg *Message, opts []PublishOption) (*msgMeta, error) {
	if err := p.cfg.limits.validateMessage(msg); err != nil {
		p.metrics.count(msg.Type, outInvalid)
		return nil, err
	}
	optID, meta, err := applyPublishOptions(opts)
	if err != nil {
		p.metrics.count(msg.Type, outInvalid)
		return nil, err
	}
	if optID != "" {
		msg.ID = optID
	}
	return meta, nil
}

func newMessageID() (string, error) {
	u, err := uuid.NewV7()
	if err != nil {
		return "", fmt.Errorf("mlproducer: cannot make a message id: %w", err)
	}
	return u.String(), nil
}

// begin admits one publish before any work is spent on it: ctx still live,
// Producer open, and either the breaker willing or a buffer to keep the
// message in. It returns the breaker's ticket, or nil when the breaker
// refuses an attempt (the session then refuses the message, which goes to the
// buffer if it has room); the caller must then call submit or abandon, soon:
// until then Close waits. Only without a buffer ([WithRetryQueueCapacity](0,
// 0)) does an open breaker refuse the publish, with [ErrCircuitOpen].
func (p *Producer) begin(ctx context.Context, typ TaskType) (func(error), error) {
	done, err := p.admitOne(ctx, typ)
	if err != nil {
		p.tracing.refused(ctx, err)
	}
	return done, err
}

// admitOne is begin without the refusal's span.
func (p *Producer) admitOne(ctx context.Context, typ TaskType) (func(error), error) {
	if err := ctx.Err(); err != nil {
		p.metrics.count(typ, outContextDone)
		return nil, err
	}
	if p.closing.Load() {
		p.metrics.count(typ, outClosed)
		return nil, ErrClosed
	}
	// The breaker first: a refusal then costs no lock. A half-open breaker's
	// one probe may be this publish.
	done, err := p.breaker.allow()
	if err != nil {
		if !p.cfg.buffered() {
			p.metrics.count(typ, outCircuitOpen)
			return nil, err
		}
		done = nil
	}
	p.admit.RLock()
	if p.closing.Load() {
		p.admit.RUnlock()
		notSent(done)
		p.metrics.count(typ, outClosed)
		return nil, ErrClosed
	}
	p.owned.Add(1)
	return done, nil
}

// abandon undoes begin when the message could not be built.
func (p *Producer) abandon(done func(error)) {
	p.admit.RUnlock()
	notSent(done)
	p.disown()
}

// hold counts a new message against the Producer's capacity: at most the
// retry queue's capacity plus the in-flight window of messages, and the retry
// queue's bytes, accepted and not yet final, wherever they are. A message
// sent at once can come back to the retry queue when it fails, so admitting
// by the queue's fill alone would let it grow without bound.
//
// A refusal undoes what it took without signalling room: it made none, and
// a PublishAsync waiting for room would wake itself and spin until a
// confirm made some. The bytes are taken by compare-and-swap, never over the
// cap even for a moment, so that a concurrent hold is not refused for bytes
// that this one gives back at once and then left waiting with nothing to
// wake it. (A count taken for a moment can refuse another hold only while
// capCount-1 >= 1 messages are held, whose release wakes it.)
func (p *Producer) hold(size int) bool {
	if p.held.Add(1) > p.capCount {
		p.held.Add(-1)
		return false
	}
	if !p.cfg.buffered() {
		p.heldBytes.Add(int64(size))
		return true
	}
	for {
		cur := p.heldBytes.Load()
		if cur+int64(size) > p.capBytes {
			p.held.Add(-1)
			return false
		}
		if p.heldBytes.CompareAndSwap(cur, cur+int64(size)) {
			return true
		}
	}
}

// release undoes hold when the message is final or was refused.
func (p *Producer) release(size int) {
	p.held.Add(-1)
	p.heldBytes.Add(-int64(size))
	p.room.signal()
}

// submit hands a begun message to the session, or to the retry queue, and
// waits for its first outcome or ctx.
func (p *Producer) submit(ctx context.Context, done func(error), id string, typ TaskType, body []byte, pooled *[]byte, created time.Time, meta *msgMeta) (Receipt, error) {
	m := &message{id: id, typ: typ, body: body, pooled: pooled, created: created.UnixNano(), heapIndex: -1, meta: meta}
	// Before the spool's record: it keeps the trace context too.
	p.tracing.start(ctx, m)
	waits, err := p.handOff(done, m)
	if err != nil {
		if errors.Is(err, errNoRoom) {
			p.metrics.count(typ, outQueueFull)
			err = queueFullError{p}
		}
		m.endSpan("refused", err)
		m.recycle(p.bodies) // never handed off
		return Receipt{}, err
	}
	if !waits {
		return Receipt{MessageID: id, State: Queued}, nil
	}
	select {
	case <-m.done:
		return Receipt{MessageID: id, State: DeliveryState(m.outcome.Load())}, nil
	case <-ctx.Done():
		return Receipt{MessageID: id, State: Pending}, nil
	}
}

// handOff takes a begun message: it counts it against the capacity, stores
// it in the spool, and hands it to the session, or to the retry queue. It
// ends the admission begin started. It reports whether the session has it
// (its first outcome then closes m.done), or errNoRoom when the Producer
// holds all it may (m is untouched and can be tried again), or the spool's
// error.
func (p *Producer) handOff(done func(error), m *message) (waits bool, err error) {
	size := len(m.body)
	if !p.hold(size) {
		p.admit.RUnlock()
		notSent(done)
		p.disown()
		return false, errNoRoom
	}
	// unhold undoes hold without signalling room: the room it makes is not
	// room for m, and a PublishAsync waiting for it would wake itself.
	unhold := func() {
		p.admit.RUnlock()
		notSent(done)
		p.held.Add(-1)
		p.heldBytes.Add(-int64(size))
		p.disown()
	}
	s := p.liveSession()
	reserved := false
	if s != nil && done != nil && m.dlv != nil {
		// PublishAsync on a live connection takes its slot of the window
		// first, and waits for one rather than filling the retry queue,
		// which would only delay every message behind it.
		if !s.reserve() {
			unhold()
			return false, errNoRoom
		}
		reserved = true
	}
	if p.spool != nil {
		if err := p.spool.put(m); err != nil {
			if reserved {
				s.release()
			}
			p.admit.RUnlock()
			notSent(done)
			p.release(size)
			p.disown()
			p.metrics.count(m.typ, outSpoolFailed)
			return false, err
		}
		m.acc = m.key
	} else {
		m.acc = p.acc.Add(1)
	}
	if s != nil && m.done == nil && m.dlv == nil {
		// Only a caller that may wait needs the channel; a message that
		// goes straight to the retry queue is kept without it.
		m.done = make(chan struct{})
	}
	p.flush.add(1)
	if reserved {
		s.enqueue(m, done) // back to the retry queue if the session died meanwhile
	} else if s == nil || !s.tryEnqueue(m, done) {
		notSent(done)
		if !p.enqueueRetry(m) {
			p.flush.final(m.acc)
			done = nil // given back above
			unhold()
			return false, errNoRoom
		}
		p.admit.RUnlock()
		p.metrics.count(m.typ, outAccepted)
		return false, nil
	}
	p.admit.RUnlock()
	p.metrics.count(m.typ, outAccepted)
	return true, nil
}

// liveSession returns the session to publish on, or nil while there is none
// or the broker blocks publishers.
func (p *Producer) liveSession() *session {
	s := p.sess.Load()
	if s == nil || s.blocked.Load() {
		return nil
	}
	return s
}

func (p *Producer) disown() {
	if p.owned.Add(-1) == 0 && p.closing.Load() {
		kick(p.drained)
	}
}

func (p *Producer) confirmed(m *message) {
	p.metrics.count(m.typ, outConfirmed)
	if at := m.sentAt.Load(); at != 0 {
		p.metrics.observeLatency(time.Duration(time.Now().UnixNano() - at))
	}
	// The span before the caller wakes: a publish that returns Confirmed
	// has ended its span.
	m.endSpan("confirmed", nil)
	m.signal(Confirmed)
	// The Delivery before the Flush count: a Flush that returns has every
	// Delivery it waited for resolved.
	if m.dlv != nil {
		m.dlv.resolve(Confirmed, nil)
	}
	p.flush.final(m.acc)
	if p.spool != nil {
		p.spool.remove(m.key)
	}
	p.release(len(m.body))
	p.disown()
}

// markDead counts a message given up on and ends its span, then wakes its
// caller: a publish that returns DeadLettered is counted and traced.
// deadLetter does the rest, later and outside any lock.
func (p *Producer) markDead(m *message, err error) {
	p.metrics.count(m.typ, outDeadLettered)
	m.endSpan("dead_lettered", err)
	m.signal(DeadLettered)
}

// deadLetter hands a message given up on (markDead has counted it) to the
// hook. It is logged at once; the hook runs on its own goroutine (hookLoop),
// so a slow or stuck hook holds up neither the caller (the retry loop, Close)
// nor confirms or publishes. Until the hook returned the message stays held
// (and in the spool): see finishDead.
func (p *Producer) deadLetter(m *message, err error) {
	// The writes counted (a confirm counts its attempt, see noteSent), and
	// at least the failed attempts.
	sends := max(int(m.sends.Load()), m.attempts)
	p.log.Warn("mlproducer: message dead-lettered",
		slog.String("messageId", m.id), slog.String("type", string(m.typ)),
		slog.Int("attempts", sends), slog.Any("error", err))
	if m.dlv != nil {
		m.dlv.resolve(DeadLettered, nil)
	}
	p.flush.final(m.acc)
	if p.cfg.deadLetter == nil {
		p.finishDead(m, true)
		return
	}
	p.queueHook(deadItem{m: m, dl: DeadLetter{
		Message:  Message{Type: m.typ, ID: m.id, Body: m.body},
		Attempts: sends,
		Err:      err,
	}})
}

// callDeadLetter calls the hook; a panic in it is logged and counted, not
// fatal, and the message still counts as handed over.
func (p *Producer) callDeadLetter(d DeadLetter) {
	defer func() {
		if r := recover(); r != nil {
			p.metrics.hookPanics.Add(1)
			p.log.Error("mlproducer: the dead-letter hook panicked; the message counts as handed over",
				slog.String("messageId", d.Message.ID), slog.Any("panic", r),
				slog.String("stack", string(debug.Stack())))
		}
	}()
	p.cfg.deadLetter(d)
}

// WaitConnected waits until the Producer has a connection ready for
// publishing (state Connected or Blocked), ctx ends, or the Producer closes
// ([ErrClosed]).
func (p *Producer) WaitConnected(ctx context.Context) error {
	for {
		p.stmu.Lock()
		st, ch, last := p.state, p.stateCh, p.lastErr
		p.stmu.Unlock()
		if p.closing.Load() {
			return ErrClosed
		}
		switch st {
		case Connected, Blocked:
			return nil
		case Closed:
			return ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if last != "" {
				return fmt.Errorf("mlproducer: not connected (last error: %s): %w", last, ctx.Err())
			}
			return fmt.Errorf("mlproducer: not connected: %w", ctx.Err())
		}
	}
}

func (p *Producer) setState(st ConnectionState) {
	p.stmu.Lock()
	if p.state != st && p.state != Closed {
		p.state = st
		close(p.stateCh)
		p.stateCh = make(chan struct{})
	}
	p.stmu.Unlock()
}

// Close shuts the Producer down, like [net/http.Server.Shutdown]: new
// publishes fail with [ErrClosed] at once; the messages it owns are given
// until ctx ends to be confirmed; then the connection is closed and every
// message still unconfirmed goes to the dead-letter hook. The error, a
// [*CloseError], says how many and wraps ctx's error if ctx ended first. With
// [WithSpool], the unconfirmed messages stay in the spool for the next [New]
// on its dir instead, the error says how many were left, and the dir is
// released. The dead-letter hook is waited for until ctx ends and at most one
// second more ([WithDeadLetter] says what happens to the messages it has not
// had by then). No goroutine of the Producer survives Close but a hook call
// still running then, which finishes on its own. Calling Close again
// waits for the first call and returns its result.
func (p *Producer) Close(ctx context.Context) error {
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	if p.closed {
		return p.closeErr
	}
	p.closed = true
	p.closing.Store(true)
	// Wait for the publishes admitted before closing was set to hand their
	// message off (a moment: no network wait); later ones see closing.
	p.admit.Lock()
	p.admit.Unlock() //nolint:staticcheck // an empty critical section is the barrier

	var cause error
drain:
	for p.owned.Load() > 0 {
		select {
		case <-p.drained:
		case <-ctx.Done():
			cause = ctx.Err()
			break drain
		}
	}
	if dl, ok := ctx.Deadline(); ok && cause == nil {
		p.closeBy.Store(dl.UnixNano())
	} else if cause != nil {
		p.closeBy.Store(time.Now().UnixNano())
	}
	close(p.stop)
	p.stopAll()
	p.wg.Wait()

	p.flushDeadLetters()
	left, kept := 0, 0
	for p.spool == nil {
		p.rmu.Lock()
		m, _ := p.retry.pop()
		p.queued.Store(int64(p.retry.len()))
		p.rmu.Unlock()
		if m == nil {
			break
		}
		if !m.final.CompareAndSwap(0, finalDead) {
			continue
		}
		left++
		err := closedErr(m, cause)
		p.markDead(m, err)
		p.deadLetter(m, err)
	}
	// The hook gets until ctx ends (and a grace for what Close just handed
	// it); then Close goes on without it. Before the spool closes: a
	// message whose hook has not returned stays in it.
	missed := p.waitHooks(ctx)
	if p.spool != nil {
		// What is unconfirmed stays in the spool for the next start, and
		// so does a dead-lettered message the hook did not get.
		p.rmu.Lock()
		kept = p.retry.len() + missed
		if rs, ok := p.retry.(*spoolRetryStore); ok {
			for _, m := range rs.mem.h {
				m.endSpan("left_in_spool", nil)
				if m.dlv != nil {
					m.dlv.resolve(Queued, errLeftInSpool)
				}
			}
			for _, d := range rs.dlv {
				d.resolve(Queued, errLeftInSpool)
			}
		}
		p.rmu.Unlock()
		if err := p.spool.close(); err != nil {
			p.log.Error("mlproducer: closing the spool", slog.Any("error", err))
		}
	}
	p.setState(Closed)
	if p.cfg.registerer != nil {
		p.cfg.registerer.Unregister(p.collector)
	}
	if left+kept > 0 {
		if cause == nil {
			cause = errNoConnection
		}
		p.closeErr = &CloseError{Unconfirmed: left + kept, DeadLettered: left, LeftInSpool: kept, SpoolDir: p.cfg.spoolDir, cause: cause}
	}
	p.log.Info("mlproducer: closed", slog.Int("deadLettered", left), slog.Int("leftInSpool", kept))
	close(p.closedCh)
	return p.closeErr
}
