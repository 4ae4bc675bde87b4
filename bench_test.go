package mlproducer_test

// Micro-benchmarks of the publish hot path on the fake broker
// (mlproducertest): what the Producer itself costs per message, with no
// network and no real broker. `make bench` runs them, then the comparison
// with raw amqp091-go on a real broker (internal/bench).
//
// The fake broker's own share is included in every number: it stores a copy
// of each message and delivers each confirm from its own goroutine.
// BenchmarkFakeBroker measures that share alone, so that it can be
// subtracted. A publish refused by an open breaker is
// BenchmarkPublishCircuitOpen (breaker_test.go); the retry queue's push and
// pop are BenchmarkRetryQueuePushPop (retry_queue_bench_test.go).

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
	"github.com/mlproducer/mlproducer/transport"
)

// benchCallers is the number of concurrent callers of the parallel variants,
// as in the 64-caller target.
const benchCallers = 64

// purgeEvery bounds what the fake broker keeps: it stores every message.
const purgeEvery = 4096

const benchText = "The quick brown fox jumps over the lazy dog. "

func benchContent(n int) string {
	return strings.Repeat(benchText, n/len(benchText)+1)[:n]
}

// benchBody is a valid summarization task body of exactly n bytes (n ≥ 256).
func benchBody(n int) []byte {
	head := `{"version":1,"type":"summarization","messageId":"0190b6a2-7f1e-7c3a-9d2b-4e5f60718293","shareId":"share-123","content":"`
	tail := `","options":{"maxLength":200,"language":"en"},"createdAt":"2026-01-01T00:00:00.000000000Z"}`
	return []byte(head + benchContent(n-len(head)-len(tail)) + tail)
}

// benchProducer returns a connected Producer on a fresh fake broker, closed
// when the benchmark ends.
func benchProducer(b *testing.B, opts ...mlproducer.Option) (*mlproducertest.Broker, *mlproducer.Producer) {
	b.Helper()
	broker := mlproducertest.NewBroker()
	p, err := mlproducer.New(append([]mlproducer.Option{mlproducer.WithDialer(broker)}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			b.Error(err)
		}
		broker.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitConnected(ctx); err != nil {
		b.Fatal(err)
	}
	return broker, p
}

// runCallers runs publish from benchCallers goroutines until b.N calls are
// done, purging the fake broker as it goes.
func runCallers(b *testing.B, broker *mlproducertest.Broker, publish func() error) {
	b.SetParallelism((benchCallers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := publish(); err != nil {
				b.Error(err)
				return
			}
			if n.Add(1)%purgeEvery == 0 {
				broker.Purge()
			}
		}
	})
}

func confirmed(r mlproducer.Receipt, err error) error {
	if err != nil {
		return err
	}
	if r.State != mlproducer.Confirmed {
		return fmt.Errorf("receipt %v, want confirmed", r.State)
	}
	return nil
}

// BenchmarkPublish is one Publish of a prebuilt 1 KiB body, from the call to
// its confirm: validation, message id, hand-off to the session's writer, the
// write to the (fake) channel, the confirm and the caller's wake-up. serial
// is one caller at a time (latency bound); callers=64 overlaps 64 callers,
// as HTTP handlers do, and shows the per-message cost under batching.
func BenchmarkPublish(b *testing.B) {
	body := benchBody(1024)
	msg := mlproducer.Message{Type: mlproducer.TaskSummarization, Body: body}
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		broker, p := benchProducer(b)
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		i := 0
		for b.Loop() {
			if err := confirmed(p.Publish(ctx, msg)); err != nil {
				b.Fatal(err)
			}
			if i++; i%purgeEvery == 0 {
				broker.Purge()
			}
		}
	})
	b.Run(fmt.Sprintf("callers=%d", benchCallers), func(b *testing.B) {
		broker, p := benchProducer(b)
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		runCallers(b, broker, func() error { return confirmed(p.Publish(ctx, msg)) })
	})
}

// BenchmarkPublishSummarization is BenchmarkPublish through the typed
// method, with 1 KiB of content: validation and encoding of the body are
// part of the call.
func BenchmarkPublishSummarization(b *testing.B) {
	content := benchContent(1024)
	opts := mlproducer.SummarizationOptions{MaxLength: 200, Language: "en"}
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		broker, p := benchProducer(b)
		b.ReportAllocs()
		b.SetBytes(int64(len(content)))
		i := 0
		for b.Loop() {
			if err := confirmed(p.PublishSummarization(ctx, "share-123", content, opts)); err != nil {
				b.Fatal(err)
			}
			if i++; i%purgeEvery == 0 {
				broker.Purge()
			}
		}
	})
	b.Run(fmt.Sprintf("callers=%d", benchCallers), func(b *testing.B) {
		broker, p := benchProducer(b)
		b.ReportAllocs()
		b.SetBytes(int64(len(content)))
		runCallers(b, broker, func() error {
			return confirmed(p.PublishSummarization(ctx, "share-123", content, opts))
		})
	})
}

// BenchmarkPublishTraced is BenchmarkPublish/serial with an OpenTelemetry SDK
// provider (every span sampled, no exporter) and the W3C propagator: what
// tracing adds per message when a service turns it on. Without a provider
// BenchmarkPublish is the number: tracing then allocates nothing
// (TestTracingOffAllocatesNothing).
func BenchmarkPublishTraced(b *testing.B) {
	body := benchBody(1024)
	msg := mlproducer.Message{Type: mlproducer.TaskSummarization, Body: body}
	tp := sdktrace.NewTracerProvider()
	broker, p := benchProducer(b, mlproducer.WithTracerProvider(tp), mlproducer.WithPropagator(propagation.TraceContext{}))
	ctx, span := tp.Tracer("bench").Start(context.Background(), "handler")
	defer span.End()
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	i := 0
	for b.Loop() {
		if err := confirmed(p.Publish(ctx, msg)); err != nil {
			b.Fatal(err)
		}
		if i++; i%purgeEvery == 0 {
			broker.Purge()
		}
	}
}

// BenchmarkConfirmPath times the confirm half of a publish alone. In each
// batch, 256 callers publish while the fake broker holds the confirms; the
// timer runs only from their release until every caller has returned. It
// covers the fake's delivery of the acks, the Producer's tracking by delivery
// tag, the breaker's and the counters' bookkeeping and the wake-up of each
// waiting caller. ns/op and allocs/op are per confirmed message.
func BenchmarkConfirmPath(b *testing.B) {
	const batch = 256
	body := benchBody(1024)
	msg := mlproducer.Message{Type: mlproducer.TaskSummarization, Body: body}
	ctx := context.Background()
	broker, p := benchProducer(b)
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += batch {
		n := min(batch, b.N-done)
		b.StopTimer()
		broker.Purge()
		broker.HoldConfirms(true)
		before := broker.Published()
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				if err := confirmed(p.Publish(ctx, msg)); err != nil {
					b.Error(err)
				}
			})
		}
		for broker.Published() < before+n {
			time.Sleep(20 * time.Microsecond)
		}
		b.StartTimer()
		broker.HoldConfirms(false)
		wg.Wait()
	}
}

// BenchmarkFakeBroker is the fake broker's share of a publish: a publishing
// like the Producer's, straight on a fake channel in confirm mode, waiting
// for its confirm. Subtract it from BenchmarkPublish/serial to get what the
// Producer itself costs.
func BenchmarkFakeBroker(b *testing.B) {
	broker := mlproducertest.NewBroker()
	defer broker.Close()
	conn, err := broker.Dial(context.Background(), "amqp://fake/", transport.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.ExchangeDeclare("ml.tasks", "direct", true, nil); err != nil {
		b.Fatal(err)
	}
	if err := ch.QueueDeclare("ml.summarization", true, nil); err != nil {
		b.Fatal(err)
	}
	if err := ch.QueueBind("ml.summarization", "ml.summarization", "ml.tasks"); err != nil {
		b.Fatal(err)
	}
	acks := make(chan struct{}, 1)
	if err := ch.Confirm(transport.ChannelEvents{
		Confirm: func(transport.Confirmation) { acks <- struct{}{} },
		Return:  func(transport.Return) {},
		Closed:  func(error) {},
	}); err != nil {
		b.Fatal(err)
	}
	body := benchBody(1024)
	headers := transport.Table{mlproducer.AttemptHeader: int32(1)}
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	i := 0
	for b.Loop() {
		_, err := ch.Publish(ctx, "ml.tasks", "ml.summarization", true, transport.Publishing{
			ContentType: "application/json",
			MessageID:   "0190b6a2-7f1e-7c3a-9d2b-4e5f60718293",
			Timestamp:   time.Now(),
			Type:        "summarization",
			AppID:       "mlproducer",
			Persistent:  true,
			Headers:     headers,
			Body:        body,
		})
		if err != nil {
			b.Fatal(err)
		}
		<-acks
		if i++; i%purgeEvery == 0 {
			broker.Purge()
		}
	}
}

// BenchmarkPublishAsync is one PublishAsync of a prebuilt 1 KiB body from a
// single goroutine keeping window Deliveries outstanding, as a batch loop
// does: the per-message cost of the async path, from the call to the
// resolution of its Delivery.
func BenchmarkPublishAsync(b *testing.B) {
	body := benchBody(1024)
	msg := mlproducer.Message{Type: mlproducer.TaskSummarization, Body: body}
	ctx := context.Background()
	const window = 256
	broker, p := benchProducer(b, mlproducer.WithMaxInFlight(window))
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	ring := make([]*mlproducer.Delivery, window)
	i := 0
	for b.Loop() {
		if d := ring[i%window]; d != nil {
			if r, err := d.Wait(ctx); err != nil || r.State != mlproducer.Confirmed {
				b.Fatal(r, err)
			}
		}
		d, err := p.PublishAsync(ctx, msg)
		if err != nil {
			b.Fatal(err)
		}
		ring[i%window] = d
		if i++; i%purgeEvery == 0 {
			broker.Purge()
		}
	}
	if err := p.Flush(ctx); err != nil {
		b.Fatal(err)
	}
}
