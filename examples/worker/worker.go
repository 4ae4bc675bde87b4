package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/mlproducer/mlproducer"
)

// defaultQueues are the queues mlproducer's default topology declares.
var defaultQueues = []string{"ml.summarization", "ml.transcription", "ml.embedding"}

// worker consumes ML tasks, processes each message id once, and acknowledges
// every delivery only after it has been processed (at-least-once delivery,
// effectively-once processing within the dedup window).
type worker struct {
	// urls are the brokers, tried in turn after each failure.
	urls []string
	// queues are consumed on one channel; missing ones are declared as
	// mlproducer declares them when declare is set.
	queues  []string
	declare bool
	// prefetch bounds the unacknowledged deliveries per queue.
	prefetch int
	seen     *dedup
	out      io.Writer // one line per task
	log      *slog.Logger
	// reconnectMin and reconnectMax bound the backoff between sessions.
	reconnectMin, reconnectMax time.Duration
	// onConsuming, if set, is called each time every consumer is subscribed.
	onConsuming func()
	// tracerProvider gets the CONSUMER span of each delivery; nil means
	// OpenTelemetry's global one, looked up per delivery (a no-op until
	// main sets it up from OTEL_*).
	tracerProvider trace.TracerProvider
	// propagator reads the producer's trace context from the headers; nil
	// means OpenTelemetry's global one, looked up per delivery.
	propagator propagation.TextMapPropagator

	outMu      sync.Mutex
	processed  atomic.Uint64
	duplicates atomic.Uint64
	rejected   atomic.Uint64
}

// run consumes until ctx ends, reconnecting with exponential backoff and
// jitter whenever the connection, the channel or a consumer is lost. On
// ctx's end it finishes the task in hand, leaves the rest unacknowledged
// (the broker redelivers them), closes the connection and returns nil.
func (w *worker) run(ctx context.Context) error {
	if len(w.urls) == 0 || len(w.queues) == 0 {
		return errors.New("worker: no broker URL or no queue")
	}
	bo := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(w.reconnectMin),
		backoff.WithMaxInterval(w.reconnectMax),
		backoff.WithRandomizationFactor(0.5),
		backoff.WithMaxElapsedTime(0),
	)
	timer := time.NewTimer(0)
	<-timer.C
	defer timer.Stop()
	for attempt := 0; ; attempt++ {
		url := w.urls[attempt%len(w.urls)]
		consumed, err := w.session(ctx, url)
		if ctx.Err() != nil {
			return nil
		}
		if consumed {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		msg := "worker: cannot consume; retrying"
		if consumed {
			msg = "worker: connection lost; reconnecting"
		}
		w.log.Warn(msg, slog.String("url", redact(url)), slog.Any("error", err), slog.Duration("in", wait))
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
	}
}

// session runs one connection: it returns when ctx ends or the connection,
// the channel or a consumer fails. consumed reports whether every consumer
// got subscribed (so the next failure starts a fresh backoff).
func (w *worker) session(ctx context.Context, url string) (consumed bool, err error) {
	conn, err := dial(ctx, url)
	if err != nil {
		return false, fmt.Errorf("dial: %w", err)
	}
	defer conn.Close() // unacknowledged deliveries go back to their queues
	connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))

	if w.declare {
		if err := ensureQueues(conn, w.queues); err != nil {
			return false, err
		}
	}
	ch, err := conn.Channel()
	if err != nil {
		return false, fmt.Errorf("open channel: %w", err)
	}
	chClosed := ch.NotifyClose(make(chan *amqp.Error, 1))
	if err := ch.Qos(w.prefetch, 0, false); err != nil { // per consumer
		return false, fmt.Errorf("qos: %w", err)
	}

	sctx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	// Handlers must have stopped before the connection closes (deferred
	// above, so it runs after this).
	defer wg.Wait()
	defer cancel(nil)
	for _, q := range w.queues {
		deliveries, err := ch.Consume(q, "", false, false, false, false, nil)
		if err != nil {
			return false, fmt.Errorf("consume %s: %w", q, err)
		}
		wg.Go(func() {
			for {
				select {
				case <-sctx.Done():
					return
				case d, ok := <-deliveries:
					if !ok { // basic.cancel (queue deleted) or channel closed
						cancel(fmt.Errorf("consumer on %s cancelled by the broker", q))
						return
					}
					w.handle(q, d)
				}
			}
		})
	}
	w.log.Info("worker: consuming", slog.String("url", redact(url)),
		slog.String("queues", strings.Join(w.queues, ",")), slog.Int("prefetch", w.prefetch))
	if w.onConsuming != nil {
		w.onConsuming()
	}

	select {
	case <-sctx.Done():
		if ctx.Err() != nil {
			return true, nil
		}
		return true, context.Cause(sctx)
	case err := <-connClosed:
		return true, fmt.Errorf("connection closed: %w", amqpErr(err))
	case err := <-chClosed:
		return true, fmt.Errorf("channel closed: %w", amqpErr(err))
	}
}

// dialTimeout bounds the TCP connect and the AMQP handshake.
const dialTimeout = 10 * time.Second

// dial connects to url; ctx ending aborts the connect and the handshake, so
// that SIGTERM is not held up by an unresponsive broker.
func dial(ctx context.Context, url string) (*amqp.Connection, error) {
	var stopAbort func() bool
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName("ml-worker")
	conn, err := amqp.DialConfig(url, amqp.Config{
		Heartbeat:  10 * time.Second,
		Properties: props,
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: dialTimeout}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// amqp091 clears the deadline once the handshake is done.
			_ = c.SetDeadline(time.Now().Add(dialTimeout))
			stopAbort = context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
			return c, nil
		},
	})
	if stopAbort != nil {
		stopAbort()
	}
	return conn, err
}

func amqpErr(err *amqp.Error) error {
	if err == nil {
		return errors.New("closed without an error")
	}
	return err
}

// handle processes one delivery and acknowledges it. A duplicate message id
// is acknowledged without processing; a body that is not a valid task is
// rejected without requeueing (it would fail again; a dead-letter exchange
// on the queue, if any, keeps it). Each delivery is one CONSUMER span, a
// child of the trace context the producer put in its headers.
func (w *worker) handle(queue string, d amqp.Delivery) {
	_, span := w.startSpan(queue, &d)
	task, err := mlproducer.DecodeTask(d.Body)
	if err != nil {
		w.rejected.Add(1)
		w.log.Warn("worker: rejecting an invalid task", slog.String("queue", queue),
			slog.String("messageId", d.MessageId), slog.Any("error", err))
		endSpan(span, outcomeRejected, err, w.settle(d.Reject(false), queue, d))
		return
	}
	id := d.MessageId
	if id == "" {
		id = task.MessageID
	}
	// The attempt header is there only when the Producer sends it
	// (WithEnvelope(mlproducer.EnvelopeAttempt)).
	attempt := "-"
	if n, ok := d.Headers[mlproducer.AttemptHeader]; ok {
		attempt = fmt.Sprint(n)
	}
	if !w.seen.Add(id) {
		w.duplicates.Add(1)
		w.log.Info("worker: duplicate", slog.String("queue", queue), slog.String("messageId", id),
			slog.String("attempt", attempt), slog.Bool("redelivered", d.Redelivered))
		endSpan(span, outcomeDuplicate, nil, w.settle(d.Ack(false), queue, d))
		return
	}
	if err := w.process(queue, id, attempt, d.Redelivered, &task); err != nil {
		// Not done: forget the id so that the redelivery is processed.
		w.seen.Remove(id)
		w.log.Error("worker: processing failed; requeueing", slog.String("messageId", id), slog.Any("error", err))
		endSpan(span, outcomeRequeued, err, w.settle(d.Nack(false, true), queue, d))
		return
	}
	w.processed.Add(1)
	// If this ack is lost with the connection, the task comes back and is
	// then dropped as a duplicate.
	endSpan(span, outcomeAcked, nil, w.settle(d.Ack(false), queue, d))
}

// settle logs err, the error of settling d, and returns it.
func (w *worker) settle(err error, queue string, d amqp.Delivery) error {
	if err != nil {
		w.log.Warn("worker: cannot settle a delivery; the broker will redeliver it",
			slog.String("queue", queue), slog.String("messageId", d.MessageId), slog.Any("error", err))
	}
	return err
}

// process is where a real worker would run the model. This one prints the
// task on one line.
func (w *worker) process(queue, id, attempt string, redelivered bool, t *mlproducer.Task) error {
	payload := "content=" + shorten(t.Content)
	if t.Type == mlproducer.TaskTranscription {
		payload = "mediaUrl=" + token(t.MediaURL)
	}
	// The options as one JSON token: without the white space (new lines
	// included) that the body may hold between their members.
	var opts bytes.Buffer
	if err := json.Compact(&opts, t.Options); err != nil {
		opts.Reset()
		opts.Write(t.Options)
	}
	w.outMu.Lock()
	defer w.outMu.Unlock()
	_, err := fmt.Fprintf(w.out, "task %s id=%s shareId=%s %s options=%s attempt=%s redelivered=%t queue=%s\n",
		token(string(t.Type)), token(id), token(t.ShareID), payload, token(opts.String()), token(attempt), redelivered, token(queue))
	return err
}

// token returns s as one word of the output line: as it is when it is
// printable ASCII without spaces or quotes, else quoted with its control
// characters escaped, so that no field of a task can end the line or forge
// another field or line, and a value that starts with a quote is not read
// as a quoted one.
func token(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' || s[i] == '"' {
			return strconv.Quote(s)
		}
	}
	if s == "" {
		return `""`
	}
	return s
}

func shorten(s string) string {
	if r := []rune(s); len(r) > 48 {
		return fmt.Sprintf("%q…", string(r[:48]))
	}
	return fmt.Sprintf("%q", s)
}

// ensureQueues makes sure every queue exists. A queue that is missing is
// declared as mlproducer declares it (durable, classic, bound to the ml.tasks
// direct exchange with its own name as routing key); one that exists is left
// as it is, whatever its type, so the worker works with quorum queues too.
func ensureQueues(conn *amqp.Connection, queues []string) error {
	for _, q := range queues {
		// A failed passive declare closes the channel: one channel per try.
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("open channel: %w", err)
		}
		_, err = ch.QueueDeclarePassive(q, true, false, false, false, nil)
		_ = ch.Close()
		var aerr *amqp.Error
		if err == nil {
			continue
		}
		if !errors.As(err, &aerr) || aerr.Code != amqp.NotFound {
			return fmt.Errorf("check queue %s: %w", q, err)
		}
		if err := declareQueue(conn, q); err != nil {
			return err
		}
	}
	return nil
}

func declareQueue(conn *amqp.Connection, q string) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	const exchange = "ml.tasks"
	if err := ch.ExchangeDeclare(exchange, "direct", true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", exchange, err)
	}
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "classic"}); err != nil {
		return fmt.Errorf("declare queue %s: %w", q, err)
	}
	if err := ch.QueueBind(q, q, exchange, false, nil); err != nil {
		return fmt.Errorf("bind queue %s: %w", q, err)
	}
	return nil
}
