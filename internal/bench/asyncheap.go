package main

import (
	"context"
	"fmt"
	"io"
	"runtime/metrics"
	"sync"
	"time"

	"github.com/mlproducer/mlproducer"
)

// The async-heap case (issue 13): one loop calls PublishAsync n times with 1
// KiB bodies on the real broker, keeping no Delivery (a batch job that
// Flushes at the end), while a sampler reads the heap. Its target: the live
// heap stays within 1.5 × window × body size + 16 MiB, whatever n is.
const (
	asyncHeapName   = "async-heap"
	asyncHeapSize   = 1024
	asyncHeapSlack  = 16 << 20
	asyncHeapSample = 10 * time.Millisecond
	// asyncHeapPurge is how often, in messages, the loop empties the queue,
	// so that the broker does not hold a gigabyte for this case.
	asyncHeapPurge = 100_000
)

// asyncHeapResult is the async-heap case.
type asyncHeapResult struct {
	msgs, window int
	// peakLive is the largest live heap a GC marked during the loop
	// (/gc/heap/live:bytes); peakObjects the largest heap of objects,
	// garbage not yet swept included (/memory/classes/heap/objects:bytes).
	peakLive, peakObjects uint64
	rate                  float64
	err                   error
}

func (r asyncHeapResult) target() uint64 {
	return uint64(1.5*float64(r.window)*asyncHeapSize) + asyncHeapSlack
}

// runAsyncHeap runs the case with n messages and WithMaxInFlight(window).
func (e *env) runAsyncHeap(n, window int) (res asyncHeapResult) {
	res.msgs, res.window = n, window
	if err := e.lock.shared(); err != nil {
		res.err = err
		return res
	}
	defer e.lock.unlock()
	adm, err := newAdmin(e.url)
	if err != nil {
		res.err = err
		return res
	}
	defer adm.close()
	p, err := e.newProducer(e.url, mlproducer.WithMaxInFlight(window), mlproducer.WithLogger(discardLogger()))
	if err != nil {
		res.err = err
		return res
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := p.Close(ctx); err != nil && res.err == nil {
			res.err = fmt.Errorf("close: %w", err)
		}
		cancel()
		_ = adm.purge(taskQueue)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err = p.WaitConnected(ctx)
	cancel()
	if err != nil {
		res.err = err
		return res
	}
	if err := adm.purge(taskQueue); err != nil {
		res.err = fmt.Errorf("purge %s: %w", taskQueue, err)
		return res
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
		t := time.NewTicker(asyncHeapSample)
		defer t.Stop()
		for {
			metrics.Read(samples)
			res.peakLive = max(res.peakLive, samples[0].Value.Uint64())
			res.peakObjects = max(res.peakObjects, samples[1].Value.Uint64())
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()

	confirmed0 := p.Status().Confirmed
	body := e.bodies[asyncHeapSize]
	msg := mlproducer.Message{Type: mlproducer.TaskSummarization, Body: body}
	bg := context.Background()
	start := time.Now()
	for i := range n {
		if _, err := p.PublishAsync(bg, msg); err != nil {
			res.err = fmt.Errorf("PublishAsync %d: %w", i, err)
			break
		}
		if (i+1)%asyncHeapPurge == 0 {
			if err := adm.purge(taskQueue); err != nil {
				res.err = fmt.Errorf("purge %s: %w", taskQueue, err)
				break
			}
		}
	}
	if res.err == nil {
		ctx, cancel := context.WithTimeout(bg, 5*time.Minute)
		if err := p.Flush(ctx); err != nil {
			res.err = fmt.Errorf("flush: %w", err)
		}
		cancel()
	}
	res.rate = float64(n) / time.Since(start).Seconds()
	close(stop)
	wg.Wait()
	if res.err == nil {
		if got := p.Status().Confirmed - confirmed0; got != uint64(n) {
			res.err = fmt.Errorf("%d confirmed, want %d", got, n)
		}
	}
	return res
}

// asyncHeapReport prints the case's line of issue 13's targets.
func asyncHeapReport(w io.Writer, r *asyncHeapResult) {
	if r == nil {
		return
	}
	fmt.Fprintf(w, "\n### PublishAsync heap (issue 13): %d calls of %s, WithMaxInFlight(%d), no Delivery kept\n\n", r.msgs, fmtSize(asyncHeapSize), r.window)
	fmt.Fprintln(w, "| peak live heap | peak heap objects | msg/s | target (1.5 × window × size + 16 MiB) | verdict |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---|")
	if r.err != nil {
		fmt.Fprintf(w, "| ERROR: %v | | | ≤ %s | FAIL |\n", r.err, fmtBytes(r.target()))
		return
	}
	verdict := "PASS"
	if r.peakLive > r.target() {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "| %s | %s | %s | ≤ %s | %s |\n", fmtBytes(r.peakLive), fmtBytes(r.peakObjects), fmtRate(r.rate), fmtBytes(r.target()), verdict)
}
