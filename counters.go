package mlproducer

import (
	"sync/atomic"
	"time"
)

// outcome is the label of a counted publish result.
type outcome int

const (
	outAccepted     outcome = iota // taken by the Producer
	outConfirmed                   // confirmed by the broker
	outDeadLettered                // handed to the dead-letter hook
	outInvalid                     // refused: invalid task
	outClosed                      // refused: Producer closed
	outCircuitOpen                 // refused: circuit breaker open
	outQueueFull                   // refused: retry queue full
	outContextDone                 // refused: ctx ended before the hand-off
	outSpoolFailed                 // refused: the spool could not store it
	numOutcomes
)

var outcomeNames = [numOutcomes]string{
	"accepted", "confirmed", "dead_lettered", "refused_invalid",
	"refused_closed", "refused_circuit_open", "refused_queue_full", "refused_context_done",
	"refused_spool_failed",
}

// failure is the reason an attempt failed.
type failure int

const (
	failNack     failure = iota // basic.nack
	failReturn                  // basic.return: unroutable
	failTimeout                 // no confirm in time
	failConnLost                // the connection or channel died with it in flight
	numFailures
)

var failureNames = [numFailures]string{"nack", "return", "timeout", "connection_lost"}

// numTypeLabels covers the three task types and "unknown" (a Publish whose
// type was invalid).
const numTypeLabels = 4

var typeLabels = [numTypeLabels]string{"summarization", "transcription", "embedding", "unknown"}

func typeIndex(t TaskType) int {
	switch t {
	case TaskSummarization:
		return 0
	case TaskTranscription:
		return 1
	case TaskEmbedding:
		return 2
	}
	return 3
}

// latencyBuckets are the upper bounds, in seconds, of the publish-to-confirm
// latency histogram.
var latencyBuckets = [...]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// counters are the Producer's monotonic counts, read at scrape time. All are
// atomics: the hot path never takes a lock to count.
type counters struct {
	messages   [numTypeLabels][numOutcomes]atomic.Uint64
	failures   [numFailures]atomic.Uint64
	retried    atomic.Uint64 // sends from the retry queue
	reconnects atomic.Uint64 // connection attempts after a lost connection
	hookPanics atomic.Uint64 // dead-letter hook calls that panicked

	// Publish-to-confirm latency of confirmed messages: cumulative-free
	// bucket counts (one per bound, plus +Inf), their sum in nanoseconds.
	latBuckets [len(latencyBuckets) + 1]atomic.Uint64
	latSumNs   atomic.Uint64
}

func (c *counters) count(t TaskType, o outcome) { c.messages[typeIndex(t)][o].Add(1) }

func (c *counters) total(o outcome) uint64 {
	var n uint64
	for i := range c.messages {
		n += c.messages[i][o].Load()
	}
	return n
}

func (c *counters) observeLatency(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(latencyBuckets) && s > latencyBuckets[i] {
		i++
	}
	c.latBuckets[i].Add(1)
	c.latSumNs.Add(uint64(max(d, 0)))
}
