package otelsetup

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func env(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

// Which exporters each value selects; unset selects otlp only where an
// endpoint is named.
func TestExporterNames(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"unset, no endpoint", nil, nil},
		{"unset, endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []string{"otlp"}},
		{"unset, traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, []string{"otlp"}},
		{"blank endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, nil},
		{"none beats an endpoint", map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, nil},
		{"console", map[string]string{"OTEL_TRACES_EXPORTER": "console"}, []string{"console"}},
		{"otlp without endpoint", map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, []string{"otlp"}},
		{"list, case and spaces", map[string]string{"OTEL_TRACES_EXPORTER": " OTLP , console,otlp"}, []string{"otlp", "console"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := exporterNames(env(tc.env))
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("exporterNames = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// A value that cannot be used is an error naming the variable, the value
// and what is accepted, and nothing global is set.
func TestSetupRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		env   map[string]string
		wants []string
	}{
		{"unknown exporter", map[string]string{"OTEL_TRACES_EXPORTER": "jaeger"},
			[]string{"OTEL_TRACES_EXPORTER", `"jaeger"`, `"otlp", "console" or "none"`}},
		{"unknown in a list", map[string]string{"OTEL_TRACES_EXPORTER": "console,zipkin"},
			[]string{"OTEL_TRACES_EXPORTER", `"zipkin"`, `"otlp", "console" or "none"`}},
		{"none in a list", map[string]string{"OTEL_TRACES_EXPORTER": "none,console"},
			[]string{"OTEL_TRACES_EXPORTER", "cannot be combined"}},
		{"grpc", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
			[]string{"OTEL_EXPORTER_OTLP_PROTOCOL", `"grpc"`, "http/protobuf"}},
		{"grpc for traces", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
			[]string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"}},
		{"http/json", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
			[]string{"OTEL_EXPORTER_OTLP_PROTOCOL", `"http/json"`, "want http/protobuf"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			shutdown, err := Setup(context.Background(), env(tc.env), "svc")
			if err == nil {
				_ = shutdown(context.Background())
				t.Fatal("Setup accepted it")
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	if _, err := Setup(context.Background(), nil, "svc"); err == nil {
		t.Error("Setup with a nil getenv: no error")
	}
}

// resetGlobals puts a no-op provider and propagator in place, before and
// after the test: the tests below set the globals, so they do not run in
// parallel with each other.
func resetGlobals(t *testing.T) noopGlobals {
	t.Helper()
	g := noopGlobals{tp: noop.NewTracerProvider(), prop: propagation.NewCompositeTextMapPropagator()}
	otel.SetTracerProvider(g.tp)
	otel.SetTextMapPropagator(g.prop)
	t.Cleanup(func() {
		otel.SetTracerProvider(noop.NewTracerProvider())
		otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator())
	})
	return g
}

type noopGlobals struct {
	tp   noop.TracerProvider
	prop propagation.TextMapPropagator
}

func checkPropagator(t *testing.T) {
	t.Helper()
	fields := otel.GetTextMapPropagator().Fields()
	for _, f := range []string{"traceparent", "tracestate", "baggage"} {
		if !slices.Contains(fields, f) {
			t.Errorf("global propagator fields %v lack %s", fields, f)
		}
	}
}

// exported is what a console line of a span holds, of what the tests check.
type exported struct {
	Name        string
	SpanContext struct{ TraceID string }
	Resource    []struct {
		Key   string
		Value struct{ Value any }
	}
}

func (e exported) resource(key string) any {
	for _, kv := range e.Resource {
		if kv.Key == key {
			return kv.Value.Value
		}
	}
	return nil
}

// oneSpan makes a span on the global provider, shuts down, and returns the
// console output decoded.
func oneSpan(t *testing.T, shutdown func(context.Context) error, out *bytes.Buffer) []exported {
	t.Helper()
	_, span := otel.Tracer("otelsetup-test").Start(context.Background(), "test span")
	if !span.SpanContext().IsValid() || !span.IsRecording() {
		t.Fatal("the global provider made a non-recording span")
	}
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	var spans []exported
	dec := json.NewDecoder(out)
	for {
		var e exported
		if err := dec.Decode(&e); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("console output is not JSON spans: %v\n%s", err, out)
		}
		spans = append(spans, e)
	}
	return spans
}

// console: the global provider records spans and writes them, on shutdown
// at the latest, as JSON with the default service name.
func TestSetupConsole(t *testing.T) {
	resetGlobals(t)
	var out bytes.Buffer
	shutdown, err := setup(context.Background(), env(map[string]string{"OTEL_TRACES_EXPORTER": "console"}), "svc-default", &out)
	if err != nil {
		t.Fatal(err)
	}
	checkPropagator(t)
	spans := oneSpan(t, shutdown, &out)
	if len(spans) != 1 || spans[0].Name != "test span" || spans[0].SpanContext.TraceID == "" {
		t.Fatalf("spans %+v; want the one test span", spans)
	}
	if got := spans[0].resource("service.name"); got != "svc-default" {
		t.Errorf("service.name %v, want svc-default", got)
	}
	if got := spans[0].resource("telemetry.sdk.language"); got != "go" {
		t.Errorf("telemetry.sdk.language %v, want go", got)
	}
}

// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (read by the SDK from the
// process environment) override the default name and add attributes.
func TestSetupServiceNameFromEnv(t *testing.T) {
	resetGlobals(t)
	t.Setenv("OTEL_SERVICE_NAME", "from-env")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test,service.name=ignored")
	var out bytes.Buffer
	shutdown, err := setup(context.Background(), env(map[string]string{"OTEL_TRACES_EXPORTER": "console"}), "svc-default", &out)
	if err != nil {
		t.Fatal(err)
	}
	spans := oneSpan(t, shutdown, &out)
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	if got := spans[0].resource("service.name"); got != "from-env" {
		t.Errorf("service.name %v, want from-env (OTEL_SERVICE_NAME wins)", got)
	}
	if got := spans[0].resource("deployment.environment.name"); got != "test" {
		t.Errorf("deployment.environment.name %v, want test", got)
	}
}

// No exporter: the global provider is left as it was (no span is
// recorded, nothing costs more) but the propagator is set, so that trace
// context still passes through.
func TestSetupNone(t *testing.T) {
	for name, kv := range map[string]map[string]string{
		"unset":                  nil,
		"none with an endpoint":  {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
		"protocol without otlp":  {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
		"none, upper case, trim": {"OTEL_TRACES_EXPORTER": " NONE "},
	} {
		t.Run(name, func(t *testing.T) {
			g := resetGlobals(t)
			shutdown, err := Setup(context.Background(), env(kv), "svc")
			if err != nil {
				t.Fatal(err)
			}
			if tp := otel.GetTracerProvider(); tp != g.tp {
				t.Errorf("global provider replaced by %T", tp)
			}
			checkPropagator(t)
			if err := shutdown(context.Background()); err != nil {
				t.Errorf("shutdown: %v", err)
			}
		})
	}
}

// otlp, chosen because an endpoint is set: spans reach the collector as
// OTLP/HTTP protobuf on /v1/traces (here a test server standing for it).
func TestSetupOTLP(t *testing.T) {
	resetGlobals(t)
	var mu sync.Mutex
	var got []string
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, r.Method+" "+r.URL.Path+" "+r.Header.Get("Content-Type")+" "+r.Header.Get("X-Test"))
		mu.Unlock()
		if !bytes.Contains(body, []byte("otlp span")) || !bytes.Contains(body, []byte("svc-otlp")) {
			t.Errorf("export body lacks the span name or the service name: %q", body)
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer collector.Close()
	// otlptracehttp reads these from the process environment; getenv sees
	// the same.
	vars := map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": collector.URL,
		"OTEL_EXPORTER_OTLP_HEADERS":  "x-test=yes",
		"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
	}
	for k, v := range vars {
		t.Setenv(k, v)
	}
	shutdown, err := Setup(context.Background(), env(vars), "svc-otlp")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := otel.GetTracerProvider().(*sdktrace.TracerProvider); !ok {
		t.Fatalf("global provider is %T, want the SDK's", otel.GetTracerProvider())
	}
	checkPropagator(t)
	_, span := otel.Tracer("otelsetup-test").Start(context.Background(), "otlp span")
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := "POST /v1/traces application/x-protobuf yes"; len(got) != 1 || got[0] != want {
		t.Fatalf("collector got %q, want one %q", got, want)
	}
}
