package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/rabbittest"
)

// inMemoryTracing returns a provider whose spans go, as each ends, to the
// returned exporter; the globals are not touched.
func inMemoryTracing(t *testing.T) (*sdktrace.TracerProvider, *tracetest.InMemoryExporter) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, exp
}

func spanAttrs(kvs []attribute.KeyValue) map[attribute.Key]string {
	m := make(map[attribute.Key]string)
	for _, kv := range kvs {
		m[kv.Key] = kv.Value.Emit()
	}
	return m
}

func spansOfKind(exp *tracetest.InMemoryExporter, kind trace.SpanKind) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		if s.SpanKind == kind {
			out = append(out, s)
		}
	}
	return out
}

// Each API request is a SERVER span, a child of the caller's traceparent,
// named after its route; the probes get none. On the fake broker.
func TestServerSpans(t *testing.T) {
	tp, exp := inMemoryTracing(t)
	p, _ := fakeProducer(t)
	h := traced(newMux(p, testLogger(t)), otelhttp.WithTracerProvider(tp), otelhttp.WithPropagators(propagation.TraceContext{}))

	for _, path := range []string{"/healthz", "/readyz"} {
		expect(t, do(t, h, http.MethodGet, path, ""), http.StatusOK)
	}
	if n := len(exp.GetSpans()); n != 0 {
		t.Fatalf("%d spans for the probes, want none", n)
	}

	const traceHex, parentHex = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	r := httptest.NewRequest(http.MethodPost, "/api/ml/embed", strings.NewReader(validEmbed))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("traceparent", "00-"+traceHex+"-"+parentHex+"-01")
	expect(t, serve(t, h, r), http.StatusAccepted)
	expectError(t, do(t, h, http.MethodPost, "/api/ml/embed", `{}`), http.StatusBadRequest, "shareId")

	servers := spansOfKind(exp, trace.SpanKindServer)
	if len(servers) != 2 {
		t.Fatalf("%d SERVER spans, want 2 (one per API request)", len(servers))
	}
	s := servers[0]
	if s.Name != "POST /api/ml/embed" {
		t.Errorf("span name %q, want %q", s.Name, "POST /api/ml/embed")
	}
	if s.SpanContext.TraceID().String() != traceHex || s.Parent.SpanID().String() != parentHex || !s.Parent.IsRemote() {
		t.Errorf("span trace %s parent %s, want the caller's %s and %s", s.SpanContext.TraceID(), s.Parent.SpanID(), traceHex, parentHex)
	}
	if got := spanAttrs(s.Attributes)["http.response.status_code"]; got != "202" {
		t.Errorf("http.response.status_code %q, want 202", got)
	}
	if second := servers[1]; second.Parent.IsValid() || second.SpanContext.TraceID().String() == traceHex {
		t.Errorf("a request without traceparent joined a trace: parent %v", second.Parent)
	}
}

// consoleSpan is what the test reads of a span printed by the worker's
// console exporter (OTEL_TRACES_EXPORTER=console).
type consoleSpan struct {
	Name        string
	SpanKind    trace.SpanKind
	SpanContext struct{ TraceID, SpanID string }
	Parent      struct {
		TraceID, SpanID string
		Remote          bool
	}
	Attributes []struct {
		Key   string
		Value struct{ Value any }
	}
}

// lockedBuffer collects a subprocess's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// buildWorker builds examples/worker into a temporary directory.
func buildWorker(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go tool on PATH to build examples/worker: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "worker")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, goTool, "build", "-o", bin, "../worker").CombinedOutput(); err != nil {
		t.Fatalf("go build ../worker: %v\n%s", err, out)
	}
	return bin
}

// The acceptance test of tracing (issue 11), on the real broker: an HTTP
// request carrying a traceparent -> the gateway's SERVER span -> the
// library's PRODUCER span of the publish (its child) -> the worker's
// CONSUMER span (the producer span's child), all in the caller's trace.
// The gateway side exports to memory; the worker is the real program,
// built and run with OTEL_TRACES_EXPORTER=console, and its spans are read
// from its standard error. A second queue bound to the same key lets the
// test read the message's headers as the worker got them.
func TestTraceGatewayToWorker(t *testing.T) {
	url := rabbittest.Require(t)
	workerBin := buildWorker(t)
	conn := rabbittest.Dial(t, url)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("mlproducer.examples.gateway.trace.%d", time.Now().UnixNano())
	exchange, workerQueue := base, base+".worker"
	if err := ch.ExchangeDeclare(exchange, "direct", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.ExchangeDelete(exchange, false, false) })
	// The worker's queue is not exclusive (the worker has its own
	// connection): deleted at the end, whatever happens.
	if _, err := ch.QueueDeclare(workerQueue, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rabbittest.DeleteQueues(t, url, workerQueue) })
	tap, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{workerQueue, tap.Name} {
		if err := ch.QueueBind(q, "ml.summarization", exchange, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	tapped, err := ch.Consume(tap.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}

	tp, exp := inMemoryTracing(t)
	prop := propagation.TraceContext{}
	p, err := mlproducer.New(
		mlproducer.WithURLs(url),
		mlproducer.WithTopology(mlproducer.Topology{Exchange: exchange, NoDeclare: true}),
		mlproducer.WithConnectionName("mlproducer gateway trace test"),
		mlproducer.WithLogger(testLogger(t)),
		mlproducer.WithTracerProvider(tp),
		mlproducer.WithPropagator(prop),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := p.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(traced(newGateway(p, testLogger(t), publishTimeout),
		otelhttp.WithTracerProvider(tp), otelhttp.WithPropagators(prop)))
	t.Cleanup(srv.Close)

	// The caller's trace.
	const traceHex, callerHex = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/api/ml/summarize", strings.NewReader(validSummarize))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", "00-"+traceHex+"-"+callerHex+"-01")
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	var receipt struct{ MessageID string }
	if res.StatusCode != http.StatusAccepted || json.Unmarshal(body, &receipt) != nil || receipt.MessageID == "" {
		t.Fatalf("POST: %d %s", res.StatusCode, body)
	}

	// Gateway: SERVER span, child of the caller.
	servers := spansOfKind(exp, trace.SpanKindServer)
	if len(servers) != 1 {
		t.Fatalf("%d SERVER spans, want 1", len(servers))
	}
	server := servers[0]
	if server.SpanContext.TraceID().String() != traceHex || server.Parent.SpanID().String() != callerHex {
		t.Fatalf("SERVER span: trace %s parent %s, want %s and the caller's %s",
			server.SpanContext.TraceID(), server.Parent.SpanID(), traceHex, callerHex)
	}

	// Library: PRODUCER span, child of the SERVER span. It has ended by the
	// time the request is answered: the publish was confirmed.
	producers := spansOfKind(exp, trace.SpanKindProducer)
	if len(producers) == 0 {
		t.Fatal("no publish span: the library does not trace yet (WithTracerProvider makes no PRODUCER span)")
	}
	if len(producers) != 1 {
		t.Fatalf("%d PRODUCER spans for one publish, want 1", len(producers))
	}
	producer := producers[0]
	if producer.SpanContext.TraceID().String() != traceHex || producer.Parent.SpanID() != server.SpanContext.SpanID() {
		t.Fatalf("PRODUCER span %q: trace %s parent %s, want %s and the SERVER span %s",
			producer.Name, producer.SpanContext.TraceID(), producer.Parent.SpanID(), traceHex, server.SpanContext.SpanID())
	}
	if producer.Name != "publish "+exchange {
		t.Errorf("PRODUCER span name %q, want %q", producer.Name, "publish "+exchange)
	}
	pa := spanAttrs(producer.Attributes)
	for k, want := range map[attribute.Key]string{
		"messaging.system":                           "rabbitmq",
		"messaging.operation.type":                   "send",
		"messaging.destination.name":                 exchange,
		"messaging.rabbitmq.destination.routing_key": "ml.summarization",
		"messaging.message.id":                       receipt.MessageID,
	} {
		if pa[k] != want {
			t.Errorf("PRODUCER span %s = %q, want %q", k, pa[k], want)
		}
	}
	wantParent := "00-" + traceHex + "-" + producer.SpanContext.SpanID().String() + "-01"

	// On the wire: the message's traceparent names the PRODUCER span.
	select {
	case d := <-tapped:
		if d.MessageId != receipt.MessageID {
			t.Fatalf("tapped message %s, want %s", d.MessageId, receipt.MessageID)
		}
		if got, _ := d.Headers["traceparent"].(string); got != wantParent {
			t.Fatalf("traceparent header %q, want %q (the PRODUCER span); headers %v", got, wantParent, d.Headers)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the message never reached the tap queue")
	}

	// Worker: the real program consumes the message and prints its span.
	var stdout, stderr lockedBuffer
	wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer wcancel()
	cmd := exec.CommandContext(wctx, workerBin)
	cmd.Env = append(withoutOTEL(os.Environ()),
		"RABBITMQ_URL="+url, "WORKER_QUEUES="+workerQueue, "OTEL_TRACES_EXPORTER=console", "LOG_LEVEL=info")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(stdout.String(), "id="+receipt.MessageID); {
		if time.Now().After(deadline) {
			t.Fatalf("the worker did not process %s in 30 s; stdout:\n%s\nstderr:\n%s", receipt.MessageID, stdout.String(), stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// SIGTERM: the worker stops and flushes its spans.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopped = true
	if err := <-exited; err != nil {
		t.Fatalf("worker: %v\nstderr:\n%s", err, stderr.String())
	}

	var consumer *consoleSpan
	sc := bufio.NewScanner(strings.NewReader(stderr.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, []byte("{")) {
			continue // a log line
		}
		var s consoleSpan
		if err := json.Unmarshal(line, &s); err != nil {
			t.Fatalf("worker span line is not JSON: %v\n%s", err, line)
		}
		if s.SpanKind == trace.SpanKindConsumer {
			if consumer != nil {
				t.Fatalf("more than one CONSUMER span:\n%s", stderr.String())
			}
			consumer = &s
		}
	}
	if consumer == nil {
		t.Fatalf("the worker printed no CONSUMER span; stderr:\n%s", stderr.String())
	}
	if consumer.Name != "process "+workerQueue {
		t.Errorf("CONSUMER span name %q, want %q", consumer.Name, "process "+workerQueue)
	}
	if consumer.SpanContext.TraceID != traceHex || consumer.Parent.TraceID != traceHex ||
		consumer.Parent.SpanID != producer.SpanContext.SpanID().String() || !consumer.Parent.Remote {
		t.Fatalf("CONSUMER span: trace %s, parent %s/%s (remote %t); want trace %s, parent the PRODUCER span %s, remote",
			consumer.SpanContext.TraceID, consumer.Parent.TraceID, consumer.Parent.SpanID, consumer.Parent.Remote,
			traceHex, producer.SpanContext.SpanID())
	}
	var outcome, messageID any
	for _, a := range consumer.Attributes {
		switch a.Key {
		case "mlproducer.outcome":
			outcome = a.Value.Value
		case "messaging.message.id":
			messageID = a.Value.Value
		}
	}
	if outcome != "acked" || messageID != receipt.MessageID {
		t.Errorf("CONSUMER span outcome %v, message id %v; want acked, %s", outcome, messageID, receipt.MessageID)
	}
}

// withoutOTEL returns env without the OTEL_* variables, so that the
// worker's tracing is set by the test alone.
func withoutOTEL(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "OTEL_") {
			out = append(out, kv)
		}
	}
	return out
}
