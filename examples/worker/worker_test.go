package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/rabbittest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestDedup(t *testing.T) {
	d := newDedup(3)
	for _, id := range []string{"a", "b", "c"} {
		if !d.Add(id) {
			t.Fatalf("Add(%s) on first sight = false", id)
		}
	}
	if d.Add("b") {
		t.Fatal("Add(b) again = true, want a duplicate")
	}
	if !d.Add("d") { // full: forgets a, the oldest
		t.Fatal("Add(d) = false")
	}
	if d.Len() != 3 {
		t.Fatalf("Len %d, want 3", d.Len())
	}
	if !d.Add("a") { // a was forgotten; now b is
		t.Fatal("Add(a) after its eviction = false")
	}
	for _, tc := range []struct {
		id  string
		dup bool
	}{{"c", true}, {"d", true}, {"a", true}, {"b", false}} {
		if got := !d.Add(tc.id); got != tc.dup {
			t.Errorf("duplicate(%s) = %t, want %t", tc.id, got, tc.dup)
		}
	}

	// Remove forgets one id and frees its slot without disturbing the rest.
	d = newDedup(3)
	d.Add("x")
	d.Add("y")
	d.Remove("x")
	d.Remove("nope")
	if d.Len() != 1 || !d.Add("x") || d.Add("y") {
		t.Fatalf("after Remove: Len %d", d.Len())
	}
	d.Add("z") // fills the freed slot: nothing is evicted
	if d.Len() != 3 || d.Add("x") || d.Add("z") {
		t.Fatal("x or z forgotten")
	}
	if !d.Add("") || !d.Add("") || d.Len() != 3 {
		t.Fatal("the empty id must never be a duplicate nor be recorded")
	}
}

// Concurrent callers: each id is new exactly once.
func TestDedupConcurrent(t *testing.T) {
	d := newDedup(10_000)
	var fresh atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range 2000 {
				if d.Add(fmt.Sprint("id-", i)) {
					fresh.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if fresh.Load() != 2000 || d.Len() != 2000 {
		t.Fatalf("%d ids new, %d remembered; want 2000", fresh.Load(), d.Len())
	}
}

func TestFromEnv(t *testing.T) {
	env := func(kv map[string]string) func(string) string {
		return func(k string) string { return kv[k] }
	}
	w, err := fromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if w.urls[0] != mlproducer.DefaultURL || len(w.queues) != 3 || w.prefetch != 32 || len(w.seen.ring) != 100_000 || !w.declare {
		t.Fatalf("defaults: %+v", w)
	}
	w, err = fromEnv(env(map[string]string{
		"RABBITMQ_URL":      "amqp://u:p@a:5672/, amqps://u:p@b/",
		"WORKER_QUEUES":     "q1,q2",
		"WORKER_PREFETCH":   "8",
		"WORKER_DEDUP_SIZE": "10",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if len(w.urls) != 2 || strings.Join(w.queues, ",") != "q1,q2" || w.prefetch != 8 || len(w.seen.ring) != 10 {
		t.Fatalf("from env: %+v", w)
	}
	for k, v := range map[string]string{
		"RABBITMQ_URL":      "http://secret:hunter2@x/",
		"WORKER_PREFETCH":   "0",
		"WORKER_DEDUP_SIZE": "many",
	} {
		_, err := fromEnv(env(map[string]string{k: v}))
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%s: error %v, want one naming the variable", k, v, err)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("the error shows the password: %v", err)
		}
	}
}

// syncBuffer is an output safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func taskBody(id, typ string) []byte {
	payload := `"content":"Some text."`
	if typ == "transcription" {
		payload = `"mediaUrl":"https://media.example/a.mp3"`
	}
	return fmt.Appendf(nil, `{"version":1,"type":%q,"messageId":%q,"shareId":"share-w",%s,"options":{},"createdAt":"2026-01-02T03:04:05Z"}`,
		typ, id, payload)
}

// testQueue declares a durable queue of the test's own (deleted when the
// test ends), so that the test never competes with other consumers of the
// shared ml.* queues.
func testQueue(t *testing.T, url, suffix string) string {
	t.Helper()
	q := fmt.Sprintf("mlproducer.examples.worker.test.%d.%s", time.Now().UnixNano(), suffix)
	declareTestQueue(t, url, q)
	t.Cleanup(func() { rabbittest.DeleteQueues(t, url, q) })
	return q
}

func declareTestQueue(t *testing.T, url, q string) {
	t.Helper()
	conn := rabbittest.Dial(t, url)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	_ = conn.Close()
}

// publish sends each message to queue through the default exchange, with
// publisher confirms.
func publish(t *testing.T, url, queue string, msgs ...amqp.Publishing) {
	t.Helper()
	conn := rabbittest.Dial(t, url)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, m := range msgs {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, m)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("publish not confirmed: %v", err)
		}
	}
}

// startWorker runs w until the test ends (or stop is called) and checks
// that run returns nil.
func startWorker(t *testing.T, w *worker) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("run did not return within 10 s of its ctx ending")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func newTestWorker(t *testing.T, url string, queues ...string) (*worker, *syncBuffer) {
	out := &syncBuffer{}
	return &worker{
		urls:         []string{url},
		queues:       queues,
		declare:      true, // the queues exist: only checked
		prefetch:     32,
		seen:         newDedup(1000),
		out:          out,
		log:          slog.New(slog.NewTextHandler(t.Output(), nil)),
		reconnectMin: 10 * time.Millisecond,
		reconnectMax: 200 * time.Millisecond,
	}, out
}

// Real RabbitMQ: the same message id delivered twice is processed once and
// both deliveries are acknowledged; an invalid body is rejected, not
// requeued.
func TestWorkerDropsDuplicates(t *testing.T) {
	url := rabbittest.Require(t)
	q1 := testQueue(t, url, "summarization")
	q2 := testQueue(t, url, "transcription")
	w, out := newTestWorker(t, url, q1, q2)
	var consuming atomic.Int32
	w.onConsuming = func() { consuming.Add(1) }
	stop := startWorker(t, w)
	eventually(t, "the worker to consume", func() bool { return consuming.Load() > 0 })

	dup, other := uuid.NewString(), uuid.NewString()
	publish(t, url, q1,
		amqp.Publishing{MessageId: dup, Body: taskBody(dup, "summarization"), Headers: amqp.Table{mlproducer.AttemptHeader: int32(1)}},
		amqp.Publishing{MessageId: "not-a-task", Body: []byte(`{"hello":"world"}`)},
		// A retry after a lost confirm: same id, next attempt.
		amqp.Publishing{MessageId: dup, Body: taskBody(dup, "summarization"), Headers: amqp.Table{mlproducer.AttemptHeader: int32(2)}},
	)
	publish(t, url, q2, amqp.Publishing{MessageId: other, Body: taskBody(other, "transcription")})

	eventually(t, "2 tasks processed, 1 duplicate, 1 rejected", func() bool {
		return w.processed.Load() == 2 && w.duplicates.Load() == 1 && w.rejected.Load() == 1
	})
	stop()

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got:\n%s", out)
	}
	if n := strings.Count(out.String(), "id="+dup); n != 1 {
		t.Errorf("task %s printed %d times:\n%s", dup, n, out)
	}
	for _, want := range []string{
		"task summarization id=" + dup + ` shareId=share-w content="Some text." options={} attempt=1 redelivered=false queue=` + q1,
		"task transcription id=" + other + " shareId=share-w mediaUrl=https://media.example/a.mp3",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// Every delivery was settled: nothing went back to the queues when the
	// worker's connection closed.
	for _, q := range []string{q1, q2} {
		if n := rabbittest.QueueLen(t, url, q); n != 0 {
			t.Errorf("%d messages left in %s", n, q)
		}
	}
}

// Real RabbitMQ: when its consumer is cancelled by the broker (here the
// queue is deleted), the worker reconnects with backoff until it can
// consume again, and goes on processing.
func TestWorkerReconnects(t *testing.T) {
	url := rabbittest.Require(t)
	q := testQueue(t, url, "embedding")
	w, out := newTestWorker(t, url, q)
	w.declare = false // so that it fails until the queue is back
	var consuming atomic.Int32
	w.onConsuming = func() { consuming.Add(1) }
	startWorker(t, w)
	eventually(t, "the worker to consume", func() bool { return consuming.Load() == 1 })

	rabbittest.DeleteQueues(t, url, q)
	time.Sleep(300 * time.Millisecond) // a few failed sessions
	if consuming.Load() != 1 {
		t.Fatal("consuming from a deleted queue")
	}
	declareTestQueue(t, url, q)
	eventually(t, "the worker to consume again", func() bool { return consuming.Load() == 2 })

	id := uuid.NewString()
	publish(t, url, q, amqp.Publishing{MessageId: id, Body: taskBody(id, "embedding")})
	eventually(t, "the task after the reconnect", func() bool { return strings.Contains(out.String(), "id="+id) })
}

// With no broker to be had, the worker keeps retrying with backoff, and
// stops promptly when its ctx ends.
func TestWorkerStopsWhileBrokerDown(t *testing.T) {
	w, _ := newTestWorker(t, "amqp://guest:guest@127.0.0.1:1/", "q")
	stop := startWorker(t, w)
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	stop()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("stopping took %v", d)
	}
}
