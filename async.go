package mlproducer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Delivery is the outcome of a message taken by [Producer.PublishAsync]: it
// resolves once, when the message is final (confirmed by the broker, or
// handed to the dead-letter hook), or when [Producer.Close] leaves it in the
// spool for the next start. It is safe for concurrent use.
type Delivery struct {
	id    string
	state atomic.Uint32 // 0 until resolved, then a DeliveryState
	err   error         // set before state: why it is not final

	// done is made by the first Done or Wait that finds the delivery
	// unresolved: a loop that only checks Receipt or calls Flush, or waits
	// on a delivery already resolved, costs no channel.
	mu   sync.Mutex
	done chan struct{}
}

// MessageID returns the message's ID, the same as the body's messageId.
func (d *Delivery) MessageID() string { return d.id }

// Done returns a channel closed when the delivery is resolved.
func (d *Delivery) Done() <-chan struct{} {
	if d.state.Load() != 0 {
		return closedDone
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done == nil {
		if d.state.Load() != 0 {
			return closedDone
		}
		d.done = make(chan struct{})
	}
	return d.done
}

// closedDone is the channel of every delivery resolved before its Done was
// asked for. It is closed once and never written to.
var closedDone = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// Receipt returns the outcome: [Confirmed] or [DeadLettered] once resolved,
// [Queued] for a message Close left in the spool, and [Pending] before it is
// resolved.
func (d *Delivery) Receipt() Receipt {
	st := DeliveryState(d.state.Load())
	if st == 0 {
		st = Pending
	}
	return Receipt{MessageID: d.id, State: st}
}

// Wait waits until the delivery is resolved or ctx ends, and returns its
// receipt. The error is ctx's when ctx ended first (the message is still
// the Producer's), and one wrapping [ErrClosed] for a message that Close left
// in the spool for the next start; a dead-lettered message is a receipt with
// state [DeadLettered] and a nil error, as from [Producer.Publish].
func (d *Delivery) Wait(ctx context.Context) (Receipt, error) {
	if d.state.Load() != 0 {
		return d.Receipt(), d.err
	}
	select {
	case <-d.Done():
		return d.Receipt(), d.err
	case <-ctx.Done():
		return d.Receipt(), ctx.Err()
	}
}

// resolve sets the outcome once; later calls change nothing.
func (d *Delivery) resolve(st DeliveryState, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state.Load() != 0 {
		return
	}
	d.err = err
	d.state.Store(uint32(st))
	if d.done != nil {
		close(d.done)
	}
}

// errLeftInSpool is a Delivery's error when Close left its message in the
// spool.
var errLeftInSpool = fmt.Errorf("%w: the message stays in the spool for the next start", ErrClosed)

// PublishAsync takes a message as [Producer.Publish] does, with the same
// validation, refusals and ownership (an error means the message was not
// taken), but returns as soon as it is handed off, with a [Delivery] that
// resolves when the message is final. It is for a loop publishing a batch:
// one goroutine keeps up to the in-flight window ([WithMaxInFlight]) of
// messages on the wire.
//
// ctx bounds only the hand-off. While the Producer holds as many messages as
// it may (the in-flight window plus the buffer, [WithRetryQueueCapacity] or
// [WithSpoolCapacity]), PublishAsync waits for room instead of refusing with
// [ErrRetryQueueFull]: the loop is held back at the broker's pace. If ctx
// ends first it returns ctx's error and the message was not taken.
//
// No goroutine or timer is started per message. [Producer.Flush] waits for
// every message taken before it.
func (p *Producer) PublishAsync(ctx context.Context, msg Message, opts ...PublishOption) (*Delivery, error) {
	meta, err := p.checkMessage(&msg, opts)
	if err != nil {
		return nil, err
	}
	id, err := messageID(msg.ID)
	if err != nil {
		return nil, err
	}
	d := &Delivery{id: id}
	body, pooled := p.bodies.clone(msg.Body)
	m := &message{id: id, typ: msg.Type, body: body, pooled: pooled, created: time.Now().UnixNano(), heapIndex: -1, meta: meta, dlv: d}
	traced := false
	for {
		// Registered before the try, so that room made after a failed
		// try wakes this caller.
		room := p.room.wait()
		done, err := p.admitOne(ctx, msg.Type)
		if err == nil {
			if !traced {
				p.tracing.start(ctx, m)
				traced = true
			}
			_, err = p.handOff(done, m)
		}
		if !errors.Is(err, errNoRoom) {
			p.room.done()
			if err != nil {
				p.refusedAsync(ctx, m, traced, err)
				m.recycle(p.bodies)
				return nil, err
			}
			return d, nil
		}
		var stop error
		select {
		case <-room:
		case <-p.stop:
			stop = ErrClosed
		case <-ctx.Done():
			stop = ctx.Err()
		}
		p.room.done()
		if stop != nil {
			if stop == ErrClosed {
				p.metrics.count(msg.Type, outClosed)
			} else {
				p.metrics.count(msg.Type, outContextDone)
			}
			p.refusedAsync(ctx, m, traced, stop)
			m.recycle(p.bodies)
			return nil, stop
		}
	}
}

// refusedAsync records the span of a PublishAsync that took nothing.
func (p *Producer) refusedAsync(ctx context.Context, m *message, traced bool, err error) {
	if traced {
		m.endSpan("refused", err)
	} else {
		p.tracing.refused(ctx, err)
	}
}

// Flush waits until every message the Producer took before the call is
// final (confirmed or dead-lettered), whichever way it was published, or ctx
// ends (ctx's error), or Close has left some in the spool (an error wrapping
// [ErrClosed]). It does not stop publishing: messages taken meanwhile are
// not waited for.
func (p *Producer) Flush(ctx context.Context) error {
	if p.closing.Load() {
		if p.flush.idle() {
			return nil
		}
		return fmt.Errorf("%w: Flush after Close", ErrClosed)
	}
	// No publish is between admission and hand-off while the generation
	// changes: each message is counted in the generation of its number.
	p.admit.Lock()
	gens := p.flush.seal(p.nextAcc())
	p.admit.Unlock()
	for _, g := range gens {
		select {
		case <-g.done:
		case <-ctx.Done():
			return ctx.Err()
		case <-p.closedCh:
			select {
			case <-g.done:
				continue
			default:
			}
			return fmt.Errorf("%w: Close left messages taken before Flush unconfirmed", ErrClosed)
		}
	}
	p.flush.prune()
	return nil
}

// nextAcc returns the acceptance number the next message will get.
func (p *Producer) nextAcc() uint64 {
	if p.spool != nil {
		return p.spool.peekKey()
	}
	return p.acc.Load() + 1
}

// errNoRoom is handOff's refusal when the Producer holds all it may; Publish
// reports it as [ErrRetryQueueFull], PublishAsync waits.
var errNoRoom = errors.New("mlproducer: no room")

// roomSignal wakes callers waiting for the Producer to hold fewer messages.
// A release costs one atomic load while nobody waits.
type roomSignal struct {
	waiting atomic.Int32
	mu      sync.Mutex
	ch      chan struct{}
}

// wait registers a waiter and returns the channel closed at the next room.
func (r *roomSignal) wait() <-chan struct{} {
	r.waiting.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ch == nil {
		r.ch = make(chan struct{})
	}
	return r.ch
}

// done unregisters a waiter.
func (r *roomSignal) done() { r.waiting.Add(-1) }

// signal wakes every waiter, if any.
func (r *roomSignal) signal() {
	if r.waiting.Load() == 0 {
		return
	}
	r.mu.Lock()
	if r.ch != nil {
		close(r.ch)
		r.ch = nil
	}
	r.mu.Unlock()
}

// flushGens counts the messages not yet final by generation: a generation
// is the messages whose acceptance number (acc) is at least its start, and
// below the next one's. Flush seals the current one and waits for every
// sealed one to reach zero.
type flushGens struct {
	cur atomic.Pointer[flushGen]
	mu  sync.Mutex
	old []*flushGen // sealed and not yet done, oldest first
}

type flushGen struct {
	start  uint64
	count  atomic.Int64
	sealed atomic.Bool
	once   sync.Once
	done   chan struct{}
}

func newFlushGen(start uint64) *flushGen {
	return &flushGen{start: start, done: make(chan struct{})}
}

func (g *flushGen) finish() { g.once.Do(func() { close(g.done) }) }

func (f *flushGens) init() { f.cur.Store(newFlushGen(0)) }

// add counts a message taken with acceptance number acc; call under the
// Producer's admission lock (read), so that Flush cannot seal between the
// number and the count.
func (f *flushGens) add(n int64) { f.cur.Load().count.Add(n) }

// final uncounts a message that is final.
func (f *flushGens) final(acc uint64) {
	g := f.cur.Load()
	if acc < g.start {
		g = f.find(acc)
		if g == nil {
			return
		}
	}
	if g.count.Add(-1) == 0 && g.sealed.Load() {
		g.finish()
	}
}

// find returns the sealed generation of acc.
func (f *flushGens) find(acc uint64) *flushGen {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.old) - 1; i >= 0; i-- {
		if acc >= f.old[i].start {
			return f.old[i]
		}
	}
	return nil
}

// seal starts a generation at next (call under the admission lock, write)
// and returns the generations Flush must wait for.
func (f *flushGens) seal(next uint64) []*flushGen {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.cur.Load()
	f.cur.Store(newFlushGen(next))
	g.sealed.Store(true)
	if g.count.Load() == 0 {
		g.finish()
	}
	f.old = append(f.old, g)
	return append([]*flushGen(nil), f.old...)
}

// prune forgets the sealed generations that are done, oldest first.
func (f *flushGens) prune() {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := 0
	for i < len(f.old) {
		select {
		case <-f.old[i].done:
			i++
			continue
		default:
		}
		break
	}
	f.old = append(f.old[:0], f.old[i:]...)
}

// idle reports whether no message is counted anywhere.
func (f *flushGens) idle() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, g := range f.old {
		if g.count.Load() > 0 {
			return false
		}
	}
	return f.cur.Load().count.Load() <= 0
}
