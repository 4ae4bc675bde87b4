package reliability

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"runtime"
	"runtime/metrics"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/faults"
)

const (
	// lateSlack is how far past its ctx deadline a publish may return.
	lateSlack = 50 * time.Millisecond
	// closeTimeout bounds Producer.Close at the end of a scenario.
	closeTimeout = 60 * time.Second
	// consumeTimeout bounds the wait for accepted messages to be consumed
	// after Close; consumeStall ends it earlier when nothing arrives.
	consumeTimeout = 120 * time.Second
	consumeStall   = 15 * time.Second
	// consumeTail is how long the consumer keeps reading after the last
	// accepted message arrived, to count late duplicates.
	consumeTail = 300 * time.Millisecond
	// goroutineSettle bounds the wait for goroutines to end after Close.
	goroutineSettle = 5 * time.Second
	// heapEvery is the heap sampling interval.
	heapEvery = 50 * time.Millisecond
	// probeEvery is the interval of the scheduling-delay probe; spikeMin the
	// delay from which one of its wake-ups is recorded.
	probeEvery = 10 * time.Millisecond
	spikeMin   = 15 * time.Millisecond
	// maxRecorded bounds the spikes and the late calls kept.
	maxRecorded = 10000
	// pollEvery is the Status polling interval of the waits.
	pollEvery = 5 * time.Millisecond
)

// accepted is one message a publish call handed to the Producer.
type accepted struct {
	id    [16]byte
	at    time.Duration // since the run started, when the call returned
	state mlproducer.DeliveryState
	typ   uint8         // index in taskQueues()
	lat   time.Duration // the call's duration
}

// lateCall describes a publish that returned later than its deadline plus
// lateSlack.
type lateCall struct {
	at, over, deadline time.Duration
	what               string
	state              mlproducer.ConnectionState
	// stack is where the publisher goroutine was while it overran its
	// deadline (taken by watchLate), or "" if it returned before.
	stack string
}

// shard is what one publisher goroutine records; only it writes to it until
// the publishers have stopped.
type shard struct {
	acc []accepted

	// gid is the publisher goroutine's id; until is the end of the current
	// call's deadline plus stuckAfter (Unix ns, 0 between calls), and stack
	// what watchLate saw of the goroutine once a call passed it.
	gid   string
	until atomic.Int64
	mu    sync.Mutex
	stack string
}

// publishing configures the publisher goroutines of a scenario.
type publishing struct {
	goroutines int
	// think is the mean pause between two calls of one goroutine (uniform in
	// [0, 2×think]), as between two requests of an HTTP handler.
	think time.Duration
	// deadlines of the calls' contexts are uniform in [minDeadline,
	// maxDeadline].
	minDeadline, maxDeadline time.Duration
}

// run is one scenario being run: its Producer, the faults applied to it, the
// publishers, the consumer and the figures.
type run struct {
	ctx   context.Context
	r     *Runner
	res   *Result
	name  string
	start time.Time
	logf  func(string, ...any)
	// logs keeps the Producers' last log records (newProducer), shown in
	// the report of a failed run.
	logs *logRing

	exclusive        bool // the scenario holds the broker lock exclusively
	goroutinesBefore int
	stacksBefore     map[string]int
	heapStop         context.CancelFunc
	heapDone         sync.WaitGroup
	peakHeap         atomic.Uint64
	schedMu          sync.Mutex
	schedMax         time.Duration // worst probe wake-up delay
	schedSpikes      []spike       // probe wake-ups later than spikeMin, and runnable waits
	runnableMax      time.Duration // the longest runnable wait sampleRunnable saw
	// Owned by the heap probe: sampleRunnable's buffers.
	runnableSample [1]metrics.Sample
	runnablePrev   []uint64
	lateCalls      []lateCall

	cons  *consumer
	proxy *faults.Proxy
	prod  *mlproducer.Producer
	reg   *prometheus.Registry
	dead  deadLog

	pubStop  context.CancelFunc
	pubWG    sync.WaitGroup
	shardsMu sync.Mutex // guards shards while publishers start (watchLate reads it)
	shards   []*shard
	lat      hist // every call
	fastLat  hist // calls refused with ErrCircuitOpen
	calls    atomic.Int64
	late     atomic.Int64
	lateMax  atomic.Int64 // worst overshoot past the deadline
	refused  [refusalKinds]atomic.Int64
	oddMu    sync.Mutex
	odd      []string // unexpected errors, first few

	undo []func() // restores run by finish, last first
	// closers run in finish after the Producer and the consumer are closed,
	// before the goroutines are counted (the cluster scenario's wire taps).
	closers []func()
	// wireAcked, when set, says that the broker acked a publish of id on the
	// wire (the cluster scenario's taps): a message it reports is counted
	// in BrokerLost, not in Missing, if it never arrived.
	wireAcked func(id [16]byte) bool
	finished  bool
	closeErr  error
	snap      []*dto.MetricFamily // the Producer's metrics just before Close
	all       []accepted          // every accepted message, after finish
	allIDs    map[[16]byte]int
}

const (
	refCircuit = iota
	refQueueFull
	refContext
	refClosed
	refOther
	refusalKinds
)

func refusalName(kind int) string {
	return [refusalKinds]string{"circuit open", "retry queue full", "ctx done", "closed", "other"}[kind]
}

func newRun(ctx context.Context, r *Runner, res *Result) *run {
	h := &run{
		ctx:  ctx,
		r:    r,
		res:  res,
		name: res.Name,
		logf: r.cfg.Logf,
		reg:  prometheus.NewRegistry(),
	}
	h.goroutinesBefore = runtime.NumGoroutine()
	h.stacksBefore = goroutineTops()
	h.start = time.Now()
	h.logs = newLogRing(h.start)

	hctx, stop := context.WithCancel(context.Background())
	h.heapStop = stop
	// Several probes, staggered, so that a stall of any one scheduler P
	// (its timers and run queue) is seen.
	probes := 2 * runtime.GOMAXPROCS(0)
	for i := range probes {
		h.heapDone.Add(1)
		go func() {
			defer h.heapDone.Done()
			h.probe(hctx, i == 0, time.Duration(i)*probeEvery/time.Duration(probes))
		}()
	}
	h.heapDone.Add(1)
	go func() {
		defer h.heapDone.Done()
		h.watchLate(hctx)
	}()

	h.cons = startConsumer(r.url)
	if !h.cons.waitStarted(ctx, 15*time.Second) {
		_, _, _, _, lastErr := h.cons.stats()
		res.failf("the checking consumer could not start: %s", lastErr)
	}
	return h
}

// probe measures, every probeEvery after an initial offset, how late a
// context deadline wakes it up, by the same path as a publish waiting on its
// ctx (the context's timer, then the waiter). A delay seen there comes from
// the Go scheduler not running goroutines promptly (CPU starvation by other
// processes or by the rest of this process, the race detector's cost), not
// from what the waiter waits on, and explains a late publish at the same
// moment. The heap probe also samples the heap size every heapEvery.
func (h *run) probe(ctx context.Context, heap bool, offset time.Duration) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var lastHeap time.Time
	next := time.Now().Add(offset)
	for ctx.Err() == nil {
		next = next.Add(probeEvery)
		if now := time.Now(); next.Before(now) {
			next = now.Add(probeEvery)
		}
		pctx, cancel := context.WithDeadline(ctx, next)
		<-pctx.Done()
		cancel()
		now := time.Now()
		if ctx.Err() != nil {
			return
		}
		d := now.Sub(next)
		h.schedMu.Lock()
		h.schedMax = max(h.schedMax, d)
		if d > spikeMin && len(h.schedSpikes) < maxRecorded {
			h.schedSpikes = append(h.schedSpikes, spike{at: next.Sub(h.start), delay: d})
		}
		h.schedMu.Unlock()
		if heap {
			h.sampleRunnable(now)
		}
		if heap && now.Sub(lastHeap) >= heapEvery {
			lastHeap = now
			metrics.Read(sample)
			if sample[0].Value.Kind() == metrics.KindUint64 {
				if v := sample[0].Value.Uint64(); v > h.peakHeap.Load() {
					h.peakHeap.Store(v)
				}
			}
		}
	}
}

// stuckAfter is how long past its deadline a call must still be running for
// watchLate to record where its goroutine is: less than lateSlack, so that
// every call reported late comes with its stack.
const stuckAfter = lateSlack * 3 / 4

// watchLate looks every probeEvery for publisher calls running stuckAfter
// past their deadline and records, once per call, the stack of the
// goroutine: a late call then says whether it waited on the Producer (and
// where) or only for the scheduler.
func (h *run) watchLate(ctx context.Context) {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now().UnixNano()
		type call struct {
			s     *shard
			until int64
		}
		var stuck []call
		h.shardsMu.Lock()
		for _, s := range h.shards {
			if u := s.until.Load(); u != 0 && now > u {
				stuck = append(stuck, call{s, u})
			}
		}
		h.shardsMu.Unlock()
		if len(stuck) == 0 {
			continue
		}
		all := allStacks()
		for _, c := range stuck {
			// Still the same call: it has not returned since.
			if c.s.until.CompareAndSwap(c.until, 0) {
				c.s.mu.Lock()
				c.s.stack = stackOf(all, c.s.gid)
				c.s.mu.Unlock()
			}
		}
	}
}

// goroutineID returns the id of the calling goroutine, as stacks show it.
func goroutineID() string {
	var buf [64]byte
	f := strings.Fields(string(buf[:runtime.Stack(buf[:], false)]))
	if len(f) < 2 {
		return ""
	}
	return f[1]
}

// stackOf returns the stanza of goroutine gid in all (from allStacks), its
// first frames only.
func stackOf(all, gid string) string {
	if gid == "" {
		return ""
	}
	for _, g := range strings.Split(all, "\n\n") {
		if !strings.HasPrefix(g, "goroutine "+gid+" [") {
			continue
		}
		lines := strings.Split(strings.TrimSpace(g), "\n")
		if len(lines) > 25 {
			lines = append(lines[:25], "\t...")
		}
		return strings.Join(lines, "\n")
	}
	return ""
}

// allStacks returns the stacks of every goroutine.
func allStacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

// sampleRunnable reads the runtime's histogram of how long goroutines waited
// runnable before they ran (/sched/latencies:seconds, sampled by the runtime)
// and records the longest wait that ended since the last call as a spike
// ending at now. The timer probes see a stall of the whole process; this sees
// the queue a burst of wake-ups leaves behind (64 publishers woken at once by
// one batch of confirms), which a probe woken alone skips: a woken goroutine
// runs next, before the queue.
func (h *run) sampleRunnable(now time.Time) {
	h.runnableSample[0].Name = "/sched/latencies:seconds"
	metrics.Read(h.runnableSample[:])
	if h.runnableSample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return
	}
	hist := h.runnableSample[0].Value.Float64Histogram()
	prev := h.runnablePrev
	if len(prev) != len(hist.Counts) {
		h.runnablePrev = slices.Clone(hist.Counts)
		return
	}
	var longest time.Duration
	for i := len(hist.Counts) - 1; i >= 0; i-- {
		if hist.Counts[i] > prev[i] {
			// The bucket's lower bound: the wait was at least that.
			longest = time.Duration(hist.Buckets[i] * float64(time.Second))
			break
		}
	}
	copy(h.runnablePrev, hist.Counts)
	if longest <= spikeMin {
		return
	}
	h.schedMu.Lock()
	h.runnableMax = max(h.runnableMax, longest)
	if len(h.schedSpikes) < maxRecorded {
		h.schedSpikes = append(h.schedSpikes, spike{at: now.Sub(h.start) - longest, delay: longest})
	}
	h.schedMu.Unlock()
}

// spike is a timer wake-up of the probe that came late by delay.
type spike struct{ at, delay time.Duration }

// stalledDuring returns for how long, within [from, to] (since the run
// started), the probe shows the process not running its timers: the
// largest overlap of a late wake-up's delay with that interval.
func (h *run) stalledDuring(from, to time.Duration) time.Duration {
	h.schedMu.Lock()
	defer h.schedMu.Unlock()
	var worst time.Duration
	for _, s := range h.schedSpikes {
		if o := min(to, s.at+s.delay) - max(from, s.at); o > worst {
			worst = o
		}
	}
	return worst
}

// failed reports whether the scenario has already failed or been
// interrupted, so that it can skip to its end.
func (h *run) failed() bool { return len(h.res.Failures) > 0 || h.ctx.Err() != nil }

// since returns the time since the run started.
func (h *run) since() time.Duration { return time.Since(h.start) }

// sleep waits d or until the run's ctx ends; it reports whether d passed.
func (h *run) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-h.ctx.Done():
		return false
	}
}

// onFinish registers a restore that finish runs (last registered first) if
// the scenario has not run it itself; f must be safe to call twice.
func (h *run) onFinish(f func()) { h.undo = append(h.undo, f) }

// startProxy starts a fault proxy in front of the broker; finish closes it.
func (h *run) startProxy() (*faults.Proxy, error) {
	p, err := faults.Start(brokerHostPort(h.r.brokerURL))
	if err != nil {
		return nil, err
	}
	h.proxy = p
	h.onFinish(func() { _ = p.Clear() })
	return p, nil
}

// producerURL returns the URL the Producer should use: through the proxy
// when there is one.
func (h *run) producerURL() string {
	if h.proxy != nil {
		return h.proxy.URL(h.r.url)
	}
	return h.r.url
}

// newProducer creates the scenario's Producer on producerURL with the
// harness's options (dead-letter hook, metrics registry, a retry queue large
// enough that nothing is refused for lack of room, a connection name) and
// then opts.
func (h *run) newProducer(opts ...mlproducer.Option) (*mlproducer.Producer, error) {
	base := []mlproducer.Option{
		mlproducer.WithURLs(h.producerURL()),
		mlproducer.WithDeadLetter(h.dead.hook),
		mlproducer.WithRegisterer(h.reg),
		mlproducer.WithConnectionName("mlproducer reliability " + h.name),
		mlproducer.WithRetryQueueCapacity(1_000_000, 1<<30),
		mlproducer.WithReconnectBackoff(50*time.Millisecond, time.Second),
	}
	// The ring keeps the Producer's last records for a failure's report.
	var handler slog.Handler = h.logs
	if h.r.cfg.Logger != nil {
		handler = slog.NewMultiHandler(h.logs, h.r.cfg.Logger.Handler())
	}
	base = append(base, mlproducer.WithLogger(slog.New(handler).With("scenario", h.name)))
	p, err := mlproducer.New(append(base, opts...)...)
	if err != nil {
		return nil, err
	}
	h.prod = p
	return p, nil
}

// waitConnected waits until the Producer is connected, for at most limit.
func (h *run) waitConnected(limit time.Duration) error {
	ctx, cancel := context.WithTimeout(h.ctx, limit)
	defer cancel()
	return h.prod.WaitConnected(ctx)
}

// waitFor polls the Producer's Status until ok holds, for at most limit; it
// returns how long that took and whether ok held.
func (h *run) waitFor(limit time.Duration, ok func(mlproducer.Status) bool) (time.Duration, bool) {
	return h.waitForCtx(h.ctx, limit, ok)
}

// waitForCtx is waitFor ending early when ctx ends.
func (h *run) waitForCtx(ctx context.Context, limit time.Duration, ok func(mlproducer.Status) bool) (time.Duration, bool) {
	start := time.Now()
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		if ok(h.prod.Status()) {
			return time.Since(start), true
		}
		if time.Since(start) > limit {
			return time.Since(start), false
		}
		select {
		case <-ctx.Done():
			return time.Since(start), false
		case <-t.C:
		}
	}
}

// reconnectedSince returns a condition that holds once the Producer is
// connected on a connection made after its ReconnectAttempts was r0.
func reconnectedSince(r0 uint64) func(mlproducer.Status) bool {
	return func(st mlproducer.Status) bool {
		return st.ConnectionState == mlproducer.Connected && st.ReconnectAttempts > r0
	}
}

// startPublishers starts the publisher goroutines; stopPublishers (or
// finish) stops them.
func (h *run) startPublishers(p publishing) {
	ctx, stop := context.WithCancel(context.Background())
	h.pubStop = stop
	for g := range p.goroutines {
		s := &shard{}
		h.shardsMu.Lock()
		h.shards = append(h.shards, s)
		h.shardsMu.Unlock()
		h.pubWG.Add(1)
		go func() {
			defer h.pubWG.Done()
			h.publisher(ctx, g, s, p)
		}()
	}
}

// stopPublishers stops the publishers and waits for their last calls.
func (h *run) stopPublishers() {
	if h.pubStop != nil {
		h.pubStop()
		h.pubWG.Wait()
		h.pubStop = nil
	}
}

// publisher calls the Producer in a loop, as a request handler would: each
// call has its own deadline, and the types take turns.
func (h *run) publisher(ctx context.Context, g int, s *shard, p publishing) {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(g)))
	s.gid = goroutineID()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	content := fmt.Sprintf("Reliability scenario %s, publisher %d: a text to summarise or embed.", h.name, g)
	for i := 0; ctx.Err() == nil; i++ {
		d := p.minDeadline
		if span := p.maxDeadline - p.minDeadline; span > 0 {
			d += time.Duration(rng.Int64N(int64(span)))
		}
		share := fmt.Sprintf("rel-%d-%d", g, i)
		typ := uint8((g + i) % 3)
		cctx, cancel := context.WithTimeout(context.Background(), d)
		s.mu.Lock()
		s.stack = "" // a stack the watcher took as the last call returned
		s.mu.Unlock()
		start := time.Now()
		s.until.Store(start.Add(d + stuckAfter).UnixNano())
		var (
			r   mlproducer.Receipt
			err error
		)
		switch typ {
		case 0:
			r, err = h.prod.PublishSummarization(cctx, share, content, mlproducer.SummarizationOptions{MaxLength: 100})
		case 1:
			r, err = h.prod.PublishTranscription(cctx, share, "https://media.example.com/"+share+".mp3", mlproducer.TranscriptionOptions{})
		default:
			r, err = h.prod.PublishEmbedding(cctx, share, content, mlproducer.EmbeddingOptions{Dimensions: 8})
		}
		end := time.Now()
		s.until.Store(0)
		s.mu.Lock()
		stack := s.stack // set only if this call ran stuckAfter past its deadline
		s.stack = ""
		s.mu.Unlock()
		cancel()
		lat := end.Sub(start)
		h.calls.Add(1)
		h.lat.add(lat)
		if over := lat - d; over > lateSlack {
			h.late.Add(1)
			what := r.State.String()
			if err != nil {
				what = err.Error()
			}
			h.oddMu.Lock()
			if len(h.lateCalls) < maxRecorded {
				h.lateCalls = append(h.lateCalls, lateCall{at: end.Sub(h.start), over: over, deadline: d,
					what: what, state: h.prod.Status().ConnectionState, stack: stack})
			}
			h.oddMu.Unlock()
			for {
				m := h.lateMax.Load()
				if int64(over) <= m || h.lateMax.CompareAndSwap(m, int64(over)) {
					break
				}
			}
		}
		if err != nil {
			h.refuse(err, lat)
		} else if id, perr := uuid.Parse(r.MessageID); perr != nil {
			h.oddf("receipt with a message ID that is not a UUID: %q", r.MessageID)
		} else {
			s.acc = append(s.acc, accepted{id: [16]byte(id), at: end.Sub(h.start), state: r.State, typ: typ, lat: lat})
		}
		if p.think > 0 {
			timer.Reset(time.Duration(rng.Int64N(int64(2*p.think) + 1)))
			select {
			case <-ctx.Done():
			case <-timer.C:
			}
		}
	}
}

func (h *run) refuse(err error, lat time.Duration) {
	k := refOther
	switch {
	case errors.Is(err, mlproducer.ErrCircuitOpen):
		k = refCircuit
		h.fastLat.add(lat)
	case errors.Is(err, mlproducer.ErrRetryQueueFull):
		k = refQueueFull
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		k = refContext
	case errors.Is(err, mlproducer.ErrClosed):
		k = refClosed
	default:
		h.oddf("unexpected publish error: %v", err)
	}
	h.refused[k].Add(1)
}

// oddf records an unexpected event; finish turns them into failures.
func (h *run) oddf(format string, args ...any) {
	h.oddMu.Lock()
	defer h.oddMu.Unlock()
	if len(h.odd) < 5 {
		h.odd = append(h.odd, fmt.Sprintf(format, args...))
	} else if len(h.odd) == 5 {
		h.odd = append(h.odd, "(more unexpected events not shown)")
	}
}

// waitSettled waits until every message accepted so far is confirmed or
// dead-lettered (the Producer's own count), for at most limit.
func (h *run) waitSettled(limit time.Duration) bool {
	_, ok := h.waitFor(limit, func(st mlproducer.Status) bool {
		return st.Accepted == st.Confirmed+st.DeadLettered && st.RetryQueueSize == 0 && st.PendingConfirms == 0
	})
	return ok
}

// finish ends the scenario whatever state it is in: it stops the
// publishers, undoes the faults, closes the Producer, waits for the consumer
// to see every accepted message, closes everything else, then computes the
// figures and the common checks. Calling it again does nothing.
func (h *run) finish() {
	if h.finished {
		return
	}
	h.finished = true
	res := h.res
	h.stopPublishers()
	for i := len(h.undo) - 1; i >= 0; i-- {
		h.undo[i]()
	}

	for _, s := range h.shards {
		h.all = append(h.all, s.acc...)
		s.acc = nil
	}
	h.allIDs = make(map[[16]byte]int, len(h.all))
	for i, a := range h.all {
		h.allIDs[a.id] = i
	}

	var st mlproducer.Status
	if h.prod != nil {
		// The Producer unregisters its metrics when it closes.
		if fams, err := h.reg.Gather(); err == nil {
			h.snap = fams
		}
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		start := time.Now()
		h.closeErr = h.prod.Close(ctx)
		cancel()
		st = h.prod.Status()
		res.notef("Close took %s; producer counted accepted=%d confirmed=%d dead-lettered=%d reconnects=%d",
			fmtDur(time.Since(start)), st.Accepted, st.Confirmed, st.DeadLettered, st.ReconnectAttempts)
		if h.closeErr != nil {
			res.notef("Close: %v", h.closeErr)
		}
		if st.Accepted != st.Confirmed+st.DeadLettered {
			res.failf("after Close the Producer counts accepted=%d ≠ confirmed=%d + dead-lettered=%d", st.Accepted, st.Confirmed, st.DeadLettered)
		}
		if st.Accepted != uint64(len(h.all)) {
			res.failf("the Producer counts %d accepted messages, the publishers got %d nil errors", st.Accepted, len(h.all))
		}
	}

	// Wait for the consumer to see every accepted message that was not
	// dead-lettered.
	dead := h.dead.ids()
	var need [][16]byte
	for _, a := range h.all {
		if _, ok := dead[a.id]; !ok {
			need = append(need, a.id)
		}
	}
	waitStart := time.Now()
	for len(need) > 0 {
		need = h.cons.missing(need)
		if len(need) == 0 {
			break
		}
		last, _ := h.cons.lastDelivery()
		if time.Since(waitStart) > consumeTimeout || (time.Since(last) > consumeStall && time.Since(waitStart) > consumeStall) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for {
		last, _ := h.cons.lastDelivery()
		if time.Since(last) >= consumeTail {
			break
		}
		time.Sleep(consumeTail / 3)
	}
	h.cons.close()
	if h.proxy != nil {
		if err := h.proxy.Close(); err != nil {
			res.failf("closing the fault proxy: %v", err)
		}
	}
	for _, c := range h.closers {
		c()
	}
	h.heapStop()
	h.heapDone.Wait()

	// Figures.
	res.Publishes = h.calls.Load()
	res.Accepted = int64(len(h.all))
	for i := range h.refused {
		res.Refused += h.refused[i].Load()
	}
	for _, a := range h.all {
		n, _ := h.cons.count(a.id)
		_, isDead := dead[a.id]
		switch {
		case n > 0:
			res.Confirmed++
			res.Duplicates += int64(n - 1)
		case isDead:
		case h.wireAcked != nil && h.wireAcked(a.id):
			res.BrokerLost++
		default:
			res.Missing++
		}
	}
	for id := range dead {
		if _, ok := h.allIDs[id]; ok {
			res.DeadLettered++
		} else {
			res.failf("the dead-letter hook got message %s, which no publish accepted", uuid.UUID(id))
		}
	}
	res.P99 = h.lat.quantile(0.99)
	res.MaxLatency = h.lat.maximum()
	res.PeakHeap = h.peakHeap.Load()

	var refusals []string
	for i := range h.refused {
		if n := h.refused[i].Load(); n > 0 {
			refusals = append(refusals, fmt.Sprintf("%s %d", refusalName(i), n))
		}
	}
	if len(refusals) > 0 {
		res.notef("refused: %s", strings.Join(refusals, ", "))
	}
	var fails []string
	for _, reason := range []string{"connection_lost", "timeout", "nack", "return"} {
		if v, err := h.metric("ml_producer_attempt_failures_total", "reason", reason); err == nil && v > 0 {
			fails = append(fails, fmt.Sprintf("%s %.0f", reason, v))
		}
	}
	if v, err := h.metric("ml_producer_retries_total"); err == nil && v > 0 {
		fails = append(fails, fmt.Sprintf("retries %.0f", v))
	}
	if len(fails) > 0 {
		res.notef("failed attempts: %s", strings.Join(fails, ", "))
	}
	total, redeliv, foreign, conns, lastErr := h.cons.stats()
	res.notef("publish latency p50=%s p99=%s max=%s over %d calls; consumer: %d deliveries, %d broker redeliveries, %d connections",
		fmtDur(h.lat.quantile(0.5)), fmtDur(res.P99), fmtDur(res.MaxLatency), res.Publishes, total, redeliv, conns)
	if foreign > 0 {
		res.notef("consumer: %d deliveries without a UUID message ID", foreign)
	}
	if res.Missing > 0 {
		res.failf("%d accepted messages neither consumed nor dead-lettered (e.g. %s); consumer's last error: %s",
			res.Missing, h.sampleMissing(dead), lastErr)
	}
	// A call late only because the whole process was stalled (the probe's
	// timer was as late, over the same span) is counted apart.
	res.Late = 0
	var shown, shownStalled int
	for _, l := range h.lateCalls {
		stall := h.stalledDuring(l.at-l.over, l.at)
		desc := fmt.Sprintf("returned at %s, %s after its %s deadline (→ %s; state %s); the scheduler held goroutines up for %s of that",
			fmtDur(l.at), fmtDur(l.over), fmtDur(l.deadline), l.what, l.state, fmtDur(stall))
		if l.over-stall <= lateSlack {
			res.LateStalled++
			if shownStalled < 3 {
				shownStalled++
				res.notef("late call excused by scheduling (goroutines waited as long to run): %s", desc)
			}
			continue
		}
		res.Late++
		if shown < 5 {
			shown++
			res.notef("late call: %s", desc)
			if l.stack != "" && shown <= 2 {
				res.notef("late call's goroutine %s after its deadline:\n%s", fmtDur(stuckAfter), l.stack)
			}
		}
	}
	res.Late += h.late.Load() - int64(len(h.lateCalls)) // beyond maxRecorded: not classified
	if res.Late > 0 {
		res.failf("%d publish calls returned later than their ctx deadline + %s (worst by %s)",
			res.Late, lateSlack, fmtDur(time.Duration(h.lateMax.Load())))
	}
	h.schedMu.Lock()
	spikes, schedMax, runnableMax := len(h.schedSpikes), h.schedMax, h.runnableMax
	h.schedMu.Unlock()
	res.notef("scheduling probes: ctx-deadline wake-ups up to %s late, goroutines runnable up to %s before they ran; %d of these more than %s",
		fmtDur(schedMax), fmtDur(runnableMax), spikes, spikeMin)
	h.oddMu.Lock()
	for _, o := range h.odd {
		res.failf("%s", o)
	}
	h.oddMu.Unlock()

	// Goroutines: everything of the scenario is closed now.
	res.GoroutinesBefore = h.goroutinesBefore
	deadline := time.Now().Add(goroutineSettle)
	n := runtime.NumGoroutine()
	for n > h.goroutinesBefore && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	res.GoroutinesAfter = n
	if n > h.goroutinesBefore {
		res.failf("%d goroutines after Close, %d before: %s", n, h.goroutinesBefore, extraGoroutines(h.stacksBefore, goroutineTops()))
	}
}

// sampleMissing names up to three missing messages, with when they were
// accepted and how far they got.
func (h *run) sampleMissing(dead map[[16]byte]deadInfo) string {
	var out []string
	for _, a := range h.all {
		if len(out) == 3 {
			break
		}
		if n, _ := h.cons.count(a.id); n > 0 {
			continue
		}
		if _, ok := dead[a.id]; ok {
			continue
		}
		if h.wireAcked != nil && h.wireAcked(a.id) {
			continue // counted in BrokerLost
		}
		out = append(out, fmt.Sprintf("%s %s accepted at %s as %s", taskQueues()[a.typ], uuid.UUID(a.id), fmtDur(a.at), a.state))
	}
	return strings.Join(out, "; ")
}

// metric returns the sum of the samples of the counter or gauge family
// name whose labels include match (name=value pairs): the Producer's
// metrics now, or after finish as they were just before Close.
func (h *run) metric(name string, match ...string) (float64, error) {
	fams := h.snap
	if !h.finished {
		var err error
		if fams, err = h.reg.Gather(); err != nil {
			return 0, err
		}
	}
	var sum float64
	found := false
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if !labelsMatch(m, match) {
				continue
			}
			found = true
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	if !found {
		return 0, fmt.Errorf("no metric %s%v", name, match)
	}
	return sum, nil
}

func labelsMatch(m *dto.Metric, match []string) bool {
	for i := 0; i+1 < len(match); i += 2 {
		ok := false
		for _, l := range m.GetLabel() {
			if l.GetName() == match[i] && l.GetValue() == match[i+1] {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// deadInfo is what the dead-letter hook got for one message.
type deadInfo struct {
	typ      mlproducer.TaskType
	attempts int
	err      error
}

// deadLog collects the dead-letter hook's messages.
type deadLog struct {
	mu sync.Mutex
	m  map[[16]byte]deadInfo
	// bad counts dead letters whose ID is not a UUID.
	bad int
}

func (d *deadLog) hook(dl mlproducer.DeadLetter) {
	id, err := uuid.Parse(dl.Message.ID)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.bad++
		return
	}
	if d.m == nil {
		d.m = make(map[[16]byte]deadInfo)
	}
	d.m[[16]byte(id)] = deadInfo{typ: dl.Message.Type, attempts: dl.Attempts, err: dl.Err}
}

// ids returns a copy of what the hook got, by message ID.
func (d *deadLog) ids() map[[16]byte]deadInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[[16]byte]deadInfo, len(d.m))
	for k, v := range d.m {
		out[k] = v
	}
	return out
}

// goroutineTops counts the goroutines by the function they were created by
// and the function on top of their stack.
func goroutineTops() map[string]int {
	out := make(map[string]int)
	for _, g := range strings.Split(allStacks(), "\n\n") {
		lines := strings.Split(strings.TrimSpace(g), "\n")
		if len(lines) < 2 {
			continue
		}
		top := lines[1]
		if i := strings.LastIndexByte(top, '('); i > 0 {
			top = top[:i]
		}
		creator := ""
		for _, l := range lines {
			if c, ok := strings.CutPrefix(l, "created by "); ok {
				if i := strings.Index(c, " in goroutine"); i > 0 {
					c = c[:i]
				}
				creator = c
			}
		}
		out[top+" (created by "+creator+")"]++
	}
	return out
}

// extraGoroutines describes the goroutines in after that were not in before.
func extraGoroutines(before, after map[string]int) string {
	var extra []string
	for k, n := range after {
		if d := n - before[k]; d > 0 {
			extra = append(extra, fmt.Sprintf("%d× %s", d, k))
		}
	}
	sort.Strings(extra)
	if len(extra) > 8 {
		extra = append(extra[:8], "…")
	}
	return strings.Join(extra, "; ")
}

// brokerHostPort returns the host:port of a broker URL.
func brokerHostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "amqps" {
		return net.JoinHostPort(u.Hostname(), "5671")
	}
	return net.JoinHostPort(u.Hostname(), "5672")
}

// acceptedBetween returns the accepted messages whose call returned in
// [from, to) since the run started, after finish.
func (h *run) acceptedBetween(from, to time.Duration) []accepted {
	var out []accepted
	for _, a := range h.all {
		if a.at >= from && a.at < to {
			out = append(out, a)
		}
	}
	return out
}
