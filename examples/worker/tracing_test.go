package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/mlproducer/mlproducer/internal/rabbittest"
)

// tracedWorker is a test worker whose spans go to an in-memory exporter,
// with the W3C propagator; the globals are not touched.
func tracedWorker(t *testing.T, url string, queues ...string) (*worker, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	w, _ := newTestWorker(t, url, queues...)
	w.tracerProvider = tp
	w.propagator = propagation.TraceContext{}
	return w, exp
}

func attrs(s tracetest.SpanStub) map[attribute.Key]attribute.Value {
	m := make(map[attribute.Key]attribute.Value)
	for _, kv := range s.Attributes {
		m[kv.Key] = kv.Value
	}
	return m
}

// spanOf returns the span of the delivery of message id.
func spanOf(t *testing.T, exp *tracetest.InMemoryExporter, id string) tracetest.SpanStub {
	t.Helper()
	for _, s := range exp.GetSpans() {
		if v, ok := attrs(s)["messaging.message.id"]; ok && v.AsString() == id {
			return s
		}
	}
	t.Fatalf("no span for message %s in %d spans", id, len(exp.GetSpans()))
	return tracetest.SpanStub{}
}

// Real RabbitMQ: a delivery carrying a traceparent (written here by hand,
// as a string and as bytes) is processed in a CONSUMER span that is a child
// of it, with the messaging attributes and the outcome; one without a
// traceparent starts a trace of its own; a rejected one has an error
// status.
func TestWorkerConsumerSpan(t *testing.T) {
	url := rabbittest.Require(t)
	q := testQueue(t, url, "traced")
	w, exp := tracedWorker(t, url, q)
	consuming := make(chan struct{}, 1)
	w.onConsuming = func() {
		select {
		case consuming <- struct{}{}:
		default:
		}
	}
	stop := startWorker(t, w)
	select {
	case <-consuming:
	case <-time.After(20 * time.Second):
		t.Fatal("the worker does not consume")
	}

	const (
		traceHex  = "4bf92f3577b34da6a3ce929d0e0e4736"
		parentHex = "00f067aa0ba902b7"
		bytesHex  = "5bf92f3577b34da6a3ce929d0e0e4737"
	)
	traced, asBytes, plain, dup := uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString()
	publish(t, url, q,
		amqp.Publishing{MessageId: traced, Body: taskBody(traced, "summarization"),
			Headers: amqp.Table{"traceparent": "00-" + traceHex + "-" + parentHex + "-01", "tracestate": "vendor=1"}},
		amqp.Publishing{MessageId: asBytes, Body: taskBody(asBytes, "embedding"),
			Headers: amqp.Table{"traceparent": []byte("00-" + bytesHex + "-" + parentHex + "-01")}},
		amqp.Publishing{MessageId: plain, Body: taskBody(plain, "embedding")},
		amqp.Publishing{MessageId: "bad", Body: []byte(`{"not":"a task"}`),
			Headers: amqp.Table{"traceparent": "00-" + traceHex + "-" + parentHex + "-01"}},
		amqp.Publishing{MessageId: dup, Body: taskBody(dup, "embedding")},
		amqp.Publishing{MessageId: dup, Body: taskBody(dup, "embedding")},
	)
	eventually(t, "6 deliveries settled", func() bool {
		return w.processed.Load() == 4 && w.rejected.Load() == 1 && w.duplicates.Load() == 1
	})
	stop()
	if n := len(exp.GetSpans()); n != 6 {
		t.Fatalf("%d spans, want one per delivery (6)", n)
	}

	s := spanOf(t, exp, traced)
	if s.Name != "process "+q || s.SpanKind != trace.SpanKindConsumer {
		t.Errorf("span %q kind %v, want %q CONSUMER", s.Name, s.SpanKind, "process "+q)
	}
	if got := s.SpanContext.TraceID().String(); got != traceHex {
		t.Errorf("trace id %s, want the traceparent's %s", got, traceHex)
	}
	if got := s.Parent.SpanID().String(); got != parentHex || !s.Parent.IsRemote() {
		t.Errorf("parent span id %s (remote %t), want the traceparent's %s, remote", got, s.Parent.IsRemote(), parentHex)
	}
	if got := s.SpanContext.TraceState().Get("vendor"); got != "1" {
		t.Errorf("tracestate vendor=%q, want 1", got)
	}
	a := attrs(s)
	for k, want := range map[attribute.Key]string{
		"messaging.system":                           "rabbitmq",
		"messaging.operation.type":                   "process",
		"messaging.operation.name":                   "process",
		"messaging.destination.name":                 q,
		"messaging.rabbitmq.destination.routing_key": q,
		"messaging.message.id":                       traced,
		outcomeKey:                                   outcomeAcked,
	} {
		if got := a[k].Emit(); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if got := a["messaging.message.body.size"].AsInt64(); got != int64(len(taskBody(traced, "summarization"))) {
		t.Errorf("body size %d", got)
	}
	if got := a["messaging.rabbitmq.message.delivery_tag"].AsInt64(); got < 1 {
		t.Errorf("delivery tag %d", got)
	}
	if s.Status.Code != codes.Unset {
		t.Errorf("status %v of an acked delivery", s.Status)
	}

	if got := spanOf(t, exp, asBytes).SpanContext.TraceID().String(); got != bytesHex {
		t.Errorf("traceparent as bytes: trace id %s, want %s", got, bytesHex)
	}
	if p := spanOf(t, exp, plain); p.Parent.IsValid() || !p.SpanContext.IsValid() {
		t.Errorf("no traceparent: parent %v, want a root span", p.Parent)
	}
	bad := spanOf(t, exp, "bad")
	if bad.Status.Code != codes.Error || attrs(bad)[outcomeKey].AsString() != outcomeRejected ||
		attrs(bad)["error.type"].AsString() != "invalid_task" || len(bad.Events) == 0 {
		t.Errorf("rejected: status %v, outcome %q, error.type %q, %d events; want an error with the outcome rejected",
			bad.Status, attrs(bad)[outcomeKey].AsString(), attrs(bad)["error.type"].AsString(), len(bad.Events))
	}
	outcomes := map[string]int{}
	for _, s := range exp.GetSpans() {
		outcomes[attrs(s)[outcomeKey].AsString()]++
	}
	if fmt.Sprint(outcomes) != fmt.Sprint(map[string]int{outcomeAcked: 4, outcomeDuplicate: 1, outcomeRejected: 1}) {
		t.Errorf("outcomes %v, want 4 acked, 1 duplicate, 1 rejected", outcomes)
	}
}

// The carrier reads string and []byte header values, nothing else, and
// writes strings.
func TestHeaderCarrier(t *testing.T) {
	c := headerCarrier(amqp.Table{"s": "v", "b": []byte("w"), "n": int32(3)})
	if c.Get("s") != "v" || c.Get("b") != "w" || c.Get("n") != "" || c.Get("missing") != "" {
		t.Fatalf("Get: %q %q %q", c.Get("s"), c.Get("b"), c.Get("n"))
	}
	c.Set("traceparent", "x")
	if v, ok := c["traceparent"].(string); !ok || v != "x" || len(c.Keys()) != 4 {
		t.Fatalf("after Set: %v", c)
	}
}
