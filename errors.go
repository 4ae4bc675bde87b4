package mlproducer

import (
	"errors"
	"fmt"
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
