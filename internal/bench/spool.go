package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// The spool cases of issue 10, all with 1 KiB bodies and the spool dir under
// -spool-dir (its filesystem is printed: the syncs must hit a real disk):
//
//   - producer-spool-publish-N: producer-publish-N with WithSpool (a fresh
//     dir per run), interleaved with it; the ratios compare the two.
//   - spool-drain: retry-drain with the spool: messages spooled while the
//     broker is unreachable, then drained; against steady publishing on the
//     same Producer (with its spool) right after.
//   - spool-heap: a Producer on the fake broker with every dial refused holds
//     -spool-heap-messages spooled messages; its heap after runtime.GC() and
//     the spool file's size. Once per run, after the rounds (skipped under
//     -quick unless -spool-heap-messages is given).
const (
	spoolSize     = 1024
	spoolDrainNm  = "spool-drain"
	spoolHeapName = "spool-heap"
	// spoolFileName is the store's file inside a spool dir (spool.go).
	spoolFileName = "mlproducer-spool.db"
	// spoolFillers is how many goroutines fill a spool: each Publish waits
	// for its sync, so one caller would take one sync per message.
	spoolFillers = 256
)

// Issue 10's targets.
const (
	spoolRateTarget  = 0.8                  // spool on / off msg/s at 64 callers, at least
	spoolP50Target   = 2 * time.Millisecond // p50 with spool − without, 1 caller, at most
	spoolHeapTarget  = 64 << 20             // heap with 1,000,000 spooled, at most
	spoolDrainTarget = 0.8                  // drain / steady with spool, at least
)

// fsInfo describes the filesystem holding dir, as findmnt -T shows it, and
// whether it is memory-backed (where a sync costs nothing).
func fsInfo(dir string) (desc string, inMemory bool) {
	out, err := exec.Command("findmnt", "-n", "-o", "FSTYPE,SOURCE,TARGET", "-T", dir).Output()
	if f := strings.Fields(string(out)); err == nil && len(f) >= 3 {
		return fmt.Sprintf("%s (%s mounted at %s; findmnt -T)", f[0], f[1], f[2]), f[0] == "tmpfs" || f[0] == "ramfs"
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return "unknown (" + err.Error() + ")", false
	}
	const tmpfsMagic, ramfsMagic, ext4Magic, xfsMagic = 0x01021994, 0x858458f6, 0xef53, 0x58465342
	switch st.Type {
	case tmpfsMagic, ramfsMagic:
		return "tmpfs (statfs)", true
	case ext4Magic:
		return "ext2/3/4 (statfs)", false
	case xfsMagic:
		return "xfs (statfs)", false
	}
	return fmt.Sprintf("statfs type %#x", st.Type), false
}

// newSpoolDir makes a fresh spool dir under -spool-dir; remove it after.
func (e *env) newSpoolDir() (string, error) {
	return os.MkdirTemp(e.cfg.spoolBase, "mlproducer-bench-spool-*")
}

// fill publishes n messages from workers goroutines, each message with its
// own freshly allocated copy of body (as callers would hand them over), and
// checks that each returned Queued.
func fill(p *mlproducer.Producer, n, workers int, body []byte) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	ctx := context.Background()
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				b := make([]byte, len(body))
				copy(b, body)
				r, err := p.Publish(ctx, mlproducer.Message{Type: mlproducer.TaskSummarization, Body: b})
				if err == nil && r.State != mlproducer.Queued {
					err = fmt.Errorf("returned %v, want queued (is the broker reachable?)", r.State)
				}
				if err != nil {
					once.Do(func() { first = fmt.Errorf("fill: publish %d: %w", i, err) })
					next.Store(int64(n))
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

// heapStats is the heap after two full collections.
type heapStats struct{ alloc, inuse uint64 }

func readHeap() heapStats {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return heapStats{alloc: ms.HeapAlloc, inuse: ms.HeapInuse}
}

// heapResult is the spool-heap case.
type heapResult struct {
	msgs      int
	before    heapStats
	full      heapStats
	fileBytes int64
	fillRate  float64
	err       error
}

// runSpoolHeap fills the spool of a Producer whose every dial is refused (the
// fake broker) with n 1 KiB messages and measures the heap holding them.
func (e *env) runSpoolHeap(n int) (res heapResult) {
	res.msgs = n
	dir, err := e.newSpoolDir()
	if err != nil {
		res.err = err
		return res
	}
	defer os.RemoveAll(dir)
	broker := mlproducertest.NewBroker()
	defer broker.Close()
	broker.RefuseDials(errors.New("bench: the broker is down"))
	body := e.bodies[spoolSize]
	p, err := mlproducer.New(
		mlproducer.WithDialer(broker),
		mlproducer.WithSpool(dir),
		mlproducer.WithSpoolCapacity(n+1000, int64(n+1000)*int64(2*len(body))),
		// Refused dials must not open the breaker.
		mlproducer.WithCircuitBreaker(1<<30, time.Second),
		mlproducer.WithReconnectBackoff(time.Second, 5*time.Second),
		mlproducer.WithLogger(discardLogger()),
	)
	if err != nil {
		res.err = err
		return res
	}
	defer func() {
		// The broker is down: Close waits for ctx, then leaves the
		// messages in the spool.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = p.Close(ctx)
		cancel()
	}()
	res.before = readHeap()
	start := time.Now()
	if res.err = fill(p, n, spoolFillers, body); res.err != nil {
		return res
	}
	res.fillRate = float64(n) / time.Since(start).Seconds()
	res.full = readHeap()
	if got := p.Status().RetryQueueSize; got != n {
		res.err = fmt.Errorf("the retry queue holds %d messages, want %d", got, n)
		return res
	}
	if fi, err := os.Stat(filepath.Join(dir, spoolFileName)); err == nil {
		res.fileBytes = fi.Size()
	}
	runtime.KeepAlive(p)
	return res
}

// spoolReport prints issue 10's table and the details of the spool cases.
func spoolReport(w io.Writer, cfg config, res *results, steadyCallers int) {
	pubKey := func(k kind, n int) string { return spec{kind: k, callers: n, size: spoolSize}.key() }
	on64, off64 := res.byKey[pubKey(kindPublishSpool, 64)], res.byKey[pubKey(kindPublish, 64)]
	on1, off1 := res.byKey[pubKey(kindPublishSpool, 1)], res.byKey[pubKey(kindPublish, 1)]
	if len(on64)+len(on1)+len(res.spoolDrains) == 0 && res.heap == nil {
		return
	}
	fmt.Fprintf(w, "\n## Spool (issue 10)\n\n")
	fmt.Fprintf(w, "- spool dirs under %s, on %s\n", cfg.spoolBase, cfg.spoolFS)
	fmt.Fprintf(w, "- producer-spool-publish-N is producer-publish-N with WithSpool (a fresh dir per run), interleaved with it\n\n")
	pass, fail := 0, 0
	count := func(r string) string {
		if r == "PASS" {
			pass++
		} else if r == "FAIL" {
			fail++
		}
		return r
	}
	fmt.Fprintln(w, "| target (issue 10) | body | value | by round | target | result |")
	fmt.Fprintln(w, "|---|---|---:|---|---|---|")

	// msg/s, spool on / off, 64 callers.
	nv, ok1 := medianOf(on64, mRate)
	dv, ok2 := medianOf(off64, mRate)
	if ok1 && ok2 && dv > 0 {
		var by []string
		for i := range min(len(on64), len(off64)) {
			if d := off64[i].m.rate(); d > 0 {
				by = append(by, fmt.Sprintf("%.2f", on64[i].m.rate()/d))
			}
		}
		v := nv / dv
		fmt.Fprintf(w, "| msg/s producer-spool-publish-64 / producer-publish-64 | 1KiB | %.2f | %s | ≥ %.2f | %s |\n",
			v, strings.Join(by, " "), spoolRateTarget, count(verdict(v, true, spoolRateTarget)))
	} else {
		fmt.Fprintf(w, "| msg/s producer-spool-publish-64 / producer-publish-64 | 1KiB | n/a | | ≥ %.2f | n/a |\n", spoolRateTarget)
	}

	// p50, 1 caller: with − without.
	mP50 := metric{"p50", func(m measurement) float64 { return float64(m.p50) }}
	nv, ok1 = medianOf(on1, mP50)
	dv, ok2 = medianOf(off1, mP50)
	if ok1 && ok2 {
		var by []string
		for i := range min(len(on1), len(off1)) {
			if on1[i].m.msgs > 0 && off1[i].m.msgs > 0 {
				by = append(by, fmtDur(on1[i].m.p50-off1[i].m.p50))
			}
		}
		d := time.Duration(nv - dv)
		fmt.Fprintf(w, "| p50 producer-spool-publish-1 − producer-publish-1 (%s − %s) | 1KiB | %s | %s | ≤ %s | %s |\n",
			fmtDur(time.Duration(nv)), fmtDur(time.Duration(dv)), fmtSignedDur(d), strings.Join(by, " "), fmtDur(spoolP50Target),
			count(verdict(float64(d), false, float64(spoolP50Target))))
	} else {
		fmt.Fprintf(w, "| p50 producer-spool-publish-1 − producer-publish-1 | 1KiB | n/a | | ≤ %s | n/a |\n", fmtDur(spoolP50Target))
	}

	// Heap with the spool full.
	if h := res.heap; h != nil && h.err == nil {
		fmt.Fprintf(w, "| heap in use (HeapInuse after GC) with %d spooled | 1KiB | %s | HeapAlloc %s | ≤ %s | %s |\n",
			h.msgs, fmtBytes(h.full.inuse), fmtBytes(h.full.alloc), fmtBytes(spoolHeapTarget),
			count(verdict(float64(max(h.full.inuse, h.full.alloc)), false, spoolHeapTarget)))
	} else if h != nil {
		fmt.Fprintf(w, "| heap with %d spooled | 1KiB | ERROR: %v | | ≤ %s | FAIL |\n", h.msgs, h.err, fmtBytes(spoolHeapTarget))
		fail++
	} else {
		fmt.Fprintf(w, "| heap with 1000000 spooled | 1KiB | not run (-quick; -spool-heap-messages 1000000 runs it) | | ≤ %s | n/a |\n", fmtBytes(spoolHeapTarget))
	}

	// Drain.
	var ds []float64
	var by []string
	for _, d := range res.spoolDrains {
		if d.drainRate > 0 && d.steadyRate > 0 {
			ds = append(ds, d.drainRatio())
			by = append(by, fmt.Sprintf("%.2f", d.drainRatio()))
		}
	}
	if len(ds) > 0 {
		v := median(ds)
		fmt.Fprintf(w, "| spool drain rate / steady publish-%d rate with spool, %d spooled | 1KiB | %.2f | %s | ≥ %.2f | %s |\n",
			steadyCallers, res.spoolDrains[0].msgs, v, strings.Join(by, " "), spoolDrainTarget, count(verdict(v, true, spoolDrainTarget)))
	} else if len(res.spoolDrains) > 0 {
		fmt.Fprintf(w, "| spool drain rate / steady rate | 1KiB | ERROR | | ≥ %.2f | FAIL |\n", spoolDrainTarget)
		fail++
	}
	fmt.Fprintf(w, "\nSpool targets: %d PASS, %d FAIL.\n", pass, fail)

	if len(res.spoolDrains) > 0 {
		fmt.Fprintf(w, "\n### Spool drain (%s bodies, spooled while the broker is unreachable)\n\n", fmtSize(spoolSize))
		fmt.Fprintf(w, "| round | messages | fill msg/s (%d callers) | HeapAlloc full | connect after | drain msg/s | drain CPU/msg | steady publish-%d msg/s | drain/steady | delivery |\n", spoolFillers, steadyCallers)
		fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
		for i, d := range res.spoolDrains {
			fmt.Fprintf(w, "| %d | %d | %s | %s | %s | %s | %s | %s | %.2f | %s |\n",
				i+1, d.msgs, fmtRate(d.fillRate), fmtBytes(d.heapFull), fmtDur(d.connectIn), fmtRate(d.drainRate),
				fmtDur(d.drainCPU), fmtRate(d.steadyRate), d.drainRatio(), d.check)
		}
		fmt.Fprintf(w, "\nAs retry-drain, with WithSpool and WithSpoolCapacity(%d, 2 GiB), filled from %d goroutines (each Publish waits for its sync); steady is %d callers of Publish on the same Producer (spool on) and forwarded connection right after.\n", 2*res.spoolDrains[0].msgs, spoolFillers, steadyCallers)
	}
	if h := res.heap; h != nil && h.err == nil {
		fmt.Fprintf(w, "\n### Spool heap (fake broker, every dial refused)\n\n")
		fmt.Fprintln(w, "| messages | payload | HeapAlloc before | HeapInuse before | HeapAlloc full | HeapInuse full | heap held (HeapAlloc full − before) | per message | spool file | fill msg/s |")
		fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		held := int64(h.full.alloc) - int64(h.before.alloc)
		fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %s | %s | %d B | %s | %s |\n",
			h.msgs, fmtBytes(uint64(h.msgs)*spoolSize), fmtBytes(h.before.alloc), fmtBytes(h.before.inuse),
			fmtBytes(h.full.alloc), fmtBytes(h.full.inuse), fmtBytes(uint64(max(held, 0))), held/int64(h.msgs),
			fmtBytes(uint64(h.fileBytes)), fmtRate(h.fillRate))
		fmt.Fprintf(w, "\nFilled from %d goroutines, each message its own 1 KiB body; the heap after two runtime.GC() with all of them spooled; the verdict uses the larger of HeapAlloc and HeapInuse of the whole process.\n", spoolFillers)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func fmtSignedDur(d time.Duration) string {
	if d < 0 {
		return "−" + fmtDur(-d)
	}
	if d == 0 {
		return "0"
	}
	return "+" + fmtDur(d)
}
