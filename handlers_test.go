package mlproducer_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// serve runs one request through h and returns the recorded response.
func serve(h http.Handler, method, target string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec
}

// probe decodes the JSON body of a health handler's response.
func probe(t *testing.T, h http.Handler) (int, map[string]string) {
	t.Helper()
	rec := serve(h, http.MethodGet, "/")
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var body map[string]string
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body), rec.Body.String())
	return rec.Code, body
}

func TestMetricsHandler(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithConnectionName("handler-test"))
		h := p.MetricsHandler()
		waitConnected(t, p)
		_, err := p.PublishSummarization(context.Background(), "share-1", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)

		rec := serve(h, http.MethodGet, "/metrics")
		require.Equal(t, http.StatusOK, rec.Code)
		assert.True(t, strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain"), rec.Header().Get("Content-Type"))
		body := rec.Body.String()
		assert.Contains(t, body, "ml_producer_connection_state{producer=\"handler-test\"} 3\n")
		assert.Contains(t, body, "ml_producer_messages_total{outcome=\"confirmed\",producer=\"handler-test\",type=\"summarization\"} 1\n")
		assert.Contains(t, body, "# TYPE ml_producer_confirm_latency_seconds histogram\n")
		assert.Contains(t, body, "ml_producer_confirm_latency_seconds_count{producer=\"handler-test\"} 1\n")
		for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
			if !strings.HasPrefix(line, "#") {
				assert.True(t, strings.HasPrefix(line, "ml_producer_"), "only this Producer's metrics: %q", line)
			}
		}

		// After Close the handler still serves the final state.
		require.NoError(t, closeProducer(t, p))
		rec = serve(h, http.MethodGet, "/metrics")
		require.Equal(t, http.StatusOK, rec.Code)
		assert.Contains(t, rec.Body.String(), "ml_producer_connection_state{producer=\"handler-test\"} 5\n")
	})
}

// Two Producers' handlers serve their own metrics, each with its own label,
// without a registerer.
func TestMetricsHandlerPerProducer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p1 := newFake(t, b, mlproducer.WithConnectionName("one"))
		p2 := newFake(t, b, mlproducer.WithConnectionName("two"))
		waitConnected(t, p1)
		body1 := serve(p1.MetricsHandler(), http.MethodGet, "/metrics").Body.String()
		body2 := serve(p2.MetricsHandler(), http.MethodGet, "/metrics").Body.String()
		assert.Contains(t, body1, `producer="one"`)
		assert.NotContains(t, body1, `producer="two"`)
		assert.Contains(t, body2, `producer="two"`)
		assert.NotContains(t, body2, `producer="one"`)
		require.NoError(t, closeProducer(t, p1))
		require.NoError(t, closeProducer(t, p2))
	})
}

func TestStatusHandler(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithMaxRetries(0))
		h := p.StatusHandler()
		waitConnected(t, p)
		ctx := context.Background()
		_, err := p.PublishSummarization(ctx, "share-1", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		b.NackNext(1)
		r, err := p.PublishEmbedding(ctx, "share-1", "text", mlproducer.EmbeddingOptions{})
		require.NoError(t, err)
		require.Equal(t, mlproducer.DeadLettered, r.State)
		synctest.Wait() // the retry loop counts it as it hands it to the hook

		rec := serve(h, http.MethodGet, "/status")
		require.Equal(t, http.StatusOK, rec.Code)
		assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
		var got map[string]any
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &got))
		for _, k := range []string{"connectionState", "reconnectAttempts", "circuitBreakerOpen", "retryQueueSize", "pendingConfirms", "accepted", "confirmed", "deadLettered", "counters"} {
			assert.Contains(t, got, k)
		}
		assert.EqualValues(t, 3, got["connectionState"])
		assert.Equal(t, false, got["circuitBreakerOpen"])

		var typed struct {
			Counters struct {
				Messages        map[string]map[string]uint64 `json:"messages"`
				AttemptFailures map[string]uint64            `json:"attemptFailures"`
				Retries         *uint64                      `json:"retries"`
				DeadLetters     *uint64                      `json:"deadLetters"`
				Reconnects      *uint64                      `json:"reconnects"`
			} `json:"counters"`
		}
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &typed))
		c := typed.Counters
		assert.Len(t, c.Messages, 4)
		for _, typ := range []string{"summarization", "transcription", "embedding", "unknown"} {
			assert.Len(t, c.Messages[typ], 9, typ)
		}
		assert.EqualValues(t, 1, c.Messages["summarization"]["accepted"])
		assert.EqualValues(t, 1, c.Messages["summarization"]["confirmed"])
		assert.EqualValues(t, 1, c.Messages["embedding"]["dead_lettered"])
		assert.Equal(t, map[string]uint64{"nack": 1, "return": 0, "timeout": 0, "connection_lost": 0}, c.AttemptFailures)
		require.NotNil(t, c.Retries)
		require.NotNil(t, c.DeadLetters)
		require.NotNil(t, c.Reconnects)
		assert.EqualValues(t, 1, *c.DeadLetters)
		assert.Zero(t, *c.Retries)
		assert.Zero(t, *c.Reconnects)

		head := serve(h, http.MethodHead, "/status")
		assert.Equal(t, http.StatusOK, head.Code)
		assert.Equal(t, "application/json", head.Header().Get("Content-Type"))
		assert.Zero(t, head.Body.Len(), "no body for HEAD")

		for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
			rec := serve(h, method, "/status")
			assert.Equal(t, http.StatusMethodNotAllowed, rec.Code, method)
			assert.Equal(t, "GET, HEAD", rec.Header().Get("Allow"), method)
		}
		require.NoError(t, closeProducer(t, p))
	})
}

// The status never shows a broker password.
func TestStatusHandlerRedactsPassword(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("dial amqp://app:s3cret@rabbit:5672/: refused"))
		p := newFake(t, b, mlproducer.WithURLs("amqp://app:s3cret@rabbit:5672/"))
		time.Sleep(time.Second)
		synctest.Wait()
		body := serve(p.StatusHandler(), http.MethodGet, "/status").Body.String()
		assert.Contains(t, body, "app:xxxxx@rabbit")
		assert.NotContains(t, body, "s3cret")
		require.NoError(t, closeProducer(t, p))
	})
}

func TestLivenessHandler(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("down"))
		p := newFake(t, b)
		h := p.LivenessHandler()
		code, body := probe(t, h)
		assert.Equal(t, http.StatusOK, code, "alive while it has no connection")
		assert.Equal(t, map[string]string{"status": "ok"}, body)

		require.NoError(t, closeProducer(t, p))
		code, body = probe(t, h)
		assert.Equal(t, http.StatusServiceUnavailable, code)
		assert.Equal(t, "closed", body["status"])
		assert.Equal(t, http.StatusMethodNotAllowed, serve(h, http.MethodPost, "/livez").Code)
	})
}

// Without a buffer, readiness follows the connection and the breaker: a
// publish that cannot be sent now would be refused.
func TestReadinessHandler(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, noBuffer)
		h := p.ReadinessHandler()
		waitConnected(t, p)
		code, body := probe(t, h)
		assert.Equal(t, http.StatusOK, code)
		assert.Equal(t, map[string]string{"status": "ready"}, body)
		require.NoError(t, p.Ready())

		// Blocked by a broker alarm.
		b.Block("memory")
		synctest.Wait()
		code, body = probe(t, h)
		assert.Equal(t, http.StatusServiceUnavailable, code)
		assert.Equal(t, map[string]string{"status": "not ready", "reason": "connection state blocked"}, body)
		err := p.Ready()
		require.ErrorIs(t, err, mlproducer.ErrNotReady)
		assert.EqualError(t, err, "mlproducer: not ready: connection state blocked")

		b.Unblock()
		synctest.Wait()
		code, _ = probe(t, h)
		assert.Equal(t, http.StatusOK, code)

		// Disconnected.
		b.RefuseDials(errors.New("connection refused"))
		b.DropConnections(nil)
		synctest.Wait()
		code, body = probe(t, h)
		assert.Equal(t, http.StatusServiceUnavailable, code)
		assert.Equal(t, "not ready", body["status"])
		assert.Contains(t, body["reason"], "connection state reconnecting")
		require.ErrorIs(t, p.Ready(), mlproducer.ErrNotReady)

		// Back.
		b.RefuseDials(nil)
		require.NoError(t, p.WaitConnected(context.Background()))
		time.Sleep(time.Minute) // past any breaker cooldown the failed dials caused
		synctest.Wait()
		code, body = probe(t, h)
		assert.Equal(t, http.StatusOK, code, body)

		assert.Equal(t, http.StatusMethodNotAllowed, serve(h, http.MethodPost, "/readyz").Code)
		require.NoError(t, closeProducer(t, p))
		code, body = probe(t, h)
		assert.Equal(t, http.StatusServiceUnavailable, code)
		assert.Equal(t, "connection state closed", body["reason"])
	})
}

func TestReadyFalseWhileCircuitBreakerOpen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithCircuitBreaker(1, time.Minute), mlproducer.WithMaxRetries(0), noBuffer)
		waitConnected(t, p)
		b.NackNext(1)
		r, err := p.PublishEmbedding(context.Background(), "share-1", "text", mlproducer.EmbeddingOptions{})
		require.NoError(t, err)
		require.Equal(t, mlproducer.DeadLettered, r.State)
		synctest.Wait()
		require.True(t, p.Status().CircuitBreakerOpen)

		code, body := probe(t, p.ReadinessHandler())
		assert.Equal(t, http.StatusServiceUnavailable, code)
		assert.Equal(t, map[string]string{"status": "not ready", "reason": "circuit breaker open"}, body)
		assert.EqualError(t, p.Ready(), "mlproducer: not ready: circuit breaker open")

		time.Sleep(2 * time.Minute) // the cooldown ends: half-open, still refusing all but a probe
		synctest.Wait()
		_, err = p.PublishEmbedding(context.Background(), "share-1", "text", mlproducer.EmbeddingOptions{})
		require.NoError(t, err, "the probe goes through and closes the breaker")
		require.NoError(t, p.Ready())
		require.NoError(t, closeProducer(t, p))
	})
}

// With a buffer (the default), a memory alarm, an outage or an open breaker
// leave the Producer ready: it can take a message. Closing does not.
func TestReadyWithRoomInTheBuffer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithCircuitBreaker(2, time.Hour))
		h := p.ReadinessHandler()
		waitConnected(t, p)
		require.NoError(t, p.Ready())

		b.Block("memory")
		synctest.Wait()
		require.Equal(t, mlproducer.Blocked, p.Status().ConnectionState)
		require.NoError(t, p.Ready(), "blocked")

		b.Unblock()
		b.RefuseDials(errors.New("connection refused"))
		b.DropConnections(nil)
		for !p.Status().CircuitBreakerOpen {
			time.Sleep(10 * time.Millisecond)
		}
		require.NoError(t, p.Ready(), "disconnected, breaker open")
		code, body := probe(t, h)
		assert.Equal(t, http.StatusOK, code, body)

		b.RefuseDials(nil)
		waitConnected(t, p)
		require.NoError(t, closeProducer(t, p))
		assert.EqualError(t, p.Ready(), "mlproducer: not ready: connection state closed")
	})
}
