package reliability

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is the outcome of one scenario.
type Result struct {
	// Name is the scenario's name.
	Name string
	// Pass is true when Missing and Late are 0, the goroutines came back to
	// their starting count after Close, and the scenario's own checks held
	// (Failures is empty).
	Pass bool

	// Publishes is the number of publish calls made.
	Publishes int64
	// Accepted is the number of calls that returned a nil error: messages the
	// Producer took.
	Accepted int64
	// Refused is the number of calls that returned an error (the message was
	// not taken): ErrCircuitOpen, ErrRetryQueueFull, or a ctx that ended
	// before the hand-off. An unexpected error is also a failure.
	Refused int64
	// Confirmed is the number of distinct accepted message IDs consumed from
	// the queues.
	Confirmed int64
	// Duplicates counts the extra copies of accepted messages consumed
	// (at-least-once delivery), not counting the broker's own redeliveries to
	// the checking consumer.
	Duplicates int64
	// DeadLettered is the number of accepted messages handed to the
	// dead-letter hook.
	DeadLettered int64
	// Missing is the number of accepted messages neither consumed nor
	// dead-lettered: lost. It must be 0.
	Missing int64
	// BrokerLost is, where the wire is watched (the cluster scenario with
	// its taps, [Config.ClusterTap]), the number of accepted messages
	// neither consumed nor dead-lettered although the broker acked one of
	// their publishes on the wire: lost by the broker after its confirm,
	// not by the Producer. They are not counted in Missing.
	BrokerLost int64
	// Late is the number of calls that returned more than 50 ms after their
	// ctx deadline. It must be 0.
	Late int64
	// LateStalled counts the calls that returned more than 50 ms after their
	// deadline only because the whole process was stalled: a probe
	// goroutine waiting on a context with a 10 ms deadline woke up as late,
	// over the same span, so the Go scheduler ran no goroutine promptly (CPU
	// starvation by other processes or by the rest of the process, the race
	// detector's cost). They are not counted in Late.
	LateStalled int64
	// P99 is the 99th percentile of the latency of every publish call,
	// refusals included (within about 3%).
	P99 time.Duration
	// MaxLatency is the slowest publish call.
	MaxLatency time.Duration
	// TimeToRecover is the time from the fault's end until the Producer was
	// connected again; 0 when the scenario has no connection to recover.
	// Where there are several faults it is the slowest recovery; in
	// circuit-breaker it lasts until the breaker closed too, in flow-control
	// it starts when the watermark restore begins, in broker-restart when
	// start_app begins (the broker's boot included), and in chaos it ends at
	// the first confirm after the last fault.
	TimeToRecover time.Duration
	// PeakHeap is the highest heap size sampled (runtime/metrics, every
	// 50 ms) during the scenario. It is the whole process's heap: the
	// scenario's own bookkeeping of accepted IDs is included.
	PeakHeap uint64
	// GoroutinesBefore is the number of goroutines before the scenario
	// started anything; GoroutinesAfter the number after it closed
	// everything (Producer, proxy, consumer), allowing up to 5 s to settle.
	GoroutinesBefore, GoroutinesAfter int
	// Elapsed is how long the scenario took, checks included.
	Elapsed time.Duration
	// Notes are the scenario's own figures and observations.
	Notes []string
	// Failures are the checks that did not hold; empty when Pass.
	Failures []string
}

func (r *Result) notef(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

func (r *Result) failf(format string, args ...any) {
	r.Failures = append(r.Failures, fmt.Sprintf(format, args...))
}

// Verdict returns "PASS" or "FAIL".
func (r Result) Verdict() string {
	if r.Pass {
		return "PASS"
	}
	return "FAIL"
}

// Line returns the scenario's one-line summary with its figures, as
// examples/reliability prints it.
func (r Result) Line() string {
	lost := ""
	if r.BrokerLost > 0 {
		lost = fmt.Sprintf(" broker-lost=%d", r.BrokerLost)
	}
	return fmt.Sprintf("%s %s accepted=%d confirmed=%d duplicates=%d dead-lettered=%d missing=%d late=%d late-stalled=%d refused=%d p99=%s recover=%s peak-heap=%s goroutines=%d→%d time=%s%s",
		r.Verdict(), r.Name, r.Accepted, r.Confirmed, r.Duplicates, r.DeadLettered, r.Missing, r.Late, r.LateStalled, r.Refused,
		fmtDur(r.P99), fmtRecover(r.TimeToRecover), fmtBytes(r.PeakHeap), r.GoroutinesBefore, r.GoroutinesAfter,
		r.Elapsed.Round(100*time.Millisecond), lost)
}

// WriteReport writes r's line, then its notes (indented, "-") and failures
// (indented, "!").
func (r Result) WriteReport(w io.Writer) error {
	var b strings.Builder
	b.WriteString(r.Line())
	b.WriteByte('\n')
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "    - %s\n", n)
	}
	for _, f := range r.Failures {
		fmt.Fprintf(&b, "    ! %s\n", f)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteTable writes the results as an aligned table, one row per scenario.
func WriteTable(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tresult\taccepted\tconfirmed\tduplicates\tdead-lettered\tmissing\tlate\tlate (stalled)\trefused\tp99 publish\trecover\tpeak heap\tgoroutines\ttime\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%d→%d\t%s\t\n",
			r.Name, r.Verdict(), r.Accepted, r.Confirmed, r.Duplicates, r.DeadLettered, r.Missing, r.Late, r.LateStalled, r.Refused,
			fmtDur(r.P99), fmtRecover(r.TimeToRecover), fmtBytes(r.PeakHeap), r.GoroutinesBefore, r.GoroutinesAfter,
			r.Elapsed.Round(100*time.Millisecond))
	}
	return tw.Flush()
}

func fmtRecover(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmtDur(d)
}

// fmtDur shows a duration with three significant digits or so.
func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d < time.Microsecond:
		return d.String()
	case d < time.Millisecond:
		return fmt.Sprintf("%.1fµs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

func fmtBytes(n uint64) string {
	return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
}
