package mlproducer_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/rabbittest"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// every sets every PublishOption.
func every(id string) []mlproducer.PublishOption {
	return []mlproducer.PublishOption{
		mlproducer.WithMessageID(id),
		mlproducer.WithHeaders(map[string]any{
			"tenant": "acme", "n32": int32(7), "n64": int64(1) << 40, "ok": true,
			"ratio": 0.25, "raw": []byte{1, 2, 3},
		}),
		mlproducer.WithPriority(5),
		mlproducer.WithExpiration(90 * time.Second),
		mlproducer.WithCorrelationID("req-42"),
	}
}

// checkEvery asserts what every sets, on a delivery of the fake broker.
func checkEvery(t *testing.T, d mlproducertest.Delivery, id string, attempt int32) {
	t.Helper()
	assert.Equal(t, id, d.MessageID)
	assert.Equal(t, "req-42", d.CorrelationID)
	assert.EqualValues(t, 5, d.Priority)
	assert.Equal(t, "90000", d.Expiration)
	assert.Equal(t, "acme", d.Headers["tenant"])
	assert.Equal(t, int32(7), d.Headers["n32"])
	assert.Equal(t, int64(1)<<40, d.Headers["n64"])
	assert.Equal(t, true, d.Headers["ok"])
	assert.Equal(t, 0.25, d.Headers["ratio"])
	assert.Equal(t, []byte{1, 2, 3}, d.Headers["raw"])
	assert.Equal(t, attempt, d.Headers[mlproducer.AttemptHeader])
	assert.Contains(t, string(d.Body), `"messageId":"`+id+`"`, "the typed body carries the given id")
}

// Each bad option is refused before anything is sent, with an error that
// names it; nothing is kept.
func TestPublishOptionsRefused(t *testing.T) {
	many := map[string]any{}
	for i := range 65 {
		many[strings.Repeat("k", i+1)] = 1
	}
	cases := []struct {
		name  string
		opt   mlproducer.PublishOption
		field string
		large bool
	}{
		{"id with a space", mlproducer.WithMessageID("a b"), "WithMessageID", false},
		{"id too long", mlproducer.WithMessageID(strings.Repeat("a", 129)), "WithMessageID", false},
		{"priority 10", mlproducer.WithPriority(10), "WithPriority", false},
		{"expiration 0", mlproducer.WithExpiration(0), "WithExpiration", false},
		{"expiration under 1ms", mlproducer.WithExpiration(500 * time.Microsecond), "WithExpiration", false},
		{"negative expiration", mlproducer.WithExpiration(-time.Second), "WithExpiration", false},
		{"correlation id too long", mlproducer.WithCorrelationID(strings.Repeat("c", 256)), "WithCorrelationID", false},
		{"correlation id not UTF-8", mlproducer.WithCorrelationID("\xff"), "WithCorrelationID", false},
		{"reserved header", mlproducer.WithHeaders(map[string]any{"x-mlproducer-attempt": int32(9)}), `WithHeaders["x-mlproducer-attempt"]`, false},
		{"reserved header, other case", mlproducer.WithHeaders(map[string]any{"X-MLProducer-Tenant": "a"}), `WithHeaders["X-MLProducer-Tenant"]`, false},
		{"empty header key", mlproducer.WithHeaders(map[string]any{"": "a"}), "WithHeaders", false},
		{"header key too long", mlproducer.WithHeaders(map[string]any{strings.Repeat("k", 129): "a"}), "WithHeaders[", false},
		{"uint64 header", mlproducer.WithHeaders(map[string]any{"n": uint64(1)}), `WithHeaders["n"]`, false},
		{"struct header", mlproducer.WithHeaders(map[string]any{"s": struct{}{}}), `WithHeaders["s"]`, false},
		{"nested table", mlproducer.WithHeaders(map[string]any{"t": map[string]any{"a": 1}}), `WithHeaders["t"]`, false},
		{"NaN header", mlproducer.WithHeaders(map[string]any{"f": math.NaN()}), `WithHeaders["f"]`, false},
		{"header string not UTF-8", mlproducer.WithHeaders(map[string]any{"s": "\xff"}), `WithHeaders["s"]`, false},
		{"65 headers", mlproducer.WithHeaders(many), "WithHeaders", false},
		{"headers over 16 KiB", mlproducer.WithHeaders(map[string]any{"big": strings.Repeat("x", 17<<10)}), "WithHeaders", true},
	}
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b)
		waitConnected(t, p)
		for _, tc := range cases {
			for _, publish := range []func() error{
				func() error {
					_, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{}, tc.opt)
					return err
				},
				func() error {
					_, err := p.Publish(context.Background(), mlproducer.Message{Type: mlproducer.TaskEmbedding, Body: []byte(`{}`)}, tc.opt)
					return err
				},
			} {
				err := publish()
				require.ErrorIs(t, err, mlproducer.ErrInvalidTask, tc.name)
				var ite *mlproducer.InvalidTaskError
				require.ErrorAs(t, err, &ite, tc.name)
				assert.Contains(t, ite.Field, tc.field, tc.name)
				assert.Equal(t, tc.large, errors.Is(err, mlproducer.ErrTooLarge), tc.name)
			}
		}
		require.NoError(t, closeProducer(t, p))
		assert.Zero(t, b.Published(), "a refused publish sent nothing")
		assert.Zero(t, p.Status().Accepted)
	})
}

// Every option arrives with the message, the same on a retry after a nack
// and after a reconnect, with the attempt header counting; the caller's map
// may change after the call.
func TestPublishOptionsKeptAcrossRetriesAndReconnects(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithConfirmTimeout(time.Second), mlproducer.WithEnvelope(mlproducer.EnvelopeAttempt))
		waitConnected(t, p)
		b.NackNext(1)
		r, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{}, every("order-1")...)
		require.NoError(t, err)
		assert.Equal(t, "order-1", r.MessageID)
		for len(b.Messages("ml.summarization")) == 0 {
			time.Sleep(time.Millisecond)
		}
		msgs := b.Messages("ml.summarization")
		require.Len(t, msgs, 1)
		checkEvery(t, msgs[0], "order-1", 2) // the nacked send was attempt 1

		// Queued while the connection is down, sent after the redial.
		b.RefuseDials(errors.New("down"))
		b.DropConnections(nil)
		for p.Status().ConnectionState == mlproducer.Connected {
			time.Sleep(time.Millisecond)
		}
		h := map[string]any{"tenant": "acme"}
		opts := every("order-2")
		opts[1] = mlproducer.WithHeaders(h)
		r, err = p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{}, opts...)
		require.NoError(t, err)
		require.Equal(t, mlproducer.Queued, r.State)
		h["tenant"] = "changed after the call"
		b.RefuseDials(nil)
		for len(b.Messages("ml.summarization")) < 2 {
			time.Sleep(time.Millisecond)
		}
		d := b.Messages("ml.summarization")[1]
		assert.Equal(t, "order-2", d.MessageID)
		assert.Equal(t, "acme", d.Headers["tenant"])
		assert.Equal(t, "req-42", d.CorrelationID)
		assert.EqualValues(t, 5, d.Priority)
		require.NoError(t, closeProducer(t, p))
	})
}

// With a spool, the metadata survives a restart, header types included.
func TestPublishOptionsKeptAcrossARestart(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("down"))
		p := newFake(t, b, mlproducer.WithSpool(dir), mlproducer.WithEnvelope(mlproducer.EnvelopeAttempt))
		_, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{}, every("order-3")...)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		require.Error(t, p.Close(ctx))
		cancel()

		b.RefuseDials(nil)
		p2 := newFake(t, b, mlproducer.WithSpool(dir), mlproducer.WithEnvelope(mlproducer.EnvelopeAttempt))
		for len(b.Messages("ml.summarization")) == 0 {
			time.Sleep(time.Millisecond)
		}
		require.NoError(t, closeProducer(t, p2))
		checkEvery(t, b.Messages("ml.summarization")[0], "order-3", 1)
	})
}

// Real RabbitMQ: every option arrives as an AMQP property or header, also
// for a message queued while every connection was closed and sent after
// the reconnect.
func TestRabbitMQPublishOptions(t *testing.T) {
	url := rabbittest.Require(t)
	rabbittest.PurgeQueues(t, url, taskQueues...)
	t.Cleanup(func() { rabbittest.PurgeQueues(t, url, taskQueues...) })
	p, err := mlproducer.New(mlproducer.WithURLs(url), mlproducer.WithReconnectBackoff(20*time.Millisecond, 200*time.Millisecond),
		mlproducer.WithEnvelope(mlproducer.EnvelopeAttempt))
	require.NoError(t, err)
	waitConnected(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := p.PublishSummarization(ctx, "s", "text", mlproducer.SummarizationOptions{}, every("rabbit-1")...)
	require.NoError(t, err)
	require.Equal(t, mlproducer.Confirmed, r.State)

	rabbittest.CloseAllConnections(t)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	r, err = p.PublishSummarization(ctx2, "s", "text", mlproducer.SummarizationOptions{}, every("rabbit-2")...)
	require.NoError(t, err)
	if r.State != mlproducer.Confirmed {
		for p.Status().PendingConfirms+p.Status().RetryQueueSize > 0 {
			time.Sleep(10 * time.Millisecond)
			require.NoError(t, ctx2.Err(), "the message queued across the reconnect was not confirmed")
		}
	}
	require.NoError(t, closeProducer(t, p))

	conn := rabbittest.Dial(t, url)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	defer ch.Close()
	seen := map[string]bool{}
	for {
		d, ok, err := ch.Get("ml.summarization", true)
		require.NoError(t, err)
		if !ok {
			break
		}
		seen[d.MessageId] = true
		assert.Equal(t, "req-42", d.CorrelationId)
		assert.EqualValues(t, 5, d.Priority)
		assert.Equal(t, "90000", d.Expiration)
		assert.Equal(t, "acme", d.Headers["tenant"])
		assert.Equal(t, int32(7), d.Headers["n32"])
		assert.Equal(t, int64(1)<<40, d.Headers["n64"])
		assert.Equal(t, true, d.Headers["ok"])
		assert.Equal(t, 0.25, d.Headers["ratio"])
		assert.Equal(t, []byte{1, 2, 3}, d.Headers["raw"])
		assert.Contains(t, d.Headers, mlproducer.AttemptHeader)
		assert.Equal(t, amqp.Persistent, d.DeliveryMode)
	}
	assert.True(t, seen["rabbit-1"], "the first message arrived")
	assert.True(t, seen["rabbit-2"], "the message sent across the reconnect arrived")
}
