package mlproducer_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

func asyncMsg(i int) mlproducer.Message {
	return mlproducer.Message{Type: mlproducer.TaskEmbedding, Body: []byte(fmt.Sprintf(`{"n":%d}`, i))}
}

func TestPublishAsyncConfirmed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b)
		waitConnected(t, p)
		d, err := p.PublishAsync(context.Background(), asyncMsg(1), mlproducer.WithMessageID("job-1"))
		require.NoError(t, err)
		assert.Equal(t, "job-1", d.MessageID())
		r, err := d.Wait(context.Background())
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Receipt{MessageID: "job-1", State: mlproducer.Confirmed}, r)
		assert.Equal(t, r, d.Receipt())
		select {
		case <-d.Done():
		default:
			t.Error("Done is not closed after Wait returned")
		}
		require.NoError(t, p.Flush(context.Background()))
		require.NoError(t, closeProducer(t, p))
		assert.Equal(t, []string{"job-1"}, b.MessageIDs("ml.embedding"))
	})
}

// The acceptance: 100,000 async publishes with random nacks, lost
// confirms and dropped connections. Every Delivery resolves once, to the
// outcome the counters and the hook saw; a Flush in the middle returns only
// when everything before it has resolved, and the last one when all have.
func TestPublishAsyncUnderFaults(t *testing.T) {
	const n = 100_000
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.SetFaults(mlproducertest.Faults{NackRate: 0.1, LoseConfirmRate: 0.005, Seed: 7})
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook), mlproducer.WithMaxRetries(2),
			mlproducer.WithConfirmTimeout(200*time.Millisecond), mlproducer.WithMaxInFlight(512),
			mlproducer.WithRetryQueueCapacity(1024, 64<<20))
		waitConnected(t, p)

		stopDrops := make(chan struct{})
		var drops sync.WaitGroup
		drops.Add(1)
		go func() {
			defer drops.Done()
			for {
				select {
				case <-stopDrops:
					return
				case <-time.After(300 * time.Millisecond):
					b.DropConnections(errors.New("injected"))
				}
			}
		}()

		ctx := context.Background()
		ds := make([]*mlproducer.Delivery, 0, n)
		type flushed struct {
			before int
			err    error
			undone int
		}
		mid := make(chan flushed, 1)
		for i := range n {
			d, err := p.PublishAsync(ctx, asyncMsg(i))
			require.NoError(t, err, "publish %d", i)
			ds = append(ds, d)
			if i == n/2 {
				before := len(ds)
				taken := ds[:before:before]
				go func() {
					err := p.Flush(ctx)
					undone := 0
					for _, d := range taken {
						select {
						case <-d.Done():
						default:
							undone++
						}
					}
					mid <- flushed{before, err, undone}
				}()
			}
		}
		f := <-mid
		require.NoError(t, f.err)
		assert.Zero(t, f.undone, "Flush returned with %d of the %d deliveries before it unresolved", f.undone, f.before)
		require.NoError(t, p.Flush(ctx))
		close(stopDrops)
		drops.Wait()

		confirmed, dead := 0, 0
		for i, d := range ds {
			select {
			case <-d.Done():
			default:
				t.Fatalf("delivery %d unresolved after Flush", i)
			}
			switch r := d.Receipt(); r.State {
			case mlproducer.Confirmed:
				confirmed++
			case mlproducer.DeadLettered:
				dead++
			default:
				t.Fatalf("delivery %d resolved as %v", i, r.State)
			}
		}
		require.NoError(t, closeProducer(t, p))
		st := p.Status()
		t.Logf("confirmed %d, dead-lettered %d, reconnects %d", confirmed, dead, st.ReconnectAttempts)
		assert.EqualValues(t, n, st.Accepted)
		assert.EqualValues(t, confirmed, st.Confirmed)
		assert.EqualValues(t, dead, st.DeadLettered)
		assert.Len(t, dl.all(), dead, "the hook got each dead letter")
		assert.Positive(t, dead, "the faults dead-lettered some: the test saw both outcomes")
		stored := map[string]bool{}
		for _, id := range b.MessageIDs("ml.embedding") {
			stored[id] = true
		}
		for i, d := range ds {
			if d.Receipt().State == mlproducer.Confirmed && !stored[d.MessageID()] {
				t.Fatalf("delivery %d confirmed, not stored by the broker", i)
			}
		}
	})
}

// PublishAsync waits for room instead of refusing: on a live connection for a
// slot of the in-flight window (it does not fill the retry queue, which would
// only delay what follows), without one for room in the buffer. At its ctx's
// deadline it returns ctx's error, having taken nothing; a confirm that makes
// room lets a waiting call go on.
func TestPublishAsyncBackPressure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithMaxInFlight(4), mlproducer.WithRetryQueueCapacity(6, 1<<20),
			mlproducer.WithConfirmTimeout(time.Hour))
		waitConnected(t, p)
		b.HoldConfirms(true)
		for i := range 4 {
			_, err := p.PublishAsync(context.Background(), asyncMsg(i))
			require.NoError(t, err, "publish %d: within the window", i)
		}
		expire := func(what string) {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := p.PublishAsync(ctx, asyncMsg(99))
			require.ErrorIs(t, err, context.DeadlineExceeded, what)
			assert.Equal(t, 300*time.Millisecond, time.Since(start), "%s: it waited until its deadline, no longer", what)
		}
		expire("window full")
		assert.Zero(t, p.Status().RetryQueueSize, "the retry queue was not filled")
		// Publish, which does not wait, still goes to the buffer.
		r, err := p.Publish(context.Background(), asyncMsg(5))
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Queued, r.State)

		got := make(chan *mlproducer.Delivery, 1)
		go func() {
			d, err := p.PublishAsync(context.Background(), asyncMsg(12), mlproducer.WithMessageID("after-room"))
			assert.NoError(t, err)
			got <- d
		}()
		synctest.Wait()
		select {
		case <-got:
			t.Fatal("PublishAsync did not wait for room")
		default:
		}
		b.HoldConfirms(false)
		d := <-got
		r, err = d.Wait(context.Background())
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Confirmed, r.State)
		require.NoError(t, p.Flush(context.Background()))

		// Without a connection: the retry queue takes them until it is full,
		// then PublishAsync waits.
		b.RefuseDials(errors.New("down"))
		b.DropConnections(nil)
		for p.Status().ConnectionState == mlproducer.Connected {
			time.Sleep(time.Millisecond)
		}
		for i := range 6 {
			_, err := p.PublishAsync(context.Background(), asyncMsg(20+i))
			require.NoError(t, err, "publish %d: within the retry queue's capacity", i)
		}
		expire("buffer full")
		assert.EqualValues(t, 4+1+1+6, p.Status().Accepted, "the refused calls took nothing")
		b.RefuseDials(nil)
		require.NoError(t, p.Flush(context.Background()))
		require.NoError(t, closeProducer(t, p))
	})
}

// Flush and Close keep their ctx while deliveries are outstanding, and a
// PublishAsync waiting for room returns ErrClosed when Close begins.
func TestFlushAndCloseKeepTheirCtx(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithMaxInFlight(2), mlproducer.WithRetryQueueCapacity(1, 1<<20))
		waitConnected(t, p)
		b.HoldConfirms(true)
		var ds []*mlproducer.Delivery
		for i := range 3 {
			d, err := p.PublishAsync(context.Background(), asyncMsg(i))
			require.NoError(t, err)
			ds = append(ds, d)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		start := time.Now()
		require.ErrorIs(t, p.Flush(ctx), context.DeadlineExceeded)
		cancel()
		assert.Equal(t, 100*time.Millisecond, time.Since(start))

		waiting := make(chan error, 1)
		go func() {
			_, err := p.PublishAsync(context.Background(), asyncMsg(9))
			waiting <- err
		}()
		synctest.Wait()
		ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start = time.Now()
		var ce *mlproducer.CloseError
		require.ErrorAs(t, p.Close(ctx), &ce)
		assert.LessOrEqual(t, time.Since(start), 200*time.Millisecond+50*time.Millisecond, "Close returns by its ctx")
		require.ErrorIs(t, <-waiting, mlproducer.ErrClosed)
		for i, d := range ds {
			r, err := d.Wait(context.Background())
			require.NoError(t, err)
			assert.Equal(t, mlproducer.DeadLettered, r.State, "delivery %d: Close handed it to the hook", i)
		}
		assert.Equal(t, 3, ce.DeadLettered)
		require.NoError(t, p.Flush(context.Background()), "nothing is left unresolved")
	})
}

// With a spool, a message taken while the broker is down waits on disk (its
// *message is dropped) and its Delivery still resolves when it is sent; one
// Close leaves in the spool resolves Queued with an error wrapping ErrClosed.
func TestPublishAsyncWithSpool(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("down"))
		p := newFake(t, b, mlproducer.WithSpool(dir))
		d1, err := p.PublishAsync(context.Background(), asyncMsg(1))
		require.NoError(t, err)
		b.RefuseDials(nil)
		r, err := d1.Wait(context.Background())
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Confirmed, r.State, "resolved through the message read back from disk")

		b.RefuseDials(errors.New("down again"))
		b.DropConnections(nil)
		for p.Status().ConnectionState == mlproducer.Connected {
			time.Sleep(time.Millisecond)
		}
		d2, err := p.PublishAsync(context.Background(), asyncMsg(2))
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		var ce *mlproducer.CloseError
		require.ErrorAs(t, p.Close(ctx), &ce)
		cancel()
		assert.Equal(t, 1, ce.LeftInSpool)
		r, err = d2.Wait(context.Background())
		require.ErrorIs(t, err, mlproducer.ErrClosed)
		assert.Equal(t, mlproducer.Queued, r.State)
		require.ErrorIs(t, p.Flush(context.Background()), mlproducer.ErrClosed, "one message taken before is left unconfirmed")
	})
}

// PublishAsync refuses what Publish refuses, taking nothing.
func TestPublishAsyncRefusals(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b)
		_, err := p.PublishAsync(context.Background(), mlproducer.Message{Type: "nope", Body: []byte(`{}`)})
		require.ErrorIs(t, err, mlproducer.ErrInvalidTask)
		_, err = p.PublishAsync(context.Background(), asyncMsg(1), mlproducer.WithPriority(10))
		require.ErrorIs(t, err, mlproducer.ErrInvalidTask)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err = p.PublishAsync(ctx, asyncMsg(1))
		require.ErrorIs(t, err, context.Canceled)
		require.NoError(t, closeProducer(t, p))
		_, err = p.PublishAsync(context.Background(), asyncMsg(1))
		require.ErrorIs(t, err, mlproducer.ErrClosed)
		assert.Zero(t, p.Status().Accepted)
	})
}
