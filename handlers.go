package mlproducer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MetricsHandler returns an [http.Handler] that serves this Producer's metrics,
// and only them, in the Prometheus text exposition format (or another format
// the scraper negotiates). It works whether or not [WithRegisterer] was given,
// and after [Producer.Close] it still serves the final counts with
// ml_producer_connection_state 5. Every metric carries the label
// producer="<connection name>" ([WithConnectionName]):
//
//	ml_producer_connection_state            gauge: 0 disconnected, 1 connecting, 2 reconnecting,
//	                                        3 connected, 4 blocked, 5 closed (see ConnectionState)
//	ml_producer_circuit_breaker_open        gauge: 1 while the breaker holds sends back
//	ml_producer_retry_queue_size            gauge: messages in the retry queue
//	ml_producer_pending_confirms            gauge: messages awaiting their confirm
//	ml_producer_messages_total              counter{type, outcome}: every combination, zeros included
//	ml_producer_attempt_failures_total      counter{reason}: nack, return, timeout, connection_lost
//	ml_producer_retries_total               counter: sends from the retry queue
//	ml_producer_dead_letters_total          counter: messages handed to the dead-letter hook
//	ml_producer_reconnects_total            counter: connection attempts after a lost connection
//	ml_producer_dead_letter_hook_panics_total counter: dead-letter hook calls that panicked
//	ml_producer_confirm_latency_seconds     histogram: last send to confirm, 0.5 ms to 10 s
//
// Types are summarization, transcription, embedding and unknown (an invalid
// type); outcomes are accepted, confirmed, dead_lettered, refused_invalid,
// refused_closed, refused_circuit_open, refused_queue_full, refused_spool_failed and
// refused_context_done.
//
// Each call builds a small private registry; call it once and mount the
// handler. The handler is safe for concurrent use, reads the Producer's
// counters at scrape time and never blocks on the network.
func (p *Producer) MetricsHandler() http.Handler {
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(p.collector); err != nil {
		// Not reachable with a valid connection name: the registry is new.
		p.log.Error("mlproducer: metrics handler", slog.Any("error", err))
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "mlproducer: metrics unavailable: "+err.Error(), http.StatusInternalServerError)
		})
	}
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      promLogger{p.log},
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// promLogger passes promhttp's errors to the Producer's logger.
type promLogger struct{ log *slog.Logger }

func (l promLogger) Println(v ...any) {
	l.log.Error("mlproducer: metrics", slog.String("error", strings.TrimSuffix(fmt.Sprintln(v...), "\n")))
}

// statusBody is the JSON of [Producer.StatusHandler].
type statusBody struct {
	Status
	Counters countersBody `json:"counters"`
}

type countersBody struct {
	// Messages by task type, then outcome (the labels of
	// ml_producer_messages_total).
	Messages        map[string]map[string]uint64 `json:"messages"`
	AttemptFailures map[string]uint64            `json:"attemptFailures"`
	Retries         uint64                       `json:"retries"`
	DeadLetters     uint64                       `json:"deadLetters"`
	Reconnects      uint64                       `json:"reconnects"`
}

// StatusHandler returns an [http.Handler] that serves the Producer's
// [Status] and counters as JSON (Content-Type application/json): the fields
// of Status under their JSON names (connectionState as its number, URL and
// last error with passwords redacted), plus
//
//	"counters": {
//	  "messages": {"summarization": {"accepted": 3, "confirmed": 3, ...}, ...},
//	  "attemptFailures": {"nack": 0, "return": 0, "timeout": 0, "connection_lost": 0},
//	  "retries": 0, "deadLetters": 0, "reconnects": 0
//	}
//
// with the same types, outcomes and reasons as the Prometheus metrics. It
// answers GET and HEAD; other methods get 405 with an Allow header. It is
// safe for concurrent use and never blocks on the network.
func (p *Producer) StatusHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !allowRead(w, r) {
			return
		}
		body := statusBody{Status: p.Status(), Counters: p.countersBody()}
		writeJSON(w, r, http.StatusOK, body)
	})
}

func (p *Producer) countersBody() countersBody {
	m := &p.metrics
	c := countersBody{
		Messages:        make(map[string]map[string]uint64, len(typeLabels)),
		AttemptFailures: make(map[string]uint64, len(failureNames)),
		Retries:         m.retried.Load(),
		DeadLetters:     m.total(outDeadLettered),
		Reconnects:      m.reconnects.Load(),
	}
	for ti, typ := range typeLabels {
		byOutcome := make(map[string]uint64, len(outcomeNames))
		for oi, out := range outcomeNames {
			byOutcome[out] = m.messages[ti][oi].Load()
		}
		c.Messages[typ] = byOutcome
	}
	for fi, reason := range failureNames {
		c.AttemptFailures[reason] = m.failures[fi].Load()
	}
	return c
}

// LivenessHandler returns an [http.Handler] for a liveness probe: 200 with
// {"status":"ok"} while the Producer is open, whatever its connection state
// (a lost connection is recovered by the Producer itself, not by a restart),
// and 503 with {"status":"closed"} once [Producer.Close] has finished. It
// answers GET and HEAD (405 otherwise) and never blocks.
func (p *Producer) LivenessHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !allowRead(w, r) {
			return
		}
		if p.Status().ConnectionState == Closed {
			writeJSON(w, r, http.StatusServiceUnavailable, map[string]string{"status": "closed"})
			return
		}
		writeJSON(w, r, http.StatusOK, map[string]string{"status": "ok"})
	})
}

// ReadinessHandler returns an [http.Handler] for a readiness probe: 200 with
// {"status":"ready"} when [Producer.Ready] returns nil, otherwise 503 with
// {"status":"not ready","reason":"..."}, the reason being the one Ready gives
// (for example "retry queue full" or "connection state closed"). It answers
// GET and HEAD (405 otherwise) and never blocks.
func (p *Producer) ReadinessHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !allowRead(w, r) {
			return
		}
		if reason := p.notReadyReason(); reason != "" {
			writeJSON(w, r, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": reason})
			return
		}
		writeJSON(w, r, http.StatusOK, map[string]string{"status": "ready"})
	})
}

// Ready reports whether the Producer can take a message now: nil unless a
// publish would be refused for want of room or of a broker. It is not ready
// when it is closing or closed ("connection state closed"), when its buffer is
// full ("retry queue full", or "in-flight window full" without a buffer), or,
// with buffering turned off ([WithRetryQueueCapacity](0, 0)), while it has no
// usable connection ("connection state reconnecting", "connection state
// blocked", ...) or its circuit breaker is open ("circuit breaker open"), or,
// with a spool, while the spool's last write failed ("spool cannot write
// (...)": a full disk; it becomes ready by itself once a write succeeds), or
// while the broker refuses the topology ("configuration error: ...", see
// [WithTopology]; it becomes ready once the topology is declared). The
// error wraps [ErrNotReady] and gives every reason that holds, for example
// "mlproducer: not ready: retry queue full".
//
// With a buffer (the default), a broker outage, a memory alarm or an open
// breaker alone leave the Producer ready: publishes are kept ([Queued]) and
// sent once the broker is back, so a broker outage does not take every pod
// out of its load balancer at once. Watch [Status] and the metrics for those.
// Ready never blocks.
func (p *Producer) Ready() error {
	if reason := p.notReadyReason(); reason != "" {
		return fmt.Errorf("%w: %s", ErrNotReady, reason)
	}
	return nil
}

// notReadyReason returns why the Producer is not ready, or "" if it is.
func (p *Producer) notReadyReason() string {
	st := p.Status()
	if st.ConnectionState == Closed || p.closing.Load() {
		return "connection state closed"
	}
	var reasons []string
	if r := p.configNotReady(); r != "" {
		reasons = append(reasons, r)
	}
	live := p.liveSession() != nil
	if !p.cfg.buffered() {
		if !live {
			reasons = append(reasons, "connection state "+st.ConnectionState.String())
		}
		if st.CircuitBreakerOpen {
			reasons = append(reasons, "circuit breaker open")
		}
		if p.held.Load() >= int64(p.cfg.maxInFlight) {
			reasons = append(reasons, "in-flight window full")
		}
		return strings.Join(reasons, "; ")
	}
	if p.bufferFull(live && !st.CircuitBreakerOpen) {
		reasons = append(reasons, "retry queue full")
	}
	if p.spool != nil {
		if r := p.spool.unavailable(); r != "" {
			reasons = append(reasons, r)
		}
	}
	return strings.Join(reasons, "; ")
}

// bufferFull reports whether a new publish would be refused with
// [ErrRetryQueueFull]: the Producer holds its capacity of accepted messages
// (the retry queue's plus the in-flight window) or bytes, or the message
// would have to wait (no session it may go to) and the retry queue is full.
func (p *Producer) bufferFull(sendable bool) bool {
	if p.held.Load() >= p.capCount || p.heldBytes.Load() >= p.capBytes {
		return true
	}
	if sendable || p.spool != nil {
		// With a spool, hold's capacity is the whole bound.
		return false
	}
	p.rmu.Lock()
	defer p.rmu.Unlock()
	return p.retry.len() >= p.cfg.retryCapCount || p.retry.bytes() >= p.cfg.retryCapBytes
}

// allowRead lets GET and HEAD through and answers anything else with 405.
func allowRead(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	return false
}

// writeJSON writes v as the JSON response; the body is left out for HEAD.
func writeJSON(w http.ResponseWriter, r *http.Request, code int, v any) {
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(v); err != nil {
		http.Error(w, "mlproducer: cannot encode the response", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", fmt.Sprint(buf.Len()))
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		_, _ = w.Write(buf.Bytes())
	}
}
