package mlproducer

import (
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

type attemptState uint8

const (
	attQueued   attemptState = iota // handed to the writer, not written
	attSent                         // written, waiting for its confirm
	attTimedOut                     // confirm timed out; kept so a late ack still counts
	attDone                         // resolved
)

// attempt is one send of a message on one session.
type attempt struct {
	m        *message
	tag      uint64
	deadline time.Time
	state    attemptState
	returned *ReturnedError
	done     func(error) // the breaker's ticket; called once with the outcome
}

// report hands the attempt's outcome to the breaker, once.
func (a *attempt) report(err error) {
	if a.done != nil {
		a.done(err)
		a.done = nil
	}
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
	fifo        fifo // queued and sent attempts by deadline
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

// tryEnqueue reserves a slot and hands m to the writer in one step.
func (s *session) tryEnqueue(m *message, done func(error)) bool {
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
	*a = attempt{m: m, deadline: time.Now().Add(s.p.cfg.confirmTimeout), done: done}
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		a.report(errNotSent)
		s.p.requeue(m, time.Now())
		return
	}
	s.queue = append(s.queue, a)
	s.fifo.push(a)
	idle := s.trackerIdle
	s.trackerIdle = false
	s.mu.Unlock()
	if idle {
		kick(s.trackWake)
	}
	kick(s.writeWake)
}

// trimFifo drops the resolved attempts at the head of the fifo so that
// confirmed messages are not kept alive until the tracker's next run. Call
// with s.mu held.
func (s *session) trimFifo() {
	for a := s.fifo.peek(); a != nil && a.state != attQueued && a.state != attSent; a = s.fifo.peek() {
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
			// The confirm timeout of a sent message runs from its write, so
			// that a backlog in front of the writer spends no attempt.
			deadline := time.Now().Add(s.p.cfg.confirmTimeout)
			for _, a := range batch {
				if a.state != attQueued {
					continue
				}
				s.nextTag++
				a.tag = s.nextTag
				a.state = attSent
				a.deadline = deadline
				s.pending[a.tag] = a
			}
			s.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			batcher, _ := s.ch.(transport.Batcher)
			if batcher != nil && len(batch) > 1 {
				batcher.BeginBatch()
			} else {
				batcher = nil
			}
			for i, a := range batch {
				batch[i] = nil
				if a.tag == 0 {
					continue // timed out before it was written
				}
				m := a.m
				n := m.sends.Add(1)
				m.sentAt.Store(time.Now().UnixNano())
				tag, err := s.ch.Publish(s.ctx, ex, m.typ.RoutingKey(), true, transport.Publishing{
					ContentType: "application/json",
					MessageID:   m.id,
					Timestamp:   time.Unix(0, m.created),
					Type:        string(m.typ),
					AppID:       s.p.cfg.appID,
					Persistent:  true,
					Headers:     s.p.attemptHeaders(n),
					Body:        m.body,
				})
				if err == nil && tag != a.tag {
					err = fmt.Errorf("mlproducer: delivery tag %d from the channel, %d expected", tag, a.tag)
				}
				if err != nil {
					if batcher != nil {
						batcher.EndBatch()
					}
					s.fail(fmt.Errorf("publish: %w", err))
					return
				}
			}
			if batcher != nil {
				if err := batcher.EndBatch(); err != nil {
					s.fail(fmt.Errorf("publish: %w", err))
					return
				}
			}
			s.mu.Lock()
			s.spare = batch[:0]
			s.mu.Unlock()
		}
	}
}

// tracker times out confirms with one timer, set for the oldest deadline.
// Attempts are in the fifo in hand-off order, which is also write order, so
// the deadlines of sent attempts never decrease along it; an attempt still
// waiting for the writer (deadline from hand-off) may expire a little late,
// behind a sent one, which only delays its return to the retry queue.
func (s *session) tracker() {
	defer s.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var requeue, failed []*message
	for {
		now := time.Now()
		s.mu.Lock()
		if s.dead {
			s.mu.Unlock()
			return
		}
		var wait time.Duration
		for a := s.fifo.peek(); a != nil; a = s.fifo.peek() {
			if a.state != attQueued && a.state != attSent {
				s.fifo.pop()
				continue
			}
			if d := a.deadline.Sub(now); d > 0 {
				wait = d
				break
			}
			s.fifo.pop()
			s.inflight--
			switch {
			case a.state == attQueued:
				// Never written: the writer is stuck (back-pressure).
				a.state = attDone
				a.report(errNotSent)
				requeue = append(requeue, a.m)
			case s.blocked.Load():
				// Held by the broker's flow control, not refused: no
				// attempt is spent, and a late ack still counts.
				a.state = attTimedOut
				s.timedOut++
				a.report(errNotSent)
				requeue = append(requeue, a.m)
			default:
				a.state = attTimedOut
				s.timedOut++
				a.report(errConfirmTimeout)
				failed = append(failed, a.m)
			}
		}
		s.trimFifo()
		s.trackerIdle = wait == 0
		tooMany := s.timedOut > s.p.cfg.maxInFlight
		s.mu.Unlock()

		for _, m := range requeue {
			s.p.requeue(m, now)
		}
		for _, m := range failed {
			s.p.metrics.failures[failTimeout].Add(1)
			s.p.failAttempt(m, errConfirmTimeout)
		}
		if len(requeue)+len(failed) > 0 {
			s.p.wakeRetry()
		}
		clear(requeue)
		clear(failed)
		requeue, failed = requeue[:0], failed[:0]
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

func (s *session) onConfirm(c transport.Confirmation) {
	if !s.enter() {
		return
	}
	defer s.cbs.Done()
	var one [1]*attempt
	done := one[:0]
	take := func(tag uint64) {
		a, ok := s.pending[tag]
		if !ok {
			return
		}
		delete(s.pending, tag)
		switch a.state {
		case attSent:
			s.inflight--
		case attTimedOut:
			s.timedOut--
		}
		done = append(done, a)
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
	type result struct {
		m        *message
		returned *ReturnedError
		late     bool
		done     func(error)
	}
	var oneOut [1]result
	outs := oneOut[:0]
	for _, a := range done {
		outs = append(outs, result{a.m, a.returned, a.state == attTimedOut, a.done})
		a.state = attDone
		a.m, a.done = nil, nil
	}
	s.trimFifo()
	s.mu.Unlock()

	p := s.p
	for _, o := range outs {
		switch {
		case !c.Ack:
			p.metrics.failures[failNack].Add(1)
			if o.done != nil {
				o.done(errNacked)
			}
			p.failAttempt(o.m, errNacked)
		case o.returned != nil:
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
				if o.late {
					p.cancelRetry(o.m)
				}
				p.confirmed(o.m)
			}
		}
	}
	if len(done) > 0 {
		p.wakeRetry()
	}
}

// onReturn marks the oldest sent attempt of the returned message; its ack,
// which follows, then counts as a failure.
func (s *session) onReturn(r transport.Return) {
	if !s.enter() {
		return
	}
	defer s.cbs.Done()
	defer s.mu.Unlock()
	for _, a := range s.fifo.live() {
		if a.state == attSent && a.m.id == r.MessageID && a.returned == nil {
			a.returned = &ReturnedError{Code: r.ReplyCode, Text: r.ReplyText, Exchange: r.Exchange, RoutingKey: r.RoutingKey}
			return
		}
	}
	for _, a := range s.pending {
		if a.state == attTimedOut && a.m.id == r.MessageID && a.returned == nil {
			a.returned = &ReturnedError{Code: r.ReplyCode, Text: r.ReplyText, Exchange: r.Exchange, RoutingKey: r.RoutingKey}
			return
		}
	}
}

// teardown closes the session and puts every message it still held back in
// the retry queue, spending no attempt: the connection failed, not the
// message.
func (s *session) teardown() {
	s.mu.Lock()
	s.dead = true
	var back []*message
	lost := false
	for _, a := range s.fifo.live() {
		switch a.state {
		case attQueued:
			a.report(errNotSent)
			back = append(back, a.m)
		case attSent:
			s.p.metrics.failures[failConnLost].Add(1)
			// One lost connection is one failure for the breaker, however
			// many messages were in flight on it.
			if !lost {
				a.report(errConnLost)
				lost = true
			} else {
				a.report(errNotSent)
			}
			back = append(back, a.m)
		}
		a.state = attDone
	}
	s.fifo, s.queue, s.pending = fifo{}, nil, nil
	s.inflight = 0
	s.mu.Unlock()

	s.stopF()
	if s.conn != nil {
		s.conn.Close()
	}
	s.wg.Wait()
	s.cbs.Wait()
	now := time.Now()
	for _, m := range back {
		s.p.requeue(m, now)
	}
}

// pendingCount is the number of messages handed to this session and not yet
// resolved.
func (s *session) pendingCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inflight
}

// fifo is a queue of attempts that reuses its array: popping advances a head
// index, and the live part moves down once the dead part is the larger.
type fifo struct {
	buf  []*attempt
	head int
}

func (q *fifo) push(a *attempt) {
	if q.head > 0 && q.head >= len(q.buf)-q.head && len(q.buf) == cap(q.buf) {
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf, q.head = q.buf[:n], 0
	}
	q.buf = append(q.buf, a)
}

func (q *fifo) peek() *attempt {
	if q.head == len(q.buf) {
		return nil
	}
	return q.buf[q.head]
}

func (q *fifo) pop() {
	q.buf[q.head] = nil
	q.head++
	if q.head == len(q.buf) {
		q.buf, q.head = q.buf[:0], 0
	}
}

// live returns the attempts not yet popped, oldest first.
func (q *fifo) live() []*attempt { return q.buf[q.head:] }
