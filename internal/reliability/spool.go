package reliability

import (
	"context"
	"os"
	"time"

	"github.com/google/uuid"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/spoolchild"
)

// The scenarios of the crash-safe spool (issue 10). They are not in the set
// "all" runs ([Names]): [Extra] lists them.
const (
	// Crash runs a child process that publishes from 64 goroutines with
	// WithSpool and kills it with SIGKILL at random moments, at least 12
	// times (a third while the broker is cut off, a third in the middle of
	// its Close after SIGTERM), restarting it on the same dir; then a
	// Producer on the dir sends what is left. Every message a child's
	// publish accepted must arrive; duplicates are counted, not failed.
	// The child is the running program itself (see
	// [github.com/mlproducer/mlproducer/internal/spoolchild]).
	Crash = "crash"
	// LongOutage publishes under load with WithSpool while the broker
	// refuses connections for 2 minutes (through the fault proxy). No
	// publish may be refused while the spool has room, and everything must
	// be delivered after; it reports the time from the broker's return to
	// the first confirm.
	LongOutage = "long-outage"
)

// Extra returns the names of the scenarios that "all" does not run, because
// they take long, start child processes or need the local cluster: [Crash],
// [LongOutage] and [Cluster].
func Extra() []string {
	var out []string
	for _, s := range scenarios() {
		if s.extra {
			out = append(out, s.name)
		}
	}
	return out
}

// spoolDir makes a spool dir for a scenario; the returned remove deletes it.
func (h *run) spoolDir() (dir string, remove func(), err error) {
	dir, err = os.MkdirTemp("", "mlproducer-reliability-"+h.name+"-")
	if err != nil {
		return "", nil, err
	}
	return dir, func() { _ = os.RemoveAll(dir) }, nil
}

// crash: the kill loop of spoolchild against the Runner's virtual host.
func crash(h *run) {
	if h.failed() {
		return
	}
	dir, remove, err := h.spoolDir()
	if err != nil {
		h.res.failf("spool dir: %v", err)
		return
	}
	defer func() {
		h.finish() // before the dir goes: it closes what still uses it
		remove()
	}()
	px, err := h.startProxy()
	if err != nil {
		h.res.failf("fault proxy: %v", err)
		return
	}
	cmd := h.r.cfg.ChildCommand
	if len(cmd) == 0 {
		exe, err := os.Executable()
		if err != nil {
			h.res.failf("the crash scenario runs this program again as its child: %v", err)
			return
		}
		cmd = []string{exe}
	}
	cut := spoolchild.NewProxyCut(px, true)
	h.onFinish(func() { _ = cut.Restore() })
	kr, err := spoolchild.Run(h.ctx, spoolchild.Config{
		Command:  cmd,
		URL:      px.URL(h.r.url),
		Dir:      dir,
		Exchange: "ml.tasks",
		Kills:    h.r.cfg.CrashKills,
		Seed:     h.r.cfg.Seed,
		Cut:      cut.Cut,
		Restore:  cut.Restore,
		Logf:     h.logf,
	})
	// Whatever happened, what the children reported is checked.
	s := &shard{}
	h.shards = append(h.shards, s)
	for _, id := range kr.Accepted {
		u, perr := uuid.Parse(id)
		if perr != nil {
			h.oddf("a child reported a message ID that is not a UUID: %q", id)
			continue
		}
		s.acc = append(s.acc, accepted{id: [16]byte(u), state: mlproducer.Queued, typ: 2})
	}
	for _, id := range kr.DeadLettered {
		h.oddf("a child dead-lettered %s: no message may run out of attempts here", id)
	}
	h.res.notef("seed %d: %d children in %s: kills=%d (%d mid-outage, %d mid-Close), %d Closes that finished before their kill, %d accepted",
		kr.Seed, kr.Starts, fmtDur(kr.Elapsed), kr.Kills, kr.KillsMidOutage, kr.KillsMidClose, len(kr.Closed), len(kr.Accepted))
	if err != nil {
		h.res.failf("kill loop: %v", err)
	}
	if err := cut.Restore(); err != nil {
		h.res.failf("restoring the path to the broker: %v", err)
		return
	}
	if err == nil {
		if kr.Kills < 10 || kr.KillsMidOutage == 0 || kr.KillsMidClose == 0 {
			h.res.failf("the schedule fell short: %d kills, %d mid-outage, %d mid-Close", kr.Kills, kr.KillsMidOutage, kr.KillsMidClose)
		}
	}

	// What the last child left in the spool, sent by a Producer here.
	p, err := h.newProducer(mlproducer.WithSpool(dir), mlproducer.WithMaxRetries(1000))
	if err != nil {
		h.res.failf("New on the spool dir: %v", err)
		return
	}
	left := p.Status().RetryQueueSize
	ctx, cancel := context.WithTimeout(h.ctx, 2*time.Minute)
	st, derr := spoolchild.Drain(ctx, p)
	cancel()
	// Closed: finish must not close it again nor compare its counts with
	// what the children accepted.
	h.prod = nil
	h.res.notef("the last child left %d messages in the spool; the draining Producer had %d confirmed", left, st.Confirmed)
	if derr != nil {
		h.res.failf("%v", derr)
	}
	h.finish()
	h.res.notef("crash: kills=%d accepted=%d missing=%d duplicates=%d", kr.Kills, h.res.Accepted, h.res.Missing, h.res.Duplicates)
}

// longOutage: the broker refuses connections for the outage (2 minutes by
// default) while the publishers go on, with the spool on.
func longOutage(h *run) {
	dir, remove, err := h.spoolDir()
	if err != nil {
		h.res.failf("spool dir: %v", err)
		return
	}
	defer func() {
		h.finish()
		remove()
	}()
	const reconnectMax = time.Second
	if !h.setup(true, h.steady(),
		mlproducer.WithSpool(dir),
		mlproducer.WithReconnectBackoff(50*time.Millisecond, reconnectMax),
		mlproducer.WithConnectionTimeout(2*time.Second),
		mlproducer.WithHeartbeat(2*time.Second),
	) {
		return
	}
	outage := h.r.cfg.OutageDuration
	cut := spoolchild.NewProxyCut(h.proxy, false)
	h.onFinish(func() { _ = cut.Restore() })
	refusedBefore := h.refusedTotal()
	if err := cut.Cut(); err != nil {
		h.res.failf("cutting the broker off: %v", err)
		return
	}
	cutAt := h.since()
	peakQueue, breakerOpened := 0, false
	for end := time.Now().Add(outage); time.Now().Before(end) && h.ctx.Err() == nil; {
		st := h.prod.Status()
		peakQueue = max(peakQueue, st.RetryQueueSize)
		breakerOpened = breakerOpened || st.CircuitBreakerOpen
		h.sleep(100 * time.Millisecond)
	}
	refusedDuring := h.refusedTotal() - refusedBefore
	circuitDuring := h.refused[refCircuit].Load()
	c0 := h.prod.Status().Confirmed
	if err := cut.Restore(); err != nil {
		h.res.failf("restoring the path to the broker: %v", err)
		return
	}
	backAt := h.since()
	first, ok := h.waitFor(time.Minute, func(st mlproducer.Status) bool { return st.Confirmed > c0 })
	if !ok {
		h.res.failf("no confirm %s after the broker came back (status %+v)", fmtDur(first), h.prod.Status())
		return
	}
	h.res.TimeToRecover = first
	h.sleep(time.Second)
	h.stopPublishers()
	drainStart := time.Now()
	if !h.waitSettled(3 * time.Minute) {
		h.res.failf("spool not drained 3 minutes after the publishers stopped (status %+v)", h.prod.Status())
	}
	drained := time.Since(drainStart)
	h.finish()

	queuedDuring := len(h.acceptedBetween(cutAt, backAt))
	h.res.notef("broker refusing connections for %s: %d publishes accepted meanwhile, spool peaked at %d, breaker opened: %v; %d refused during the outage (%d ErrCircuitOpen)",
		outage, queuedDuring, peakQueue, breakerOpened, refusedDuring, circuitDuring)
	h.res.notef("long-outage: refused=%d accepted=%d delivered=%d missing=%d first-confirm-after-back=%s (reconnect backoff cap %s); drained %s after the publishers stopped",
		h.res.Refused, h.res.Accepted, h.res.Confirmed, h.res.Missing, fmtDur(first), reconnectMax, fmtDur(drained))
	if h.res.Refused > 0 {
		h.res.failf("%d publishes refused while the spool had room (capacity 1,000,000 messages, peak %d)", h.res.Refused, peakQueue)
	}
	if queuedDuring == 0 {
		h.res.failf("no publish was accepted during the outage")
	}
	if limit := reconnectMax + 5*time.Second; first > limit {
		h.res.failf("the first confirm came %s after the broker was back, more than the reconnect backoff cap %s + 5 s", fmtDur(first), reconnectMax)
	}
	h.checkNoDeadLetters()
}

// refusedTotal returns the publishes refused so far, of every kind.
func (h *run) refusedTotal() int64 {
	var n int64
	for i := range h.refused {
		n += h.refused[i].Load()
	}
	return n
}
