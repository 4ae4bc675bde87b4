package mlproducer_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

func publishOne(p *mlproducer.Producer) (mlproducer.Receipt, error) {
	return p.PublishSummarization(context.Background(), "share-1", "text", mlproducer.SummarizationOptions{})
}

// noBuffer turns buffering off: only then does an open breaker refuse
// publishes with ErrCircuitOpen (with a buffer they are queued, see
// outage_test.go).
var noBuffer = mlproducer.WithRetryQueueCapacity(0, 0)

func TestBreakerOpensThenProbesThenCloses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		// No health check: it would be the half-open probe this test gives a publish.
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook), mlproducer.WithMaxRetries(0),
			mlproducer.WithHealthCheckInterval(0), noBuffer)
		waitConnected(t, p)

		// Ten consecutive nacks: the tenth opens the breaker (default threshold).
		b.NackNext(10)
		for i := 0; i < 10; i++ {
			assert.False(t, p.Status().CircuitBreakerOpen, "still closed after %d failures", i)
			_, err := publishOne(p)
			require.NoError(t, err)
		}
		require.True(t, p.Status().CircuitBreakerOpen)
		published := b.Published()

		// Open: publishes fail fast and take nothing.
		for i := 0; i < 5; i++ {
			start := time.Now()
			_, err := publishOne(p)
			require.ErrorIs(t, err, mlproducer.ErrCircuitOpen)
			assert.Zero(t, time.Since(start), "no waiting while open")
		}
		assert.Equal(t, published, b.Published())
		assert.EqualValues(t, 10, p.Status().Accepted)

		// Still open just before the cooldown (default 30 s) ends.
		time.Sleep(30*time.Second - time.Millisecond)
		_, err := publishOne(p)
		require.ErrorIs(t, err, mlproducer.ErrCircuitOpen)
		time.Sleep(2 * time.Millisecond)

		// Half-open: exactly one probe goes through; others are refused
		// while it is in flight.
		b.HoldConfirms(true)
		var wg sync.WaitGroup
		var probe mlproducer.Receipt
		var probeErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			probe, probeErr = p.PublishSummarization(ctx, "share-1", "probe", mlproducer.SummarizationOptions{})
		}()
		synctest.Wait()
		_, err = publishOne(p)
		require.ErrorIs(t, err, mlproducer.ErrCircuitOpen, "one probe at a time")
		b.HoldConfirms(false)
		wg.Wait()
		require.NoError(t, probeErr)
		assert.Equal(t, mlproducer.Confirmed, probe.State)

		// The probe's success closed the breaker.
		assert.False(t, p.Status().CircuitBreakerOpen)
		r, err := publishOne(p)
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Confirmed, r.State)
		require.NoError(t, closeProducer(t, p))
		assert.Len(t, dl.all(), 10)
	})
}

func TestBreakerFailedProbeReopens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithMaxRetries(0), mlproducer.WithCircuitBreaker(3, time.Minute),
			mlproducer.WithHealthCheckInterval(0), noBuffer)
		waitConnected(t, p)
		b.NackNext(4)
		for i := 0; i < 3; i++ {
			_, err := publishOne(p)
			require.NoError(t, err)
		}
		require.True(t, p.Status().CircuitBreakerOpen)
		time.Sleep(time.Minute + time.Millisecond)
		_, err := publishOne(p) // the probe, nacked
		require.NoError(t, err)
		_, err = publishOne(p)
		require.ErrorIs(t, err, mlproducer.ErrCircuitOpen, "a failed probe opens the breaker again")
		time.Sleep(time.Minute + time.Millisecond)
		r, err := publishOne(p)
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Confirmed, r.State)
		assert.False(t, p.Status().CircuitBreakerOpen)
		require.NoError(t, closeProducer(t, p))
	})
}

func TestBreakerIgnoresCallerMistakes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithCircuitBreaker(2, time.Minute))
		waitConnected(t, p)
		cancelled, cancel := context.WithCancel(context.Background())
		cancel()
		for i := 0; i < 10; i++ {
			_, err := p.PublishSummarization(context.Background(), "", "text", mlproducer.SummarizationOptions{})
			require.ErrorIs(t, err, mlproducer.ErrInvalidTask)
			_, err = p.PublishSummarization(cancelled, "s", "text", mlproducer.SummarizationOptions{})
			require.ErrorIs(t, err, context.Canceled)
		}
		// Callers whose ctx ends while waiting for a confirm: not failures.
		b.HoldConfirms(true)
		for i := 0; i < 5; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
			r, err := p.PublishSummarization(ctx, "s", "text", mlproducer.SummarizationOptions{})
			cancel()
			require.NoError(t, err)
			assert.Equal(t, mlproducer.Pending, r.State)
		}
		assert.False(t, p.Status().CircuitBreakerOpen)
		b.HoldConfirms(false)
		synctest.Wait()
		assert.False(t, p.Status().CircuitBreakerOpen)
		require.NoError(t, closeProducer(t, p))
	})
}

func TestRetryQueueWaitsForBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook), mlproducer.WithMaxRetries(5),
			mlproducer.WithCircuitBreaker(3, time.Minute))
		waitConnected(t, p)
		b.NackNext(3)
		for i := 0; i < 3; i++ {
			r, err := publishOne(p)
			require.NoError(t, err)
			assert.Equal(t, mlproducer.Queued, r.State)
		}
		require.True(t, p.Status().CircuitBreakerOpen)
		sent := b.Published()
		time.Sleep(59 * time.Second)
		assert.Equal(t, sent, b.Published(), "nothing is sent while the breaker is open")
		assert.Equal(t, 3, p.Status().RetryQueueSize)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		assert.Len(t, b.MessageIDs("ml.summarization"), 3, "after the cooldown a probe succeeds and the queue drains")
		assert.False(t, p.Status().CircuitBreakerOpen)
		require.NoError(t, closeProducer(t, p))
		assert.Empty(t, dl.all())
	})
}

func TestBreakerCountsDialFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("connection refused"))
		p := newFake(t, b, mlproducer.WithCircuitBreaker(5, time.Hour))
		for b.Dials() < 5 {
			time.Sleep(10 * time.Millisecond)
		}
		synctest.Wait()
		assert.True(t, p.Status().CircuitBreakerOpen)
		// Open, but the retry queue has room: the publish is kept.
		r, err := publishOne(p)
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Queued, r.State)
		require.NoError(t, p.Ready())
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		defer cancel()
		require.Error(t, p.Close(ctx), "the queued message was never sent")
	})
}

// TestBreakerClosesAtTheFirstGoodDial: a breaker opened by failed dials (the
// broker unreachable) closes as soon as a dial gets through, long before its
// cooldown ends, and the queued message is delivered.
func TestBreakerClosesAtTheFirstGoodDial(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("connection refused"))
		p := newFake(t, b, mlproducer.WithCircuitBreaker(3, time.Hour), mlproducer.WithHealthCheckInterval(0))
		for b.Dials() < 3 {
			time.Sleep(10 * time.Millisecond)
		}
		synctest.Wait()
		require.True(t, p.Status().CircuitBreakerOpen)
		r, err := publishOne(p)
		require.NoError(t, err)
		require.Equal(t, mlproducer.Queued, r.State)
		b.RefuseDials(nil)
		waitConnected(t, p)
		synctest.Wait()
		assert.False(t, p.Status().CircuitBreakerOpen, "the dial that got through closed the breaker")
		assert.Len(t, b.StoredIDs(), 1)
		require.NoError(t, p.Ready())
		require.NoError(t, closeProducer(t, p))
	})
}

// TestBreakerClosesWithoutTraffic: a breaker opened by nacks closes by itself
// once its cooldown is over, with no publish to probe it (a service that is
// not ready, with buffering off, gets none): the health check is the probe.
func TestBreakerClosesWithoutTraffic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithCircuitBreaker(3, time.Minute), mlproducer.WithHealthCheckInterval(10*time.Second),
			mlproducer.WithMaxRetries(0), noBuffer)
		waitConnected(t, p)
		b.NackNext(3)
		for range 3 {
			_, err := publishOne(p)
			require.NoError(t, err)
		}
		synctest.Wait()
		require.True(t, p.Status().CircuitBreakerOpen)
		require.ErrorIs(t, p.Ready(), mlproducer.ErrNotReady, "no buffer: refusing while the breaker is open")

		time.Sleep(time.Minute + 11*time.Second) // cooldown, then at most one check interval
		synctest.Wait()
		assert.False(t, p.Status().CircuitBreakerOpen)
		require.NoError(t, p.Ready())
		r, err := publishOne(p)
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Confirmed, r.State)
		require.NoError(t, closeProducer(t, p))
	})
}

// TestBreakerFailedHealthProbeReopens: half-open, a health check that fails is
// a failed probe, and the session is replaced.
func TestBreakerFailedHealthProbeReopens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithMaxRetries(0), mlproducer.WithCircuitBreaker(2, time.Minute),
			mlproducer.WithHealthCheckInterval(7*time.Second), mlproducer.WithConnectionTimeout(time.Minute), noBuffer)
		waitConnected(t, p)
		b.NackNext(2)
		for range 2 {
			_, err := publishOne(p)
			require.NoError(t, err)
		}
		require.True(t, p.Status().CircuitBreakerOpen)
		dials := b.Dials()
		// Just before the cooldown ends the broker stops answering: the first
		// check after it fails and the redial hangs, so only the check can
		// have opened the breaker again.
		time.Sleep(58 * time.Second)
		synctest.Wait()
		b.FailChannels(errors.New("channel refused"))
		b.HangDials(true)
		time.Sleep(7 * time.Second)
		synctest.Wait()
		_, err := publishOne(p)
		require.ErrorIs(t, err, mlproducer.ErrCircuitOpen, "the failed health probe opened the breaker again")
		assert.Equal(t, dials+1, b.Dials(), "the failed check ended the session")
		assert.NotEqual(t, mlproducer.Connected, p.Status().ConnectionState)
		b.FailChannels(nil)
		b.HangDials(false)
		require.NoError(t, closeProducer(t, p))
	})
}

// BenchmarkPublishCircuitOpen measures a publish refused by an open breaker
// with buffering off: the price a caller pays to learn the broker is
// unavailable.
func BenchmarkPublishCircuitOpen(b *testing.B) {
	broker := mlproducertest.NewBroker()
	defer broker.Close()
	broker.RefuseDials(errors.New("connection refused"))
	p, err := mlproducer.New(mlproducer.WithDialer(broker), mlproducer.WithCircuitBreaker(1, time.Hour),
		mlproducer.WithReconnectBackoff(time.Millisecond, time.Millisecond), noBuffer)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close(context.Background())
	for !p.Status().CircuitBreakerOpen {
		time.Sleep(time.Millisecond)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := p.PublishSummarization(ctx, "share-1", "text", mlproducer.SummarizationOptions{}); !errors.Is(err, mlproducer.ErrCircuitOpen) {
			b.Fatal(err)
		}
	}
}
