// Command worker consumes the ML tasks that mlproducer publishes and
// processes each one once: it reads the queues ml.summarization,
// ml.transcription and ml.embedding with manual acknowledgements, decodes
// each body with mlproducer.DecodeTask, prints one line per task on
// standard output, and acknowledges it.
//
// mlproducer delivers at least once: after a lost connection a task may be
// sent again, with the same message id. The worker remembers the last
// WORKER_DEDUP_SIZE message ids and acknowledges a repeated one without
// processing it again (logged as "duplicate"). A body that is not a valid
// task is rejected without requeueing.
//
// It reconnects with exponential backoff when the connection is lost, and
// declares a missing queue the way mlproducer does. On SIGTERM or SIGINT it
// finishes the task in hand and exits 0; tasks it had received but not
// started go back to the queue.
//
// Environment:
//
//	RABBITMQ_URL        broker URL, or a comma-separated list tried in turn
//	                    (default amqp://guest:guest@127.0.0.1:5672/)
//	WORKER_QUEUES       comma-separated queues (default the three above)
//	WORKER_PREFETCH     unacknowledged deliveries per queue (default 32)
//	WORKER_DEDUP_SIZE   message ids remembered (default 100000)
//	LOG_LEVEL           debug, info (default), warn, error
//
// Tracing (OpenTelemetry): each delivery is a CONSUMER span "process
// <queue>", a child of the trace context (W3C traceparent) that mlproducer
// put in the message's headers, so the worker's spans join the trace of the
// request that published the task. The SDK is set up from the standard
// variables (internal/otelsetup): OTEL_TRACES_EXPORTER ("otlp", "console"
// to print spans on standard error, "none"; unset means otlp when
// OTEL_EXPORTER_OTLP_ENDPOINT is set, else none), OTEL_EXPORTER_OTLP_*
// (http/protobuf only), OTEL_SERVICE_NAME (default "ml-worker"),
// OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_*. The spans still
// buffered are flushed at exit, for up to 5 s.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/otelsetup"
)

func main() {
	var lvl slog.Level
	if v := os.Getenv("LOG_LEVEL"); v != "" {
		if err := lvl.UnmarshalText([]byte(v)); err != nil {
			fmt.Fprintf(os.Stderr, "worker: invalid LOG_LEVEL %q\n", v)
			os.Exit(2)
		}
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	w, err := fromEnv(os.Getenv)
	if err != nil {
		logger.Error("invalid configuration", slog.Any("error", err))
		os.Exit(2)
	}
	w.out = os.Stdout
	w.log = logger
	shutdownTracing, err := otelsetup.Setup(context.Background(), os.Getenv, "ml-worker")
	if err != nil {
		logger.Error("invalid tracing configuration", slog.Any("error", err))
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err = w.run(ctx)
	stop()
	code := 0
	if err != nil {
		logger.Error("worker failed", slog.Any("error", err))
		code = 1
	} else {
		logger.Info("worker stopped", slog.Uint64("processed", w.processed.Load()),
			slog.Uint64("duplicates", w.duplicates.Load()), slog.Uint64("rejected", w.rejected.Load()))
	}
	// Every span has ended: flush those still buffered.
	tctx, cancel := context.WithTimeout(context.Background(), tracingShutdownTimeout)
	if err := shutdownTracing(tctx); err != nil {
		logger.Warn("spans not exported at exit", slog.Any("error", err))
	}
	cancel()
	os.Exit(code)
}

// tracingShutdownTimeout bounds the flush of the spans still buffered at exit.
const tracingShutdownTimeout = 5 * time.Second

// fromEnv builds a worker from environment variables (see the package
// documentation); every bad value is an error naming the variable.
func fromEnv(getenv func(string) string) (*worker, error) {
	w := &worker{
		urls:         []string{mlproducer.DefaultURL},
		queues:       defaultQueues,
		declare:      true,
		prefetch:     32,
		reconnectMin: 200 * time.Millisecond,
		reconnectMax: 10 * time.Second,
	}
	if urls := splitList(getenv("RABBITMQ_URL")); len(urls) > 0 {
		for i, u := range urls {
			if _, err := parseBrokerURL(u); err != nil {
				// Nothing of the value is shown: it may hold a password.
				return nil, fmt.Errorf("RABBITMQ_URL: entry %d of %d: %w", i+1, len(urls), err)
			}
		}
		w.urls = urls
	}
	if qs := splitList(getenv("WORKER_QUEUES")); len(qs) > 0 {
		w.queues = qs
	}
	var err error
	if w.prefetch, err = intVar(getenv, "WORKER_PREFETCH", w.prefetch, 1, 65535); err != nil {
		return nil, err
	}
	size, err := intVar(getenv, "WORKER_DEDUP_SIZE", 100_000, 1, 100_000_000)
	if err != nil {
		return nil, err
	}
	w.seen = newDedup(size)
	return w, nil
}

func intVar(getenv func(string) string, name string, def, lo, hi int) (int, error) {
	v := strings.TrimSpace(getenv(name))
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%s=%q: want a whole number from %d to %d", name, v, lo, hi)
	}
	return n, nil
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// parseBrokerURL parses raw as a broker URL. It refuses one that a reader
// and url.Parse would split differently: more than one '@', an '@' outside
// the user information (after the host), or a '#'. That is what a password
// with a raw '@', '#', '/' or '?' gives, and the worker would then dial the
// wrong host and log part of the password.
func parseBrokerURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") || u.Host == "" {
		return nil, errors.New("not an amqp:// or amqps:// URL; percent-encode a password holding '#', '/', '?' or '@'")
	}
	if ats := strings.Count(raw, "@"); ats > 1 || ats == 1 && u.User == nil || strings.Contains(raw, "#") {
		return nil, errors.New("the URL can be read two ways; percent-encode the password ('#' as %23, '/' as %2F, '?' as %3F, '@' as %40)")
	}
	return u, nil
}

// redact returns a broker URL fit for the log: rebuilt from its scheme, user
// name, host and vhost, with "xxxxx" for the password.
func redact(raw string) string {
	u, err := parseBrokerURL(raw)
	if err != nil {
		return "(invalid URL)"
	}
	shown := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	if u.User != nil {
		shown.User = url.User(u.User.Username())
		if _, ok := u.User.Password(); ok {
			shown.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
	}
	return shown.String()
}
