package mlproducer_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// defaultReconnectMax is the default cap of the reconnect backoff
// (WithReconnectBackoff).
const defaultReconnectMax = 10 * time.Second

// startOutage makes the fake unreachable: live connections drop and every
// dial is refused.
func startOutage(b *mlproducertest.Broker) {
	b.RefuseDials(errors.New("connection refused"))
	b.DropConnections(nil)
	synctest.Wait()
}

// untilFirstConfirm ends the outage and returns how long the first confirm
// after it took, failing the test if none comes within an hour.
func untilFirstConfirm(t *testing.T, b *mlproducertest.Broker, p *mlproducer.Producer) time.Duration {
	t.Helper()
	before := p.Status().Confirmed
	b.RefuseDials(nil)
	back := time.Now()
	for p.Status().Confirmed == before {
		if time.Since(back) > time.Hour {
			t.Fatalf("no confirm an hour after the broker came back (status %+v)", p.Status())
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(back)
}

// A 10-minute outage at 100 publishes/s with the default breaker and
// reconnect backoff, and a buffer that holds it all: nothing is refused,
// the breaker shows the outage, the Producer stays ready, and the first
// confirm comes within the reconnect backoff cap once the broker is back,
// not after the breaker's 30 s cooldown. Then everything is delivered.
func TestLongOutageRefusesNothingWhileTheBufferHasRoom(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		// A small in-flight window only keeps the fake's event queue short
		// (it costs the race detector dearly while 60,000 messages drain).
		p, err := mlproducer.New(mlproducer.WithDialer(b), mlproducer.WithRetryQueueCapacity(100_000, 64<<20),
			mlproducer.WithMaxInFlight(32))
		require.NoError(t, err)
		waitConnected(t, p)
		r, err := publishOne(p)
		require.NoError(t, err)
		require.Equal(t, mlproducer.Confirmed, r.State)

		startOutage(b)
		// 100 publishes/s, in bursts of 10 every 100 ms.
		const rate, burst = 100, 10
		const outage = 10 * time.Minute
		n := int(outage / (time.Second / rate))
		var queued, refused int
		var firstRefusal error
		sawOpen, alwaysReady := false, true
		for range n / burst {
			for range burst {
				r, err := publishOne(p)
				switch {
				case err != nil:
					refused++
					if firstRefusal == nil {
						firstRefusal = err
					}
				case r.State == mlproducer.Queued:
					queued++
				}
			}
			sawOpen = sawOpen || p.Status().CircuitBreakerOpen
			alwaysReady = alwaysReady && p.Ready() == nil
			time.Sleep(burst * time.Second / rate)
		}
		require.Zero(t, refused, "refused while the buffer had room; first: %v", firstRefusal)
		assert.Equal(t, n, queued)
		assert.True(t, sawOpen, "the breaker shows the outage")
		assert.True(t, alwaysReady, "an outage with room in the buffer does not make the Producer unready")
		st := p.Status()
		assert.Equal(t, n, st.RetryQueueSize)
		assert.True(t, st.CircuitBreakerOpen)

		first := untilFirstConfirm(t, b, p)
		t.Logf("outage %v at %d/s: %d queued, %d refused; first confirm %v after the broker came back", outage, rate, queued, refused, first)
		assert.LessOrEqual(t, first, defaultReconnectMax, "the first confirm waited for more than the reconnect backoff cap")

		drainFrom := time.Now()
		for st := p.Status(); st.Confirmed < uint64(n+1); st = p.Status() {
			if time.Since(drainFrom) > time.Hour {
				t.Fatalf("not drained: %+v", st)
			}
			time.Sleep(10 * time.Millisecond)
		}
		assert.Len(t, b.StoredIDs(), n+1, "every accepted message arrived")
		assert.False(t, p.Status().CircuitBreakerOpen)
		require.NoError(t, closeProducer(t, p))
	})
}

// Each of several outages (the breaker open, its cooldown at a different
// phase each time) ends with a confirm within the reconnect backoff cap.
func TestSendingResumesWithinTheReconnectCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p, err := mlproducer.New(mlproducer.WithDialer(b), mlproducer.WithHealthCheckInterval(0))
		require.NoError(t, err)
		waitConnected(t, p)
		for i := range 6 {
			startOutage(b)
			// 101 s (at least 10 dials at one per 10 s at most) + 7 s per
			// round: the 30 s cooldown ends at another
			// moment relative to the broker's return each time.
			for range 101 + 7*i {
				r, err := publishOne(p)
				require.NoError(t, err)
				require.Equal(t, mlproducer.Queued, r.State)
				time.Sleep(time.Second)
			}
			require.True(t, p.Status().CircuitBreakerOpen, "round %d: the failed dials opened the breaker", i)
			first := untilFirstConfirm(t, b, p)
			assert.LessOrEqual(t, first, defaultReconnectMax, "round %d: first confirm %v after the broker came back", i, first)
			for st := p.Status(); st.RetryQueueSize > 0 || st.CircuitBreakerOpen; st = p.Status() {
				time.Sleep(10 * time.Millisecond)
			}
		}
		require.NoError(t, closeProducer(t, p))
	})
}

// With room in the buffer an open breaker queues; once the buffer is full
// the refusal is ErrRetryQueueFull, and readiness says so.
func TestFullBufferRefusesWithRetryQueueFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithRetryQueueCapacity(50, 1<<20), mlproducer.WithCircuitBreaker(3, time.Hour))
		waitConnected(t, p)
		startOutage(b)
		for b.Dials() < 5 {
			time.Sleep(10 * time.Millisecond)
		}
		require.True(t, p.Status().CircuitBreakerOpen)
		for i := range 50 {
			require.NoError(t, p.Ready(), "room for %d more", 50-i)
			r, err := publishOne(p)
			require.NoError(t, err, "publish %d", i)
			require.Equal(t, mlproducer.Queued, r.State)
		}
		_, err := publishOne(p)
		require.ErrorIs(t, err, mlproducer.ErrRetryQueueFull)
		assert.NotErrorIs(t, err, mlproducer.ErrCircuitOpen)
		assert.EqualError(t, p.Ready(), "mlproducer: not ready: retry queue full")
		code, body := probe(t, p.ReadinessHandler())
		assert.Equal(t, 503, code)
		assert.Equal(t, "retry queue full", body["reason"])

		b.RefuseDials(nil)
		for p.Status().RetryQueueSize > 0 {
			time.Sleep(10 * time.Millisecond)
		}
		require.NoError(t, p.Ready())
		assert.Len(t, b.StoredIDs(), 50)
		require.NoError(t, closeProducer(t, p))
	})
}

// WithRetryQueueCapacity(0, 0) turns buffering off: a publish goes to the
// broker or is refused, ErrRetryQueueFull while there is no connection to
// take it, ErrCircuitOpen while the breaker is open. Readiness follows.
func TestNoBufferRefusesWhatItCannotSend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithRetryQueueCapacity(0, 0), mlproducer.WithCircuitBreaker(3, time.Hour))
		waitConnected(t, p)
		r, err := publishOne(p)
		require.NoError(t, err)
		require.Equal(t, mlproducer.Confirmed, r.State)
		require.NoError(t, p.Ready())

		b.HangDials(true)
		b.DropConnections(nil)
		synctest.Wait()
		require.False(t, p.Status().CircuitBreakerOpen)
		_, err = publishOne(p)
		require.ErrorIs(t, err, mlproducer.ErrRetryQueueFull, "no connection, no buffer")
		assert.EqualError(t, p.Ready(), "mlproducer: not ready: connection state reconnecting")

		startOutage(b)
		b.HangDials(false)
		for !p.Status().CircuitBreakerOpen {
			time.Sleep(10 * time.Millisecond)
		}
		_, err = publishOne(p)
		require.ErrorIs(t, err, mlproducer.ErrCircuitOpen, "breaker open, no buffer")
		assert.EqualError(t, p.Ready(), "mlproducer: not ready: connection state reconnecting; circuit breaker open")

		b.RefuseDials(nil)
		waitConnected(t, p)
		assert.False(t, p.Status().CircuitBreakerOpen, "the dial that got through closed the breaker the dials opened")
		require.NoError(t, p.Ready())
		r, err = publishOne(p)
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Confirmed, r.State)
		assert.Len(t, b.StoredIDs(), 2)
		require.NoError(t, closeProducer(t, p))
	})
}

// A breaker opened by nacks is not closed by a dial: the broker answers, it
// refuses messages. Publishes are queued while it is open, nothing is sent
// until the cooldown ends, and the retry queue's probe then closes it.
func TestNackOpenedBreakerQueuesAndWaitsItsCooldown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithMaxRetries(0), mlproducer.WithCircuitBreaker(3, time.Minute),
			mlproducer.WithHealthCheckInterval(0))
		waitConnected(t, p)
		b.NackNext(3)
		for range 3 {
			_, err := publishOne(p)
			require.NoError(t, err)
		}
		require.True(t, p.Status().CircuitBreakerOpen)
		sent := b.Published()
		for range 5 {
			r, err := publishOne(p)
			require.NoError(t, err)
			assert.Equal(t, mlproducer.Queued, r.State)
		}
		b.DropConnections(nil) // the redial does not close a breaker the nacks opened
		time.Sleep(59 * time.Second)
		synctest.Wait()
		assert.Equal(t, sent, b.Published(), "nothing is sent while the breaker is open")
		assert.True(t, p.Status().CircuitBreakerOpen)
		require.NoError(t, p.Ready(), "open breaker, room in the buffer: ready")

		// Half-open: one probe from the retry queue, and only one, until its
		// confirm comes; a new publish meanwhile is queued too.
		b.HoldConfirms(true)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		assert.Equal(t, sent+1, b.Published(), "one probe at a time")
		r, err := publishOne(p)
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Queued, r.State)
		synctest.Wait()
		assert.Equal(t, sent+1, b.Published(), "one probe at a time")
		b.HoldConfirms(false)
		synctest.Wait()
		assert.False(t, p.Status().CircuitBreakerOpen, "the probe from the retry queue closed the breaker")
		assert.Len(t, b.StoredIDs(), 6)
		require.NoError(t, closeProducer(t, p))
	})
}

func TestRetryQueueCapacityZeroNeedsBoth(t *testing.T) {
	for _, c := range [][2]int{{0, 1}, {1, 0}, {-1, 0}, {0, -1}} {
		_, err := mlproducer.New(mlproducer.WithRetryQueueCapacity(c[0], c[1]))
		require.ErrorIs(t, err, mlproducer.ErrInvalidOption, "%v", c)
	}
	b := mlproducertest.NewBroker()
	defer b.Close()
	p, err := mlproducer.New(mlproducer.WithRetryQueueCapacity(0, 0), mlproducer.WithDialer(b))
	require.NoError(t, err)
	require.NoError(t, p.Close(context.Background()))
}
