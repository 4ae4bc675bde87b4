package mlproducer

import (
	"errors"
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

// breaker wraps gobreaker's two-step breaker: a publish takes a ticket before
// it is handed off and reports the outcome of that attempt when its confirm
// (or failure) arrives, which may be much later. It opens after the configured
// number of consecutive failures (nacks, returns, confirm timeouts, lost
// connections with the message in flight, failed dials), stays open for the
// cooldown, then lets one probe through: its success closes the breaker, its
// failure opens it again. Callers' cancelled contexts and invalid tasks never
// reach it.
type breaker struct {
	cb       *gobreaker.TwoStepCircuitBreaker[struct{}]
	openedAt atomic.Int64 // unix nanos of the last transition to open
	cooldown time.Duration
}

func newBreaker(p *Producer) *breaker {
	b := &breaker{cooldown: p.cfg.breakerCooldown}
	// validate keeps the threshold within uint32; min guards the conversion.
	threshold := uint32(min(uint64(p.cfg.breakerThreshold), 1<<32-1))
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        p.cfg.connectionName,
		MaxRequests: 1,
		Timeout:     p.cfg.breakerCooldown,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= threshold },
		IsExcluded:  func(err error) bool { return errors.Is(err, errNotSent) },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			if to == gobreaker.StateOpen {
				b.openedAt.Store(time.Now().UnixNano())
			}
			// Called under the breaker's lock: only log and wake.
			p.log.Warn("mlproducer: circuit breaker", slog.String("from", from.String()), slog.String("to", to.String()))
			p.wakeRetry()
		},
	})
	return b
}

// allow takes a ticket for one attempt, or fails with [ErrCircuitOpen].
func (b *breaker) allow() (func(error), error) {
	done, err := b.cb.Allow()
	if err != nil {
		return nil, ErrCircuitOpen
	}
	return done, nil
}

// open reports whether publishes are being refused (open or half-open).
func (b *breaker) open() bool { return b.cb.State() != gobreaker.StateClosed }

// waitOpen returns how long until an open breaker lets a probe through, or 0
// if it is not open.
func (b *breaker) waitOpen() time.Duration {
	if b.cb.State() != gobreaker.StateOpen {
		return 0
	}
	d := time.Until(time.Unix(0, b.openedAt.Load()).Add(b.cooldown))
	return max(d, time.Millisecond)
}

// halfOpenState reports whether the breaker waits for a probe.
func (b *breaker) halfOpenState() bool { return b.cb.State() == gobreaker.StateHalfOpen }

// probe runs check. If the breaker is half-open and no publish holds its
// probe ticket, check's outcome is the probe's: success closes the breaker,
// failure opens it again. Otherwise the breaker is left as it is.
func (b *breaker) probe(check func() error) error {
	if !b.halfOpenState() {
		return check()
	}
	done, aerr := b.cb.Allow()
	err := check()
	if aerr == nil {
		done(err)
	}
	return err
}

// report feeds one dial outcome to the breaker when it takes one.
func (b *breaker) report(err error) {
	if done, aerr := b.cb.Allow(); aerr == nil {
		done(err)
	}
}
