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
package main

import (
	"context"
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

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := w.run(ctx); err != nil {
		logger.Error("worker failed", slog.Any("error", err))
		os.Exit(1)
	}
	logger.Info("worker stopped", slog.Uint64("processed", w.processed.Load()),
		slog.Uint64("duplicates", w.duplicates.Load()), slog.Uint64("rejected", w.rejected.Load()))
}

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
		for _, u := range urls {
			if p, err := url.Parse(u); err != nil || (p.Scheme != "amqp" && p.Scheme != "amqps") || p.Host == "" {
				return nil, fmt.Errorf("RABBITMQ_URL: %q is not an amqp:// or amqps:// URL", redact(u))
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

// redact hides the password of a broker URL.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid URL)"
	}
	return u.Redacted()
}
