package mlproducer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mlproducer/mlproducer/transport"
)

// Errors recorded as the last error of a failed attempt. They reach the
// dead-letter hook through [DeadLetter.Err].
var (
	errNacked         = errors.New("mlproducer: broker nacked the message")
	errConfirmTimeout = errors.New("mlproducer: no publisher confirm within the confirm timeout")
)

// ReturnedError says the broker returned a mandatory message as unroutable:
// no queue is bound for its routing key. Check the topology.
type ReturnedError struct {
	Code       uint16
	Text       string
	Exchange   string
	RoutingKey string
}

func (e *ReturnedError) Error() string {
	return fmt.Sprintf("mlproducer: message returned unroutable by the broker (%d %s, exchange %q, routing key %q): bind a queue to that key", e.Code, e.Text, e.Exchange, e.RoutingKey)
}

// The life of an attempt: one send of a message on one session. Every
// transition below is made in this file, under session.mu, and nothing about
// an attempt is decided anywhere else. "Requeued" spends no attempt (the
// message goes back to the retry queue as it was); "failed" spends one
// (Producer.failAttempt: retry with backoff, or dead-letter when the retries
// are used up); "confirmed" and "dead-lettered" are final for the message.
//
//	hand-off (session.enqueue)
//	          |
//	          v
//	     +---------+  hand-off deadline ---------------> requeued
//	     | queued  |  session dies --------------------> requeued
//	     +---------+
//	          | the writer takes it (tag assigned)
//	          v
//	     +---------+  hand-off deadline: the caller is told Pending
//	     | writing |  ack ------------------------------> confirmed
//	     +---------+  session dies --------------------> requeued (*)
//	          | the write returned
//	          v
//	     +---------+  ack ------------------------------> confirmed
//	     |  sent   |  return, then its ack -------------> failed
//	     +---------+  nack -----------------------------> failed
//	          |       session dies --------------------> requeued (*)
//	          |       hand-off deadline: the caller is told Pending
//	          | confirm deadline (write + confirm timeout)
//	          v
//	     +-----------+  (blocked by the broker: requeued, else failed)
//	     | timed out |  late ack -----------------------> confirmed, retry cancelled
//	     +-----------+  late nack or return+ack --------> nothing: already counted
//	                    session dies --------------------> nothing
//
// (*) failed instead, if its write had returned, when the broker closed the
// channel for a message-level reason (403, 404, 406: a poison message or a
// missing exchange), so that a message the broker refuses this way is
// dead-lettered in the end.
//
// Two deadlines run from two moments: the caller's answer is due one confirm
// timeout after the hand-off, whatever the writer is doing; an attempt is
// charged as timed out only one confirm timeout after its write returned, so
// a write held by TCP back-pressure spends nothing. A return is matched to
// the exact attempt it belongs to by message ID, routing key, attempt header
// and body, never by message ID alone: a retry shares the ID, and so may two
// messages of one caller.
type attemptState uint8

const (
	attQueued   attemptState = iota // handed to the writer, not taken
	attWriting                      // taken by the writer, write not returned
	attSent                         // written, waiting for its confirm
	attTimedOut                     // confirm timed out; kept so a late ack still counts
	attDone                         // resolved
)

// attempt is one send of a message on one session.
type attempt struct {
	m        *message
	tag      uint64
	n        int32 // the attempt header sent with it
	state    attemptState
	returned *ReturnedError
	ret      *returnGroup // the returns it may be the one of, with its twins
	done     func(error)  // the breaker's ticket; called once with the outcome
}

// returnGroup is the attempts of one message that returns could not tell
// apart (no attempt header: a timed-out attempt and its retry are identical
// publishings), with how many returns matched them and how many of them were
// acked. Each return is the return of one of them, and a returned publishing
// is acked too: once more of them are acked than were returned, one was
// stored, and the message is confirmed whichever ack says so. Guarded by the
// session's mu.
type returnGroup struct{ returns, acks int }

// tangled stands for the returns of a group that also matched other
// messages' attempts, or attempts outside it: too many for it ever to prove
// a store.
const tangled = 1 << 30

// report hands the attempt's outcome to the breaker, once.
func (a *attempt) report(err error) {
	if a.done != nil {
		a.done(err)
		a.done = nil
	}
}

// entry is one deadline in the tracker's fifo: the caller's answer
// (hand-off) or the confirm of a written attempt, due at the unix nanos at.
type entry struct {
	a       *attempt
	at      int64
	confirm bool
}

// expired reports whether the entry no longer needs the tracker.
func (d *entry) expired() bool {
	if d.confirm {
		return d.a.state != attSent
	}
	return d.a.state == attDone || d.a.state == attTimedOut
}

// session is one connection and its publishing channel: an epoch. Confirms
// are tracked by delivery tag within it; nothing of one session matches
// another. A session has two goroutines, the writer (the only one that writes
// to the socket) and the tracker (confirm timeouts); the transport delivers
// confirms, returns and closes through callbacks.
type session struct {
	p     *Producer
	epoch uint64
	url   string // redacted
	conn  transport.Conn
	ch    transport.Channel
	ctx   context.Context
	stopF context.CancelFunc

	blocked atomic.Bool

	mu          sync.Mutex
	dead        bool
	queue       []*attempt // handed off, not yet written, in order
	spare       []*attempt
	pending     map[uint64]*attempt
	fifo        fifo // deadlines, oldest first
	nextTag     uint64
	ackFloor    uint64 // every tag up to it is resolved
	inflight    int    // slots reserved: queued + sent
	trackerIdle bool   // the tracker waits with no timer set
	timedOut    int    // attempts kept in pending after a timeout
	cbs         sync.WaitGroup

	writeWake chan struct{}
	trackWake chan struct{}
	died      chan struct{}
	dieOnce   sync.Once
	dieErr    error
	wg        sync.WaitGroup
}

func newSession(p *Producer, epoch uint64, url string) *session {
	ctx, cancel := context.WithCancel(context.Background())
	return &session{
		p:         p,
		epoch:     epoch,
		url:       url,
		ctx:       ctx,
		stopF:     cancel,
		pending:   make(map[uint64]*attempt),
		writeWake: make(chan struct{}, 1),
		trackWake: make(chan struct{}, 1),
		died:      make(chan struct{}),
	}
}

// fail ends the session; the supervisor then tears it down and reconnects.
func (s *session) fail(err error) {
	s.dieOnce.Do(func() {
		s.dieErr = err
		close(s.died)
	})
}

func (s *session) start() {
	s.wg.Add(2)
	go s.writer()
	go s.tracker()
	if s.p.cfg.healthInterval > 0 {
		s.wg.Add(1)
		go s.health()
	}
}

// reserve takes an in-flight slot if the session is alive and has room.
func (s *session) reserve() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead || s.inflight >= s.p.cfg.maxInFlight {
		return false
	}
	s.inflight++
	return true
}

func (s *session) release() {
	s.mu.Lock()
	s.inflight--
	s.mu.Unlock()
}

// tryEnqueue reserves a slot and hands m to the writer in one step. It
// refuses a message admitted without a ticket (nil: the breaker refused the
// attempt): it waits in the retry queue, which sends it once the breaker lets
// it.
func (s *session) tryEnqueue(m *message, done func(error)) bool {
	if done == nil {
		return false
	}
	if !s.reserve() {
		return false
	}
	s.enqueue(m, done)
	return true
}

// enqueue hands m to the writer with its breaker ticket; the slot must have
// been reserved. If the session died meanwhile, m goes back to the retry
// queue.
func (s *session) enqueue(m *message, done func(error)) {
	var a *attempt
	if !m.firstUsed {
		// Most messages are sent once: their attempt lives in the message.
		m.firstUsed = true
		a = &m.first
	} else {
		a = new(attempt)
	}
	*a = attempt{m: m, done: done}
	due := time.Now().Add(s.p.cfg.confirmTimeout).UnixNano()
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		a.report(errNotSent)
		s.p.requeue(m, time.Now(), true)
		return
	}
	s.queue = append(s.queue, a)
	s.fifo.push(entry{a: a, at: due})
	idle := s.trackerIdle
	s.trackerIdle = false
	s.mu.Unlock()
	if idle {
		kick(s.trackWake)
	}
	kick(s.writeWake)
}

// trimFifo drops the entries at the head of the fifo that no longer need the
// tracker, so that confirmed messages are not kept alive until its next run.
// Call with s.mu held.
func (s *session) trimFifo() {
	for e := s.fifo.peek(); e != nil && e.expired(); e = s.fifo.peek() {
		s.fifo.pop()
	}
}

func kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// writer is the only goroutine that writes to the channel. Callers never do
// the socket write, so a write held by broker back-pressure holds no caller.
func (s *session) writer() {
	defer s.wg.Done()
	ex := s.p.cfg.topology.Exchange
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.writeWake:
		}
		// Callers woken by the same burst of confirms are usually runnable
		// now: let them hand their messages over so they share one write.
		runtime.Gosched()
		for {
			s.mu.Lock()
			if s.dead {
				s.mu.Unlock()
				return
			}
			batch := s.queue
			s.queue, s.spare = s.spare[:0], nil
			for _, a := range batch {
				if a.state != attQueued {
					continue // its hand-off deadline passed: requeued
				}
				s.nextTag++
				a.tag = s.nextTag
				a.n = a.m.sends.Load() + 1
				a.state = attWriting
				s.pending[a.tag] = a
			}
			s.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			if !s.write(ex, batch) {
				return
			}
			// Every write of the batch returned: the confirm timeouts start.
			due := time.Now().Add(s.p.cfg.confirmTimeout).UnixNano()
			s.mu.Lock()
			pushed := false
			for i, a := range batch {
				batch[i] = nil
				if a.tag != 0 && a.state == attWriting {
					a.state = attSent
					s.fifo.push(entry{a: a, at: due, confirm: true})
					pushed = true
				}
			}
			s.spare = batch[:0]
			// After a long write the tracker may have answered the callers
			// and gone idle: it must see the new deadlines.
			idle := pushed && s.trackerIdle
			if idle {
				s.trackerIdle = false
			}
			s.mu.Unlock()
			if idle {
				kick(s.trackWake)
			}
		}
	}
}

// write publishes the attempts of batch that the writer took, in one socket
// write where the channel can batch. It reports false when the session
// failed.
func (s *session) write(ex string, batch []*attempt) bool {
	batcher, _ := s.ch.(transport.Batcher)
	if batcher != nil && len(batch) > 1 {
		batcher.BeginBatch()
	} else {
		batcher = nil
	}
	for _, a := range batch {
		if a.tag == 0 {
			continue // requeued before the writer took it
		}
		m := a.m
		m.sentAt.Store(time.Now().UnixNano())
		pub := s.p.publishing(m, a.n)
		tag, err := s.ch.Publish(s.ctx, ex, m.typ.RoutingKey(), true, pub)
		if err == nil && tag != a.tag {
			err = fmt.Errorf("mlproducer: delivery tag %d from the channel, %d expected", tag, a.tag)
		}
		if err != nil {
			if batcher != nil {
				batcher.EndBatch()
			}
			s.fail(fmt.Errorf("publish: %w", err))
			return false
		}
		// Only a write that returned (or was confirmed) counts as an attempt.
		m.noteSent(a.n)
	}
	if batcher != nil {
		if err := batcher.EndBatch(); err != nil {
			s.fail(fmt.Errorf("publish: %w", err))
			return false
		}
	}
	return true
}

// tracker runs the deadlines of the fifo with one timer, set for the oldest.
// Every entry is pushed with its deadline one confirm timeout after the
// moment it is pushed, so deadlines never decrease along the fifo.
func (s *session) tracker() {
	defer s.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var requeue, held, failed, answer []*message
	for {
		now := time.Now()
		s.mu.Lock()
		if s.dead {
			s.mu.Unlock()
			return
		}
		var wait time.Duration
		for e := s.fifo.peek(); e != nil; e = s.fifo.peek() {
			if e.expired() {
				s.fifo.pop()
				continue
			}
			if d := time.Duration(e.at - now.UnixNano()); d > 0 {
				wait = d
				break
			}
			a := *e
			s.fifo.pop()
			switch {
			case !a.confirm && a.a.state == attQueued:
				// Never taken by the writer, which is stuck: requeued.
				a.a.state = attDone
				s.inflight--
				a.a.report(errNotSent)
				requeue = append(requeue, a.a.m)
				a.a.m = nil
			case !a.confirm:
				// Being written or waiting for its confirm: the caller
				// waited a confirm timeout and is told Pending.
				answer = append(answer, a.a.m)
			case s.blocked.Load():
				// Held by the broker's flow control, not refused: no
				// attempt is spent, and a late ack still counts.
				a.a.state = attTimedOut
				s.inflight--
				s.timedOut++
				a.a.report(errNotSent)
				held = append(held, a.a.m)
			default:
				a.a.state = attTimedOut
				s.inflight--
				s.timedOut++
				a.a.report(errConfirmTimeout)
				failed = append(failed, a.a.m)
			}
		}
		s.trackerIdle = wait == 0
		tooMany := s.timedOut > s.p.cfg.maxInFlight
		s.mu.Unlock()

		for _, m := range requeue {
			s.p.requeue(m, now, true)
		}
		for _, m := range held {
			// Its late ack may still come: it stays in memory as itself.
			s.p.requeue(m, now, false)
		}
		for _, m := range failed {
			s.p.metrics.failures[failTimeout].Add(1)
			s.p.failAttempt(m, errConfirmTimeout)
		}
		// After the timeouts of this pass: a caller whose attempt timed out
		// at the same moment is told Queued, not Pending.
		for _, m := range answer {
			m.signal(Pending)
		}
		if len(requeue)+len(held)+len(failed) > 0 {
			s.p.wakeRetry()
		}
		clear(requeue)
		clear(held)
		clear(failed)
		clear(answer)
		requeue, held, failed, answer = requeue[:0], held[:0], failed[:0], answer[:0]
		if tooMany {
			s.fail(errors.New("mlproducer: too many publisher confirms timed out; reconnecting"))
		}

		if wait > 0 {
			timer.Reset(wait)
		}
		select {
		case <-s.ctx.Done():
			return
		case <-s.trackWake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// enter guards a transport callback: it fails once the session is torn
// down, and teardown waits for the callbacks that entered.
func (s *session) enter() bool {
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return false
	}
	s.cbs.Add(1)
	return true // s.mu still held
}

// settled is what a confirm decided for one attempt, acted on outside s.mu.
type settled struct {
	m        *message
	returned *ReturnedError
	late     bool
	stored   bool // an attempt of its returnGroup was stored: confirmed
	// only: the attempt was the message's only write that returned, and the
	// writer is done with it. Its ack then leaves nothing that reads the
	// body: no retry, no other attempt pending (a timed-out one would be a
	// write that returned), not the writer.
	only bool
	done func(error)
}

func (s *session) onConfirm(c transport.Confirmation) {
	if !s.enter() {
		return
	}
	defer s.cbs.Done()
	var one [1]settled
	outs := one[:0]
	take := func(tag uint64) {
		a, ok := s.pending[tag]
		if !ok {
			return
		}
		delete(s.pending, tag)
		switch a.state {
		case attWriting, attSent:
			s.inflight--
		case attTimedOut:
			s.timedOut--
		}
		stored := false
		if g := a.ret; g != nil && c.Ack {
			g.acks++
			stored = g.acks > g.returns
		}
		only := a.state == attSent && a.n == 1 && a.m.sends.Load() == 1
		// A confirmed attempt was written, even if its writer has not
		// counted it yet: the span, the dead letter and a retry's attempt
		// number see it.
		a.m.noteSent(a.n)
		outs = append(outs, settled{a.m, a.returned, a.state == attTimedOut, stored, only, a.done})
		a.state = attDone
		a.m, a.done = nil, nil
	}
	if c.Multiple {
		for t := s.ackFloor + 1; t <= c.DeliveryTag; t++ {
			take(t)
		}
	} else {
		take(c.DeliveryTag)
	}
	if c.DeliveryTag == s.ackFloor+1 || c.Multiple && c.DeliveryTag > s.ackFloor {
		s.ackFloor = c.DeliveryTag
	}
	s.trimFifo()
	s.mu.Unlock()

	p := s.p
	for _, o := range outs {
		switch {
		case o.late && (!c.Ack || o.returned != nil && !o.stored):
			// The confirm timeout already counted this attempt as failed.
		case !c.Ack:
			p.metrics.failures[failNack].Add(1)
			if o.done != nil {
				o.done(errNacked)
			}
			p.failAttempt(o.m, errNacked)
		case o.returned != nil && !o.stored:
			p.metrics.failures[failReturn].Add(1)
			if o.done != nil {
				o.done(o.returned)
			}
			p.failAttempt(o.m, o.returned)
		default:
			if o.done != nil {
				o.done(nil)
			}
			if o.m.final.CompareAndSwap(0, finalConfirmed) {
				// A stored twin's message may wait for a retry that the
				// ack of its returned twin scheduled.
				if o.late || o.stored {
					p.cancelRetry(o.m)
				}
				p.confirmed(o.m)
				if o.only {
					o.m.recycle(p.bodies)
				}
			}
		}
	}
	if len(outs) > 0 {
		// A slot of the window is free. The retry loop needs it only for
		// messages it holds (a failed attempt above woke it already), so
		// it is not woken per confirm for nothing; a PublishAsync waiting
		// for room always is.
		if p.queued.Load() > 0 {
			kick(p.retryWake)
		}
		p.room.signal()
	}
}

// onReturn marks the attempts the return may belong to; the ack of each,
// which follows, then counts as a failure. A pending attempt matches when
// its message ID, routing key and body are the return's, and its attempt
// number is the header's when the return carries [AttemptHeader]. Every
// match is marked, not one: without the header (the default envelope), a
// timed-out attempt and the retry of the same message pending on one
// session are identical publishings, and so are two messages of one caller
// with one ID and body. Marking one that was routed only sends its message
// once more (a duplicate), unless the acks of the matches prove it stored
// (returnGroup); leaving the returned one unmarked would count an unroutable
// message as confirmed (a loss).
func (s *session) onReturn(r transport.Return) {
	if !s.enter() {
		return
	}
	defer s.cbs.Done()
	defer s.mu.Unlock()
	n, hasN := r.Headers[AttemptHeader].(int32)
	var match []*attempt
	for _, a := range s.pending {
		if a.m == nil || a.m.id != r.MessageID || a.m.typ.RoutingKey() != r.RoutingKey {
			continue
		}
		if hasN && a.n != n || r.Body != nil && !bytes.Equal(a.m.body, r.Body) {
			continue
		}
		match = append(match, a)
	}
	// The return is one of the matches': counted in their group only if
	// they are all of it, or can all join it.
	var g *returnGroup
	one := true
	for _, a := range match {
		switch {
		case a.m != match[0].m || a.returned != nil && a.ret == nil || a.ret != nil && g != nil && a.ret != g:
			one = false
		case a.ret != nil:
			g = a.ret
		}
	}
	if !one {
		for _, a := range match {
			if a.ret != nil {
				a.ret.returns = tangled
			}
		}
	} else if len(match) > 0 {
		if g == nil {
			g = new(returnGroup)
		}
		g.returns++
	}
	for _, a := range match {
		if one {
			a.ret = g
		}
		if a.returned == nil {
			a.returned = &ReturnedError{Code: r.ReplyCode, Text: r.ReplyText, Exchange: r.Exchange, RoutingKey: r.RoutingKey}
		}
	}
}

// messageLevel reports whether err is the broker closing the channel because
// of what was published on it, rather than a failed connection: the attempts
// in flight are then charged, so that a message the broker refuses this way
// (over max_message_size, not permitted, to a missing exchange) is
// dead-lettered in the end instead of being sent again for good.
func messageLevel(err error) bool {
	switch transport.ReplyCode(err) {
	case 403, 404, 406:
		return true
	}
	return false
}

// teardown closes the session and settles every attempt it still held:
// requeued, spending no attempt, when the connection failed; failed when the
// broker closed the channel for a message-level reason.
func (s *session) teardown() {
	charge := false
	select {
	case <-s.died:
		charge = messageLevel(s.dieErr)
	default: // closed by Close, not by the broker
	}
	s.mu.Lock()
	s.dead = true
	var back, failed []*message
	lost := false
	settle := func(a *attempt) {
		switch a.state {
		case attQueued:
			a.report(errNotSent)
			back = append(back, a.m)
		case attWriting, attSent:
			s.p.metrics.failures[failConnLost].Add(1)
			// One lost connection is one failure for the breaker, however
			// many messages were in flight on it.
			if !lost {
				a.report(errConnLost)
				lost = true
			} else {
				a.report(errNotSent)
			}
			// Charged only if its write returned: one that failed, on a
			// channel the broker had closed already, never reached it.
			if charge && a.m.sends.Load() >= a.n {
				failed = append(failed, a.m)
			} else {
				back = append(back, a.m)
			}
		}
		a.state = attDone
	}
	for _, a := range s.queue {
		settle(a)
	}
	for _, a := range s.pending {
		settle(a)
	}
	s.fifo, s.queue, s.pending = fifo{}, nil, nil
	s.inflight = 0
	s.mu.Unlock()

	s.stopF()
	if s.conn != nil {
		dc, ok := s.conn.(transport.DeadlineCloser)
		if by := s.p.closeBy.Load(); ok && by != 0 {
			// Close is running out of time: the broker's answer to
			// connection.close is not worth overrunning its ctx.
			dc.CloseDeadline(time.Unix(0, by))
		} else {
			s.conn.Close()
		}
	}
	s.wg.Wait()
	s.cbs.Wait()
	now := time.Now()
	for _, m := range back {
		s.p.requeue(m, now, true)
	}
	if len(failed) > 0 {
		err := fmt.Errorf("mlproducer: the broker closed the channel: %w", s.dieErr)
		for _, m := range failed {
			s.p.failAttempt(m, err)
		}
	}
}

// pendingCount is the number of messages handed to this session and not yet
// resolved.
func (s *session) pendingCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inflight
}

// fifo is a queue of deadlines that reuses its array: popping advances a head
// index, and the live part moves down once the dead part is the larger.
type fifo struct {
	buf  []entry
	head int
}

func (q *fifo) push(e entry) {
	if q.head > 0 && q.head >= len(q.buf)-q.head && len(q.buf) == cap(q.buf) {
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf, q.head = q.buf[:n], 0
	}
	q.buf = append(q.buf, e)
}

func (q *fifo) peek() *entry {
	if q.head == len(q.buf) {
		return nil
	}
	return &q.buf[q.head]
}

func (q *fifo) pop() {
	q.buf[q.head] = entry{}
	q.head++
	if q.head == len(q.buf) {
		q.buf, q.head = q.buf[:0], 0
	}
}
