package mlproducer_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// A service that traces gives the Producer its provider and propagator (or
// sets OpenTelemetry's global ones): each publish is a PRODUCER span, a child
// of the request's span, and the message carries its trace context for the
// consumer. Here a span recorder stands in for an exporter.
func ExampleWithTracerProvider() {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	broker := mlproducertest.NewBroker()
	defer broker.Close()

	p, err := mlproducer.New(
		mlproducer.WithDialer(broker),
		mlproducer.WithTracerProvider(tp),
		mlproducer.WithPropagator(propagation.TraceContext{}),
	)
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.WaitConnected(ctx); err != nil {
		log.Fatal(err)
	}
	ctx, request := tp.Tracer("gateway").Start(ctx, "POST /v1/summarize")
	if _, err := p.PublishSummarization(ctx, "share-42", "A transcript…", mlproducer.SummarizationOptions{}); err != nil {
		log.Fatal(err)
	}
	request.End()
	if err := p.Close(ctx); err != nil {
		log.Fatal(err)
	}

	for _, s := range spans.Ended() {
		if s.Parent().SpanID() == request.SpanContext().SpanID() {
			fmt.Println(s.Name(), s.SpanKind())
		}
	}
	d := broker.Messages("ml.summarization")[0]
	fmt.Println("traceparent set:", d.Headers["traceparent"] != nil)
	// Output:
	// publish ml.tasks producer
	// traceparent set: true
}
