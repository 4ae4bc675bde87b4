package mlproducer

import (
	"github.com/prometheus/client_golang/prometheus"
)

// collector exports a Producer's state and counters to Prometheus. Like
// client_golang's DB stats collector it holds no metric of its own: every
// scrape reads [Producer.Status] and the atomic counters, so the hot path
// never touches Prometheus. It never registers itself; [New] registers it on
// the registerer given with [WithRegisterer], and [Producer.MetricsHandler]
// serves it from a private registry.
//
// Every metric carries the constant label producer="<connection name>", so
// Producers with distinct names can share one registerer. It is a checked
// collector: Describe sends every Desc that Collect uses.
type collector struct {
	p *Producer

	connectionState *prometheus.Desc
	breakerOpen     *prometheus.Desc
	retryQueueSize  *prometheus.Desc
	pendingConfirms *prometheus.Desc
	messages        *prometheus.Desc
	attemptFailures *prometheus.Desc
	retries         *prometheus.Desc
	deadLetters     *prometheus.Desc
	reconnects      *prometheus.Desc
	hookPanics      *prometheus.Desc
	confirmLatency  *prometheus.Desc
}

// newCollector returns the collector of p's metrics. It does not register it.
func newCollector(p *Producer) prometheus.Collector {
	labels := prometheus.Labels{"producer": p.cfg.connectionName}
	desc := func(name, help string, variable ...string) *prometheus.Desc {
		return prometheus.NewDesc("ml_producer_"+name, help, variable, labels)
	}
	return &collector{
		p: p,
		connectionState: desc("connection_state",
			"State of the connection to RabbitMQ: 0 disconnected, 1 connecting, 2 reconnecting, 3 connected, 4 blocked by the broker (memory or disk alarm), 5 closed. Alert when it is not 3."),
		breakerOpen: desc("circuit_breaker_open",
			"1 while the circuit breaker holds sends back (open or half-open; publishes wait in the retry queue, or are refused without one), 0 when it is closed."),
		retryQueueSize: desc("retry_queue_size",
			"Messages waiting in the retry queue for a connection or their next attempt."),
		pendingConfirms: desc("pending_confirms",
			"Messages sent on the current connection whose broker confirm has not arrived yet."),
		messages: desc("messages_total",
			"Messages by task type and outcome: accepted (taken by the Producer), confirmed (by the broker), dead_lettered (handed to the dead-letter hook), or refused_* (not taken: invalid, closed, circuit_open, queue_full, context_done, spool_failed). Type unknown counts publishes with an invalid task type.",
			"type", "outcome"),
		attemptFailures: desc("attempt_failures_total",
			"Failed send attempts by reason: nack (broker nacked), return (unroutable), timeout (no confirm in time), connection_lost (connection died with the message in flight).",
			"reason"),
		retries: desc("retries_total",
			"Sends from the retry queue, that is attempts after the first."),
		deadLetters: desc("dead_letters_total",
			"Messages handed to the dead-letter hook after their attempts ran out or the Producer closed (all task types)."),
		reconnects: desc("reconnects_total",
			"Connection attempts made after a lost connection."),
		hookPanics: desc("dead_letter_hook_panics_total",
			"Calls of the dead-letter hook that panicked (recovered and logged; the message still counts as dead-lettered)."),
		confirmLatency: desc("confirm_latency_seconds",
			"Time from the last send of a message to its broker confirm, for confirmed messages."),
	}
}

// Describe sends every Desc of the collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.connectionState
	ch <- c.breakerOpen
	ch <- c.retryQueueSize
	ch <- c.pendingConfirms
	ch <- c.messages
	ch <- c.attemptFailures
	ch <- c.retries
	ch <- c.deadLetters
	ch <- c.reconnects
	ch <- c.hookPanics
	ch <- c.confirmLatency
}

// Collect reads the Producer's state and counters and sends them. A metric
// that cannot be built (only possible with an invalid connection name, which
// registration refuses first) is skipped.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.p.Status()
	m := &c.p.metrics

	send := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		if metric, err := prometheus.NewConstMetric(d, t, v, labels...); err == nil {
			ch <- metric
		}
	}
	send(c.connectionState, prometheus.GaugeValue, float64(st.ConnectionState))
	send(c.breakerOpen, prometheus.GaugeValue, boolFloat(st.CircuitBreakerOpen))
	send(c.retryQueueSize, prometheus.GaugeValue, float64(st.RetryQueueSize))
	send(c.pendingConfirms, prometheus.GaugeValue, float64(st.PendingConfirms))

	// Every combination, zeros included, so rate() and dashboards work from
	// the first scrape.
	for ti, typ := range typeLabels {
		for oi, out := range outcomeNames {
			send(c.messages, prometheus.CounterValue, float64(m.messages[ti][oi].Load()), typ, out)
		}
	}
	for fi, reason := range failureNames {
		send(c.attemptFailures, prometheus.CounterValue, float64(m.failures[fi].Load()), reason)
	}
	send(c.retries, prometheus.CounterValue, float64(m.retried.Load()))
	send(c.deadLetters, prometheus.CounterValue, float64(m.total(outDeadLettered)))
	send(c.reconnects, prometheus.CounterValue, float64(m.reconnects.Load()))
	send(c.hookPanics, prometheus.CounterValue, float64(m.hookPanics.Load()))

	// latBuckets holds one count per bucket (not cumulative) and a last
	// one for +Inf; Prometheus wants cumulative counts per upper bound, and
	// the +Inf bucket is implied by the total count.
	var cum uint64
	buckets := make(map[float64]uint64, len(latencyBuckets))
	for i, le := range latencyBuckets {
		cum += m.latBuckets[i].Load()
		buckets[le] = cum
	}
	count := cum + m.latBuckets[len(latencyBuckets)].Load()
	sum := float64(m.latSumNs.Load()) / 1e9
	if h, err := prometheus.NewConstHistogram(c.confirmLatency, count, sum, buckets); err == nil {
		ch <- h
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
