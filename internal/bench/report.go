package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

func fmtRate(r float64) string {
	n := int64(math.Round(r))
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func fmtKRate(r float64) string {
	if r >= 1000 {
		return fmt.Sprintf("%.1fk", r/1000)
	}
	return fmt.Sprintf("%.0f", r)
}

func fmtDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < 10*time.Microsecond:
		return fmt.Sprintf("%.1fµs", float64(d)/1e3)
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/1e3)
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	}
}

func fmtSize(n int) string {
	if n%1024 == 0 {
		return fmt.Sprintf("%dKiB", n/1024)
	}
	return fmt.Sprintf("%dB", n)
}

func fmtBytes(n uint64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// metric picks one number out of a run.
type metric struct {
	name string
	get  func(measurement) float64
}

var (
	mRate = metric{"msg/s", func(m measurement) float64 { return m.rate() }}
	mCPU  = metric{"CPU/msg", func(m measurement) float64 { return float64(m.cpuPerMsg()) }}
	mP99  = metric{"p99", func(m measurement) float64 { return float64(m.p99) }}
	// mBroker is the local broker's CPU per message.
	mBroker = metric{"broker CPU/msg", func(m measurement) float64 { return float64(m.brokerPerMsg()) }}
)

// medianOf is the median of a metric over the runs that succeeded.
func medianOf(runs []outcome, mt metric) (float64, bool) {
	var xs []float64
	for _, o := range runs {
		if o.m.msgs > 0 {
			xs = append(xs, mt.get(o.m))
		}
	}
	if len(xs) == 0 {
		return 0, false
	}
	return median(xs), true
}

// ratio is a Producer/raw ratio with its target from issue 5.
type ratio struct {
	label    string
	num, den spec // size filled in per row
	mt       metric
	atLeast  bool // target is a minimum (else a maximum)
	target   float64
	only1KiB bool // the target is stated for 1 KiB; other sizes are shown for information
	// best: num is the case of num's kind that measured best (the
	// highest median of mt) among those run, whatever its window.
	best bool
}

func ratios() []ratio {
	pub := func(n int) spec { return spec{kind: kindPublish, callers: n} }
	raw := func(n int) spec { return spec{kind: kindRaw, callers: n} }
	window := spec{kind: kindRawWindow, callers: 1}
	quorum := func(s spec) spec { s.quorum = true; return s }
	ideal := func(n int) spec { return spec{kind: kindRawWindow, callers: 1, window: n} }
	return []ratio{
		// Issue 13: Publish with N callers against the ideal client with N
		// in flight (one goroutine keeping N confirms outstanding). These
		// replace issue 5's 64-caller targets (publish-64 ≥ 1.3 × raw-64,
		// ≥ 0.95 × raw-window256), which no client with 64 in flight meets.
		{"producer-publish-1 / raw-window1", pub(1), ideal(1), mRate, true, 0.95, false, false},
		{"producer-publish-16 / raw-window16", pub(16), ideal(16), mRate, true, 0.95, false, false},
		{"producer-publish-64 / raw-window64", pub(64), ideal(64), mRate, true, 0.95, false, false},
		{"producer-publish-256 / raw-window256", pub(256), ideal(256), mRate, true, 0.95, false, false},
		{"producer-publish-1 / raw-1", pub(1), raw(1), mRate, true, 0.95, false, false},
		{"CPU/msg producer-publish-64 / raw-64", pub(64), raw(64), mCPU, false, 1.0, false, false},
		{"p99 producer-publish-64 / raw-64", pub(64), raw(64), mP99, false, 1.0, false, false},
		{"producer-summarization-64 / producer-publish-64", spec{kind: kindSummarization, callers: 64}, pub(64), mRate, true, 0.9, true, false},
		// Issue 13: one goroutine with PublishAsync against the raw window.
		{"producer-async-w256 / raw-window256", spec{kind: kindPublishAsync, callers: 1, window: 256}, window, mRate, true, 0.95, false, false},
		{label: "best producer-async-wN / raw-noconfirm", num: spec{kind: kindPublishAsync, callers: 1}, den: spec{kind: kindRawNoConfirm, callers: 1},
			mt: mRate, atLeast: true, target: 0.85, best: true},
		{"CPU/msg producer-async-w256 / raw-window256", spec{kind: kindPublishAsync, callers: 1, window: 256}, window, mCPU, false, 1.0, false, false},
		// Issue 13 item 5: the default envelope against a bare persistent
		// publish to the same exchange and queue.
		{"producer-publish-64 / raw-64-env-bare", pub(64), spec{kind: kindRawEnv, callers: envCallers, env: envBare}, mRate, true, 0.95, false, false},
		{"p99 producer-publish-64 / raw-64-env-bare", pub(64), spec{kind: kindRawEnv, callers: envCallers, env: envBare}, mP99, false, 1.1, false, false},
		// Issue 12: on quorum queues of the 3-node cluster (-cluster).
		{"producer-publish-1-quorum / raw-1-quorum", quorum(pub(1)), quorum(raw(1)), mRate, true, 0.95, false, false},
		{"producer-publish-64-quorum / raw-64-quorum", quorum(pub(64)), quorum(raw(64)), mRate, true, 0.95, false, false},
	}
}

// bestOf returns the case run of like's kind, size and quorum whose median
// of mt is the highest (any window or callers).
func bestOf(res *results, like spec, mt metric) (spec, bool) {
	var best spec
	bv, found := 0.0, false
	for _, s := range res.order {
		if s.kind != like.kind || s.size != like.size || s.quorum != like.quorum || s.env != like.env {
			continue
		}
		if v, ok := medianOf(res.byKey[s.key()], mt); ok && (!found || v > bv) {
			best, bv, found = s, v, true
		}
	}
	return best, found
}

func verdict(v float64, atLeast bool, target float64) string {
	if atLeast && v >= target || !atLeast && v <= target {
		return "PASS"
	}
	return "FAIL"
}

func targetText(atLeast bool, target float64) string {
	if atLeast {
		return fmt.Sprintf("≥ %.2f", target)
	}
	return fmt.Sprintf("≤ %.2f", target)
}

func report(w io.Writer, cfg config, info []string, res *results, steadyCallers int) {
	fmt.Fprintf(w, "## mlproducer vs raw amqp091-go (internal/bench)\n\n")
	for _, l := range info {
		fmt.Fprintf(w, "- %s\n", l)
	}
	fmt.Fprintf(w, "- %d rounds, cases interleaved, each %v measured after %v of warm-up; medians of the rounds\n\n",
		cfg.repeat, cfg.duration, cfg.warmup)

	fmt.Fprintln(w, "| case | body | msg/s | msg/s by round | p50 | p99 | CPU/msg | allocs/msg | broker CPU/msg | others' CPU | delivery |")
	fmt.Fprintln(w, "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
	for _, s := range res.sortedSpecs() {
		runs := res.byKey[s.key()]
		rate, _ := medianOf(runs, mRate)
		p50, _ := medianOf(runs, metric{get: func(m measurement) float64 { return float64(m.p50) }})
		p99, _ := medianOf(runs, mP99)
		cpu, _ := medianOf(runs, mCPU)
		allocs, _ := medianOf(runs, metric{get: measurement.allocsPerMsg})
		broker, _ := medianOf(runs, mBroker)
		others, _ := medianOf(runs, metric{get: measurement.othersShare})
		var by []string
		checks := map[string]bool{}
		var check []string
		for _, o := range runs {
			by = append(by, fmtKRate(o.m.rate()))
			if !checks[o.check] {
				checks[o.check] = true
				check = append(check, o.check)
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %.1f | %s | %.2f | %s |\n",
			s.name(), fmtSize(s.size), fmtRate(rate), strings.Join(by, " "),
			fmtDur(time.Duration(p50)), fmtDur(time.Duration(p99)), fmtDur(time.Duration(cpu)), allocs,
			fmtDur(time.Duration(broker)), others, strings.Join(check, "; "))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "p50/p99: from the call to its confirm (raw-noconfirm: the publish call alone). CPU/msg: this process's CPU (user+system, Go runtime and GC included) over the window per message; allocs/msg: its heap allocations per message. broker CPU/msg: the local RabbitMQ's (beam.smp) CPU per message. others' CPU: what every other process used meanwhile, in cores (of the machine's total); a high value means a noisy run.")

	pass, fail := 0, 0
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| ratio (target) | body | value | by round | target | result |")
	fmt.Fprintln(w, "|---|---|---:|---|---|---|")
	for _, size := range cfg.sizes {
		for _, r := range ratios() {
			num, den := r.num, r.den
			num.size, den.size = size, size
			label := r.label
			if r.best {
				if b, ok := bestOf(res, num, r.mt); ok {
					num = b
					label = fmt.Sprintf("%s (best: %s)", r.label, b.name())
				}
			}
			nr, dr := res.byKey[num.key()], res.byKey[den.key()]
			nv, ok1 := medianOf(nr, r.mt)
			dv, ok2 := medianOf(dr, r.mt)
			if !ok1 || !ok2 || dv == 0 {
				fmt.Fprintf(w, "| %s | %s | n/a | | %s | n/a |\n", label, fmtSize(size), targetText(r.atLeast, r.target))
				continue
			}
			v := nv / dv
			var by []string
			for i := range min(len(nr), len(dr)) {
				if d := r.mt.get(dr[i].m); d > 0 && nr[i].m.msgs > 0 {
					by = append(by, fmt.Sprintf("%.2f", r.mt.get(nr[i].m)/d))
				}
			}
			result := verdict(v, r.atLeast, r.target)
			if r.only1KiB && size != 1024 {
				result = "(info: target is for 1 KiB)"
			} else if result == "PASS" {
				pass++
			} else {
				fail++
			}
			fmt.Fprintf(w, "| %s | %s | %.2f | %s | %s | %s |\n", label, fmtSize(size), v, strings.Join(by, " "), targetText(r.atLeast, r.target), result)
		}
	}
	if len(res.drains) > 0 {
		var byHeap, byDrain []string
		var hs, ds []float64
		for _, d := range res.drains {
			if d.bad && d.drainRate == 0 {
				continue
			}
			hs = append(hs, d.heapRatio())
			ds = append(ds, d.drainRatio())
			byHeap = append(byHeap, fmt.Sprintf("%.2f", d.heapRatio()))
			byDrain = append(byDrain, fmt.Sprintf("%.2f", d.drainRatio()))
		}
		if len(hs) > 0 {
			h, dr := median(hs), median(ds)
			r1, r2 := verdict(h, false, 1.5), verdict(dr, true, 0.8)
			for _, r := range []string{r1, r2} {
				if r == "PASS" {
					pass++
				} else {
					fail++
				}
			}
			fmt.Fprintf(w, "| retry queue: heap / payload, %d queued | 1KiB | %.2f | %s | ≤ 1.50 | %s |\n", res.drains[0].msgs, h, strings.Join(byHeap, " "), r1)
			fmt.Fprintf(w, "| retry queue: drain rate / steady publish-%d rate | 1KiB | %.2f | %s | ≥ 0.80 | %s |\n", steadyCallers, dr, strings.Join(byDrain, " "), r2)
		}
	}
	fmt.Fprintf(w, "\nTargets: %d PASS, %d FAIL (ratios of the medians; \"by round\" pairs the runs of one round).\n", pass, fail)

	if len(res.drains) > 0 {
		fmt.Fprintf(w, "\n### Retry queue drain (%s bodies, each its own allocation)\n\n", fmtSize(drainSize))
		fmt.Fprintf(w, "| round | messages | payload | heap before | heap full | heap/payload | fill msg/s | connect after | drain msg/s | drain CPU/msg | steady publish-%d msg/s | drain/steady | delivery |\n", steadyCallers)
		fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
		for i, d := range res.drains {
			fmt.Fprintf(w, "| %d | %d | %s | %s | %s | %.2f | %s | %s | %s | %s | %s | %.2f | %s |\n",
				i+1, d.msgs, fmtBytes(d.payload), fmtBytes(d.heapBefore), fmtBytes(d.heapFull), d.heapRatio(),
				fmtRate(d.fillRate), fmtDur(d.connectIn), fmtRate(d.drainRate), fmtDur(d.drainCPU), fmtRate(d.steadyRate), d.drainRatio(), d.check)
		}
		fmt.Fprintln(w)
		fmt.Fprintf(w, "The Producer reaches the broker through a local forwarder that refuses connections while the queue fills; drain runs from Connected until every queued message is confirmed; steady is %d callers of Publish on the same Producer and forwarded connection right after.\n", steadyCallers)
	}
}
