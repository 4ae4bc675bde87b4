package mlproducer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// deadLetters collects what the dead-letter hook receives.
type deadLetters struct {
	mu   sync.Mutex
	list []mlproducer.DeadLetter
}

func (d *deadLetters) hook(dl mlproducer.DeadLetter) {
	d.mu.Lock()
	d.list = append(d.list, dl)
	d.mu.Unlock()
}

func (d *deadLetters) all() []mlproducer.DeadLetter {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]mlproducer.DeadLetter(nil), d.list...)
}

func newFake(t *testing.T, b *mlproducertest.Broker, opts ...mlproducer.Option) *mlproducer.Producer {
	t.Helper()
	base := []mlproducer.Option{
		mlproducer.WithDialer(b),
		mlproducer.WithReconnectBackoff(time.Millisecond, 20*time.Millisecond),
		mlproducer.WithRetryBackoff(time.Millisecond, 20*time.Millisecond),
	}
	p, err := mlproducer.New(append(base, opts...)...)
	require.NoError(t, err)
	return p
}

func waitConnected(t *testing.T, p *mlproducer.Producer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, p.WaitConnected(ctx))
}

func closeProducer(t *testing.T, p *mlproducer.Producer) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return p.Close(ctx)
}

func TestPublishConfirmed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b)
		waitConnected(t, p)
		ctx := context.Background()
		r, err := p.PublishSummarization(ctx, "share-1", "some text", mlproducer.SummarizationOptions{MaxLength: 50})
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Confirmed, r.State)
		r2, err := p.PublishTranscription(ctx, "share-1", "https://media.example/a.mp3", mlproducer.TranscriptionOptions{})
		require.NoError(t, err)
		r3, err := p.PublishEmbedding(ctx, "share-1", "some text", mlproducer.EmbeddingOptions{Dimensions: 8})
		require.NoError(t, err)
		require.NoError(t, closeProducer(t, p))

		msgs := b.Messages("ml.summarization")
		require.Len(t, msgs, 1)
		m := msgs[0]
		assert.Equal(t, r.MessageID, m.MessageID)
		assert.Equal(t, "application/json", m.ContentType)
		assert.True(t, m.Persistent)
		// The default envelope (TestEnvelopeDefault): no type, app id
		// nor headers.
		assert.Empty(t, m.Type)
		assert.Empty(t, m.AppID)
		assert.Nil(t, m.Headers)
		task, err := mlproducer.DecodeTask(m.Body)
		require.NoError(t, err)
		assert.Equal(t, r.MessageID, task.MessageID)
		assert.Equal(t, "share-1", task.ShareID)
		assert.Equal(t, []string{r2.MessageID}, b.MessageIDs("ml.transcription"))
		assert.Equal(t, []string{r3.MessageID}, b.MessageIDs("ml.embedding"))
		st := p.Status()
		assert.Equal(t, mlproducer.Closed, st.ConnectionState)
		assert.EqualValues(t, 3, st.Confirmed)
	})
}

// The core promise: under random nacks, dropped connections, delayed and
// lost confirms, every accepted message is either confirmed (and stored at
// the broker) or dead-lettered, exactly.
func TestChaosNothingLost(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	var dl deadLetters
	p := newFake(t, b,
		mlproducer.WithDeadLetter(dl.hook),
		mlproducer.WithConfirmTimeout(200*time.Millisecond),
		mlproducer.WithMaxInFlight(256),
		mlproducer.WithCircuitBreaker(1<<30, time.Millisecond), // breaker tested on its own: here, accept all
		mlproducer.WithMaxRetries(3),
		mlproducer.WithRetryQueueCapacity(1_000_000, 1<<30),
	)
	b.SetFaults(mlproducertest.Faults{NackRate: 0.05, LoseConfirmRate: 0.01, ConfirmDelay: 2 * time.Millisecond, Seed: 7})
	waitConnected(t, p)

	stop := make(chan struct{})
	var drops atomic.Int64
	var chaos sync.WaitGroup
	chaos.Add(1)
	go func() {
		defer chaos.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(5+rng.IntN(30)) * time.Millisecond):
			}
			// Every other fault is a dropped connection, so that the
			// publishers, however fast the machine lets them finish,
			// meet some: the test asserts it did.
			fault := rng.IntN(10)
			if i%2 == 0 {
				fault = 0
			}
			switch fault {
			case 0, 1, 2, 3, 4:
				b.DropConnections(nil)
				drops.Add(1)
			case 5, 6:
				b.Block("chaos")
				time.Sleep(10 * time.Millisecond)
				b.Unblock()
			case 7, 8:
				b.HoldConfirms(true) // long enough for confirm timeouts, then late acks
				time.Sleep(250 * time.Millisecond)
				b.HoldConfirms(false)
			case 9:
				b.NackNext(20)
			}
		}
	}()

	const goroutines, total = 64, 64 * 313 // ≥ 20,000
	var (
		accepted sync.Map
		nAcc     atomic.Int64
		refused  atomic.Int64
		wg       sync.WaitGroup
	)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < total/goroutines; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(20))*time.Millisecond)
				r, err := p.PublishEmbedding(ctx, fmt.Sprintf("share-%d", g), "text", mlproducer.EmbeddingOptions{})
				cancel()
				if err != nil {
					// Refusals take nothing: a ctx that ended before the
					// hand-off, or the breaker shedding load.
					if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, mlproducer.ErrCircuitOpen) {
						t.Errorf("unexpected refusal: %v", err)
					}
					refused.Add(1)
					continue
				}
				accepted.Store(r.MessageID, true)
				nAcc.Add(1)
			}
		}()
	}
	wg.Wait()
	close(stop)
	chaos.Wait()
	b.SetFaults(mlproducertest.Faults{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, p.Close(ctx))

	stored := b.StoredIDs()
	dead := map[string]bool{}
	for _, d := range dl.all() {
		require.Error(t, d.Err)
		dead[d.Message.ID] = true
	}
	confirmed, duplicates, missing := 0, 0, 0
	accepted.Range(func(k, _ any) bool {
		id := k.(string)
		n := stored[id]
		switch {
		case n > 0:
			confirmed++
			duplicates += n - 1
		case dead[id]:
		default:
			missing++
		}
		return true
	})
	st := p.Status()
	t.Logf("accepted=%d refused=%d confirmed=%d duplicates=%d dead-lettered=%d missing=%d dials=%d drops=%d published=%d",
		nAcc.Load(), refused.Load(), st.Confirmed, duplicates, st.DeadLettered, missing, b.Dials(), drops.Load(), b.Published())
	assert.Zero(t, missing, "accepted messages neither stored nor dead-lettered")
	assert.EqualValues(t, nAcc.Load(), st.Accepted)
	assert.EqualValues(t, st.Accepted, st.Confirmed+st.DeadLettered, "accepted = confirmed + dead-lettered")
	assert.EqualValues(t, len(dead), st.DeadLettered)
	assert.EqualValues(t, total-refused.Load(), nAcc.Load())
	assert.Positive(t, drops.Load())
	assert.Greater(t, b.Dials(), 1, "the chaos should have forced reconnects")
}

func TestPublishReturnsWithinDeadline(t *testing.T) {
	cases := []struct {
		name  string
		setup func(b *mlproducertest.Broker)
		want  mlproducer.DeliveryState
	}{
		{"broker blocked", func(b *mlproducertest.Broker) { b.Block("low on memory") }, mlproducer.Queued},
		{"disconnected", func(b *mlproducertest.Broker) {
			b.RefuseDials(errors.New("connection refused"))
			b.DropConnections(nil)
		}, mlproducer.Queued},
		{"never confirms", func(b *mlproducertest.Broker) { b.HoldConfirms(true) }, mlproducer.Pending},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := mlproducertest.NewBroker()
				defer b.Close()
				var dl deadLetters
				p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook))
				waitConnected(t, p)
				tc.setup(b)
				synctest.Wait()

				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				defer cancel()
				start := time.Now()
				r, err := p.PublishSummarization(ctx, "share-1", "text", mlproducer.SummarizationOptions{})
				elapsed := time.Since(start)
				require.NoError(t, err)
				assert.Equal(t, tc.want, r.State)
				assert.LessOrEqual(t, elapsed, 50*time.Millisecond)

				// Still accounted for: the Producer owns it.
				st := p.Status()
				assert.Equal(t, 1, st.RetryQueueSize+st.PendingConfirms)
				err = closeProducer(t, p)
				require.Error(t, err)
				assert.Contains(t, err.Error(), "1 messages unconfirmed")
				require.Len(t, dl.all(), 1)
				assert.Equal(t, r.MessageID, dl.all()[0].Message.ID)
				assert.ErrorIs(t, dl.all()[0].Err, mlproducer.ErrClosed)
			})
		})
	}
}

func TestNoAttemptSpentWhileDisconnected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook), mlproducer.WithMaxRetries(1),
			mlproducer.WithReconnectBackoff(time.Second, time.Minute), mlproducer.WithEnvelope(mlproducer.EnvelopeAttempt))
		waitConnected(t, p)
		b.RefuseDials(errors.New("connection refused"))
		b.DropConnections(nil)
		synctest.Wait()

		r, err := p.PublishSummarization(context.Background(), "share-1", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		require.Equal(t, mlproducer.Queued, r.State)
		// An hour offline costs no attempt.
		time.Sleep(time.Hour)
		assert.Empty(t, dl.all())
		assert.Equal(t, 1, p.Status().RetryQueueSize)
		assert.GreaterOrEqual(t, p.Status().ReconnectAttempts, uint64(10))

		b.RefuseDials(nil)
		require.NoError(t, p.WaitConnected(context.Background()))
		time.Sleep(time.Second)
		synctest.Wait()
		synctest.Wait()
		assert.Equal(t, []string{r.MessageID}, b.MessageIDs("ml.summarization"))
		msgs := b.Messages("ml.summarization")
		assert.EqualValues(t, 1, msgs[0].Headers[mlproducer.AttemptHeader], "first real send")
		require.NoError(t, closeProducer(t, p))
		assert.Empty(t, dl.all())
	})
}

func TestNackedEveryTryIsDeadLettered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook), mlproducer.WithMaxRetries(2))
		waitConnected(t, p)
		b.SetFaults(mlproducertest.Faults{NackRate: 1})
		r, err := p.PublishSummarization(context.Background(), "share-1", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Queued, r.State)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		got := dl.all()
		require.Len(t, got, 1)
		assert.Equal(t, r.MessageID, got[0].Message.ID)
		assert.Equal(t, 3, got[0].Attempts, "1 send + 2 retries")
		assert.ErrorContains(t, got[0].Err, "nacked")
		assert.Equal(t, 3, b.Published())
		st := p.Status()
		assert.EqualValues(t, 1, st.DeadLettered)
		assert.Zero(t, st.RetryQueueSize)
		require.NoError(t, closeProducer(t, p))
	})
}

func TestConfirmTimeoutThenLateAckCancelsRetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook),
			mlproducer.WithConfirmTimeout(time.Second),
			mlproducer.WithRetryBackoff(time.Minute, time.Minute))
		waitConnected(t, p)
		b.HoldConfirms(true)
		r, err := p.PublishSummarization(context.Background(), "share-1", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Queued, r.State, "a confirm timeout hands the message to the retry queue")
		assert.Equal(t, 1, p.Status().RetryQueueSize)

		b.HoldConfirms(false) // the late ack arrives
		synctest.Wait()
		st := p.Status()
		assert.Zero(t, st.RetryQueueSize, "the late ack cancels the retry")
		assert.EqualValues(t, 1, st.Confirmed)
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		assert.Equal(t, 1, b.Published(), "never sent again")
		require.NoError(t, closeProducer(t, p))
		assert.Empty(t, dl.all())
	})
}

func TestUnroutableIsNotConfirmed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook), mlproducer.WithMaxRetries(1))
		waitConnected(t, p)
		b.DeleteQueue("ml.embedding") // no queue bound for the key: unroutable
		r, err := p.PublishEmbedding(context.Background(), "share-1", "text", mlproducer.EmbeddingOptions{})
		require.NoError(t, err)
		assert.NotEqual(t, mlproducer.Confirmed, r.State)
		time.Sleep(time.Second)
		synctest.Wait()
		got := dl.all()
		require.Len(t, got, 1)
		var ret *mlproducer.ReturnedError
		require.ErrorAs(t, got[0].Err, &ret)
		assert.Equal(t, "ml.embedding", ret.RoutingKey)
		assert.Zero(t, p.Status().Confirmed)
		require.NoError(t, closeProducer(t, p))
	})
}

func TestCloseDrainsThenDeadLetters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook))
		waitConnected(t, p)
		// Queued while disconnected, then the broker comes back during Close:
		// Close drains them.
		b.RefuseDials(errors.New("down"))
		b.DropConnections(nil)
		synctest.Wait()
		for i := 0; i < 5; i++ {
			_, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
			require.NoError(t, err)
		}
		go func() {
			time.Sleep(time.Second)
			b.RefuseDials(nil)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		require.NoError(t, p.Close(ctx))
		assert.Len(t, b.MessageIDs("ml.summarization"), 5)
		assert.Empty(t, dl.all())

		_, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		assert.ErrorIs(t, err, mlproducer.ErrClosed)
		assert.NoError(t, p.Close(ctx), "a second Close returns the first one's result")
	})
}

func TestCloseReportsWhatIsLeft(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook))
		waitConnected(t, p)
		b.HoldConfirms(true)
		var ids []string
		for i := 0; i < 3; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
			r, err := p.PublishSummarization(ctx, "s", "text", mlproducer.SummarizationOptions{})
			cancel()
			require.NoError(t, err)
			assert.Equal(t, mlproducer.Pending, r.State)
			ids = append(ids, r.MessageID)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		err := p.Close(ctx)
		require.Error(t, err)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Contains(t, err.Error(), "3 messages unconfirmed")
		var got []string
		for _, d := range dl.all() {
			got = append(got, d.Message.ID)
			assert.ErrorIs(t, d.Err, mlproducer.ErrClosed)
		}
		assert.ElementsMatch(t, ids, got)
		assert.Equal(t, mlproducer.Closed, p.Status().ConnectionState)
	})
}

func TestRetryQueueFullRefusesAndKeepsNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook), mlproducer.WithRetryQueueCapacity(2, 1<<20))
		waitConnected(t, p)
		b.Block("disk alarm")
		synctest.Wait()
		for i := 0; i < 2; i++ {
			r, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
			require.NoError(t, err)
			assert.Equal(t, mlproducer.Queued, r.State)
		}
		assert.Equal(t, mlproducer.Blocked, p.Status().ConnectionState)
		_, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		assert.ErrorIs(t, err, mlproducer.ErrRetryQueueFull)
		assert.EqualValues(t, 2, p.Status().Accepted)

		b.Unblock()
		synctest.Wait()
		time.Sleep(time.Second)
		synctest.Wait()
		assert.Len(t, b.MessageIDs("ml.summarization"), 2)
		require.NoError(t, closeProducer(t, p))
		assert.Empty(t, dl.all())
	})
}

func TestMultipleAcks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b)
		waitConnected(t, p)
		b.SetFaults(mlproducertest.Faults{MultipleAcks: true})
		b.HoldConfirms(true)
		var wg sync.WaitGroup
		states := make([]mlproducer.DeliveryState, 10)
		for i := range states {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
				assert.NoError(t, err)
				states[i] = r.State
			}()
		}
		synctest.Wait()
		assert.Equal(t, 10, p.Status().PendingConfirms)
		b.HoldConfirms(false)
		wg.Wait()
		for _, s := range states {
			assert.Equal(t, mlproducer.Confirmed, s)
		}
		assert.EqualValues(t, 10, p.Status().Confirmed)
		require.NoError(t, closeProducer(t, p))
	})
}

func TestFailoverToSecondURL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseURL("amqp://a.invalid:5672/", errors.New("connection refused"))
		p := newFake(t, b, mlproducer.WithURLs("amqp://a.invalid:5672/", "amqp://b.invalid:5672/"))
		waitConnected(t, p)
		assert.Equal(t, "amqp://b.invalid:5672/", p.Status().URL)
		require.NoError(t, closeProducer(t, p))
	})
}

func TestInvalidTaskIsRefusedBeforeSending(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b)
		waitConnected(t, p)
		_, err := p.PublishSummarization(context.Background(), "", "text", mlproducer.SummarizationOptions{})
		var ite *mlproducer.InvalidTaskError
		require.ErrorAs(t, err, &ite)
		assert.Equal(t, "shareId", ite.Field)
		_, err = p.PublishTranscription(context.Background(), "s", "ftp://x/y", mlproducer.TranscriptionOptions{})
		require.ErrorIs(t, err, mlproducer.ErrInvalidTask)
		_, err = p.Publish(context.Background(), mlproducer.Message{Type: "nope", Body: []byte(`{}`)})
		require.ErrorIs(t, err, mlproducer.ErrInvalidTask)
		assert.Zero(t, b.Published())
		assert.Zero(t, p.Status().Accepted)
		require.NoError(t, closeProducer(t, p))
	})
}

func TestCancelledContextTakesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b)
		waitConnected(t, p)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := p.PublishSummarization(ctx, "s", "text", mlproducer.SummarizationOptions{})
		require.ErrorIs(t, err, context.Canceled)
		assert.Zero(t, p.Status().Accepted)
		require.NoError(t, closeProducer(t, p))
	})
}

func TestStatusJSONFieldNames(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b)
		waitConnected(t, p)
		raw, err := json.Marshal(p.Status())
		require.NoError(t, err)
		var m map[string]any
		require.NoError(t, json.Unmarshal(raw, &m))
		for _, k := range []string{"connectionState", "reconnectAttempts", "circuitBreakerOpen", "retryQueueSize", "pendingConfirms"} {
			assert.Contains(t, m, k)
		}
		assert.EqualValues(t, 3, m["connectionState"], "connected is 3 on the wire")
		require.NoError(t, closeProducer(t, p))
		assert.Equal(t, mlproducer.Closed, p.Status().ConnectionState)
		assert.Equal(t, "closed", p.Status().ConnectionState.String())
	})
}
