package mlproducer_test

// A seeded simulation of the Producer, in the spirit of FoundationDB's
// simulation testing: each schedule runs a real Producer against the fake
// broker inside a testing/synctest bubble (fake time), with publishers,
// faults and a Close at random moments, all drawn from one seed, and then
// checks the Guarantees as invariants. A failing schedule prints its seed,
// its configuration and its fault log; `-seed N` replays it.
//
// Determinism: the seed decides the configuration, the number of
// publishers, every publisher's calls, deadlines, cancellations and sleeps
// (one generator per publisher), and every fault and its moment (one
// generator for the fault goroutine). synctest makes time exact. What the
// seed does not decide: the interleaving of goroutines that run at the same
// fake instant, the jitter of the Producer's backoffs (cenkalti/backoff
// draws from math/rand's global source), the fake broker's own draws for
// SetFaults (one generator shared by every write, so their order follows the
// interleaving) and UUIDv7 message ids. A replay therefore runs the same
// scenario; a violation that depends on a race may need a few replays, or
// -count.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

var (
	simSeed      = flag.Uint64("seed", 0, "TestSimulation: replay exactly the schedule with this seed (0: run -sim.schedules or -sim.duration)")
	simSchedules = flag.Int("sim.schedules", 300, "TestSimulation: number of schedules to run")
	simDuration  = flag.Duration("sim.duration", 0, "TestSimulation: run schedules until this much real time has passed (for make soak); overrides -sim.schedules")
	simBase      = flag.Uint64("sim.base", 0, "TestSimulation: first seed (default 1, or a random one with -sim.duration)")
	simWithout   = flag.String("sim.without", "", "TestSimulation: comma-separated fault kinds to leave out, to tell which fault a violation needs: "+strings.Join(simFaultKinds[:], ","))
	simVerbose   = flag.Bool("sim.v", false, "TestSimulation: print every schedule's configuration and fault log")
)

// simQueues are the queues of the default topology, by task type.
var simQueues = map[mlproducer.TaskType]string{
	mlproducer.TaskSummarization: "ml.summarization",
	mlproducer.TaskTranscription: "ml.transcription",
	mlproducer.TaskEmbedding:     "ml.embedding",
}

var simTypes = []mlproducer.TaskType{mlproducer.TaskSummarization, mlproducer.TaskTranscription, mlproducer.TaskEmbedding}

// simFaultKinds names the faults of simState.faults, by the number drawn.
var simFaultKinds = [16]string{"drop", "drop", "refuse", "hangdials", "block", "holdconfirms", "nacknext",
	"setfaults", "setfaults", "deletequeue", "failchannels", "hold", "hold", "stall", "hang", "deleteexchange"}

// simSlack is the lateness allowed to every call and to Close.
const simSlack = 50 * time.Millisecond

// simConfig is what the seed decides before the schedule starts.
type simConfig struct {
	reconnectInitial, reconnectMax time.Duration
	retryInitial, retryMax         time.Duration
	confirmTimeout                 time.Duration
	connectionTimeout              time.Duration
	maxRetries                     int
	retryCap                       int
	maxInFlight                    int
	healthInterval                 time.Duration
	breakerThreshold               int
	breakerCooldown                time.Duration
	publishers                     int
	runFor                         time.Duration // until Close is called
	closeTimeout                   time.Duration // Close's ctx; <0: already expired
	faultGap                       time.Duration // mean gap between faults
	pubGap                         time.Duration // mean gap between a publisher's calls
}

func newSimConfig(rng *rand.Rand) simConfig {
	dur := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(rng.Int64N(int64(hi-lo)+1)) }
	var c simConfig
	c.reconnectInitial = dur(5*time.Millisecond, 40*time.Millisecond)
	c.reconnectMax = c.reconnectInitial * time.Duration(2+rng.IntN(40))
	c.retryInitial = dur(time.Millisecond, 20*time.Millisecond)
	c.retryMax = c.retryInitial * time.Duration(1+rng.IntN(20))
	c.confirmTimeout = dur(2*c.reconnectInitial, 400*time.Millisecond)
	c.connectionTimeout = dur(50*time.Millisecond, 500*time.Millisecond)
	c.maxRetries = rng.IntN(4)
	if rng.IntN(4) == 0 {
		c.retryCap = 1000
	} else {
		c.retryCap = 1 + rng.IntN(20)
	}
	c.maxInFlight = 1 + rng.IntN(16)
	if rng.IntN(5) < 2 {
		c.healthInterval = 0
	} else {
		c.healthInterval = dur(max(50*time.Millisecond, c.reconnectInitial), 500*time.Millisecond)
	}
	if rng.IntN(5) < 2 {
		c.breakerThreshold = 1 << 20
	} else {
		c.breakerThreshold = 1 + rng.IntN(30)
	}
	c.breakerCooldown = dur(20*time.Millisecond, 500*time.Millisecond)
	c.publishers = 1 + rng.IntN(6)
	c.runFor = dur(50*time.Millisecond, 2*time.Second)
	switch r := rng.IntN(20); {
	case r < 3:
		c.closeTimeout = -1
	case r < 11:
		c.closeTimeout = dur(0, 2*c.confirmTimeout)
	default:
		c.closeTimeout = 10 * time.Second
	}
	c.faultGap = dur(c.reconnectInitial, 150*time.Millisecond)
	c.pubGap = dur(time.Millisecond, 30*time.Millisecond)
	return c
}

func (c simConfig) String() string {
	return fmt.Sprintf("reconnect %v..%v, retry %v..%v, confirm timeout %v, connection timeout %v, max retries %d, retry queue cap %d, max in flight %d, health %v, breaker %d/%v, publishers %d (gap %v), close after %v with timeout %v, fault gap %v",
		c.reconnectInitial, c.reconnectMax, c.retryInitial, c.retryMax, c.confirmTimeout, c.connectionTimeout,
		c.maxRetries, c.retryCap, c.maxInFlight, c.healthInterval, c.breakerThreshold, c.breakerCooldown,
		c.publishers, c.pubGap, c.runFor, c.closeTimeout, c.faultGap)
}

// simCall is one publish call and what it returned.
type simCall struct {
	k        int // index; its token simk<k>x is in the message
	what     string
	callerID string
	typ      mlproducer.TaskType
	start    time.Time
	end      time.Time
	deadline time.Time // zero: none
	cancelAt atomic.Int64
	rcpt     mlproducer.Receipt
	err      error
}

// simDead is one call of the dead-letter hook.
type simDead struct {
	k        int
	id       string
	seq      uint64
	at       time.Time
	attempts int
	err      error
}

// simResult is what a schedule leaves for the report.
type simResult struct {
	seed       uint64
	cfg        simConfig
	log        []string
	violations []string
	calls      int
	accepted   int
}

func TestSimulation(t *testing.T) {
	if *simSeed != 0 {
		r := runSimSchedule(t, *simSeed)
		reportSim(t, r, true)
		return
	}
	base := *simBase
	if base == 0 {
		base = 1
		if *simDuration > 0 {
			base = rand.Uint64()>>1 + 1
		}
	}
	started := time.Now()
	var n, failed, calls int
	var seeds []uint64
	for seed := base; ; seed++ {
		if *simDuration > 0 {
			if time.Since(started) >= *simDuration {
				break
			}
		} else if n >= *simSchedules {
			break
		}
		r := runSimSchedule(t, seed)
		n++
		calls += r.calls
		if len(r.violations) > 0 {
			failed++
			seeds = append(seeds, seed)
			reportSim(t, r, failed <= 5)
		} else if *simVerbose {
			reportSim(t, r, true)
		}
	}
	el := time.Since(started)
	t.Logf("simulation: %d schedules (seeds %d..%d), %d publish calls, in %v: %.0f schedules per minute; %d failed: %v",
		n, base, base+uint64(n)-1, calls, el.Round(time.Millisecond), float64(n)/el.Minutes(), failed, seeds)
}

func reportSim(t *testing.T, r simResult, detail bool) {
	t.Helper()
	var b strings.Builder
	if len(r.violations) > 0 {
		fmt.Fprintf(&b, "seed %d: %d violations\n", r.seed, len(r.violations))
	} else {
		fmt.Fprintf(&b, "seed %d: ok\n", r.seed)
	}
	for i, v := range r.violations {
		if i == 20 {
			fmt.Fprintf(&b, "  ... and %d more\n", len(r.violations)-i)
			break
		}
		fmt.Fprintf(&b, "  %s\n", v)
	}
	fmt.Fprintf(&b, "replay: go test -race -run TestSimulation -seed %d .\n", r.seed)
	if detail {
		fmt.Fprintf(&b, "config: %v\n", r.cfg)
		fmt.Fprintf(&b, "calls %d, accepted %d; log:\n", r.calls, r.accepted)
		for _, l := range r.log {
			fmt.Fprintf(&b, "  %s\n", l)
		}
	}
	if len(r.violations) > 0 {
		t.Error(b.String())
	} else {
		t.Log(b.String())
	}
}

// runSimSchedule runs the schedule of seed in its own bubble.
func runSimSchedule(t *testing.T, seed uint64) (res simResult) {
	res.seed = seed
	defer func() {
		// A deadlock of the bubble panics here, outside it.
		if e := recover(); e != nil {
			t.Fatalf("seed %d: the bubble deadlocked (invariant 8: a goroutine blocked for good): %v\nreplay: go test -race -run TestSimulation -seed %d .\nconfig: %v\nlog:\n  %s",
				seed, e, seed, res.cfg, strings.Join(res.log, "\n  "))
		}
	}()
	synctest.Test(t, func(t *testing.T) { simulate(seed, &res) })
	return res
}

// simState is the shared state of one schedule.
type simState struct {
	cfg   simConfig
	t0    time.Time
	b     *mlproducertest.Broker
	net   *simNet
	p     *mlproducer.Producer
	seed  uint64
	logMu sync.Mutex
	res   *simResult

	closeCalled atomic.Bool
	lifted      atomic.Bool // the watchdog lifted the faults: add no more
	closeDone   chan struct{}
	maxRetryQ   atomic.Int64
	retryQAt    atomic.Int64 // fake ns since t0 of the max

	deadMu sync.Mutex
	dead   []simDead

	blockEpisodes, stallEpisodes int // fault goroutine only
}

func (s *simState) logf(format string, args ...any) {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	s.res.log = append(s.res.log, fmt.Sprintf("%8v ", time.Since(s.t0).Round(time.Microsecond))+fmt.Sprintf(format, args...))
}

func (s *simState) violate(inv int, format string, args ...any) {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	s.res.violations = append(s.res.violations, fmt.Sprintf("invariant %d, seed %d: ", inv, s.seed)+fmt.Sprintf(format, args...))
}

func (s *simState) sample() {
	n := int64(s.p.Status().RetryQueueSize)
	for {
		cur := s.maxRetryQ.Load()
		if n <= cur || s.maxRetryQ.CompareAndSwap(cur, n) {
			if n > cur {
				s.retryQAt.Store(int64(time.Since(s.t0)))
			}
			return
		}
	}
}

func simulate(seed uint64, res *simResult) {
	rng := rand.New(rand.NewPCG(seed, 0x51a1))
	cfg := newSimConfig(rng)
	res.cfg = cfg
	s := &simState{cfg: cfg, t0: time.Now(), seed: seed, res: res, closeDone: make(chan struct{})}
	s.b = mlproducertest.NewBroker()
	defer s.b.Close()
	s.net = newSimNet(s.b)
	p, err := mlproducer.New(
		mlproducer.WithDialer(s.net),
		mlproducer.WithReconnectBackoff(cfg.reconnectInitial, cfg.reconnectMax),
		mlproducer.WithRetryBackoff(cfg.retryInitial, cfg.retryMax),
		mlproducer.WithConfirmTimeout(cfg.confirmTimeout),
		mlproducer.WithConnectionTimeout(cfg.connectionTimeout),
		mlproducer.WithMaxRetries(cfg.maxRetries),
		mlproducer.WithRetryQueueCapacity(cfg.retryCap, 64<<20),
		mlproducer.WithMaxInFlight(cfg.maxInFlight),
		mlproducer.WithHealthCheckInterval(cfg.healthInterval),
		mlproducer.WithCircuitBreaker(cfg.breakerThreshold, cfg.breakerCooldown),
		mlproducer.WithHeartbeat(0),
		mlproducer.WithDeadLetter(func(dl mlproducer.DeadLetter) {
			d := simDead{k: tokenOf(dl.Message.Body), id: dl.Message.ID, seq: s.net.seq.Add(1), at: time.Now(), attempts: dl.Attempts, err: dl.Err}
			s.deadMu.Lock()
			s.dead = append(s.dead, d)
			s.deadMu.Unlock()
		}),
	)
	if err != nil {
		s.violate(0, "New: %v", err)
		return
	}
	s.p = p

	// Publishers, each with its own generator.
	calls := make([][]*simCall, cfg.publishers)
	var pubs sync.WaitGroup
	for i := range cfg.publishers {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			calls[i] = s.publisher(i, rand.New(rand.NewPCG(seed, uint64(i)+1)))
		}()
	}

	// Sampler of the retry queue.
	stopSampler := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			s.sample()
			select {
			case <-stopSampler:
				return
			case <-tick.C:
			}
		}
	}()

	// Faults, from the main generator, until Close has returned.
	stopFaults := make(chan struct{})
	faultsDone := make(chan struct{})
	frng := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
	go func() {
		defer close(faultsDone)
		s.faults(frng, stopFaults)
	}()

	// Close at a random moment with a random deadline.
	time.Sleep(cfg.runFor)
	ctx, cancel := context.Background(), context.CancelFunc(func() {})
	var closeDeadline time.Time
	if cfg.closeTimeout < 0 {
		closeDeadline = time.Now().Add(-time.Millisecond)
	} else {
		closeDeadline = time.Now().Add(cfg.closeTimeout)
	}
	ctx, cancel = context.WithDeadline(ctx, closeDeadline)
	s.logf("Close (deadline %v)", cfg.closeTimeout)
	watchdogDone := make(chan struct{})
	go s.watchdog(closeDeadline, watchdogDone)
	s.closeCalled.Store(true)
	closeStart := time.Now()
	closeErr := p.Close(ctx)
	closeEnd := time.Now()
	cancel()
	close(s.closeDone)
	<-watchdogDone
	s.logf("Close returned after %v: %v", closeEnd.Sub(closeStart), closeErr)
	if closeEnd.After(closeDeadline.Add(simSlack)) {
		s.violate(6, "Close returned %v after its ctx deadline (deadline %v after the call, returned after %v)",
			closeEnd.Sub(closeDeadline), closeDeadline.Sub(closeStart), closeEnd.Sub(closeStart))
	}
	deadAtClose := s.deadCount()

	close(stopFaults)
	<-faultsDone
	pubs.Wait()
	close(stopSampler)
	sampler.Wait()
	st := p.Status()
	// Let anything still running (there should be nothing) show itself.
	time.Sleep(time.Second)
	s.b.Close()
	if n := s.deadCount(); n != deadAtClose {
		s.violate(8, "the dead-letter hook was called %d times after Close returned", n-deadAtClose)
	}
	s.check(slices.Concat(calls...), st)
}

func (s *simState) deadCount() int {
	s.deadMu.Lock()
	defer s.deadMu.Unlock()
	return len(s.dead)
}

// watchdog ends faults that would hold Close for good, so that a Close that
// overruns its deadline is reported (invariant 6) instead of deadlocking.
func (s *simState) watchdog(deadline time.Time, done chan struct{}) {
	defer close(done)
	select {
	case <-s.closeDone:
		return
	case <-time.After(time.Until(deadline) + 5*time.Second):
	}
	s.logf("watchdog: Close still running 5s past its deadline; lifting every fault")
	s.lifted.Store(true)
	s.liftFaults()
	select {
	case <-s.closeDone:
	case <-time.After(time.Minute):
		s.logf("watchdog: Close still running; closing the broker")
		s.b.Close()
		<-s.closeDone
	}
}

// liftFaults turns every fault off.
func (s *simState) liftFaults() {
	s.net.setHang(false)
	s.net.setStall(false)
	s.net.setHold(false)
	s.b.HangDials(false)
	s.b.RefuseDials(nil)
	s.b.FailChannels(nil)
	s.b.Unblock()
	s.b.HoldConfirms(false)
	s.b.SetFaults(mlproducertest.Faults{})
	s.b.NackNext(0)
}

// publisher makes random calls until Close has returned.
func (s *simState) publisher(i int, rng *rand.Rand) []*simCall {
	var out []*simCall
	for j := 0; ; j++ {
		select {
		case <-s.closeDone:
			return out
		default:
		}
		if rng.IntN(8) > 0 {
			time.Sleep(time.Duration(rng.Int64N(2*int64(s.cfg.pubGap) + 1)))
		}
		c := &simCall{k: i*1_000_000 + j}
		out = append(out, c)
		s.call(c, rng)
		s.sample()
	}
}

func (s *simState) call(c *simCall, rng *rand.Rand) {
	ctx := context.Background()
	var cancel context.CancelFunc = func() {}
	switch r := rng.IntN(20); {
	case r == 0: // already expired
		c.deadline = time.Now().Add(-time.Millisecond)
		ctx, cancel = context.WithDeadline(ctx, c.deadline)
	case r < 8:
		c.deadline = time.Now().Add(time.Duration(rng.Int64N(int64(2*s.cfg.confirmTimeout) + 1)))
		ctx, cancel = context.WithDeadline(ctx, c.deadline)
	case r < 16:
		c.deadline = time.Now().Add(10 * time.Second)
		ctx, cancel = context.WithDeadline(ctx, c.deadline)
	default: // no deadline
		ctx, cancel = context.WithCancel(ctx)
	}
	if rng.IntN(6) == 0 {
		cancelCtx := cancel
		after := time.Duration(rng.Int64N(int64(s.cfg.confirmTimeout) + 1))
		tm := time.AfterFunc(after, func() {
			c.cancelAt.Store(time.Now().UnixNano())
			cancelCtx()
		})
		defer tm.Stop()
	}
	defer cancel()
	token := fmt.Sprintf("simk%dx", c.k)
	c.start = time.Now()
	switch r := rng.IntN(10); {
	case r < 2:
		c.what, c.typ = "summarization", mlproducer.TaskSummarization
		c.rcpt, c.err = s.p.PublishSummarization(ctx, token, "some text to summarise", mlproducer.SummarizationOptions{})
	case r < 4:
		c.what, c.typ = "transcription", mlproducer.TaskTranscription
		c.rcpt, c.err = s.p.PublishTranscription(ctx, token, "https://media.example/a.mp3", mlproducer.TranscriptionOptions{})
	case r < 6:
		c.what, c.typ = "embedding", mlproducer.TaskEmbedding
		c.rcpt, c.err = s.p.PublishEmbedding(ctx, token, "some text to embed", mlproducer.EmbeddingOptions{})
	default:
		c.what, c.typ = "publish", simTypes[rng.IntN(len(simTypes))]
		switch rng.IntN(4) {
		case 0: // a reused caller id, shared by several calls
			c.callerID = fmt.Sprintf("dup-%d", rng.IntN(3))
		case 1:
			c.callerID = "id-" + token
		}
		c.rcpt, c.err = s.p.Publish(ctx, mlproducer.Message{Type: c.typ, ID: c.callerID, Body: []byte(`{"sim":"` + token + `"}`)})
	}
	c.end = time.Now()
}

// faults applies a random fault every faultGap or so (never sooner than the
// reconnect backoff's initial interval after the last one, see invariant 7)
// until stop; then it lifts them all.
func (s *simState) faults(rng *rand.Rand, stop chan struct{}) {
	var blocked, stalled, hung, held, refused, hangDials, failCh, holdConf bool
	defer s.liftFaults()
	for {
		gap := s.cfg.reconnectInitial + time.Duration(rng.Int64N(2*int64(s.cfg.faultGap)+1))
		select {
		case <-stop:
			return
		case <-time.After(gap):
		}
		if s.lifted.Load() {
			return
		}
		r := rng.IntN(16)
		if slices.Contains(strings.Split(*simWithout, ","), simFaultKinds[r]) {
			continue
		}
		switch r {
		case 0, 1:
			s.logf("fault: DropConnections")
			s.b.DropConnections(nil)
		case 2:
			refused = !refused
			s.logf("fault: RefuseDials(%v)", refused)
			if refused {
				s.b.RefuseDials(errors.New("sim: connection refused"))
			} else {
				s.b.RefuseDials(nil)
			}
		case 3:
			hangDials = !hangDials
			s.logf("fault: HangDials(%v)", hangDials)
			s.b.HangDials(hangDials)
		case 4:
			blocked = !blocked
			if blocked {
				s.blockEpisodes++
				s.logf("fault: Block")
				s.b.Block("sim: memory alarm")
			} else {
				s.logf("fault: Unblock")
				s.b.Unblock()
			}
		case 5:
			holdConf = !holdConf
			s.logf("fault: HoldConfirms(%v)", holdConf)
			s.b.HoldConfirms(holdConf)
		case 6:
			n := 1 + rng.IntN(3)
			s.logf("fault: NackNext(%d)", n)
			s.b.NackNext(n)
		case 7, 8:
			f := mlproducertest.Faults{Seed: rng.Int64()}
			if rng.IntN(2) == 0 {
				f.NackRate = rng.Float64() * 0.3
			}
			if rng.IntN(3) == 0 {
				f.LoseConfirmRate = rng.Float64() * 0.1
			}
			if rng.IntN(3) == 0 {
				f.ReturnRate = rng.Float64() * 0.2
			}
			if rng.IntN(2) == 0 {
				f.ConfirmDelay = time.Duration(rng.Int64N(int64(2 * s.cfg.confirmTimeout)))
			}
			f.MultipleAcks = rng.IntN(2) == 0
			if rng.IntN(4) == 0 {
				f = mlproducertest.Faults{}
			}
			s.logf("fault: SetFaults(nack %.2f, lose %.2f, return %.2f, delay %v, multiple %v)",
				f.NackRate, f.LoseConfirmRate, f.ReturnRate, f.ConfirmDelay, f.MultipleAcks)
			s.b.SetFaults(f)
		case 9:
			if blocked { // writes held by Block hold the lock deleteQueue takes
				continue
			}
			q := simQueues[simTypes[rng.IntN(len(simTypes))]]
			s.logf("fault: DeleteQueue(%s) (declared again on the next connection)", q)
			s.net.deleteQueue(q)
		case 10:
			failCh = !failCh
			s.logf("fault: FailChannels(%v)", failCh)
			if failCh {
				s.b.FailChannels(errors.New("sim: channel.open refused"))
			} else {
				s.b.FailChannels(nil)
			}
		case 11, 12:
			held = !held
			s.logf("fault: hold returns and acks (%v)", held)
			s.net.setHold(held)
		case 13:
			stalled = !stalled
			if stalled {
				s.stallEpisodes++
			}
			s.logf("fault: stall writes with no connection.blocked (%v)", stalled)
			s.net.setStall(stalled)
		case 14:
			hung = !hung
			s.logf("fault: channel.open and confirm.select hang (%v)", hung)
			s.net.setHang(hung)
		case 15:
			s.logf("fault: DeleteExchange(ml.tasks) (declared again on the next connection)")
			s.b.DeleteExchange("ml.tasks")
		}
	}
}

// check runs the invariants once everything has stopped.
func (s *simState) check(calls []*simCall, st mlproducer.Status) {
	cfg := s.cfg
	n := s.net
	n.mu.Lock()
	defer n.mu.Unlock()
	s.res.calls = len(calls)

	byK := map[int]*simCall{}
	accepted := 0
	for _, c := range calls {
		byK[c.k] = c
		if c.err == nil {
			accepted++
		}
	}
	s.res.accepted = accepted

	stored := map[int]int{}
	for k, v := range n.removed {
		stored[k] += v
	}
	for _, q := range simQueues {
		for _, d := range s.b.Messages(q) {
			stored[tokenOf(d.Body)]++
		}
	}
	if n.unmatched > 0 || stored[-1] > 0 {
		s.violate(0, "harness: %d writes and %d stored messages carry no call token", n.unmatched, stored[-1])
	}

	dead := map[int][]simDead{}
	s.deadMu.Lock()
	deadList := slices.Clone(s.dead)
	s.deadMu.Unlock()
	for _, d := range deadList {
		dead[d.k] = append(dead[d.k], d)
	}

	// 9. Every dead letter is of an accepted call, once; refused calls left nothing.
	for k, ds := range dead {
		c := byK[k]
		switch {
		case c == nil:
			s.violate(9, "the dead-letter hook got a message of no publish call (token %d, id %s)", k, ds[0].id)
		case c.err != nil:
			s.violate(9, "the dead-letter hook got the message of call %d, which was refused (%v)", k, c.err)
		case ds[0].id != c.rcpt.MessageID:
			s.violate(9, "the dead letter of call %d has id %q, its receipt %q", k, ds[0].id, c.rcpt.MessageID)
		}
	}
	for _, c := range calls {
		if c.err != nil && (n.sent[c.k] > 0 || stored[c.k] > 0) {
			s.violate(9, "call %d (%s) was refused (%v) but its message was written %d times, stored %d times", c.k, c.what, c.err, n.sent[c.k], stored[c.k])
		}
	}

	// 1 and 2. Every accepted message ends exactly one way; confirmed means stored.
	allowance := n.closures + s.blockEpisodes + s.stallEpisodes
	for _, c := range calls {
		if c.err != nil {
			continue
		}
		ds := dead[c.k]
		desc := fmt.Sprintf("call %d (%s %s, id %s, caller id %q, receipt %v, started %v, returned after %v): written %d times, stored %d times, dead-lettered %d times",
			c.k, c.what, c.typ, c.rcpt.MessageID, c.callerID, c.rcpt.State, c.start.Sub(s.t0).Round(time.Microsecond), c.end.Sub(c.start), n.sent[c.k], stored[c.k], len(ds))
		if len(ds) > 1 {
			s.violate(1, "the dead-letter hook was called more than once: %s", desc)
		}
		if c.rcpt.State == mlproducer.Confirmed && len(ds) > 0 {
			s.violate(1, "reported confirmed and dead-lettered: %s", desc)
		}
		if c.rcpt.State == mlproducer.DeadLettered && len(ds) == 0 {
			s.violate(1, "receipt says dead-lettered, the hook never got it: %s", desc)
		}
		if c.rcpt.State == mlproducer.Confirmed && stored[c.k] == 0 {
			s.violate(2, "reported confirmed, never stored by the broker: %s", desc)
		} else if len(ds) == 0 && stored[c.k] == 0 {
			s.violate(2, "accepted, not dead-lettered, never stored by the broker (lost): %s", desc)
		}
		// 3. Sends bounded by the attempts plus what the connection cost.
		if limit := cfg.maxRetries + 1 + allowance; n.sent[c.k] > limit {
			s.violate(3, "written %d times, more than max retries %d + 1 + %d publishing channels ended + %d block and %d stall episodes: %s",
				n.sent[c.k], cfg.maxRetries, n.closures, s.blockEpisodes, s.stallEpisodes, desc)
		}
		// 3b. An attempt counts only when it was written: retries exhausted
		// means at least max retries + 1 writes began before the hook.
		for _, d := range ds {
			if errors.Is(d.err, mlproducer.ErrClosed) {
				continue
			}
			began := 0
			for _, sq := range n.started[c.k] {
				if sq < d.seq {
					began++
				}
			}
			if began < cfg.maxRetries+1 {
				var at []string
				for _, w := range n.startedAt[c.k] {
					at = append(at, w.Sub(s.t0).Round(time.Microsecond).String())
				}
				s.violate(3, "dead-lettered at %v as out of attempts (%d attempts, %v) after only %d writes began (max retries %d; writes began at %v): %s",
					d.at.Sub(s.t0).Round(time.Microsecond), d.attempts, d.err, began, cfg.maxRetries, at, desc)
			}
		}
	}
	if st.Accepted != uint64(accepted) || st.DeadLettered != uint64(len(deadList)) || st.Confirmed+st.DeadLettered != uint64(accepted) {
		s.violate(1, "counters: %d calls accepted, %d dead letters; Status says accepted %d, confirmed %d, dead-lettered %d (confirmed + dead-lettered should be accepted)",
			accepted, len(deadList), st.Accepted, st.Confirmed, st.DeadLettered)
	}
	if st.ConnectionState != mlproducer.Closed || st.RetryQueueSize != 0 || st.PendingConfirms != 0 {
		s.violate(1, "after Close: state %v, retry queue %d, pending confirms %d", st.ConnectionState, st.RetryQueueSize, st.PendingConfirms)
	}

	// 4. Retry queue bound.
	if m := s.maxRetryQ.Load(); m > int64(cfg.retryCap+cfg.maxInFlight) {
		s.violate(4, "the retry queue held %d messages at %v, above capacity %d + max in flight %d",
			m, time.Duration(s.retryQAt.Load()).Round(time.Microsecond), cfg.retryCap, cfg.maxInFlight)
	}

	// 5. Calls bounded by ctx and by the confirm timeout.
	late := 0
	for _, c := range calls {
		limit := c.start.Add(cfg.confirmTimeout)
		why := "the confirm timeout"
		if !c.deadline.IsZero() && c.deadline.Before(limit) {
			limit, why = c.deadline, "its ctx deadline"
		}
		if at := c.cancelAt.Load(); at != 0 && time.Unix(0, at).Before(limit) {
			limit, why = time.Unix(0, at), "its ctx cancellation"
		}
		if c.end.After(limit.Add(simSlack)) {
			late++
			if late <= 5 {
				s.violate(5, "call %d (%s, receipt %v, err %v) returned %v after %s (%v after it began)",
					c.k, c.what, c.rcpt.State, c.err, c.end.Sub(limit), why, c.end.Sub(c.start))
			}
		}
	}
	if late > 5 {
		s.violate(5, "... %d calls late in all", late)
	}

	// 7. Reconnect bursts: with full jitter a single gap may be near 0, but
	// more than 6 dials within one initial backoff interval is a storm.
	dials := slices.Clone(n.dialTimes)
	sort.Slice(dials, func(i, j int) bool { return dials[i].Before(dials[j]) })
	for i := range dials {
		j := i
		for j < len(dials) && dials[j].Sub(dials[i]) < cfg.reconnectInitial {
			j++
		}
		if j-i > 6 {
			s.violate(7, "%d dials within %v from %v (reconnect backoff initial %v; %d dials in all)",
				j-i, dials[j-1].Sub(dials[i]), dials[i].Sub(s.t0).Round(time.Microsecond), cfg.reconnectInitial, len(dials))
			break
		}
	}
	s.logf("end: %d calls, %d accepted, %d dead letters, %d dials, %d publishing channels ended, max retry queue %d; status %+v",
		len(calls), accepted, len(deadList), len(dials), n.closures, s.maxRetryQ.Load(), st)
}
