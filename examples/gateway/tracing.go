package main

import (
	"net/http"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
)

// traced wraps the public API in OpenTelemetry's HTTP server
// instrumentation: each request is a SERVER span, a child of the caller's
// W3C traceparent when it sends one, and the handler's ctx carries it, so
// that the Producer's PRODUCER span of the publish is its child. The span
// is named after the method and the route ("POST /api/ml/summarize").
// The probes (/healthz, /readyz) get no span: the kubelet calls them every
// few seconds. opts override the defaults (OpenTelemetry's global provider
// and propagator), for tests.
func traced(h http.Handler, opts ...otelhttp.Option) http.Handler {
	return otelhttp.NewHandler(h, "ml-gateway", append([]otelhttp.Option{
		otelhttp.WithFilter(func(r *http.Request) bool { return r.URL.Path != "/healthz" && r.URL.Path != "/readyz" }),
	}, opts...)...)
}
