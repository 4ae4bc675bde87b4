package mlproducer

import (
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// errNotSent marks an attempt that never reached the broker (no connection,
// a blocked one, or Close): the breaker counts it neither way.
var errNotSent = errors.New("mlproducer: not sent")

// errConnLost is the failure of an attempt whose connection died before its
// confirm arrived.
var errConnLost = errors.New("mlproducer: connection lost before the confirm")

// errDialFailed marks a failed connection attempt reported to the breaker, so
// that it knows when the broker was merely unreachable.
var errDialFailed = errors.New("mlproducer: dial failed")

// notSent reports to a publish's breaker ticket that its message was not
// sent. A publish admitted while the breaker refused attempts has no ticket
// (nil): its message waits in the buffer, and the retry queue takes a ticket
// of its own when the breaker lets it.
func notSent(done func(error)) {
	if done != nil {
		done(errNotSent)
	}
}

// buffered reports whether the Producer keeps a message it cannot send now:
// a spool, or a retry queue with room for at least one message (everything
// but [WithRetryQueueCapacity](0, 0)).
func (c *config) buffered() bool { return c.spoolDir != "" || c.retryCapCount > 0 }

// breaker wraps gobreaker's two-step breaker: an attempt takes a ticket before
// it is handed off and reports its outcome when its confirm (or failure)
// arrives, which may be much later. It opens after the configured number of
// consecutive failures (nacks, returns, confirm timeouts, lost connections
// with the message in flight, failed dials), stays open for the cooldown,
// then lets one probe through: its success closes the breaker, its failure
// opens it again. Callers' cancelled contexts and invalid tasks never reach
// it.
//
// The breaker gates sends, not acceptance: while it is open, publishes go to
// the buffer when it has room (see [Producer.begin]). When the failure that
// opened it was a failed dial (the broker was unreachable), a later dial that
// gets through, topology declared, is proof enough that the broker is back:
// connected resets the breaker at once instead of waiting out the cooldown.
type breaker struct {
	cb       atomic.Pointer[gobreaker.TwoStepCircuitBreaker[struct{}]]
	p        *Producer
	openedAt atomic.Int64 // unix nanos of the last transition to open
	// openedByDial is whether the failure that last opened the breaker was a
	// failed dial. lastFailDial is the kind of the last failure; both are
	// written under gobreaker's lock.
	openedByDial atomic.Bool
	lastFailDial atomic.Bool
	// refusal is the error of a refused attempt since the last transition
	// to open, carrying the end of its cooldown for [RetryAfter]; made once
	// per opening so that a refusal allocates nothing.
	refusal atomic.Pointer[circuitOpenError]
}

func newBreaker(p *Producer) *breaker {
	b := &breaker{p: p}
	b.cb.Store(b.newCB())
	return b
}

// newCB builds a breaker in the closed state. Its callbacks act only while it
// is the current one, so a ticket of a breaker replaced by reset changes
// nothing.
func (b *breaker) newCB() *gobreaker.TwoStepCircuitBreaker[struct{}] {
	p := b.p
	// validate keeps the threshold within uint32; min guards the conversion.
	threshold := uint32(min(uint64(p.cfg.breakerThreshold), 1<<32-1))
	var cb *gobreaker.TwoStepCircuitBreaker[struct{}]
	cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        p.cfg.connectionName,
		MaxRequests: 1,
		Timeout:     p.cfg.breakerCooldown,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= threshold },
		IsExcluded:  func(err error) bool { return errors.Is(err, errNotSent) },
		IsSuccessful: func(err error) bool {
			if err == nil {
				return true
			}
			// Called under the breaker's lock, just before OnStateChange.
			b.lastFailDial.Store(errors.Is(err, errDialFailed))
			return false
		},
		OnStateChange: func(_ string, from, to gobreaker.State) {
			if b.cb.Load() != cb {
				return
			}
			if to == gobreaker.StateOpen {
				now := time.Now()
				b.openedAt.Store(now.UnixNano())
				b.refusal.Store(&circuitOpenError{until: now.Add(p.cfg.breakerCooldown)})
				b.openedByDial.Store(b.lastFailDial.Load())
			}
			// Called under the breaker's lock: only log and wake.
			p.log.Warn("mlproducer: circuit breaker", slog.String("from", from.String()), slog.String("to", to.String()))
			p.wakeRetry()
		},
	})
	return cb
}

// allow takes a ticket for one attempt, or fails with an error that wraps
// [ErrCircuitOpen] and carries the remaining cooldown (see [RetryAfter]).
func (b *breaker) allow() (func(error), error) {
	done, err := b.cb.Load().Allow()
	if err != nil {
		if r := b.refusal.Load(); r != nil {
			return nil, r
		}
		return nil, ErrCircuitOpen
	}
	return done, nil
}

// open reports whether the breaker holds sends back (open or half-open).
func (b *breaker) open() bool { return b.cb.Load().State() != gobreaker.StateClosed }

// waitOpen returns how long until an open breaker lets a probe through, or 0
// if it is not open.
func (b *breaker) waitOpen() time.Duration {
	if b.cb.Load().State() != gobreaker.StateOpen {
		return 0
	}
	d := time.Until(time.Unix(0, b.openedAt.Load()).Add(b.p.cfg.breakerCooldown))
	return max(d, time.Millisecond)
}

// halfOpenState reports whether the breaker waits for a probe.
func (b *breaker) halfOpenState() bool { return b.cb.Load().State() == gobreaker.StateHalfOpen }

// probe runs check. If the breaker is half-open and no attempt holds its
// probe ticket, check's outcome is the probe's: success closes the breaker,
// failure opens it again. Otherwise the breaker is left as it is.
func (b *breaker) probe(check func() error) error {
	cb := b.cb.Load()
	if cb.State() != gobreaker.StateHalfOpen {
		return check()
	}
	done, aerr := cb.Allow()
	err := check()
	if aerr == nil {
		done(err)
	}
	return err
}

// dialFailed feeds one failed dial to the breaker when it takes one.
func (b *breaker) dialFailed(err error) {
	if done, aerr := b.cb.Load().Allow(); aerr == nil {
		done(fmt.Errorf("%w: %w", errDialFailed, err))
	}
}

// connected is told of every dial that got through with the topology
// declared. If the breaker was opened by failed dials, the broker was
// unreachable and is back: the breaker closes now, so that sending resumes
// within the reconnect backoff rather than after the cooldown. If it is
// half-open, the dial is its successful probe. Otherwise (closed, or opened
// by failures of messages or of connections that died with messages in
// flight) it changes nothing: a broker that drops every connection must still
// open the breaker, and one that nacks everything must still wait out the
// cooldown.
func (b *breaker) connected() {
	cb := b.cb.Load()
	switch cb.State() {
	case gobreaker.StateClosed:
		return
	case gobreaker.StateHalfOpen:
		if done, aerr := cb.Allow(); aerr == nil {
			done(nil)
			return
		}
	}
	if !b.openedByDial.Load() {
		return
	}
	if b.cb.CompareAndSwap(cb, b.newCB()) {
		b.openedByDial.Store(false)
		b.p.log.Warn("mlproducer: circuit breaker", slog.String("from", cb.State().String()), slog.String("to", "closed"),
			slog.String("reason", "the broker is reachable again"))
		b.p.wakeRetry()
	}
}
