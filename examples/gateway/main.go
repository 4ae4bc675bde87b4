// Command gateway is an HTTP service that publishes ML tasks with mlproducer,
// as the API gateway of the service it replaces did (port 3001):
//
//	POST /api/ml/summarize          {"shareId": "...", "content": "...", "options": {"maxLength": 120, "language": "en", "style": "..."}}
//	POST /api/ml/transcribe         {"shareId": "...", "mediaUrl": "https://...", "options": {"language": "en", "diarization": true, "maxSpeakers": 4}}
//	POST /api/ml/embed              {"shareId": "...", "content": "...", "options": {"model": "...", "dimensions": 768}}
//	GET  /healthz, /readyz          liveness and readiness probes
//
// and, on a second listener for operators (ADMIN_ADDR, by default
// 127.0.0.1:9090, so reachable from the host or pod only):
//
//	GET  /api/ml/status             connection state, retry queue, pending confirms (JSON)
//	GET  /api/ml/metrics/json       the same plus counters
//	GET  /api/ml/metrics/prometheus Prometheus text format (alerts: alerts.yml)
//	GET  /healthz, /readyz          the same probes
//
// Status and metrics have no authentication and show the broker's address,
// the last connection error and the traffic: the service it replaces served
// them on its public port, this one does not. For Prometheus to scrape the
// pod, set ADMIN_ADDR=:9090 and let only Prometheus reach that port (a
// NetworkPolicy). The probes are on the public port too, since the kubelet
// calls the pod's address; they say only whether the gateway takes tasks.
//
// A media URL whose host is internal (localhost, a loopback, private,
// link-local or cloud metadata address) is refused with 400, since workers
// fetch it: see mlproducer.WithPrivateMediaHosts.
//
// A publish answers 202 {"messageId", "state"} once the Producer owns the
// task ("confirmed" by the broker, "pending" or "queued" for a retry); 400
// {"error", "field"} for an invalid request; 415 unless the body is sent as
// Content-Type: application/json (so that another site's form cannot
// publish); 503 with Retry-After when the Producer sheds load (circuit open,
// retry queue full, shutting down); 504 when the task could not be handed
// over within 3 s. Nothing is sent after an error, so a client can safely
// retry it.
//
// Configuration comes from the environment: the library's variables
// (RABBITMQ_URL, RABBITMQ_HEARTBEAT, RABBITMQ_CONNECTION_TIMEOUT,
// ML_MAX_MESSAGE_RETRIES, ML_CIRCUIT_BREAKER_THRESHOLD,
// ML_CIRCUIT_BREAKER_COOLDOWN, ML_SPOOL_DIR) and:
//
//	HTTP_ADDR       listen address of the API (default ":3001")
//	ADMIN_ADDR      listen address of status and metrics (default "127.0.0.1:9090")
//	LOG_FORMAT      "text" (default) or "json"
//	LOG_LEVEL       debug, info (default), warn, error
//	SHUTDOWN_DELAY  time between SIGTERM and closing the listener, while
//	                /readyz already fails (default 0s; e.g. 5s behind a load balancer)
//
// ML_SPOOL_DIR turns on the crash-safe spool (mlproducer.WithSpool): every
// task is written to a store in that dir, synced, before the gateway answers
// 202, so that a kill -9, an OOM kill or a shutdown that runs out of time
// loses nothing; the next gateway started on the same dir sends what is left
// there. One gateway per dir: a second one on a dir in use exits 2. The README
// ("Running with a spool (Kubernetes)") says which volume to use.
//
// On SIGTERM or SIGINT it stops accepting requests and waits up to 10 s for
// those in progress, then closes the Producer, giving the tasks it still
// holds up to 10 s to be confirmed. It exits 0 when every accepted task was
// confirmed, 1 otherwise: without a spool the rest were logged as dead
// letters, with ML_SPOOL_DIR they stay in the spool for the next start; 2 on
// a configuration error. Give the pod a terminationGracePeriodSeconds above
// SHUTDOWN_DELAY + 25 s so that every wait can run out before the kill.
//
// Tracing (OpenTelemetry): each API request is a SERVER span, a child of
// the caller's W3C traceparent header when there is one (the probes get no
// span); the publish inside it is the Producer's PRODUCER span, whose trace
// context travels in the message's headers to the worker. The SDK is set up
// from the standard variables (internal/otelsetup): OTEL_TRACES_EXPORTER
// ("otlp", "console" to print spans on standard error, "none"; unset means
// otlp when OTEL_EXPORTER_OTLP_ENDPOINT is set, else none),
// OTEL_EXPORTER_OTLP_* (http/protobuf only), OTEL_SERVICE_NAME (default
// "ml-gateway"), OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_*.
// A bad value exits 2. The spans still buffered are flushed after the
// Producer is closed, for up to 5 s.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/otelsetup"
)

const (
	defaultAddr      = ":3001"
	defaultAdminAddr = "127.0.0.1:9090"
	shutdownTimeout  = 10 * time.Second // for requests in progress
	closeTimeout     = 10 * time.Second // for the Producer's unconfirmed tasks
	tracingTimeout   = 5 * time.Second  // for the spans still buffered
)

func main() { os.Exit(run()) }

func run() int {
	logger, err := newLogger(os.Getenv("LOG_FORMAT"), os.Getenv("LOG_LEVEL"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		return 2
	}
	addr := os.Getenv("HTTP_ADDR")
	if addr == "" {
		addr = defaultAddr
	}
	adminAddr := os.Getenv("ADMIN_ADDR")
	if adminAddr == "" {
		adminAddr = defaultAdminAddr
	}
	var delay time.Duration
	if v := os.Getenv("SHUTDOWN_DELAY"); v != "" {
		if delay, err = time.ParseDuration(v); err != nil || delay < 0 {
			logger.Error("invalid SHUTDOWN_DELAY; want a duration such as 5s", slog.String("value", v))
			return 2
		}
	}

	shutdownTracing, err := otelsetup.Setup(context.Background(), os.Getenv, "ml-gateway")
	if err != nil {
		logger.Error("invalid tracing configuration", slog.Any("error", err))
		return 2
	}
	// Last, after the Producer is closed: its last spans end in Close.
	defer flushSpans(logger, shutdownTracing)

	opts, err := mlproducer.OptionsFromEnv()
	if err != nil {
		logger.Error("invalid configuration", slog.Any("error", err))
		return 2
	}
	p, err := mlproducer.New(append(opts,
		mlproducer.WithLogger(logger.With(slog.String("component", "mlproducer"))),
		mlproducer.WithConnectionName("ml-gateway"),
		mlproducer.WithDeadLetter(func(dl mlproducer.DeadLetter) {
			// A real service would store these for replay; the library has
			// already logged and counted them.
			logger.Error("task dead-lettered", slog.String("messageId", dl.Message.ID),
				slog.String("type", string(dl.Message.Type)), slog.Int("attempts", dl.Attempts),
				slog.Any("error", dl.Err))
		}),
	)...)
	if err != nil {
		logger.Error("invalid configuration", slog.Any("error", err))
		return 2
	}
	// The Producer connects in the background; until it does, tasks wait in
	// its retry queue and /readyz answers 200 while the queue has room.

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		logger.Error("cannot listen", slog.String("addr", addr), slog.Any("error", err))
		closeProducer(logger, p)
		return 1
	}
	adminLn, err := net.Listen("tcp", adminAddr)
	if err != nil {
		logger.Error("cannot listen (ADMIN_ADDR)", slog.String("addr", adminAddr), slog.Any("error", err))
		_ = ln.Close()
		closeProducer(logger, p)
		return 1
	}
	g := newGateway(p, logger, publishTimeout)
	srv := newServer(traced(g), logger)
	adminSrv := newServer(g.admin(), logger)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	adminServed := make(chan error, 1)
	go func() { adminServed <- adminSrv.Serve(adminLn) }()
	logger.Info("gateway listening", slog.String("addr", ln.Addr().String()), slog.String("adminAddr", adminLn.Addr().String()))

	code := 0
	select {
	case <-ctx.Done():
		logger.Info("shutting down", slog.Duration("delay", delay))
	case err := <-served:
		logger.Error("server failed", slog.Any("error", err))
		served <- nil // reported: the wait below returns at once
		code = 1
	case err := <-adminServed:
		logger.Error("admin server failed", slog.Any("error", err))
		adminServed <- nil
		code = 1
	}
	stop() // a second signal now kills the process

	// 1. Stop taking requests: fail readiness, wait for the load balancer
	//    to notice, then close the listener and let requests in progress end.
	g.drain()
	time.Sleep(delay)
	shutCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	if err := srv.Shutdown(shutCtx); err != nil {
		logger.Warn("requests still in progress at shutdown", slog.Any("error", err))
		_ = srv.Close()
	}
	cancel()
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("server failed", slog.Any("error", err))
		code = 1
	}

	// 2. Then close the Producer: every task it accepted gets until the
	//    deadline to be confirmed.
	if !closeProducer(logger, p) {
		code = 1
	}

	// 3. Status and metrics were served till here, for the operator
	//    watching the shutdown.
	_ = adminSrv.Close()
	if err := <-adminServed; err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("admin server failed", slog.Any("error", err))
		code = 1
	}
	logger.Info("gateway stopped", slog.Int("exitCode", code))
	return code
}

// newServer returns the HTTP server of h, with the gateway's timeouts.
func newServer(h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

// closeProducer closes p and reports whether every accepted task was
// confirmed.
func closeProducer(logger *slog.Logger, p *mlproducer.Producer) bool {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		// With ML_SPOOL_DIR the error says how many stay in the spool.
		logger.Error("producer closed with unconfirmed tasks", slog.Any("error", err))
		return false
	}
	return true
}

// flushSpans exports the spans still buffered and stops the exporters,
// for up to tracingTimeout.
func flushSpans(logger *slog.Logger, shutdown func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), tracingTimeout)
	defer cancel()
	if err := shutdown(ctx); err != nil {
		logger.Warn("spans not exported at exit", slog.Any("error", err))
	}
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if level != "" {
		if err := lvl.UnmarshalText([]byte(level)); err != nil {
			return nil, fmt.Errorf("invalid LOG_LEVEL %q: want debug, info, warn or error", level)
		}
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(format) {
	case "", "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("invalid LOG_FORMAT %q: want text or json", format)
}
