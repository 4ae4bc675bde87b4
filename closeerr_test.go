package mlproducer_test

// The errors a service maps to HTTP: *CloseError from Close and RetryAfter
// for the two refusals that ask the caller to come back later.

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// Without a spool, what Close could not get confirmed goes to the dead-letter
// hook, and the *CloseError counts it and unwraps to ctx's error.
func TestCloseErrorCountsDeadLettered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("connection refused"))
		var hooked atomic.Int32
		p := newFake(t, b, mlproducer.WithDeadLetter(func(mlproducer.DeadLetter) { hooked.Add(1) }))
		for i := range 3 {
			r, err := publishOne(p)
			require.NoError(t, err, "publish %d", i)
			require.Equal(t, mlproducer.Queued, r.State)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		err := p.Close(ctx)

		var closeErr *mlproducer.CloseError
		require.ErrorAs(t, err, &closeErr)
		assert.Equal(t, 3, closeErr.Unconfirmed)
		assert.Equal(t, 3, closeErr.DeadLettered)
		assert.Equal(t, 0, closeErr.LeftInSpool)
		assert.Empty(t, closeErr.SpoolDir)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.EqualError(t, err, "mlproducer: closed with 3 messages unconfirmed, handed to the dead-letter hook (context deadline exceeded)")
		assert.EqualValues(t, 3, hooked.Load())
		assert.Same(t, closeErr, errorAsClose(t, p.Close(context.Background())), "a second Close returns the same error")
	})
}

// With a spool, what Close could not get confirmed stays in the spool, and the
// *CloseError counts it and names the dir.
func TestCloseErrorCountsLeftInSpool(t *testing.T) {
	dir := t.TempDir()
	b := mlproducertest.NewBroker()
	defer b.Close()
	b.RefuseDials(errors.New("connection refused"))
	var hooked atomic.Int32
	p := newFake(t, b, mlproducer.WithSpool(dir), mlproducer.WithDeadLetter(func(mlproducer.DeadLetter) { hooked.Add(1) }))
	for i := range 2 {
		r, err := publishOne(p)
		require.NoError(t, err, "publish %d", i)
		require.Equal(t, mlproducer.Queued, r.State)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a SIGTERM handler out of time
	err := p.Close(ctx)

	closeErr := errorAsClose(t, err)
	assert.Equal(t, 2, closeErr.Unconfirmed)
	assert.Equal(t, 0, closeErr.DeadLettered)
	assert.Equal(t, 2, closeErr.LeftInSpool)
	assert.Equal(t, dir, closeErr.SpoolDir)
	assert.ErrorIs(t, err, context.Canceled)
	assert.EqualError(t, err, fmt.Sprintf("mlproducer: closed with 2 messages unconfirmed, left in the spool %s for the next start (context canceled)", dir))
	assert.Zero(t, hooked.Load(), "nothing dead-lettered with a spool")
}

// A Close that got everything confirmed returns nil, not a *CloseError.
func TestCloseErrorNilWhenAllConfirmed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b)
		waitConnected(t, p)
		r, err := publishOne(p)
		require.NoError(t, err)
		require.Equal(t, mlproducer.Confirmed, r.State)
		require.NoError(t, closeProducer(t, p))
	})
}

func errorAsClose(t *testing.T, err error) *mlproducer.CloseError {
	t.Helper()
	var closeErr *mlproducer.CloseError
	require.ErrorAs(t, err, &closeErr)
	return closeErr
}

// An open breaker's refusal carries its remaining cooldown, counted from the
// call to RetryAfter.
func TestRetryAfterCircuitOpen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("connection refused"))
		p := newFake(t, b, mlproducer.WithCircuitBreaker(1, time.Hour), noBuffer,
			mlproducer.WithReconnectBackoff(time.Minute, time.Minute), mlproducer.WithHealthCheckInterval(0))
		opened := time.Now()
		synctest.Wait() // the first dial failed and opened the breaker; the fake clock has not moved
		require.True(t, p.Status().CircuitBreakerOpen)
		_, err := publishOne(p)
		require.ErrorIs(t, err, mlproducer.ErrCircuitOpen)
		assert.EqualError(t, err, mlproducer.ErrCircuitOpen.Error(), "the text is the sentinel's")
		d, ok := mlproducer.RetryAfter(err)
		require.True(t, ok)
		assert.Equal(t, time.Hour, d)

		time.Sleep(20 * time.Minute)
		d, ok = mlproducer.RetryAfter(err)
		require.True(t, ok)
		assert.Equal(t, 40*time.Minute, d, "opened at %v, now %v", opened, time.Now())

		wrapped := fmt.Errorf("handler: %w", err)
		d, ok = mlproducer.RetryAfter(wrapped)
		require.True(t, ok, "found through wrapping")
		assert.Equal(t, 40*time.Minute, d)

		time.Sleep(time.Hour)
		d, ok = mlproducer.RetryAfter(err)
		require.True(t, ok)
		assert.Equal(t, time.Millisecond, d, "past the cooldown: the least wait")
		require.NoError(t, closeProducer(t, p))
	})
}

// A full buffer's refusal says to wait the retry backoff's initial interval
// when no confirm rate is known.
func TestRetryAfterRetryQueueFullWithoutRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("connection refused"))
		p := newFake(t, b, noBuffer, mlproducer.WithCircuitBreaker(1<<20, time.Hour),
			mlproducer.WithRetryBackoff(300*time.Millisecond, time.Second))
		_, err := publishOne(p)
		require.ErrorIs(t, err, mlproducer.ErrRetryQueueFull)
		assert.NotErrorIs(t, err, mlproducer.ErrCircuitOpen)
		assert.EqualError(t, err, mlproducer.ErrRetryQueueFull.Error(), "the text is the sentinel's")
		d, ok := mlproducer.RetryAfter(err)
		require.True(t, ok)
		assert.Equal(t, 300*time.Millisecond, d)
		require.NoError(t, closeProducer(t, p))
	})
}

// Every other error, and the bare sentinels, carry no wait.
func TestRetryAfterOtherErrors(t *testing.T) {
	for _, err := range []error{
		nil,
		errors.New("other"),
		mlproducer.ErrClosed,
		mlproducer.ErrInvalidTask,
		mlproducer.ErrTooLarge,
		mlproducer.ErrSpoolUnavailable,
		mlproducer.ErrCircuitOpen,
		mlproducer.ErrRetryQueueFull,
		context.DeadlineExceeded,
		&mlproducer.CloseError{Unconfirmed: 1, DeadLettered: 1},
	} {
		d, ok := mlproducer.RetryAfter(err)
		assert.False(t, ok, "%v", err)
		assert.Zero(t, d, "%v", err)
	}
}
