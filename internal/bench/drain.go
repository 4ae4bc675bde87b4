package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/mlproducer/mlproducer"
)

// drainSize is the body size of the retry-queue drain case (issue 5: 1 KiB).
const drainSize = 1024

// drainName is the drain case's name for -only.
const drainName = "retry-drain"

// drainResult is one run of the retry-queue drain case.
type drainResult struct {
	msgs       int
	payload    uint64        // bytes of the bodies held
	heapBefore uint64        // live heap before filling the queue
	heapFull   uint64        // live heap with the queue full
	fillRate   float64       // msg/s while filling (no connection)
	connectIn  time.Duration // from the switch to forwarding to Connected
	drainRate  float64       // msg/s from Connected until all confirmed
	drainCPU   time.Duration // process CPU per message while draining
	steadyRate float64       // msg/s of Publish right after, same Producer and connection
	check      string
	bad        bool
}

func (d drainResult) heapRatio() float64 {
	if d.payload == 0 {
		return 0
	}
	return float64(int64(d.heapFull)-int64(d.heapBefore)) / float64(d.payload)
}

func (d drainResult) drainRatio() float64 {
	if d.steadyRate == 0 {
		return 0
	}
	return d.drainRate / d.steadyRate
}

// runDrain fills the retry queue of a Producer that cannot reach the broker
// with cfg.drainMsgs messages of 1 KiB (each with its own body, as callers
// would hand them over), measures the heap they hold, then lets the Producer
// connect and measures how fast the queue drains, against the rate of
// steady Publish calls (steadyCallers callers) on the same Producer and
// connection right after. The Producer reaches the broker through a local
// forwarder that refuses connections until the queue is full.
//
// With spool, the Producer has a fresh spool dir (spool-drain): the fill then
// runs from spoolFillers goroutines, since each Publish waits for its sync.
func (e *env) runDrain(steadyCallers int, spool bool) (drainResult, error) {
	if err := e.lock.shared(); err != nil {
		return drainResult{}, err
	}
	defer e.lock.unlock()
	adm, err := newAdmin(e.url)
	if err != nil {
		return drainResult{}, err
	}
	defer adm.close()
	target, err := hostPort(e.url)
	if err != nil {
		return drainResult{}, err
	}
	fw, err := newForwarder(target)
	if err != nil {
		return drainResult{}, err
	}
	defer fw.close()

	n := e.cfg.drainMsgs
	opts := []mlproducer.Option{
		mlproducer.WithURLs(withHost(e.url, fw.addr())),
		mlproducer.WithRetryQueueCapacity(200_000, 1<<30),
		// Refused dials would otherwise open the breaker (10 failures)
		// and the drain would first wait out its 30 s cooldown.
		mlproducer.WithCircuitBreaker(1_000_000, time.Second),
		// Reconnect soon after the forwarder lets connections through.
		mlproducer.WithReconnectBackoff(10*time.Millisecond, 50*time.Millisecond),
	}
	fillers := 1
	if spool {
		dir, err := e.newSpoolDir()
		if err != nil {
			return drainResult{}, err
		}
		defer os.RemoveAll(dir)
		opts = append(opts, mlproducer.WithSpool(dir), mlproducer.WithSpoolCapacity(2*n, 2<<30))
		fillers = spoolFillers
	}
	p, err := e.newProducer(e.url, opts...)
	if err != nil {
		return drainResult{}, err
	}
	closed := false
	defer func() {
		if !closed {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_ = p.Close(ctx)
			cancel()
		}
	}()
	body := e.bodies[drainSize]
	ctx := context.Background()
	res := drainResult{msgs: n, payload: uint64(n) * uint64(len(body))}

	// Fill. Publish returns Queued at once: there is no connection.
	stStart := p.Status()
	res.heapBefore = heapInUse()
	start := time.Now()
	if err := fill(p, n, fillers, body); err != nil {
		return res, err
	}
	res.fillRate = float64(n) / time.Since(start).Seconds()
	res.heapFull = heapInUse()
	st0 := p.Status()
	if st0.RetryQueueSize != n {
		return res, fmt.Errorf("retry queue holds %d messages, want %d", st0.RetryQueueSize, n)
	}

	// Drain.
	if err := adm.purge(taskQueue); err != nil {
		return res, fmt.Errorf("purge %s: %w", taskQueue, err)
	}
	defer func() { _ = adm.purge(taskQueue) }()
	switched := time.Now()
	fw.setForward(true)
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	err = p.WaitConnected(wctx)
	cancel()
	if err != nil {
		return res, err
	}
	connected := time.Now()
	res.connectIn = connected.Sub(switched)
	cpu0 := processCPU()
	deadline := connected.Add(5 * time.Minute)
	for p.Status().Confirmed-st0.Confirmed < uint64(n) {
		if time.Now().After(deadline) {
			st := p.Status()
			return res, fmt.Errorf("drain: %d of %d confirmed after 5 minutes (retry queue %d)", st.Confirmed-st0.Confirmed, n, st.RetryQueueSize)
		}
		time.Sleep(2 * time.Millisecond)
	}
	elapsed := time.Since(connected)
	res.drainRate = float64(n) / elapsed.Seconds()
	res.drainCPU = (processCPU() - cpu0) / time.Duration(n)

	// Steady publishing on the same Producer and forwarded connection.
	m, err := drive(e.probe, steadyCallers, e.cfg.warmup, e.cfg.duration, closedLoop(e.producerCall(p, spec{kind: kindPublish, callers: steadyCallers, size: drainSize})))
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	cerr := p.Close(cctx)
	cancel()
	closed = true
	if err != nil {
		return res, err
	}
	res.steadyRate = m.rate()
	// Every message accepted since the start, drained or steady, must be
	// in the queue (purged just before the drain).
	out, err := e.checkProducer(adm, m, stStart, p.Status(), cerr)
	if err != nil {
		return res, err
	}
	res.check, res.bad = out.check, out.bad
	return res, nil
}
