package mlproducer

import (
	"context"
	"errors"
	"reflect"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/mlproducer/mlproducer/transport"
)

// instrumentationName names the Producer's tracer.
const instrumentationName = "github.com/mlproducer/mlproducer"

// Span attributes and events of the Producer's own (beside the messaging
// semantic conventions'); the README's "Tracing" lists them.
const (
	attrTaskType = attribute.Key("mlproducer.task.type")
	attrOutcome  = attribute.Key("mlproducer.outcome")
	attrAttempts = attribute.Key("mlproducer.attempts")
	attrDelay    = attribute.Key("mlproducer.retry.delay_ms")

	eventRetry    = "retry"    // an attempt failed (nack, return, timeout, channel closed): sent again later
	eventRequeued = "requeued" // back in the retry queue without spending an attempt (connection lost, not sent)
)

// tracing starts the PRODUCER span of each publish and writes its trace
// context into the message's headers. Spans go to the provider of
// WithTracerProvider, else to OpenTelemetry's global one, looked up at each
// publish; while that is a no-op (the default until a service sets one),
// publishing starts no span and allocates nothing more.
type tracing struct {
	tp       trace.TracerProvider          // WithTracerProvider; nil: the global one
	prop     propagation.TextMapPropagator // WithPropagator; nil: the global one
	exchange string
	spanName string // "publish <exchange>", per the semantic conventions
	cur      atomic.Pointer[tracerOf]
}

// tracerOf is the tracer of one provider, and whether it records.
type tracerOf struct {
	tp     trace.TracerProvider
	tracer trace.Tracer
	on     bool
}

func newTracing(c *config) *tracing {
	dest := c.topology.Exchange
	if dest == "" {
		dest = "amq.default"
	}
	return &tracing{tp: c.tracerProvider, prop: c.propagator, exchange: c.topology.Exchange, spanName: "publish " + dest}
}

// tracer returns the tracer to use now, or false when spans would go nowhere.
func (t *tracing) tracer() (trace.Tracer, bool) {
	tp := t.tp
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if c := t.cur.Load(); c != nil && sameProvider(c.tp, tp) {
		return c.tracer, c.on
	}
	c := &tracerOf{tp: tp, on: records(tp)}
	if c.on {
		c.tracer = tp.Tracer(instrumentationName)
	}
	t.cur.Store(c)
	return c.tracer, c.on
}

// sameProvider compares two providers without the panic of comparing values
// of an uncomparable type.
func sameProvider(a, b trace.TracerProvider) bool {
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	return ta == tb && ta != nil && ta.Comparable() && a == b
}

// globalPkg is the package of OpenTelemetry's global provider before a
// service sets one: it makes spans that record nothing.
const globalPkg = "go.opentelemetry.io/otel/internal/global"

// records reports whether tp's spans can be recorded: not a no-op provider,
// nor the global one no service has set.
func records(tp trace.TracerProvider) bool {
	switch tp.(type) {
	case nil, noop.TracerProvider, *noop.TracerProvider:
		return false
	}
	typ := reflect.TypeOf(tp)
	if typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	return typ.PkgPath() != globalPkg
}

func (t *tracing) propagator() propagation.TextMapPropagator {
	if t.prop != nil {
		return t.prop
	}
	return otel.GetTextMapPropagator()
}

// traced holds the span of a message until its end; swapped out once, so the
// span ends exactly once.
type traced struct{ span trace.Span }

// start starts the PRODUCER span of m's publish, a child of ctx's span, and
// writes its trace context into m's headers, where every attempt (and the
// spool's record) carries the same one.
func (t *tracing) start(ctx context.Context, m *message) {
	tr, on := t.tracer()
	if !on {
		return
	}
	attrs := []attribute.KeyValue{
		semconv.MessagingSystemRabbitMQ,
		semconv.MessagingOperationTypeSend,
		semconv.MessagingOperationName("publish"),
		semconv.MessagingDestinationName(t.exchange),
		semconv.MessagingRabbitMQDestinationRoutingKey(m.typ.RoutingKey()),
		semconv.MessagingMessageID(m.id),
		semconv.MessagingMessageBodySize(len(m.body)),
		attrTaskType.String(string(m.typ)),
	}
	if m.meta != nil && m.meta.correlationID != "" {
		attrs = append(attrs, semconv.MessagingMessageConversationID(m.meta.correlationID))
	}
	sctx, span := tr.Start(ctx, t.spanName, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	if m.meta == nil {
		m.meta = &msgMeta{}
	}
	if m.meta.headers == nil {
		m.meta.headers = make(transport.Table, 2)
	}
	// The caller's headers were copied by applyPublishOptions: this writes
	// to the Producer's copy. A traceparent the caller set is replaced by
	// the span's own, so that the consumer's span is its child.
	t.propagator().Inject(sctx, headerCarrier(m.meta.headers))
	m.trace.Store(&traced{span: span})
}

// refused records a publish refused before there was a message (closed,
// breaker, ctx): a span of its own, so that the refusal shows in the caller's
// trace.
func (t *tracing) refused(ctx context.Context, err error) {
	tr, on := t.tracer()
	if !on {
		return
	}
	_, span := tr.Start(ctx, t.spanName, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
		semconv.MessagingSystemRabbitMQ,
		semconv.MessagingOperationTypeSend,
		semconv.MessagingOperationName("publish"),
		semconv.MessagingDestinationName(t.exchange),
	))
	endWith(span, "refused", err)
}

// spanEvent adds a named event to m's span, if it has one.
func (m *message) spanEvent(name string, attrs ...attribute.KeyValue) {
	if tr := m.trace.Load(); tr != nil {
		tr.span.AddEvent(name, trace.WithAttributes(attrs...))
	}
}

// endSpan ends m's span, if it has one and it has not ended, with outcome
// (and err as its error, if not nil).
func (m *message) endSpan(outcome string, err error) {
	tr := m.trace.Swap(nil)
	if tr == nil {
		return
	}
	tr.span.SetAttributes(attrAttempts.Int(int(m.sends.Load())))
	endWith(tr.span, outcome, err)
}

func endWith(span trace.Span, outcome string, err error) {
	span.SetAttributes(attrOutcome.String(outcome))
	if err != nil {
		span.RecordError(err)
		span.SetAttributes(semconv.ErrorTypeKey.String(errorType(err)))
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// errorType is the low-cardinality error.type of a refusal or a dead letter.
func errorType(err error) string {
	var ret *ReturnedError
	switch {
	case errors.Is(err, errNacked):
		return "nacked"
	case errors.Is(err, errConfirmTimeout):
		return "confirm_timeout"
	case errors.As(err, &ret):
		return "returned"
	case errors.Is(err, ErrInvalidTask):
		return "invalid_task"
	case errors.Is(err, ErrClosed):
		return "closed"
	case errors.Is(err, ErrCircuitOpen):
		return "circuit_open"
	case errors.Is(err, ErrRetryQueueFull):
		return "retry_queue_full"
	case errors.Is(err, ErrSpoolUnavailable):
		return "spool_unavailable"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline_exceeded"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "_OTHER"
}

// headerCarrier writes and reads a trace context in AMQP headers.
type headerCarrier transport.Table

func (c headerCarrier) Get(key string) string {
	switch v := c[key].(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

func (c headerCarrier) Set(key, value string) { c[key] = value }

func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
