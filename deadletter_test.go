package mlproducer_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// gatherValue returns the value of the metric name (without labels beyond
// producer) gathered from g.
func gatherValue(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			require.Len(t, mf.GetMetric(), 1)
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// publishConfirmed publishes n summarizations that must each be confirmed.
func publishConfirmed(t *testing.T, p *mlproducer.Producer, n int) {
	t.Helper()
	for i := range n {
		r, err := p.PublishSummarization(context.Background(), fmt.Sprint("s", i), "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		require.Equal(t, mlproducer.Confirmed, r.State, "publish %d", i)
	}
}

// publishDeadLettered makes the broker nack the next n publishes and publishes
// n summarizations that must each come back DeadLettered (the Producer has
// WithMaxRetries(0)); it returns their ids.
func publishDeadLettered(t *testing.T, b *mlproducertest.Broker, p *mlproducer.Producer, n int) []string {
	t.Helper()
	b.NackNext(n)
	var dead []string
	for range n {
		r, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		require.Equal(t, mlproducer.DeadLettered, r.State)
		dead = append(dead, r.MessageID)
	}
	return dead
}

// A hook that panics: recovered, logged and counted; the message counts as
// dead-lettered; confirms go on and Close is clean.
func TestDeadLetterHookPanicIsRecoveredAndCounted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		reg := prometheus.NewPedanticRegistry()
		var calls sync.WaitGroup
		calls.Add(2)
		p := newFake(t, b, mlproducer.WithMaxRetries(0), mlproducer.WithRegisterer(reg),
			mlproducer.WithDeadLetter(func(mlproducer.DeadLetter) {
				calls.Done()
				panic("hook bug")
			}))
		waitConnected(t, p)
		b.NackNext(2)
		for range 2 {
			r, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
			require.NoError(t, err)
			assert.Equal(t, mlproducer.DeadLettered, r.State)
		}
		calls.Wait()
		publishConfirmed(t, p, 20)
		synctest.Wait()
		assert.EqualValues(t, 2, gatherValue(t, reg, "ml_producer_dead_letter_hook_panics_total"))
		assert.EqualValues(t, 2, gatherValue(t, reg, "ml_producer_dead_letters_total"))
		st := p.Status()
		assert.EqualValues(t, 2, st.DeadLettered)
		assert.EqualValues(t, 20, st.Confirmed)
		require.NoError(t, closeProducer(t, p))
	})
}

// A hook that blocks for 10 s: confirms and publishes keep flowing while it
// runs, and Close returns at its ctx plus the grace of one second, not when
// the hook is done. The messages queued behind the blocked call never reach
// the hook (Close gave up on them); the call under way finishes after Close
// returned, on a goroutine that then exits (synctest.Test waits for it).
func TestDeadLetterHookBlockingTenSecondsStallsNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var mu sync.Mutex
		var got []string
		started := make(chan struct{}, 3)
		p := newFake(t, b, mlproducer.WithMaxRetries(0),
			mlproducer.WithDeadLetter(func(d mlproducer.DeadLetter) {
				started <- struct{}{}
				time.Sleep(10 * time.Second)
				mu.Lock()
				got = append(got, d.Message.ID)
				mu.Unlock()
			}))
		waitConnected(t, p)
		dead := publishDeadLettered(t, b, p, 3)
		<-started
		start := time.Now()
		publishConfirmed(t, p, 100)
		assert.Less(t, time.Since(start), time.Second, "confirms wait for no hook (fake time)")

		closeStart := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = p.Close(ctx)
		cancel()
		took := time.Since(closeStart)
		assert.LessOrEqual(t, took, 2*time.Second, "Close keeps its ctx (1 s) plus the 1 s grace")
		assert.GreaterOrEqual(t, took, time.Second, "Close waits for the hook until ctx ends")
		mu.Lock()
		assert.Empty(t, got, "the blocked call had not returned when Close did")
		mu.Unlock()
		_, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		require.ErrorIs(t, err, mlproducer.ErrClosed)

		time.Sleep(20 * time.Second)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		assert.Equal(t, dead[:1], got, "the call under way finishes; the hook is called no more after Close")
		assert.Len(t, started, 0)
		assert.EqualValues(t, 3, p.Status().DeadLettered, "every message given up on is counted")
	})
}

// With a spool, the messages whose hook Close did not wait for stay in the
// spool: the next Producer on the dir sends them again, so nothing is lost.
func TestDeadLetterHookNotRunKeepsTheSpoolRecord(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		release := make(chan struct{})
		var mu sync.Mutex
		var got []string
		p := newFake(t, b, mlproducer.WithMaxRetries(0), mlproducer.WithSpool(dir),
			mlproducer.WithDeadLetter(func(d mlproducer.DeadLetter) {
				<-release
				mu.Lock()
				got = append(got, d.Message.ID)
				mu.Unlock()
			}))
		waitConnected(t, p)
		dead := publishDeadLettered(t, b, p, 3)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = p.Close(ctx)
		cancel()
		close(release)
		synctest.Wait()
		mu.Lock()
		assert.Equal(t, dead[:1], got)
		mu.Unlock()
		require.Equal(t, 3, spoolRecords(t, dir),
			"two never reached the hook; the third's hook returned after the spool closed")

		p2 := newFake(t, b, mlproducer.WithSpool(dir))
		waitConnected(t, p2)
		for len(b.StoredIDs()) < 3 {
			time.Sleep(10 * time.Millisecond)
		}
		require.NoError(t, closeProducer(t, p2))
		stored := b.StoredIDs()
		for _, id := range dead {
			assert.Equal(t, 1, stored[id], "message %s sent again after the restart", id)
		}
	})
}

// The hook may call Publish and Status: no deadlock, and the republished
// message is confirmed. During Close, Publish from the hook says ErrClosed.
func TestDeadLetterHookMayPublishAndReadStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var p *mlproducer.Producer
		type result struct {
			r      mlproducer.Receipt
			err    error
			status mlproducer.Status
		}
		results := make(chan result, 10)
		p = newFake(t, b, mlproducer.WithMaxRetries(0),
			mlproducer.WithDeadLetter(func(d mlproducer.DeadLetter) {
				st := p.Status()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				r, err := p.Publish(ctx, mlproducer.Message{Type: d.Message.Type, Body: d.Message.Body})
				results <- result{r, err, st}
			}))
		waitConnected(t, p)
		b.NackNext(1)
		r, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		require.Equal(t, mlproducer.DeadLettered, r.State)
		res := <-results
		require.NoError(t, res.err)
		assert.Equal(t, mlproducer.Confirmed, res.r.State)
		assert.EqualValues(t, 1, res.status.DeadLettered)
		assert.Equal(t, mlproducer.Connected, res.status.ConnectionState)

		// A message left at Close: the hook's Publish is refused.
		b.RefuseDials(errors.New("down"))
		b.DropConnections(nil)
		synctest.Wait()
		r, err = p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		require.Equal(t, mlproducer.Queued, r.State)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		require.Error(t, p.Close(ctx))
		cancel()
		res = <-results
		require.ErrorIs(t, res.err, mlproducer.ErrClosed)
	})
}

// Close called from the hook does not deadlock: as documented, it returns
// once its ctx has ended (plus the grace), and the Close of the owner then
// returns the same result.
func TestDeadLetterHookCallingCloseReturnsAtItsCtx(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var p *mlproducer.Producer
		took := make(chan time.Duration, 1)
		p = newFake(t, b, mlproducer.WithMaxRetries(0),
			mlproducer.WithDeadLetter(func(mlproducer.DeadLetter) {
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				_ = p.Close(ctx)
				took <- time.Since(start)
			}))
		waitConnected(t, p)
		b.NackNext(1)
		_, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		d := <-took
		assert.GreaterOrEqual(t, d, time.Second)
		assert.LessOrEqual(t, d, 2*time.Second)
		_ = closeProducer(t, p)
		assert.Equal(t, mlproducer.Closed, p.Status().ConnectionState)
	})
}

// The DeadLetter of a message left at Close: Attempts counts the sends that
// reached the connection (1 for one sent once, 0 for one never sent), and Err
// is ErrClosed that also says why (ctx, and the last attempt's error).
func TestDeadLetterAtCloseSaysWhyAndCountsSends(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook))
		waitConnected(t, p)
		b.HoldConfirms(true)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		sent, err := p.PublishSummarization(ctx, "s", "sent once", mlproducer.SummarizationOptions{})
		cancel()
		require.NoError(t, err)
		require.Equal(t, mlproducer.Pending, sent.State)
		// The connection dies with it in flight, and no other comes.
		b.RefuseDials(errors.New("down"))
		b.DropConnections(nil)
		synctest.Wait()
		never, err := p.PublishSummarization(context.Background(), "s", "never sent", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		require.Equal(t, mlproducer.Queued, never.State)

		ctx, cancel = context.WithTimeout(context.Background(), time.Second)
		require.Error(t, p.Close(ctx))
		cancel()
		got := map[string]mlproducer.DeadLetter{}
		for _, d := range dl.all() {
			got[d.Message.ID] = d
		}
		require.Len(t, got, 2)
		d := got[sent.MessageID]
		assert.Equal(t, 1, d.Attempts, "sent once")
		assert.ErrorIs(t, d.Err, mlproducer.ErrClosed)
		assert.ErrorIs(t, d.Err, context.DeadlineExceeded)
		assert.ErrorContains(t, d.Err, "after 1 sends")
		t.Logf("sent once: %v", d.Err)
		d = got[never.MessageID]
		assert.Zero(t, d.Attempts, "never sent")
		assert.ErrorIs(t, d.Err, mlproducer.ErrClosed)
		assert.ErrorIs(t, d.Err, context.DeadlineExceeded)
		assert.ErrorContains(t, d.Err, "could be sent")
		t.Logf("never sent: %v", d.Err)
	})
}

// Retries go on while the hook blocks: the retry loop only queues dead
// letters for the hook's goroutine.
func TestDeadLetterHookBlockingStallsNoRetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		release := make(chan struct{})
		p := newFake(t, b, mlproducer.WithMaxRetries(1),
			mlproducer.WithDeadLetter(func(mlproducer.DeadLetter) { <-release }))
		waitConnected(t, p)
		b.NackNext(2)
		_, err := p.PublishSummarization(context.Background(), "s", "dead", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		time.Sleep(time.Second)
		synctest.Wait()
		require.EqualValues(t, 1, p.Status().DeadLettered, "in the hook, which blocks")

		b.NackNext(1)
		r, err := p.PublishSummarization(context.Background(), "s", "retried", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		require.Equal(t, mlproducer.Queued, r.State, "nacked once, waiting for its retry")
		time.Sleep(time.Second)
		synctest.Wait()
		assert.Equal(t, []string{r.MessageID}, b.MessageIDs("ml.summarization"), "retried and stored while the hook blocks")
		assert.EqualValues(t, 1, p.Status().Confirmed)
		close(release)
		require.NoError(t, closeProducer(t, p))
	})
}
