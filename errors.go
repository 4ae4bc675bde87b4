package mlproducer

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// Sentinel errors. Test for them with [errors.Is].
var (
	// ErrClosed is returned by a publish after [Producer.Close] has begun.
	// The message was not taken.
	ErrClosed = errors.New("mlproducer: producer closed")
	// ErrCircuitOpen is returned while the circuit breaker is open (the broker
	// failed too often) and the message cannot be buffered because buffering
	// is off ([WithRetryQueueCapacity](0, 0)). With a buffer, an open breaker
	// refuses nothing: the message is queued, or refused with
	// [ErrRetryQueueFull] when the buffer is full. The message was not taken;
	// retry later or fail the request.
	ErrCircuitOpen = errors.New("mlproducer: circuit open")
	// ErrRetryQueueFull is returned when the message would have to wait in the
	// retry queue (no connection, a blocked one, an open breaker) and the
	// queue is at its count or byte capacity ([WithRetryQueueCapacity]; with
	// capacity 0 it never has room). The message was not taken.
	ErrRetryQueueFull = errors.New("mlproducer: retry queue full")
	// ErrSpoolUnavailable is returned by a publish when the spool of
	// [WithSpool] could not store the message (disk full, I/O error); the
	// error wrapping it names the cause and the dir. The message was not
	// taken. Publishes are accepted again as soon as a write of the store
	// succeeds: free disk space under the dir.
	ErrSpoolUnavailable = errors.New("mlproducer: the spool cannot store the message")
	// ErrInvalidTask is wrapped by every [*InvalidTaskError]. The message was
	// not taken.
	ErrInvalidTask = errors.New("mlproducer: invalid task")
	// ErrTooLarge is wrapped by the [*InvalidTaskError] of content or a body
	// over its size limit (a service answers 413 rather than 400), and it
	// wraps [ErrInvalidTask] itself. The message was not taken.
	ErrTooLarge = fmt.Errorf("%w: too large", ErrInvalidTask)
	// ErrInvalidOption is wrapped by every [*OptionError].
	ErrInvalidOption = errors.New("mlproducer: invalid option")
	// ErrNotReady is wrapped by every error of [Producer.Ready]: the Producer
	// cannot take a message now (closed, buffer full, or, without a buffer,
	// no connection or an open breaker).
	ErrNotReady = errors.New("mlproducer: not ready")
)

// InvalidTaskError says which field of a task was refused and why. It wraps
// [ErrInvalidTask], through [ErrTooLarge] when the field is over a size limit.
type InvalidTaskError struct {
	// Field is the field's name as it appears in the JSON body, for example
	// "shareId" or "options.maxLength".
	Field string
	// Reason says what is wrong, in words a caller can show to its user.
	Reason string

	err error // ErrTooLarge, or nil for ErrInvalidTask
}

func (e *InvalidTaskError) Error() string {
	return fmt.Sprintf("mlproducer: invalid task: %s: %s", e.Field, e.Reason)
}

// Unwrap returns [ErrTooLarge] for a field over its size limit, otherwise
// [ErrInvalidTask].
func (e *InvalidTaskError) Unwrap() error {
	if e.err != nil {
		return e.err
	}
	return ErrInvalidTask
}

// OptionError names an option or environment variable whose value was
// refused. It wraps [ErrInvalidOption].
type OptionError struct {
	// Name is the option (for example "WithMaxRetries") or the environment
	// variable (for example "ML_MAX_MESSAGE_RETRIES").
	Name string
	// Value is the refused value as given, with any password redacted.
	Value string
	// Reason says what a valid value looks like.
	Reason string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("mlproducer: invalid option %s=%q: %s", e.Name, e.Value, e.Reason)
}

// Unwrap returns [ErrInvalidOption].
func (e *OptionError) Unwrap() error { return ErrInvalidOption }

// CloseError is the error of [Producer.Close] when messages the Producer had
// taken were still unconfirmed at the end: without a spool they were handed
// to the dead-letter hook, with [WithSpool] they stay in the spool and are
// sent by the next Producer started on the same dir. Get it with
// [errors.As]; [errors.Is](err, [context.DeadlineExceeded]) (or
// [context.Canceled]) tells that Close's ctx ended before they were
// confirmed.
type CloseError struct {
	// Unconfirmed is how many accepted messages had no confirm when Close
	// returned: DeadLettered plus LeftInSpool.
	Unconfirmed int
	// DeadLettered is how many of them were handed to the dead-letter hook
	// (always 0 with a spool).
	DeadLettered int
	// LeftInSpool is how many of them stay in the spool for the next start
	// (always 0 without a spool).
	LeftInSpool int
	// SpoolDir is the dir of [WithSpool], or "" without a spool.
	SpoolDir string

	cause error // ctx's error, or errNoConnection
}

func (e *CloseError) Error() string {
	switch {
	case e.LeftInSpool == 0:
		return fmt.Sprintf("mlproducer: closed with %d messages unconfirmed, handed to the dead-letter hook (%v)", e.DeadLettered, e.cause)
	case e.DeadLettered == 0:
		return fmt.Sprintf("mlproducer: closed with %d messages unconfirmed, left in the spool %s for the next start (%v)", e.LeftInSpool, e.SpoolDir, e.cause)
	}
	return fmt.Sprintf("mlproducer: closed with %d messages unconfirmed: %d handed to the dead-letter hook, %d left in the spool %s for the next start (%v)",
		e.Unconfirmed, e.DeadLettered, e.LeftInSpool, e.SpoolDir, e.cause)
}

// Unwrap returns the error of Close's ctx ([context.DeadlineExceeded] or
// [context.Canceled]) when it ended before the messages were confirmed;
// otherwise an error saying there was no connection to confirm them.
func (e *CloseError) Unwrap() error { return e.cause }

// circuitOpenError is the refusal of an open breaker: it wraps
// [ErrCircuitOpen] and carries when the breaker lets a probe through. One is
// made each time the breaker opens and shared by every refusal until the
// next, so that a refusal allocates nothing.
type circuitOpenError struct {
	until time.Time // the end of the cooldown
}

func (e *circuitOpenError) Error() string { return ErrCircuitOpen.Error() }
func (e *circuitOpenError) Unwrap() error { return ErrCircuitOpen }

// queueFullError is the refusal of a full buffer: it wraps
// [ErrRetryQueueFull] and lets [RetryAfter] ask its Producer how fast the
// buffer drains. A struct holding one pointer, it becomes an error without an
// allocation.
type queueFullError struct {
	p *Producer
}

func (e queueFullError) Error() string { return ErrRetryQueueFull.Error() }
func (e queueFullError) Unwrap() error { return ErrRetryQueueFull }

// RetryAfter says how long a caller refused with [ErrCircuitOpen] or
// [ErrRetryQueueFull] should wait before trying again, for example in an HTTP
// Retry-After header (rounded up to whole seconds). It returns false for any
// other error, and for those two sentinels when they do not come from a
// publish (a bare [ErrCircuitOpen] carries no time).
//
//   - [ErrCircuitOpen]: the breaker's remaining cooldown when the publish was
//     refused, counted from now; at least 1 ms (once the cooldown has passed,
//     the breaker waits for its probe's outcome).
//   - [ErrRetryQueueFull]: an estimate of the time the Producer needs to
//     confirm the messages it holds, at the rate it confirmed messages
//     recently. The rate is sampled by the calls to RetryAfter themselves
//     (no goroutine): it is measured from an earlier call, at least one
//     second and at most about a minute before. When no rate is known
//     (nothing confirmed in that span, as with no connection, or no earlier
//     call within 30 s), it is the initial interval of [WithRetryBackoff].
//     The estimate is at least that initial interval and at most a minute.
func RetryAfter(err error) (time.Duration, bool) {
	var open *circuitOpenError
	if errors.As(err, &open) {
		return max(time.Until(open.until), time.Millisecond), true
	}
	var full queueFullError
	if errors.As(err, &full) && full.p != nil {
		return full.p.drain.estimate(full.p), true
	}
	return 0, false
}

// drainRate measures how fast a Producer confirms messages, for [RetryAfter]:
// it keeps two samples of the confirm count at least drainWindow apart and
// takes the rate from the older one to now.
type drainRate struct {
	mu     sync.Mutex
	prevAt time.Time
	prevN  uint64
	lastAt time.Time
	lastN  uint64
}

const (
	drainWindow   = time.Second
	drainStale    = 30 * time.Second // a sample older than this is not recent
	maxRetryAfter = time.Minute
)

// estimate returns the time p needs, at the recent confirm rate, to confirm
// the messages it holds; see [RetryAfter].
func (d *drainRate) estimate(p *Producer) time.Duration {
	now := time.Now()
	n := p.metrics.total(outConfirmed)
	floor := p.cfg.retryInitial
	d.mu.Lock()
	if d.lastAt.IsZero() || now.Sub(d.lastAt) > drainStale {
		d.prevAt, d.prevN, d.lastAt, d.lastN = now, n, now, n
	} else if now.Sub(d.lastAt) >= drainWindow {
		d.prevAt, d.prevN, d.lastAt, d.lastN = d.lastAt, d.lastN, now, n
	}
	span, confirmed := now.Sub(d.prevAt), n-d.prevN
	d.mu.Unlock()
	if span < drainWindow || confirmed == 0 {
		return floor
	}
	rate := float64(confirmed) / span.Seconds() // messages per second
	wait := time.Duration(float64(p.held.Load()) / rate * float64(time.Second))
	return min(max(wait, floor), maxRetryAfter)
}
