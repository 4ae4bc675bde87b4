package mlproducer

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// With no provider set (OpenTelemetry's global default, or a no-op one) the
// tracing of a publish allocates nothing: the hot path costs what it did
// without tracing. With a provider it does work, so the count can fail.
func TestTracingOffAllocatesNothing(t *testing.T) {
	ctx := context.Background()
	m := &message{id: "id", typ: TaskSummarization, body: []byte(`{}`), heapIndex: -1}
	cfg := defaultConfig()
	for name, tr := range map[string]*tracing{
		"global default": newTracing(&cfg),
		"noop":           {tp: noop.NewTracerProvider(), spanName: "publish ml.tasks"},
	} {
		if _, on := tr.tracer(); on {
			t.Fatalf("%s: tracing is on", name)
		}
		if n := testing.AllocsPerRun(100, func() {
			m.meta = nil
			tr.start(ctx, m)
			m.spanEvent(eventRequeued)
			m.endSpan("confirmed", nil)
			tr.refused(ctx, ErrClosed)
		}); n != 0 {
			t.Errorf("%s: a publish's tracing allocates %v times", name, n)
		}
		if m.meta != nil {
			t.Errorf("%s: headers were added", name)
		}
	}

	on := &tracing{tp: sdktrace.NewTracerProvider(), prop: propagation.TraceContext{}, spanName: "publish ml.tasks"}
	if n := testing.AllocsPerRun(10, func() {
		m.meta = nil
		on.start(ctx, m)
		m.endSpan("confirmed", nil)
	}); n == 0 {
		t.Error("with a provider, start allocated nothing: the count above proves nothing")
	}
	if m.meta == nil || m.meta.headers["traceparent"] == nil {
		t.Error("with a provider, no traceparent header")
	}
}

// A provider of a type that cannot be compared is used, not a panic.
func TestTracingUncomparableProvider(t *testing.T) {
	type funcProvider struct {
		noop.TracerProvider
		f func()
	}
	tr := &tracing{tp: funcProvider{f: func() {}}}
	for range 2 {
		if _, on := tr.tracer(); !on {
			t.Error("an unknown provider type is taken to record")
		}
	}
}
