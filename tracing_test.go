package mlproducer_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/rabbittest"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// recorder returns a tracer provider that keeps every ended span.
func recorder() (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	sr := tracetest.NewSpanRecorder()
	return sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr)), sr
}

// traced is the options that send the Producer's spans to tp, with W3C trace
// context in the headers.
func traced(tp trace.TracerProvider) []mlproducer.Option {
	return []mlproducer.Option{mlproducer.WithTracerProvider(tp), mlproducer.WithPropagator(propagation.TraceContext{})}
}

// publishSpans returns the ended PRODUCER spans.
func publishSpans(sr *tracetest.SpanRecorder) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range sr.Ended() {
		if s.SpanKind() == trace.SpanKindProducer {
			out = append(out, s)
		}
	}
	return out
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// traceparent is the W3C header of sc.
func traceparent(sc trace.SpanContext) string {
	return fmt.Sprintf("00-%s-%s-%s", sc.TraceID(), sc.SpanID(), sc.TraceFlags())
}

// A publish is one PRODUCER span, a child of the caller's, with the messaging
// conventions' attributes, and its trace context is in the message's headers.
func TestTracingPublishSpan(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tp, sr := recorder()
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, traced(tp)...)
		waitConnected(t, p)
		ctx, handler := tp.Tracer("test").Start(context.Background(), "handler")
		r, err := p.PublishSummarization(ctx, "share-1", "some text", mlproducer.SummarizationOptions{},
			mlproducer.WithCorrelationID("req-7"), mlproducer.WithHeaders(map[string]any{"traceparent": "forged"}))
		require.NoError(t, err)
		require.Equal(t, mlproducer.Confirmed, r.State)
		handler.End()
		require.NoError(t, closeProducer(t, p))

		spans := publishSpans(sr)
		require.Len(t, spans, 1)
		s := spans[0]
		assert.Equal(t, "publish ml.tasks", s.Name())
		assert.Equal(t, handler.SpanContext().SpanID(), s.Parent().SpanID())
		assert.Equal(t, handler.SpanContext().TraceID(), s.SpanContext().TraceID())
		a := attrs(s)
		assert.Equal(t, "rabbitmq", a["messaging.system"].AsString())
		assert.Equal(t, "send", a["messaging.operation.type"].AsString())
		assert.Equal(t, "publish", a["messaging.operation.name"].AsString())
		assert.Equal(t, "ml.tasks", a["messaging.destination.name"].AsString())
		assert.Equal(t, "ml.summarization", a["messaging.rabbitmq.destination.routing_key"].AsString())
		assert.Equal(t, r.MessageID, a["messaging.message.id"].AsString())
		assert.Equal(t, "req-7", a["messaging.message.conversation_id"].AsString())
		assert.Equal(t, "confirmed", a["mlproducer.outcome"].AsString())
		assert.EqualValues(t, 1, a["mlproducer.attempts"].AsInt64())
		msgs := b.Messages("ml.summarization")
		require.Len(t, msgs, 1)
		assert.EqualValues(t, len(msgs[0].Body), a["messaging.message.body.size"].AsInt64())
		// The span's own context, not the caller's forged header.
		assert.Equal(t, traceparent(s.SpanContext()), msgs[0].Headers["traceparent"])
		assert.Equal(t, codes.Unset, s.Status().Code)
	})
}

// A publish that returns Confirmed has ended its span: a service that
// answers its request then, and a test that looks at the exported spans
// then, find it (examples/gateway's TestTraceGatewayToWorker failed now and
// then when the span ended just after the caller woke).
func TestTracingSpanEndedWhenPublishReturns(t *testing.T) {
	tp, sr := recorder()
	b := mlproducertest.NewBroker()
	defer b.Close()
	p := newFake(t, b, traced(tp)...)
	waitConnected(t, p)
	ctx := context.Background()
	for i := range 300 {
		r, err := p.PublishSummarization(ctx, "share-1", "some text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		require.Equal(t, mlproducer.Confirmed, r.State)
		spans := publishSpans(sr)
		require.Len(t, spans, i+1, "publish %d returned Confirmed before its span ended", i+1)
		// Its confirm can be handled before the writer counted the write.
		require.EqualValues(t, 1, attrs(spans[i])["mlproducer.attempts"].AsInt64(), "publish %d: attempts of its span", i+1)
	}
	require.NoError(t, closeProducer(t, p))
}

// A publish that returns DeadLettered has ended its span and is counted.
func TestTracingSpanEndedWhenPublishReturnsDeadLettered(t *testing.T) {
	tp, sr := recorder()
	b := mlproducertest.NewBroker()
	defer b.Close()
	p := newFake(t, b, append(traced(tp), mlproducer.WithMaxRetries(0), mlproducer.WithCircuitBreaker(1<<20, time.Second))...)
	waitConnected(t, p)
	b.NackNext(1 << 20)
	ctx := context.Background()
	for i := range 300 {
		r, _ := p.PublishSummarization(ctx, "share-1", "some text", mlproducer.SummarizationOptions{})
		require.Equal(t, mlproducer.DeadLettered, r.State)
		require.Len(t, publishSpans(sr), i+1, "publish %d returned DeadLettered before its span ended", i+1)
		require.EqualValues(t, i+1, p.Status().DeadLettered, "publish %d returned DeadLettered before it was counted", i+1)
	}
	for _, s := range publishSpans(sr) {
		require.Equal(t, "dead_lettered", attrs(s)["mlproducer.outcome"].AsString())
	}
	_ = closeProducer(t, p)
}

// Every attempt carries the same trace context; a failed attempt is an event
// of the one span, which ends at the confirm.
func TestTracingRetriesAreEventsOfOneSpan(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tp, sr := recorder()
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, append(traced(tp), mlproducer.WithConfirmTimeout(time.Second))...)
		waitConnected(t, p)
		// The first send is stored but its confirm never comes: it times
		// out and is sent again.
		b.HoldConfirms(true)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		r, err := p.PublishEmbedding(ctx, "s", "text", mlproducer.EmbeddingOptions{})
		cancel()
		require.NoError(t, err)
		require.Equal(t, mlproducer.Pending, r.State)
		for len(b.Messages("ml.embedding")) < 1 {
			time.Sleep(time.Millisecond)
		}
		b.DropConnections(nil)
		b.HoldConfirms(false)
		for len(b.Messages("ml.embedding")) < 2 || p.Status().PendingConfirms+p.Status().RetryQueueSize > 0 {
			time.Sleep(time.Millisecond)
		}
		require.NoError(t, closeProducer(t, p))

		spans := publishSpans(sr)
		require.Len(t, spans, 1)
		s := spans[0]
		msgs := b.Messages("ml.embedding")
		require.Len(t, msgs, 2)
		for _, d := range msgs {
			assert.Equal(t, traceparent(s.SpanContext()), d.Headers["traceparent"])
		}
		var names []string
		for _, e := range s.Events() {
			names = append(names, e.Name)
		}
		assert.Contains(t, names, "requeued", "the lost connection shows as an event")
		assert.Equal(t, "confirmed", attrs(s)["mlproducer.outcome"].AsString())
		assert.EqualValues(t, 2, attrs(s)["mlproducer.attempts"].AsInt64())
	})
}

// A message whose attempts ran out ends its span with an error; a nack is a
// retry event before that.
func TestTracingDeadLetter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tp, sr := recorder()
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, append(traced(tp), mlproducer.WithMaxRetries(1))...)
		waitConnected(t, p)
		b.NackNext(2)
		_, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		for p.Status().DeadLettered == 0 {
			time.Sleep(time.Millisecond)
		}
		require.NoError(t, closeProducer(t, p))
		spans := publishSpans(sr)
		require.Len(t, spans, 1)
		s := spans[0]
		assert.Equal(t, codes.Error, s.Status().Code)
		a := attrs(s)
		assert.Equal(t, "dead_lettered", a["mlproducer.outcome"].AsString())
		assert.Equal(t, "nacked", a["error.type"].AsString())
		var retries int
		for _, e := range s.Events() {
			if e.Name == "retry" {
				retries++
			}
		}
		assert.Equal(t, 1, retries, "one retry after the first nack")
	})
}

// A refused publish is an error span too, so that a 503 shows in the trace.
func TestTracingRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tp, sr := recorder()
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, append(traced(tp), mlproducer.WithRetryQueueCapacity(1, 1<<20))...)
		require.NoError(t, closeProducer(t, p))
		_, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		require.ErrorIs(t, err, mlproducer.ErrClosed)
		spans := publishSpans(sr)
		require.Len(t, spans, 1)
		assert.Equal(t, codes.Error, spans[0].Status().Code)
		assert.Equal(t, "closed", attrs(spans[0])["error.type"].AsString())
	})
}

// Without a provider (the global one no service set) there is no span and no
// trace header; a provider set globally after New is used from then on.
func TestTracingGlobalProvider(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	p := newFake(t, b)
	defer closeProducer(t, p)
	waitConnected(t, p)
	ctx := context.Background()
	_, err := p.PublishSummarization(ctx, "s", "untraced", mlproducer.SummarizationOptions{})
	require.NoError(t, err)

	tp, sr := recorder()
	prevProp := otel.GetTextMapPropagator()
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() {
		// The global default cannot be set back; a no-op is the same to
		// every other test.
		otel.SetTracerProvider(noop.NewTracerProvider())
		otel.SetTextMapPropagator(prevProp)
	})
	_, err = p.PublishSummarization(ctx, "s", "traced", mlproducer.SummarizationOptions{})
	require.NoError(t, err)
	otel.SetTracerProvider(noop.NewTracerProvider())
	_, err = p.PublishSummarization(ctx, "s", "untraced again", mlproducer.SummarizationOptions{})
	require.NoError(t, err)

	msgs := b.Messages("ml.summarization")
	require.Len(t, msgs, 3)
	spans := publishSpans(sr)
	require.Len(t, spans, 1)
	assert.NotContains(t, msgs[0].Headers, "traceparent")
	assert.Equal(t, traceparent(spans[0].SpanContext()), msgs[1].Headers["traceparent"])
	assert.NotContains(t, msgs[2].Headers, "traceparent")
}

// The trace context is kept in the spool's record: a message sent after a
// restart carries the trace of the publish that took it.
func TestTracingKeptAcrossARestart(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		tp, sr := recorder()
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("down"))
		p := newFake(t, b, append(traced(tp), mlproducer.WithSpool(dir))...)
		r, err := p.PublishTranscription(context.Background(), "s", "https://media.example.com/a.mp3", mlproducer.TranscriptionOptions{})
		require.NoError(t, err)
		require.Equal(t, mlproducer.Queued, r.State)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		var ce *mlproducer.CloseError
		require.ErrorAs(t, p.Close(ctx), &ce)
		cancel()
		require.Equal(t, 1, ce.LeftInSpool)
		spans := publishSpans(sr)
		require.Len(t, spans, 1, "the span ends when its message waits on disk only")
		assert.Equal(t, "spooled", attrs(spans[0])["mlproducer.outcome"].AsString())

		b.RefuseDials(nil)
		p2 := newFake(t, b, mlproducer.WithSpool(dir))
		for len(b.Messages("ml.transcription")) == 0 {
			time.Sleep(time.Millisecond)
		}
		require.NoError(t, closeProducer(t, p2))
		assert.Equal(t, traceparent(spans[0].SpanContext()), b.Messages("ml.transcription")[0].Headers["traceparent"])
	})
}

// Real RabbitMQ: the consumer reads the trace context of the publish span
// from the delivery's headers.
func TestRabbitMQTracing(t *testing.T) {
	url := rabbittest.Require(t)
	rabbittest.PurgeQueues(t, url, taskQueues...)
	t.Cleanup(func() { rabbittest.PurgeQueues(t, url, taskQueues...) })
	tp, sr := recorder()
	p, err := mlproducer.New(append(traced(tp), mlproducer.WithURLs(url))...)
	require.NoError(t, err)
	waitConnected(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx, handler := tp.Tracer("test").Start(ctx, "handler")
	r, err := p.PublishEmbedding(ctx, "s", "text", mlproducer.EmbeddingOptions{})
	require.NoError(t, err)
	require.Equal(t, mlproducer.Confirmed, r.State)
	handler.End()
	require.NoError(t, closeProducer(t, p))

	conn := rabbittest.Dial(t, url)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	defer ch.Close()
	d, ok, err := ch.Get("ml.embedding", true)
	require.NoError(t, err)
	require.True(t, ok, "the message arrived")
	carrier := propagation.MapCarrier{}
	for k, v := range d.Headers {
		if s, ok := v.(string); ok {
			carrier[k] = s
		}
	}
	got := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), carrier))
	spans := publishSpans(sr)
	require.Len(t, spans, 1)
	assert.Equal(t, spans[0].SpanContext().TraceID(), got.TraceID())
	assert.Equal(t, spans[0].SpanContext().SpanID(), got.SpanID())
	assert.Equal(t, handler.SpanContext().TraceID(), got.TraceID(), "one trace from the handler to the consumer")
	assert.True(t, got.IsRemote())
}
