package mlproducer

import (
	"container/heap"
	"log/slog"
	"time"

	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// retryStore holds the messages waiting for their next attempt, ordered by
// when that attempt is due. It is kept small so that an on-disk store can
// replace the in-memory one. Implementations are not safe for concurrent use:
// the Producer serialises calls under its retry lock.
type retryStore interface {
	// push adds m, due at m.due. It never refuses: admission is decided by
	// the caller with len and bytes. spill says that no attempt of m can
	// still be confirmed, so the store may keep m on disk only and give back
	// another *message for it from pop.
	push(m *message, spill bool)
	// peekDue returns when the first message is due, or false when empty.
	peekDue() (int64, bool)
	// pop removes and returns the message due first, or nil when empty. An
	// error (a store that cannot be read) leaves the message in the store.
	pop() (*message, error)
	// remove takes m out of the store and reports whether it was there.
	remove(m *message) bool
	// len is the number of messages held.
	len() int
	// bytes is the total body size held.
	bytes() int
}

// memRetryStore is a min-heap of messages by due time.
type memRetryStore struct {
	h     msgHeap
	total int
}

func (s *memRetryStore) push(m *message, _ bool) {
	heap.Push(&s.h, m)
	s.total += len(m.body)
}

func (s *memRetryStore) peekDue() (int64, bool) {
	if len(s.h) == 0 {
		return 0, false
	}
	return s.h[0].due, true
}

func (s *memRetryStore) pop() (*message, error) {
	if len(s.h) == 0 {
		return nil, nil
	}
	m := heap.Pop(&s.h).(*message)
	s.total -= len(m.body)
	return m, nil
}

func (s *memRetryStore) remove(m *message) bool {
	i := m.heapIndex
	if i < 0 || i >= len(s.h) || s.h[i] != m {
		return false
	}
	heap.Remove(&s.h, i)
	s.total -= len(m.body)
	return true
}

func (s *memRetryStore) len() int   { return len(s.h) }
func (s *memRetryStore) bytes() int { return s.total }

type msgHeap []*message

func (h msgHeap) Len() int { return len(h) }
func (h msgHeap) Less(i, j int) bool {
	if h[i].due == h[j].due {
		return h[i].seq < h[j].seq
	}
	return h[i].due < h[j].due
}
func (h msgHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIndex = i
	h[j].heapIndex = j
}
func (h *msgHeap) Push(x any) {
	m := x.(*message)
	m.heapIndex = len(*h)
	*h = append(*h, m)
}
func (h *msgHeap) Pop() any {
	old := *h
	n := len(old)
	m := old[n-1]
	old[n-1] = nil
	m.heapIndex = -1
	*h = old[:n-1]
	return m
}

// retryLoop hands due messages to the current session, and dead-letters the
// messages whose attempts ran out: it counts and logs them and queues them for
// the hook's own goroutine (hookLoop), so a slow hook never delays retries.
func (p *Producer) retryLoop() {
	defer p.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		p.flushDeadLetters()
		wait := p.sendDue()
		if wait > 0 {
			timer.Reset(wait)
		}
		select {
		case <-p.stop:
			return
		case <-p.retryWake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// sendDue moves due messages to the live session while it has room. It
// returns how long until the next message is due, or 0 when there is nothing
// to wait for but a wake-up (no session, no room, or an empty queue).
func (p *Producer) sendDue() time.Duration {
	for {
		s := p.liveSession()
		if s == nil {
			return 0
		}
		p.rmu.Lock()
		due, ok := p.retry.peekDue()
		if !ok {
			p.rmu.Unlock()
			return 0
		}
		now := time.Now()
		if d := time.Duration(due - now.UnixNano()); d > 0 {
			p.rmu.Unlock()
			return d
		}
		// Wait out an open breaker rather than hammering the broker.
		if d := p.breaker.waitOpen(); d > 0 {
			p.rmu.Unlock()
			return d
		}
		if !s.reserve() {
			p.rmu.Unlock()
			return 0
		}
		done, err := p.breaker.allow()
		if err != nil {
			// Half-open with its probe in flight: its outcome wakes us;
			// look again soon in case it never reaches the broker.
			p.rmu.Unlock()
			s.release()
			return halfOpenRecheck
		}
		m, err := p.retry.pop()
		p.queued.Store(int64(p.retry.len()))
		p.rmu.Unlock()
		// Room in the retry queue, for a PublishAsync that found it full.
		p.room.signal()
		if m == nil || m.final.Load() != 0 {
			// Empty after all, a store that cannot be read (try again in
			// a while: the message stays there), or a message confirmed
			// meanwhile by an earlier attempt.
			s.release()
			done(errNotSent)
			if err != nil {
				p.log.Error("mlproducer: cannot read the spool; retrying", slog.Any("error", err))
				return spoolReadRetry
			}
			continue
		}
		if m.sends.Load() > 0 {
			p.metrics.retried.Add(1)
		}
		s.enqueue(m, done)
	}
}

// spoolReadRetry is how long the retry loop waits after the spool failed to
// give back a message.
const spoolReadRetry = time.Second

// halfOpenRecheck is how often the retry loop looks at a half-open breaker
// whose probe it does not own.
const halfOpenRecheck = 50 * time.Millisecond

// requeue puts an accepted message back in the retry queue without spending an
// attempt (its connection died, it never left, or the broker's flow control
// held its confirm). It never refuses. spill is false when an attempt of m
// may still be confirmed (a late ack after a timeout while blocked).
func (p *Producer) requeue(m *message, due time.Time, spill bool) {
	p.rmu.Lock()
	if m.final.Load() == 0 && m.heapIndex == -1 {
		m.due = due.UnixNano()
		m.seq = p.nextSeq()
		m.spanEvent(eventRequeued)
		p.retry.push(m, spill)
		p.queued.Store(int64(p.retry.len()))
	}
	p.rmu.Unlock()
	m.signal(Queued)
	p.wakeRetry()
}

// failAttempt records a failed attempt of m (nack, return, confirm timeout)
// and either schedules the next one with backoff or dead-letters m.
func (p *Producer) failAttempt(m *message, err error) {
	p.rmu.Lock()
	if m.final.Load() != 0 || m.heapIndex != -1 {
		// Confirmed meanwhile by another attempt, or already waiting.
		p.rmu.Unlock()
		return
	}
	m.attempts++
	m.lastErr = err
	if m.attempts > p.cfg.maxRetries {
		if !m.final.CompareAndSwap(0, finalDead) {
			p.rmu.Unlock()
			return
		}
		p.deadq = append(p.deadq, m)
		p.rmu.Unlock()
		p.markDead(m, err)
		p.wakeRetry()
		return
	}
	delay := p.backoffFor(m)
	m.due = time.Now().Add(delay).UnixNano()
	m.seq = p.nextSeq()
	if m.trace.Load() != nil {
		m.spanEvent(eventRetry, attrAttempts.Int(m.attempts), attrDelay.Int64(delay.Milliseconds()),
			semconv.ErrorTypeKey.String(errorType(err)))
	}
	// A late confirm of the failed attempt may still come: m stays itself.
	p.retry.push(m, false)
	p.queued.Store(int64(p.retry.len()))
	if p.spool != nil {
		p.spool.setAttempts(m)
	}
	p.rmu.Unlock()
	m.signal(Queued)
	p.wakeRetry()
}

// backoffFor returns the wait before the next attempt of m. Call with rmu held.
func (p *Producer) backoffFor(m *message) time.Duration {
	if m.backoff == nil {
		m.backoff = p.newRetryBackoff()
		// A message read back from the spool continues its backoff.
		for i := 1; i < m.attempts; i++ {
			m.backoff.NextBackOff()
		}
	}
	// cenkalti/backoff applies its jitter after the cap, so a draw at the
	// cap can reach 1.5x it: the documented maximum is the maximum.
	return min(m.backoff.NextBackOff(), p.cfg.retryMax)
}

// enqueueRetry puts a new message straight into the retry queue (no
// connection, a blocked one, or no room on it), if the queue has room.
func (p *Producer) enqueueRetry(m *message) bool {
	p.rmu.Lock()
	// With a spool, hold already decided by the spool's capacity.
	if p.spool == nil && (p.retry.len() >= p.cfg.retryCapCount || p.retry.bytes()+len(m.body) > p.cfg.retryCapBytes) {
		p.rmu.Unlock()
		return false
	}
	m.due = time.Now().UnixNano()
	m.seq = p.nextSeq()
	p.retry.push(m, true)
	p.queued.Store(int64(p.retry.len()))
	p.rmu.Unlock()
	m.signal(Queued)
	p.wakeRetry()
	return true
}

// cancelRetry takes a message confirmed by a late ack out of the queue.
func (p *Producer) cancelRetry(m *message) {
	p.rmu.Lock()
	p.retry.remove(m)
	p.queued.Store(int64(p.retry.len()))
	p.rmu.Unlock()
}

// flushDeadLetters hands the messages whose attempts ran out to deadLetter,
// outside any lock. Without a hook, deadLetter removes them from the spool
// itself, which waits for a sync: hence not on the session's goroutines.
func (p *Producer) flushDeadLetters() {
	p.rmu.Lock()
	dead := p.deadq
	p.deadq = nil
	p.rmu.Unlock()
	for _, m := range dead {
		p.deadLetter(m, m.lastErr)
	}
}

// wakeRetry wakes the retry loop, and a PublishAsync waiting for room: it
// is called wherever a message or a slot of the window may have moved (an
// attempt failed or was requeued, a connection came or went, the breaker or
// the broker's flow control changed).
func (p *Producer) wakeRetry() {
	select {
	case p.retryWake <- struct{}{}:
	default:
	}
	p.room.signal()
}
