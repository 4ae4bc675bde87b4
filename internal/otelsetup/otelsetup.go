// Package otelsetup sets up OpenTelemetry tracing for the example programs
// (examples/gateway, examples/worker) from the standard OTEL_* environment
// variables, as the OpenTelemetry SDKs of other languages do on their own.
//
// It is for programs, not for the library: it sets OpenTelemetry's global
// TracerProvider and propagator, which the library only reads.
package otelsetup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Setup reads the variables below with getenv (os.Getenv in a program, a
// map in a test), sets OpenTelemetry's global propagator to W3C trace
// context and baggage, and, unless the exporter is "none", sets the global
// TracerProvider to an SDK provider exporting through a batch span
// processor. serviceName is the service.name of the spans unless
// OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES give one.
//
//	OTEL_TRACES_EXPORTER                 "otlp", "console" (JSON lines on standard error) or "none";
//	                                     a comma-separated list for more than one. When unset: "otlp"
//	                                     if an OTLP endpoint variable below is set, else "none"
//	OTEL_EXPORTER_OTLP_TRACES_PROTOCOL   "http/protobuf" (the default; "grpc" and "http/json" are refused)
//	OTEL_EXPORTER_OTLP_PROTOCOL          the same, when the one above is unset
//	OTEL_EXPORTER_OTLP_ENDPOINT          the collector, e.g. http://localhost:4318 (path /v1/traces added)
//	OTEL_EXPORTER_OTLP_TRACES_ENDPOINT   the full URL of the traces endpoint
//
// The SDK reads the rest itself, from the process environment (not through
// getenv): OTEL_EXPORTER_OTLP_[TRACES_]HEADERS, _TIMEOUT, _INSECURE,
// _CERTIFICATE and _COMPRESSION; OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES; OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG
// (default parentbased_always_on); OTEL_BSP_SCHEDULE_DELAY,
// OTEL_BSP_EXPORT_TIMEOUT, OTEL_BSP_MAX_QUEUE_SIZE and
// OTEL_BSP_MAX_EXPORT_BATCH_SIZE. A bad value there is reported through
// otel.Handle (logged), not by Setup.
//
// An unknown exporter or protocol is an error naming the variable and the
// values accepted; nothing is set then. Setup connects to nothing: an OTLP
// collector that is down shows as export errors logged later, never as an
// error here.
//
// shutdown flushes the spans still buffered and stops the exporters; call
// it once, after the last span has ended (after the Producer is closed),
// with a ctx that bounds how long it may take. With the exporter "none" it
// does nothing.
func Setup(ctx context.Context, getenv func(string) string, serviceName string) (shutdown func(context.Context) error, err error) {
	return setup(ctx, getenv, serviceName, os.Stderr)
}

// setup is Setup with the console exporter writing to console.
func setup(ctx context.Context, getenv func(string) string, serviceName string, console io.Writer) (func(context.Context) error, error) {
	if getenv == nil {
		return nil, errors.New("otelsetup: pass a getenv function, for example os.Getenv")
	}
	exporters, err := exporterNames(getenv)
	if err != nil {
		return nil, err
	}
	var opts []sdktrace.TracerProviderOption
	for _, name := range exporters {
		var exp sdktrace.SpanExporter
		switch name {
		case "otlp":
			if err := checkProtocol(getenv); err != nil {
				return nil, err
			}
			// otlptracehttp reads the endpoint, headers, timeout, TLS
			// and compression variables itself; New dials nothing.
			exp, err = otlptracehttp.New(ctx)
		case "console":
			exp, err = stdouttrace.New(stdouttrace.WithWriter(console))
		}
		if err != nil {
			return nil, fmt.Errorf("otelsetup: %s exporter: %w", name, err)
		}
		// The batch processor reads OTEL_BSP_* itself.
		opts = append(opts, sdktrace.WithBatcher(exp))
	}

	// The propagator is set even with no exporter: a service that does not
	// record spans still passes its callers' trace context on.
	prop := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	if len(opts) == 0 {
		otel.SetTextMapPropagator(prop)
		return func(context.Context) error { return nil }, nil
	}

	// Later options win: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
	// over the default name.
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(semconv.ServiceName(serviceName)),
		resource.WithFromEnv(),
	)
	if err != nil && res == nil {
		return nil, fmt.Errorf("otelsetup: resource: %w", err)
	}
	// A partial resource (a malformed OTEL_RESOURCE_ATTRIBUTES entry) is
	// used as it is, as the SDK of other languages does; the error is logged.
	if err != nil {
		otel.Handle(fmt.Errorf("otelsetup: OTEL_RESOURCE_ATTRIBUTES: %w", err))
	}
	tp := sdktrace.NewTracerProvider(append(opts, sdktrace.WithResource(res))...)
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(prop)
	return tp.Shutdown, nil
}

// exporterNames returns the exporters to use, none for "none".
func exporterNames(getenv func(string) string) ([]string, error) {
	const accepted = `want "otlp", "console" or "none", or a comma-separated list of otlp and console`
	raw := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER"))
	if raw == "" {
		// Unset: export only where a collector was named, so that a
		// program run without one does not log export errors forever.
		if strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_ENDPOINT")) != "" ||
			strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) != "" {
			return []string{"otlp"}, nil
		}
		return nil, nil
	}
	var names []string
	for _, part := range strings.Split(raw, ",") {
		name := strings.ToLower(strings.TrimSpace(part))
		switch name {
		case "none":
			if strings.Contains(raw, ",") {
				return nil, fmt.Errorf("otelsetup: OTEL_TRACES_EXPORTER=%q: \"none\" cannot be combined with another exporter; %s", raw, accepted)
			}
			return nil, nil
		case "otlp", "console":
			if !slices.Contains(names, name) {
				names = append(names, name)
			}
		default:
			return nil, fmt.Errorf("otelsetup: OTEL_TRACES_EXPORTER=%q: unknown exporter %q; %s", raw, name, accepted)
		}
	}
	return names, nil
}

// checkProtocol refuses an OTLP protocol other than http/protobuf.
func checkProtocol(getenv func(string) string) error {
	name := "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	v := strings.TrimSpace(getenv(name))
	if v == "" {
		name = "OTEL_EXPORTER_OTLP_PROTOCOL"
		v = strings.TrimSpace(getenv(name))
	}
	switch strings.ToLower(v) {
	case "", "http/protobuf":
		return nil
	case "grpc":
		return fmt.Errorf("otelsetup: %s=%q: the examples export over OTLP/HTTP only; set it to http/protobuf "+
			"(and the endpoint to the collector's HTTP port, usually 4318)", name, v)
	}
	return fmt.Errorf("otelsetup: %s=%q: unsupported protocol; want http/protobuf", name, v)
}
