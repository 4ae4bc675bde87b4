package main

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// tracerName is the instrumentation scope of the worker's spans.
const tracerName = "github.com/mlproducer/mlproducer/examples/worker"

// outcomeKey is the span attribute that says how a delivery was settled,
// one of the outcome* values; the library's PRODUCER spans say how a publish
// ended under the same key.
const outcomeKey = attribute.Key("mlproducer.outcome")

const (
	outcomeAcked     = "acked"     // processed and acknowledged
	outcomeDuplicate = "duplicate" // a message id already processed: acknowledged, not processed
	outcomeRejected  = "rejected"  // not a valid task: rejected without requeueing
	outcomeRequeued  = "requeued"  // processing failed: nacked with requeue
)

// headerCarrier reads and writes W3C trace context in a message's AMQP
// headers. The producer writes strings; a value another client wrote as
// bytes is read too; any other type is no value.
type headerCarrier amqp.Table

var _ propagation.TextMapCarrier = headerCarrier(nil)

// Get returns the value of key, or "".
func (c headerCarrier) Get(key string) string {
	switch v := c[key].(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

// Set sets key to value (as a string header).
func (c headerCarrier) Set(key, value string) { c[key] = value }

// Keys returns the header names.
func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// startSpan extracts the trace context that the producer put in d's headers
// and starts the CONSUMER span of its processing, a child of that context
// (a root when the message carries none). The caller ends it with endSpan.
func (w *worker) startSpan(queue string, d *amqp.Delivery) (context.Context, trace.Span) {
	prop, tp := w.propagator, w.tracerProvider
	if prop == nil {
		prop = otel.GetTextMapPropagator()
	}
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	ctx := prop.Extract(context.Background(), headerCarrier(d.Headers))
	return tp.Tracer(tracerName).Start(ctx, "process "+queue,
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			semconv.MessagingSystemRabbitMQ,
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingOperationName("process"),
			semconv.MessagingDestinationName(queue),
			semconv.MessagingMessageID(d.MessageId),
			semconv.MessagingRabbitMQMessageDeliveryTag(int(d.DeliveryTag)),
			semconv.MessagingRabbitMQDestinationRoutingKey(d.RoutingKey),
			semconv.MessagingMessageBodySize(len(d.Body)),
		))
}

// endSpan records how the delivery was settled and ends span. err is why
// it was rejected or requeued; settleErr is a failed ack, reject or nack.
func endSpan(span trace.Span, outcome string, err, settleErr error) {
	span.SetAttributes(outcomeKey.String(outcome))
	if settleErr != nil {
		span.RecordError(settleErr)
	}
	switch {
	case err != nil:
		span.RecordError(err)
		span.SetAttributes(semconv.ErrorTypeKey.String(errorType(outcome)))
		span.SetStatus(codes.Error, outcome+": "+err.Error())
	case settleErr != nil:
		span.SetAttributes(semconv.ErrorTypeKey.String("settle_failed"))
		span.SetStatus(codes.Error, "cannot settle the delivery (the broker will redeliver it): "+settleErr.Error())
	}
	span.End()
}

func errorType(outcome string) string {
	if outcome == outcomeRejected {
		return "invalid_task"
	}
	return "processing_failed"
}
