package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/rabbittest"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testLogger writes to the test's output, shown when the test fails or with -v.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fakeProducer returns a connected Producer on a new fake broker. Both are
// closed when the test ends (the Producer first, giving it 2 s).
func fakeProducer(t *testing.T, opts ...mlproducer.Option) (*mlproducer.Producer, *mlproducertest.Broker) {
	t.Helper()
	b := mlproducertest.NewBroker()
	t.Cleanup(b.Close)
	p, err := mlproducer.New(append([]mlproducer.Option{
		mlproducer.WithDialer(b),
		mlproducer.WithLogger(testLogger(t)),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = p.Close(ctx) // some tests leave messages that cannot be confirmed
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	return p, b
}

// response is a recorded response with its JSON body decoded.
type response struct {
	Code   int
	Header http.Header
	Body   string
	JSON   map[string]any
}

func serve(t *testing.T, h http.Handler, r *http.Request) response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	res := response{Code: rec.Code, Header: rec.Header(), Body: rec.Body.String()}
	if strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") && r.Method != http.MethodHead {
		if err := json.Unmarshal(rec.Body.Bytes(), &res.JSON); err != nil {
			t.Fatalf("%s %s: body is not a JSON object: %v\n%s", r.Method, r.URL, err, res.Body)
		}
	}
	return res
}

func do(t *testing.T, h http.Handler, method, path, body string) response {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	return serve(t, h, r)
}

func expect(t *testing.T, res response, code int) {
	t.Helper()
	if res.Code != code {
		t.Fatalf("status %d, want %d; body: %s", res.Code, code, res.Body)
	}
}

// expectError checks an error response: the status, a JSON body with a
// non-empty "error" and the given "field" ("" meaning none).
func expectError(t *testing.T, res response, code int, field string) {
	t.Helper()
	expect(t, res, code)
	t.Logf("%d %s", res.Code, strings.TrimSpace(res.Body))
	if msg, _ := res.JSON["error"].(string); msg == "" {
		t.Fatalf("no error message in %s", res.Body)
	}
	if got, _ := res.JSON["field"].(string); got != field {
		t.Fatalf("field %q, want %q; body: %s", got, field, res.Body)
	}
}

const (
	validSummarize  = `{"shareId":"share-1","content":"A long text to summarise.","options":{"maxLength":120,"language":"en","style":"bullets"}}`
	validTranscribe = `{"shareId":"share-1","mediaUrl":"https://media.example/talk.mp3","options":{"language":"en","diarization":true,"maxSpeakers":3}}`
	validEmbed      = `{"shareId":"share-1","content":"Text to embed.","options":{"dimensions":768}}`
)

// 202: each endpoint publishes its task type; the broker got the message.
func TestPublishAccepted(t *testing.T) {
	p, b := fakeProducer(t)
	h := newMux(p, testLogger(t))
	for _, tc := range []struct{ path, body, queue, want string }{
		{"/api/ml/summarize", validSummarize, "ml.summarization", `"options":{"maxLength":120,"language":"en","style":"bullets"}`},
		{"/api/ml/transcribe", validTranscribe, "ml.transcription", `"mediaUrl":"https://media.example/talk.mp3"`},
		{"/api/ml/embed", validEmbed, "ml.embedding", `"options":{"dimensions":768}`},
		// Options may be left out.
		{"/api/ml/embed", `{"shareId":"share-2","content":"no options"}`, "ml.embedding", `"options":{}`},
	} {
		t.Run(tc.path, func(t *testing.T) {
			res := do(t, h, http.MethodPost, tc.path, tc.body)
			expect(t, res, http.StatusAccepted)
			id, _ := res.JSON["messageId"].(string)
			if id == "" || res.JSON["state"] != "confirmed" {
				t.Fatalf("want a messageId and state confirmed, got %s", res.Body)
			}
			var found bool
			for _, m := range b.Messages(tc.queue) {
				if m.MessageID == id {
					found = true
					if !strings.Contains(string(m.Body), tc.want) {
						t.Errorf("body %s does not contain %s", m.Body, tc.want)
					}
				}
			}
			if !found {
				t.Fatalf("message %s not in queue %s", id, tc.queue)
			}
		})
	}
}

// 400: malformed JSON, unknown fields, wrong types and invalid tasks, each
// naming the field when there is one. Nothing reaches the broker.
func TestBadRequest(t *testing.T) {
	p, b := fakeProducer(t)
	h := newMux(p, testLogger(t))
	for _, tc := range []struct {
		name, path, body, field string
	}{
		{"empty body", "/api/ml/summarize", ``, ""},
		{"truncated JSON", "/api/ml/summarize", `{"shareId":"s",`, ""},
		{"syntax error", "/api/ml/summarize", `{"shareId": nope}`, ""},
		{"not an object", "/api/ml/summarize", `["share", "content"]`, ""},
		{"two objects", "/api/ml/summarize", validSummarize + validSummarize, ""},
		{"unknown field", "/api/ml/summarize", `{"shareId":"s","content":"c","priority":1}`, "priority"},
		{"field of another type", "/api/ml/summarize", `{"shareId":"s","mediaUrl":"https://a.example/x.mp3"}`, "mediaUrl"},
		{"unknown option", "/api/ml/summarize", `{"shareId":"s","content":"c","options":{"maxLen":5}}`, "options.maxLen"},
		{"wrong type", "/api/ml/summarize", `{"shareId":42,"content":"c"}`, "shareId"},
		{"wrong option type", "/api/ml/embed", `{"shareId":"s","content":"c","options":{"dimensions":"768"}}`, "options.dimensions"},
		{"options not an object", "/api/ml/embed", `{"shareId":"s","content":"c","options":[1]}`, "options"},
		{"missing shareId", "/api/ml/summarize", `{"content":"c"}`, "shareId"},
		{"empty content", "/api/ml/embed", `{"shareId":"s","content":""}`, "content"},
		{"option out of range", "/api/ml/summarize", `{"shareId":"s","content":"c","options":{"maxLength":-1}}`, "options.maxLength"},
		{"media URL scheme", "/api/ml/transcribe", `{"shareId":"s","mediaUrl":"file:///etc/passwd"}`, "mediaUrl"},
		{"relative media URL", "/api/ml/transcribe", `{"shareId":"s","mediaUrl":"talk.mp3"}`, "mediaUrl"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expectError(t, do(t, h, http.MethodPost, tc.path, tc.body), http.StatusBadRequest, tc.field)
		})
	}
	if n := b.Published(); n != 0 {
		t.Fatalf("%d messages reached the broker", n)
	}
}

// 413: a body over 2 MiB is refused before it is decoded.
func TestBodyTooLarge(t *testing.T) {
	p, b := fakeProducer(t)
	h := newMux(p, testLogger(t))
	body := `{"shareId":"s","content":"` + strings.Repeat("a", maxBodyBytes) + `"}`
	expectError(t, do(t, h, http.MethodPost, "/api/ml/summarize", body), http.StatusRequestEntityTooLarge, "")
	if n := b.Published(); n != 0 {
		t.Fatalf("%d messages reached the broker", n)
	}
}

// 413 naming the field: content within the request limit but over the
// Producer's, or content whose JSON escaping makes the task body too large.
func TestContentTooLarge(t *testing.T) {
	p, b := fakeProducer(t)
	h := newMux(p, testLogger(t))
	for name, content := range map[string]string{
		"over the content limit":      strings.Repeat("a", 1<<20+1),
		"escaped over the body limit": strings.Repeat(`\"`, 600<<10),
	} {
		t.Run(name, func(t *testing.T) {
			body := `{"shareId":"s","content":"` + content + `"}`
			expectError(t, do(t, h, http.MethodPost, "/api/ml/summarize", body), http.StatusRequestEntityTooLarge, "content")
		})
	}
	if n := b.Published(); n != 0 {
		t.Fatalf("%d messages reached the broker", n)
	}
}

// 405 with Allow for a wrong method; 404 for an unknown path. Status and
// metrics are on the admin handler.
func TestMethodNotAllowed(t *testing.T) {
	p, _ := fakeProducer(t)
	g := newGateway(p, testLogger(t), publishTimeout)
	h := http.Handler(g)
	for _, tc := range []struct{ method, path, allow string }{
		{http.MethodGet, "/api/ml/summarize", "POST"},
		{http.MethodPut, "/api/ml/transcribe", "POST"},
		{http.MethodDelete, "/api/ml/embed", "POST"},
		{http.MethodPost, "/api/ml/status", "GET, HEAD"},
		{http.MethodPost, "/api/ml/metrics/prometheus", "GET, HEAD"},
		{http.MethodPost, "/api/ml/metrics/json", "GET, HEAD"},
		{http.MethodPost, "/healthz", "GET, HEAD"},
		{http.MethodPost, "/readyz", "GET, HEAD"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			on := h
			if strings.HasPrefix(tc.path, "/api/ml/status") || strings.HasPrefix(tc.path, "/api/ml/metrics/") {
				on = g.admin()
			}
			res := do(t, on, tc.method, tc.path, "{}")
			expectError(t, res, http.StatusMethodNotAllowed, "")
			if got := res.Header.Get("Allow"); got != tc.allow {
				t.Fatalf("Allow %q, want %q", got, tc.allow)
			}
		})
	}
	expectError(t, do(t, h, http.MethodGet, "/api/ml/nothing", ""), http.StatusNotFound, "")
}

func expectRetryAfter(t *testing.T, res response, seconds string) {
	t.Helper()
	expectError(t, res, http.StatusServiceUnavailable, "")
	if got := res.Header.Get("Retry-After"); got != seconds {
		t.Fatalf("Retry-After %q, want %q", got, seconds)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// 503 + Retry-After: 30 while the circuit breaker is open and buffering is
// off (with a buffer, the default, the task would be accepted and queued).
func TestCircuitOpen(t *testing.T) {
	p, b := fakeProducer(t, mlproducer.WithCircuitBreaker(1, time.Hour), mlproducer.WithRetryQueueCapacity(0, 0))
	h := newMux(p, testLogger(t))
	b.NackNext(1)
	// The broker refuses this one: the Producer keeps it for a retry, and
	// the breaker opens after this one failure.
	res := do(t, h, http.MethodPost, "/api/ml/summarize", validSummarize)
	expect(t, res, http.StatusAccepted)
	eventually(t, "the breaker to open", func() bool { return p.Status().CircuitBreakerOpen })

	expectRetryAfter(t, do(t, h, http.MethodPost, "/api/ml/embed", validEmbed), "30")
	expect(t, do(t, h, http.MethodGet, "/readyz", ""), http.StatusServiceUnavailable)
	expect(t, do(t, h, http.MethodGet, "/healthz", ""), http.StatusOK)

	// The nacked task cannot be retried while the breaker is open: Close
	// accounts for it as undelivered.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.Close(ctx); err == nil || !strings.Contains(err.Error(), "1 messages unconfirmed") {
		t.Fatalf("Close: %v; want 1 message unconfirmed", err)
	}
}

// 503 + Retry-After: 5 when the retry queue is full (the broker blocks
// publishers, so tasks wait in the queue).
func TestRetryQueueFull(t *testing.T) {
	b := mlproducertest.NewBroker()
	t.Cleanup(b.Close)
	b.Block("low on memory")
	p, err := mlproducer.New(mlproducer.WithDialer(b), mlproducer.WithLogger(testLogger(t)),
		mlproducer.WithRetryQueueCapacity(1, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	t.Cleanup(b.Unblock) // runs first: the queued task is then delivered
	eventually(t, "state blocked", func() bool { return p.Status().ConnectionState == mlproducer.Blocked })
	g := newGateway(p, testLogger(t), publishTimeout)
	h := http.Handler(g)

	res := do(t, h, http.MethodPost, "/api/ml/summarize", validSummarize)
	expect(t, res, http.StatusAccepted)
	if res.JSON["state"] != "queued" {
		t.Fatalf("state %v, want queued", res.JSON["state"])
	}
	expectRetryAfter(t, do(t, h, http.MethodPost, "/api/ml/transcribe", validTranscribe), "5")
	expect(t, do(t, h, http.MethodGet, "/readyz", ""), http.StatusServiceUnavailable)

	st := do(t, g.admin(), http.MethodGet, "/api/ml/status", "")
	expect(t, st, http.StatusOK)
	if st.JSON["connectionState"] != float64(4) || st.JSON["retryQueueSize"] != float64(1) {
		t.Fatalf("status %s: want connectionState 4 and retryQueueSize 1", st.Body)
	}
}

// 503 + Retry-After: 5 once the Producer is closed; liveness fails too.
func TestClosed(t *testing.T) {
	p, _ := fakeProducer(t)
	h := newMux(p, testLogger(t))
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	expectRetryAfter(t, do(t, h, http.MethodPost, "/api/ml/summarize", validSummarize), "5")
	expectRetryAfter(t, do(t, h, http.MethodPost, "/api/ml/transcribe", validTranscribe), "5")
	expect(t, do(t, h, http.MethodGet, "/healthz", ""), http.StatusServiceUnavailable)
	expect(t, do(t, h, http.MethodGet, "/readyz", ""), http.StatusServiceUnavailable)
}

// 504 when the request's context ends before the Producer takes the task:
// a deadline that passed, or a client that went away.
func TestContextDone(t *testing.T) {
	p, b := fakeProducer(t)
	h := newMux(p, testLogger(t))

	past, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	gone, cancel2 := context.WithCancel(context.Background())
	cancel2()
	for name, ctx := range map[string]context.Context{"deadline": past, "cancelled": gone} {
		t.Run(name, func(t *testing.T) {
			r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/api/ml/summarize", strings.NewReader(validSummarize))
			r.Header.Set("Content-Type", "application/json")
			expectError(t, serve(t, h, r), http.StatusGatewayTimeout, "")
		})
	}
	// The gateway's own per-request bound behaves the same.
	g := newGateway(p, testLogger(t), -time.Second)
	expectError(t, do(t, g, http.MethodPost, "/api/ml/embed", validEmbed), http.StatusGatewayTimeout, "")
	if n := b.Published(); n != 0 {
		t.Fatalf("%d messages reached the broker", n)
	}
}

// Status, metrics and probes are the library's handlers, mounted (status
// and metrics on the admin handler).
func TestObservabilityEndpoints(t *testing.T) {
	p, _ := fakeProducer(t, mlproducer.WithConnectionName("gateway-test"))
	g := newGateway(p, testLogger(t), publishTimeout)
	admin := g.admin()
	expect(t, do(t, g, http.MethodPost, "/api/ml/summarize", validSummarize), http.StatusAccepted)

	for _, path := range []string{"/api/ml/status", "/api/ml/metrics/json"} {
		res := do(t, admin, http.MethodGet, path, "")
		expect(t, res, http.StatusOK)
		for _, key := range []string{"connectionState", "reconnectAttempts", "circuitBreakerOpen", "retryQueueSize", "pendingConfirms"} {
			if _, ok := res.JSON[key]; !ok {
				t.Errorf("%s: no %q in %s", path, key, res.Body)
			}
		}
		if res.JSON["connectionState"] != float64(3) {
			t.Errorf("%s: connectionState %v, want 3", path, res.JSON["connectionState"])
		}
	}

	res := do(t, admin, http.MethodGet, "/api/ml/metrics/prometheus", "")
	expect(t, res, http.StatusOK)
	for _, line := range []string{
		`ml_producer_connection_state{producer="gateway-test"} 3`,
		`ml_producer_messages_total{outcome="confirmed",producer="gateway-test",type="summarization"} 1`,
		`ml_producer_circuit_breaker_open{producer="gateway-test"} 0`,
	} {
		if !strings.Contains(res.Body, line+"\n") {
			t.Errorf("metrics lack %q:\n%s", line, res.Body)
		}
	}

	expect(t, do(t, g, http.MethodGet, "/healthz", ""), http.StatusOK)
	expect(t, do(t, g, http.MethodHead, "/healthz", ""), http.StatusOK)
	expect(t, do(t, g, http.MethodGet, "/readyz", ""), http.StatusOK)
	g.drain() // shutdown begins: readiness fails, requests are still served
	expectError(t, do(t, g, http.MethodGet, "/readyz", ""), http.StatusServiceUnavailable, "")
	expect(t, do(t, g, http.MethodPost, "/api/ml/embed", validEmbed), http.StatusAccepted)
}

// alertRule is what the minimal parser below reads of a rule.
type alertRule struct{ expr, forDur, severity, summary, description string }

// parseAlerts reads the alerting rules of alerts.yml line by line: enough to
// check names, expressions, durations, labels and annotations without a YAML
// library (promtool, when present, checks the file fully).
func parseAlerts(t *testing.T, path string) (groups []string, rules map[string]*alertRule, order []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rules = make(map[string]*alertRule)
	var cur *alertRule
	// A folded value (">-") continues on the lines indented deeper than
	// its key.
	var folded *string
	foldIndent := 0
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.Contains(line, "\t") {
			t.Fatalf("%s:%d: tab in YAML", path, n)
		}
		s := strings.TrimSpace(line)
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		indent := len(line) - len(strings.TrimLeft(line, " "))
		if folded != nil && indent > foldIndent {
			*folded = strings.TrimSpace(*folded + " " + s)
			continue
		}
		folded = nil
		key, val, _ := strings.Cut(strings.TrimPrefix(s, "- "), ":")
		val = strings.Trim(strings.TrimSpace(val), `"`)
		switch key {
		case "name":
			groups = append(groups, val)
		case "alert":
			if rules[val] != nil {
				t.Fatalf("%s:%d: alert %s defined twice", path, n, val)
			}
			cur = &alertRule{}
			rules[val] = cur
			order = append(order, val)
		case "expr", "for", "severity", "summary", "description":
			if cur == nil {
				t.Fatalf("%s:%d: %s outside an alert", path, n, key)
			}
			dst := map[string]*string{"expr": &cur.expr, "for": &cur.forDur, "severity": &cur.severity,
				"summary": &cur.summary, "description": &cur.description}[key]
			if val == ">-" || val == ">" || val == "|" || val == "|-" {
				folded, foldIndent, val = dst, indent, ""
			}
			*dst = val
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return groups, rules, order
}

// The alerting rules: the integration guide's three alerts exactly, plus
// four more, each with a severity, a summary and a description. With
// promtool on PATH the file is also checked, and its unit tests
// (alerts_test.yml) run.
func TestAlertRules(t *testing.T) {
	groups, rules, order := parseAlerts(t, "alerts.yml")
	if !slices.Equal(groups, []string{"mlproducer"}) {
		t.Errorf("groups %v, want [mlproducer]", groups)
	}
	want := []struct{ name, expr, forDur string }{
		{"MLProducerRetryQueueHigh", "ml_producer_retry_queue_size > 50", "5m"},
		{"MLProducerCircuitBreakerOpen", "ml_producer_circuit_breaker_open == 1", "2m"},
		{"MLProducerDisconnected", "ml_producer_connection_state != 3", "3m"},
		{"MLProducerDeadLetters", "increase(ml_producer_dead_letters_total[10m]) > 0", ""},
		{"MLProducerConfirmLatencyHigh", "histogram_quantile(0.99, sum by (le, producer) (rate(ml_producer_confirm_latency_seconds_bucket[5m]))) > 1", "5m"},
		{"MLProducerFlowControlBlocked", "ml_producer_connection_state == 4", "5m"},
		{"MLProducerReconnectStorm", "increase(ml_producer_reconnects_total[10m]) > 10", ""},
	}
	var names []string
	for _, w := range want {
		names = append(names, w.name)
		r := rules[w.name]
		if r == nil {
			t.Errorf("alert %s missing", w.name)
			continue
		}
		if r.expr != w.expr || r.forDur != w.forDur {
			t.Errorf("%s: expr %q for %q, want %q for %q", w.name, r.expr, r.forDur, w.expr, w.forDur)
		}
		if r.severity != "warning" && r.severity != "critical" {
			t.Errorf("%s: severity %q", w.name, r.severity)
		}
		if r.summary == "" || r.description == "" {
			t.Errorf("%s: summary or description missing", w.name)
		}
	}
	if !slices.Equal(order, names) {
		t.Errorf("alerts %v, want %v", order, names)
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Log("promtool not on PATH: alerts.yml checked by the line parser only (apt-get install prometheus provides promtool)")
		return
	}
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, promtool, args...).CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		} else {
			t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
		}
	}
}

// End to end on a real RabbitMQ: tasks posted to the gateway reach a
// consumer with their message ids. The test publishes to an exchange of its
// own, bound to a private queue, so it never takes tasks from the shared
// ml.* queues that other tests (and workers) use.
func TestEndToEndRabbitMQ(t *testing.T) {
	url := rabbittest.Require(t)
	conn := rabbittest.Dial(t, url)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	exchange := fmt.Sprintf("mlproducer.examples.gateway.test.%d", time.Now().UnixNano())
	if err := ch.ExchangeDeclare(exchange, "direct", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.ExchangeDelete(exchange, false, false) })
	q, err := ch.QueueDeclare("", false, true, true, false, nil) // private, deleted with the connection
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{"summarization": "ml.summarization", "transcription": "ml.transcription", "embedding": "ml.embedding"}
	for _, key := range keys {
		if err := ch.QueueBind(q.Name, key, exchange, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	deliveries, err := ch.Consume(q.Name, "", false, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}

	p, err := mlproducer.New(
		mlproducer.WithURLs(url),
		mlproducer.WithTopology(mlproducer.Topology{Exchange: exchange, NoDeclare: true}),
		mlproducer.WithConnectionName("mlproducer gateway e2e test"),
		mlproducer.WithLogger(testLogger(t)),
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
	g := newGateway(p, testLogger(t), publishTimeout)
	srv := httptest.NewServer(g)
	t.Cleanup(srv.Close)
	adminSrv := httptest.NewServer(g.admin())
	t.Cleanup(adminSrv.Close)
	client := srv.Client()
	waitReady(t, client, srv.URL+"/readyz")
	// Ready means "can take a task", even before the first connection: wait
	// for it, so that the tasks are confirmed rather than queued.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := p.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}

	sent := map[string]string{} // message id -> task type
	for _, tc := range []struct{ path, body, typ string }{
		{"/api/ml/summarize", validSummarize, "summarization"},
		{"/api/ml/transcribe", validTranscribe, "transcription"},
		{"/api/ml/embed", validEmbed, "embedding"},
	} {
		res, err := client.Post(srv.URL+tc.path, "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		var receipt struct{ MessageID, State string }
		if res.StatusCode != http.StatusAccepted || json.Unmarshal(body, &receipt) != nil {
			t.Fatalf("POST %s: %d %s", tc.path, res.StatusCode, body)
		}
		if receipt.State != "confirmed" {
			t.Errorf("POST %s: state %q, want confirmed from a healthy broker", tc.path, receipt.State)
		}
		sent[receipt.MessageID] = tc.typ
	}

	timeout := time.After(15 * time.Second)
	for len(sent) > 0 {
		var d amqp.Delivery
		select {
		case d = <-deliveries:
		case <-timeout:
			t.Fatalf("%d tasks never arrived: %v", len(sent), sent)
		}
		typ, ok := sent[d.MessageId]
		if !ok {
			t.Fatalf("unexpected message %q", d.MessageId)
		}
		delete(sent, d.MessageId)
		task, err := mlproducer.DecodeTask(d.Body)
		if err != nil {
			t.Fatalf("DecodeTask: %v\n%s", err, d.Body)
		}
		if task.MessageID != d.MessageId || string(task.Type) != typ || d.RoutingKey != keys[typ] || d.Type != "" {
			t.Errorf("message %s: body id %s type %s, routing key %s, AMQP type %q; want type %s (the default envelope sets no AMQP type)",
				d.MessageId, task.MessageID, task.Type, d.RoutingKey, d.Type, typ)
		}
		if v, ok := d.Headers[mlproducer.AttemptHeader]; ok {
			t.Errorf("message %s: attempt header %v; the default envelope has none", d.MessageId, v)
		}
		if err := d.Ack(false); err != nil {
			t.Fatal(err)
		}
	}

	res, err := client.Get(adminSrv.URL + "/api/ml/metrics/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(res.Body)
	res.Body.Close()
	want := `ml_producer_messages_total{outcome="confirmed",producer="mlproducer gateway e2e test",type="transcription"} 1`
	if !strings.Contains(string(metrics), want) {
		t.Errorf("metrics lack %q:\n%s", want, metrics)
	}
}

func waitReady(t *testing.T, client *http.Client, url string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		res, err := client.Get(url)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 15 s (last: %v)", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
