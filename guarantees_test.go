package mlproducer_test

// Regression tests for the violations of the Guarantees that the reviews of
// 2026-12-01 reproduced (issue 9). Each one failed on the code before the
// fix; the fault it needs is a feature of the fake broker.

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// A return delayed with its ack, arriving after the retry of the same
// message was written, belongs to the timed-out attempt: the late ack of a
// returned attempt confirms nothing, and the message is retried to the end.
func TestLateReturnBelongsToItsOwnAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook),
			mlproducer.WithConfirmTimeout(time.Second), mlproducer.WithMaxRetries(3))
		waitConnected(t, p)
		b.DeleteQueue("ml.embedding") // unroutable: every attempt is returned
		b.HoldEvents(true)            // return and ack of each send arrive late

		_, err := p.PublishEmbedding(context.Background(), "s", "text", mlproducer.EmbeddingOptions{})
		require.NoError(t, err)
		time.Sleep(100 * time.Millisecond) // the retry is written; its events are held too
		synctest.Wait()
		require.Equal(t, 2, b.Published(), "attempt 1 and its retry were written")

		b.HoldEvents(false) // return(1), ack(1), return(2), ack(2), in channel order
		time.Sleep(5 * time.Second)
		synctest.Wait()
		st := p.Status()
		require.NoError(t, closeProducer(t, p))
		assert.Zero(t, st.Confirmed, "an unroutable message was reported confirmed")
		require.Len(t, dl.all(), 1, "retried to the end and dead-lettered")
		assert.Equal(t, 4, dl.all()[0].Attempts, "1 send + 3 retries, each charged once")
		var re *mlproducer.ReturnedError
		assert.ErrorAs(t, dl.all()[0].Err, &re)
	})
}

// Two in-flight messages with one caller-given ID, one unroutable: the
// return is matched to the exact publishing, not to the older message.
func TestReturnMatchedToTheExactPublishing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook), mlproducer.WithMaxRetries(1))
		waitConnected(t, p)
		b.DeleteQueue("ml.transcription")
		b.HoldConfirms(true) // the return comes at once, both acks later
		body := []byte(`{"k":"v"}`)
		for _, typ := range []mlproducer.TaskType{mlproducer.TaskSummarization, mlproducer.TaskTranscription} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			_, err := p.Publish(ctx, mlproducer.Message{Type: typ, ID: "req-42", Body: body})
			cancel()
			require.NoError(t, err)
		}
		b.HoldConfirms(false)
		time.Sleep(time.Second)
		synctest.Wait()
		st := p.Status()
		require.NoError(t, closeProducer(t, p))
		assert.Equal(t, []string{"req-42"}, b.MessageIDs("ml.summarization"))
		assert.EqualValues(t, 1, st.Confirmed)
		require.Len(t, dl.all(), 1, "the unroutable transcription ends in the dead-letter hook")
		assert.Equal(t, mlproducer.TaskTranscription, dl.all()[0].Message.Type)
	})
}

// A nack that arrives after the confirm timeout already charged its attempt
// spends no second one: with one retry allowed and the retry acked, nothing
// is dead-lettered.
func TestLateNackSpendsNoSecondAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook),
			mlproducer.WithConfirmTimeout(time.Second), mlproducer.WithMaxRetries(1))
		waitConnected(t, p)
		b.HoldConfirms(true)
		b.NackNext(1) // attempt 1 will be nacked, late

		_, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		time.Sleep(100 * time.Millisecond) // the retry is written and acked, held
		synctest.Wait()
		require.Equal(t, 2, b.Published())
		b.HoldConfirms(false) // nack(1), then ack(2)
		time.Sleep(time.Second)
		synctest.Wait()
		st := p.Status()
		require.NoError(t, closeProducer(t, p))
		assert.Empty(t, dl.all(), "attempt 2 was acked")
		assert.EqualValues(t, 1, st.Confirmed)
	})
}

// With a broker that takes messages and never confirms, the messages that
// time out come back to the retry queue; admission counts them, so the
// queue stays within its capacity plus the in-flight window.
func TestRetryQueueBoundedWhenConfirmsNeverCome(t *testing.T) {
	for _, tc := range []struct {
		name    string
		breaker mlproducer.Option
		health  time.Duration
		calls   int
	}{
		{"breaker never opens", mlproducer.WithCircuitBreaker(1_000_000, time.Second), 0, 30},
		{"default breaker and health check", mlproducer.WithCircuitBreaker(10, time.Second), 200 * time.Millisecond, 600},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := mlproducertest.NewBroker()
				defer b.Close()
				p := newFake(t, b,
					mlproducer.WithRetryQueueCapacity(2, 1<<20), mlproducer.WithMaxInFlight(2),
					mlproducer.WithConfirmTimeout(100*time.Millisecond), tc.breaker,
					mlproducer.WithRetryBackoff(time.Hour, time.Hour), mlproducer.WithHealthCheckInterval(tc.health))
				waitConnected(t, p)
				b.HoldConfirms(true)
				accepted, full, most := 0, 0, 0
				for range tc.calls {
					time.Sleep(50 * time.Millisecond)
					_, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
					switch {
					case err == nil:
						accepted++
					case errors.Is(err, mlproducer.ErrRetryQueueFull):
						full++
					}
					most = max(most, p.Status().RetryQueueSize)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
				defer cancel()
				_ = p.Close(ctx)
				t.Logf("accepted=%d refused as full=%d largest retry queue=%d", accepted, full, most)
				assert.LessOrEqual(t, most, 2+2, "retry queue within its capacity plus the in-flight window")
				assert.LessOrEqual(t, accepted, 2+2, "no more accepted than the Producer can hold")
				assert.Positive(t, full, "the rest refused with ErrRetryQueueFull")
			})
		})
	}
}

// A broker that completes the handshake and then never answers channel.open
// holds the set-up only until the connection timeout; Close returns by its
// ctx.
func TestCloseReturnsWhileChannelOpenHangs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.HangChannels(true)
		p := newFake(t, b, mlproducer.WithConnectionTimeout(100*time.Millisecond))
		time.Sleep(time.Second) // several set-ups time out and are retried
		synctest.Wait()
		st := p.Status()
		assert.Greater(t, b.Dials(), 1, "a set-up that gets no answer is given up and dialed again")
		assert.Contains(t, st.LastError, "connection timeout")

		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_ = p.Close(ctx)
		assert.LessOrEqual(t, time.Since(start), 250*time.Millisecond, "Close returns by its ctx")
	})
}

// A write held by TCP back-pressure with no connection.blocked spends no
// attempt: with no retries allowed, the message is not dead-lettered, and it
// is confirmed once the pressure ends. The caller still gets its answer
// within the confirm timeout.
func TestStalledWriteSpendsNoAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook),
			mlproducer.WithConfirmTimeout(time.Second), mlproducer.WithMaxRetries(0),
			mlproducer.WithHealthCheckInterval(0))
		waitConnected(t, p)
		b.StallWrites(true)

		start := time.Now()
		r, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Pending, r.State)
		assert.Equal(t, time.Second, time.Since(start), "answered one confirm timeout after the call")
		time.Sleep(10 * time.Second)
		synctest.Wait()
		assert.Empty(t, dl.all(), "no attempt spent on a write that has not returned")

		b.StallWrites(false)
		synctest.Wait()
		assert.Equal(t, []string{r.MessageID}, b.MessageIDs("ml.summarization"))
		assert.EqualValues(t, 1, p.Status().Confirmed)
		require.NoError(t, closeProducer(t, p))
		assert.Empty(t, dl.all())
	})
}

// The confirm timeout of a write that was held for longer than the timeout
// runs from the moment the write returned: a broker that then never confirms
// still gets the attempt timed out and, with no retries allowed,
// dead-lettered.
func TestStalledWriteThenNoConfirmTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook),
			mlproducer.WithConfirmTimeout(time.Second), mlproducer.WithMaxRetries(0),
			mlproducer.WithHealthCheckInterval(0))
		waitConnected(t, p)
		b.StallWrites(true)
		b.HoldConfirms(true)
		_, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		time.Sleep(5 * time.Second) // the caller was answered; the tracker has nothing left to time
		synctest.Wait()
		b.StallWrites(false)
		synctest.Wait()
		start := time.Now()
		time.Sleep(2 * time.Second)
		synctest.Wait()
		require.Len(t, dl.all(), 1, "timed out one confirm timeout after the write returned")
		assert.ErrorContains(t, dl.all()[0].Err, "confirm timeout")
		assert.Less(t, time.Since(start), 3*time.Second)
		b.HoldConfirms(false)
		require.NoError(t, closeProducer(t, p))
	})
}

// A write that failed never reached the broker: the attempt header of the
// only stored copy says 1.
func TestAttemptHeaderCountsOnlyWritesThatReturned(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithConfirmTimeout(time.Hour), mlproducer.WithEnvelope(mlproducer.EnvelopeAttempt))
		waitConnected(t, p)
		b.StallWrites(true)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		_, err := p.PublishSummarization(ctx, "s", "text", mlproducer.SummarizationOptions{})
		cancel()
		require.NoError(t, err)
		synctest.Wait()
		b.DropConnections(nil) // the stalled write fails: nothing reached the broker
		b.StallWrites(false)
		time.Sleep(time.Second)
		synctest.Wait()
		msgs := b.Messages("ml.summarization")
		require.NoError(t, closeProducer(t, p))
		require.Len(t, msgs, 1)
		assert.EqualValues(t, 1, msgs[0].Headers[mlproducer.AttemptHeader])
	})
}

// Each connection lost with messages in flight is one failure for the
// breaker, and the redial that follows does not reset the count: a broker
// that keeps dropping connections opens it.
func TestConnectionLossesOpenTheBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithCircuitBreaker(3, time.Minute), mlproducer.WithHealthCheckInterval(0),
			mlproducer.WithRetryBackoff(time.Hour, time.Hour))
		waitConnected(t, p)
		b.HoldConfirms(true)
		for range 3 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			_, err := p.PublishSummarization(ctx, "s", "text", mlproducer.SummarizationOptions{})
			cancel()
			require.NoError(t, err)
			b.DropConnections(nil) // lost with the message in flight
			time.Sleep(2 * time.Second)
			waitConnected(t, p)
		}
		synctest.Wait()
		assert.True(t, p.Status().CircuitBreakerOpen, "3 consecutive failures open the breaker, and the redial does not close it")
		// Open: a new publish waits in the retry queue, it is not sent.
		sent := b.Published()
		r, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Queued, r.State)
		synctest.Wait()
		assert.Equal(t, sent, b.Published())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		_ = p.Close(ctx)
	})
}

// The control of the return tests: returns delivered at once, the message is
// retried and dead-lettered.
func TestUnroutableIsRetriedThenDeadLettered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook),
			mlproducer.WithConfirmTimeout(time.Second), mlproducer.WithMaxRetries(3))
		waitConnected(t, p)
		b.DeleteQueue("ml.embedding")
		_, err := p.PublishEmbedding(context.Background(), "s", "text", mlproducer.EmbeddingOptions{})
		require.NoError(t, err)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		st := p.Status()
		require.NoError(t, closeProducer(t, p))
		assert.Zero(t, st.Confirmed)
		assert.Len(t, dl.all(), 1)
		assert.Equal(t, 4, b.Published())
	})
}

// A broker that closes the channel for what was published on it (406: over
// max_message_size) charges the attempt: the poison message is dead-lettered
// after its retries, redials are spaced out by the backoff, and its batch
// mates are not sent again and again.
func TestPoisonMessageIsDeadLettered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.SetMaxMessageSize(4 << 10)
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook), mlproducer.WithMaxRetries(3),
			mlproducer.WithReconnectBackoff(100*time.Millisecond, time.Second),
			mlproducer.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
		waitConnected(t, p)
		r, err := p.PublishSummarization(context.Background(), "share", strings.Repeat("x", 8<<10), mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		accepted := 0
		for range 200 {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			if _, err := p.PublishSummarization(ctx, "share", "hello", mlproducer.SummarizationOptions{}); err == nil {
				accepted++
			}
			cancel()
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		got := dl.all()
		var poison int
		for _, d := range got {
			if d.Message.ID == r.MessageID {
				poison++
				assert.Equal(t, 4, d.Attempts)
				assert.ErrorContains(t, d.Err, "406")
			}
		}
		assert.Equal(t, 1, poison, "the poison message is dead-lettered once")
		assert.LessOrEqual(t, b.SendCounts()[r.MessageID], 4, "sent at most 1 + max retries times")
		assert.Less(t, b.Dials(), 30, "redials after a refused session wait for the backoff")
		for id, n := range b.SendCounts() {
			if id != r.MessageID {
				assert.LessOrEqual(t, n, 4, "a batch mate is not sent again and again")
			}
		}
		require.NoError(t, closeProducer(t, p))
		assert.Equal(t, accepted+1, int(p.Status().Confirmed)+len(dl.all()), "every accepted message accounted for")
	})
}

// A session refused at once (NoDeclare and an exchange deleted after the
// set-up checked it: 404 on the first publish) does not reconnect at full
// speed; the set-up's check then finds the exchange missing (a
// configuration error), so the message waits for it, and Close hands it to
// the dead-letter hook with the 404 of its attempt.
func TestMissingExchangeDoesNotStorm(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		declareExchange(t, b, "missing")
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook),
			mlproducer.WithTopology(mlproducer.Topology{Exchange: "missing", NoDeclare: true}),
			mlproducer.WithReconnectBackoff(100*time.Millisecond, 10*time.Second))
		waitConnected(t, p)
		b.DeleteExchange("missing")
		_, err := p.PublishSummarization(context.Background(), "s", "hello", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		time.Sleep(time.Second)
		synctest.Wait()
		assert.Less(t, b.Dials(), 20, "a second of refused sessions")
		time.Sleep(time.Minute)
		synctest.Wait()
		assert.Contains(t, p.Status().LastError, `exchange "missing" does not exist`)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		_ = p.Close(ctx)
		require.Len(t, dl.all(), 1)
		assert.ErrorContains(t, dl.all()[0].Err, "404")
	})
}

// Publish keeps its own copy of the body: a caller that reuses its buffer
// after a Queued receipt changes nothing that is sent.
func TestPublishCopiesTheBody(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("down"))
		p := newFake(t, b)
		buf := []byte(`{"version":1,"type":"summarization","messageId":"x","shareId":"s","content":"c","options":{},"createdAt":"2026-01-02T03:04:05Z"}`)
		want := string(buf)
		r, err := p.Publish(context.Background(), mlproducer.Message{Type: mlproducer.TaskSummarization, Body: buf})
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Queued, r.State)
		copy(buf, "\xff\xfe not json at all, and not UTF-8 either")
		b.RefuseDials(nil)
		waitConnected(t, p)
		time.Sleep(time.Second)
		synctest.Wait()
		msgs := b.Messages("ml.summarization")
		require.NoError(t, closeProducer(t, p))
		require.Len(t, msgs, 1)
		assert.Equal(t, want, string(msgs[0].Body))
	})
}

// A panicking dead-letter hook is logged; the Producer and the process go
// on, and Close still accounts for the message.
func TestPanickingDeadLetterHook(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var calls int
		var logs strings.Builder
		p := newFake(t, b, mlproducer.WithMaxRetries(0),
			mlproducer.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))),
			mlproducer.WithDeadLetter(func(mlproducer.DeadLetter) { calls++; panic("hook bug") }))
		waitConnected(t, p)
		b.NackNext(2)
		for range 2 {
			_, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
			require.NoError(t, err)
		}
		synctest.Wait()
		require.NoError(t, closeProducer(t, p))
		assert.Equal(t, 2, calls)
		assert.EqualValues(t, 2, p.Status().DeadLettered)
		assert.Contains(t, logs.String(), "dead-letter hook panicked")
	})
}

// WaitConnected fails with ErrClosed once Close has begun, even while the
// connection is still up and Close drains.
func TestWaitConnectedDuringClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b)
		waitConnected(t, p)
		b.HoldConfirms(true)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		_, err := p.PublishSummarization(ctx, "s", "text", mlproducer.SummarizationOptions{})
		cancel()
		require.NoError(t, err)
		closed := make(chan error, 1)
		go func() { closed <- closeProducer(t, p) }()
		time.Sleep(time.Millisecond) // Close is draining the unconfirmed message
		assert.ErrorIs(t, p.WaitConnected(context.Background()), mlproducer.ErrClosed)
		b.HoldConfirms(false)
		require.NoError(t, <-closed)
	})
}
