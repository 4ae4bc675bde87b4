package mlproducer_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// fallbackRetryAfter is the Retry-After a handler sends for a refusal that
// carries no wait of its own (ErrClosed: another replica can take the
// request now; ErrSpoolUnavailable: the disk needs an operator).
const fallbackRetryAfter = time.Second

// httpStatus maps the outcome of a publish to the status a handler answers
// with, and the Retry-After header to send with it ("" for none):
//
//   - 200 Confirmed, 202 the other receipts (the Producer owns the message:
//     Pending and Queued are on their way; DeadLettered went to the
//     service's dead-letter hook, which decides what happens next);
//   - 400 an invalid task, 413 one over the size limit (ErrTooLarge);
//   - 503 with Retry-After for ErrCircuitOpen and ErrRetryQueueFull (from
//     [mlproducer.RetryAfter]) and ErrClosed (a replica shutting down);
//   - 503 with Retry-After for ErrSpoolUnavailable too, rather than 507: the
//     request itself is fine, and another replica, or this one once the disk
//     has room, can take it;
//   - 504 when the request's ctx ended first.
func httpStatus(r mlproducer.Receipt, err error) (int, string) {
	retryAfter := func(d time.Duration) string {
		return strconv.Itoa(int((d + time.Second - 1) / time.Second)) // whole seconds, rounded up
	}
	switch {
	case err == nil && r.State == mlproducer.Confirmed:
		return http.StatusOK, ""
	case err == nil:
		return http.StatusAccepted, ""
	case errors.Is(err, mlproducer.ErrTooLarge):
		return http.StatusRequestEntityTooLarge, ""
	case errors.Is(err, mlproducer.ErrInvalidTask):
		return http.StatusBadRequest, ""
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return http.StatusGatewayTimeout, ""
	}
	if d, ok := mlproducer.RetryAfter(err); ok { // ErrCircuitOpen, ErrRetryQueueFull
		return http.StatusServiceUnavailable, retryAfter(d)
	}
	// ErrClosed, ErrSpoolUnavailable, and anything unforeseen.
	return http.StatusServiceUnavailable, retryAfter(fallbackRetryAfter)
}

// A handler maps every outcome of a publish to an HTTP status, with
// Retry-After where the caller should come back later. The fake broker makes
// each outcome happen.
func Example_httpStatus() {
	show := func(what string, r mlproducer.Receipt, err error) {
		code, after := httpStatus(r, err)
		if after != "" {
			fmt.Printf("%-22s %d %s, Retry-After: %s\n", what, code, http.StatusText(code), after)
			return
		}
		fmt.Printf("%-22s %d %s\n", what, code, http.StatusText(code))
	}
	ctx := context.Background()
	publish := func(p *mlproducer.Producer, ctx context.Context, shareID, content string) (mlproducer.Receipt, error) {
		return p.PublishSummarization(ctx, shareID, content, mlproducer.SummarizationOptions{})
	}
	shutdown := func(p *mlproducer.Producer) { // the broker is down: give up at once
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_ = p.Close(ctx)
	}
	newProducer := func(broker *mlproducertest.Broker, opts ...mlproducer.Option) *mlproducer.Producer {
		p, err := mlproducer.New(append([]mlproducer.Option{mlproducer.WithDialer(broker)}, opts...)...)
		if err != nil {
			log.Fatal(err)
		}
		return p
	}

	// A broker that is up.
	up := mlproducertest.NewBroker()
	defer up.Close()
	p := newProducer(up, mlproducer.WithMaxContentBytes(64))
	if err := p.WaitConnected(ctx); err != nil {
		log.Fatal(err)
	}
	r, err := publish(p, ctx, "share-1", "a short text")
	show("confirmed", r, err)
	r, err = publish(p, ctx, "", "a short text")
	show("no share id", r, err)
	r, err = publish(p, ctx, "share-1", strings.Repeat("longer than 64 bytes ", 4))
	show("content too large", r, err)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	r, err = publish(p, cancelled, "share-1", "a short text")
	show("request gone", r, err)

	// Writes held by back-pressure: the request's time runs out first.
	up.StallWrites(true)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	r, err = publish(p, short, "share-1", "a short text")
	cancel()
	show("pending", r, err)
	closing, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	err = p.Close(closing)
	cancel()
	var closeErr *mlproducer.CloseError
	if errors.As(err, &closeErr) {
		fmt.Printf("close: %d unconfirmed, %d dead-lettered, ctx ended: %v\n",
			closeErr.Unconfirmed, closeErr.DeadLettered, errors.Is(err, context.DeadlineExceeded))
	}
	r, err = publish(p, ctx, "share-1", "a short text")
	show("closed", r, err)

	// A broker that is down.
	down := mlproducertest.NewBroker()
	defer down.Close()
	down.RefuseDials(errors.New("connection refused"))
	buffered := newProducer(down)
	defer shutdown(buffered)
	r, err = publish(buffered, ctx, "share-1", "a short text")
	show("queued", r, err)

	// Without a buffer: a full retry queue (there is none), then an open
	// breaker.
	unbuffered := newProducer(down, mlproducer.WithRetryQueueCapacity(0, 0),
		mlproducer.WithRetryBackoff(2*time.Second, 10*time.Second),
		mlproducer.WithCircuitBreaker(1<<20, 30*time.Second))
	defer shutdown(unbuffered)
	r, err = publish(unbuffered, ctx, "share-1", "a short text")
	show("retry queue full", r, err)
	breaking := newProducer(down, mlproducer.WithRetryQueueCapacity(0, 0),
		mlproducer.WithCircuitBreaker(1, 30*time.Second))
	defer shutdown(breaking)
	for !breaking.Status().CircuitBreakerOpen {
		time.Sleep(time.Millisecond)
	}
	r, err = publish(breaking, ctx, "share-1", "a short text")
	show("circuit open", r, err)

	// What a full disk under WithSpool returns.
	show("spool unavailable", mlproducer.Receipt{}, fmt.Errorf("spool /var/lib/app: %w", mlproducer.ErrSpoolUnavailable))

	// Output:
	// confirmed              200 OK
	// no share id            400 Bad Request
	// content too large      413 Request Entity Too Large
	// request gone           504 Gateway Timeout
	// pending                202 Accepted
	// close: 1 unconfirmed, 1 dead-lettered, ctx ended: true
	// closed                 503 Service Unavailable, Retry-After: 1
	// queued                 202 Accepted
	// retry queue full       503 Service Unavailable, Retry-After: 2
	// circuit open           503 Service Unavailable, Retry-After: 30
	// spool unavailable      503 Service Unavailable, Retry-After: 1
}
