package mlproducer_test

// A seeded simulation of the Producer, in the spirit of FoundationDB's
// simulation testing: each schedule runs a real Producer against the fake
// broker inside a testing/synctest bubble (fake time), with publishers,
// faults and a Close at random moments, all drawn from one seed, and then
// checks the Guarantees as invariants. A failing schedule prints its seed,
// its configuration and its fault log; `-seed N` replays it.
//
// Every fault is the fake broker's own (package mlproducertest); simNet
// (sim_net_test.go) only observes, per publish call, what the fake does not
// report. Besides the faults at random moments, a schedule may have any of
// these traits: poison (the broker has a maximum message size and
// publishers now and then send a body over it: 406, channel closed);
// NoDeclare (the Producer declares nothing and the exchange is missing
// until an operator declares it, if ever: 404 on every publish, so every
// session dies young); a Close race (publishers in a tight loop, with no
// connection and Status polled in a tight loop, while Close is called with
// an expired or very short ctx: a publish admitted just before Close must
// still be accounted for); shared caller ids with returns and late acks
// from the start (a return must be matched to its exact attempt); slow
// retries, often with confirms held from the start (admission must count
// the messages waiting for their retry); a spool, with crashes and restarts
// (sim_spool_test.go, which also states how the invariants change).
//
// The invariants after Close cannot see an attempt that is never resolved:
// Close hands whatever is left to the dead-letter hook. So half the
// schedules heal before Close (invariant 10, liveness): the publishers stop,
// every fault is lifted (what the broker lost stays lost), and within a
// bound computed from the configuration the Producer must be quiescent
// (every accepted message confirmed or dead-lettered, nothing queued or
// pending, connected, breaker closed) and confirm a new publish. A third of
// those first stall writes for longer than the confirm timeout with
// confirms often lost, while a few calls are made. Publishers and faults then
// run again until Close.
//
// Determinism: the seed decides the configuration, the number of
// publishers, every publisher's calls, deadlines, cancellations and sleeps
// (one generator per publisher), and every fault and its moment (one
// generator for the fault goroutine). synctest makes time exact. What the
// seed does not decide: the interleaving of goroutines that run at the same
// fake instant, the jitter of the Producer's backoffs (cenkalti/backoff
// draws from math/rand's global source), the fake broker's own draws for
// SetFaults (one generator shared by every write, so their order follows the
// interleaving), UUIDv7 message ids, and in a Close race how many calls
// the racers make and where each is when Close runs (that is the point of
// it). A replay therefore runs the same scenario; a violation that depends
// on a race may need a few replays, or -count.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
	"github.com/mlproducer/mlproducer/transport"
)

var (
	simSeed      = flag.Uint64("seed", 0, "TestSimulation: replay exactly the schedule with this seed (0: run -sim.schedules or -sim.duration)")
	simSchedules = flag.Int("sim.schedules", 300, "TestSimulation: number of schedules to run")
	simDuration  = flag.Duration("sim.duration", 0, "TestSimulation: run schedules until this much real time has passed (for make soak); overrides -sim.schedules")
	simBase      = flag.Uint64("sim.base", 0, "TestSimulation: first seed (default 1, or a random one with -sim.duration)")
	simWithout   = flag.String("sim.without", "", "TestSimulation: comma-separated fault kinds or schedule kinds to leave out, to tell which a violation needs: "+strings.Join(simFaultKinds[:], ",")+", and "+strings.Join(simModes, ","))
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
var simFaultKinds = [17]string{"drop", "drop", "refuse", "hangdials", "block", "holdconfirms", "nacknext",
	"setfaults", "setfaults", "deletequeue", "failchannels", "holdevents", "holdevents", "stallwrites",
	"hangchannels", "deleteexchange", "nackheld"}

// simModes names the kinds of schedule that -sim.without can leave out.
var simModes = []string{"poison", "nodeclare", "closerace", "heal", "healstall", "spool", "crash", "restart"}

func simLeftOut(name string) bool {
	return slices.Contains(strings.Split(*simWithout, ","), name)
}

// simSlack is the lateness allowed to every call and to Close.
const simSlack = 50 * time.Millisecond

// Publisher numbers (the k of their calls is number×1,000,000 + call) of the
// publishers after healing, of the calls made while healing stalls writes,
// and of the publish that checks healing.
const (
	simAfterHeal = 100
	simStall     = 800
	simProbe     = 900
)

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

	maxMessageSize int     // the broker's limit (0: none); a poison schedule
	poisonEvery    int     // a publisher sends a body over it one call in poisonEvery
	noDeclare      bool    // WithTopology(NoDeclare); the exchange starts missing
	closeRace      bool    // publishers in a tight loop around Close
	racers         int     // goroutines of the tight loop
	raceCalls      int     // calls they make before Close is called
	raceNoConn     bool    // the race runs with dials refused, connections dropped
	dupShare       float64 // share of calls that reuse one of two caller ids
	holdAtStart    bool    // HoldConfirms(true) from the start
	startFaults    mlproducertest.Faults

	heal      bool          // before Close, lift the faults and check liveness (invariant 10)
	healStall time.Duration // first, once connected, writes stalled this long (over the confirm timeout)
	healLose  float64       // with this share of confirms lost
	healBurst int           // and this many calls at once when the stall begins
	afterHeal time.Duration // then publishers and faults again for this long, until Close

	spool    bool         // WithSpool on a dir of its own (sim_spool_test.go)
	restarts []simRestart // crashes and Closes, each followed by a New on the dir

	traced bool // publishes traced into a span recorder (invariant 11, sim_trace_test.go)
	async  bool // some calls are PublishAsync, and publishers Flush (invariant 12, sim_async_test.go)
	// attemptHeader is WithEnvelope(EnvelopeAttempt): returns then name
	// their attempt; without it (the default envelope) a return matches
	// every identical pending attempt.
	attemptHeader bool
}

// liveBound is how long, once every fault is lifted and the publishers have
// stopped, the Producer may take to be quiescent (invariant 10): an open
// breaker's cooldown, every attempt of a message timing out (its confirm
// lost) and waiting for its retry, a redial after the longest reconnect
// backoff and a connection timeout, a health check; three times that, and 5 s
// for a transport close (2 s at most) and what drains behind.
func (c simConfig) liveBound() time.Duration {
	b := c.breakerCooldown + time.Duration(c.maxRetries+1)*(c.confirmTimeout+c.retryMax) +
		c.reconnectMax + c.connectionTimeout + c.healthInterval
	return 3*b + 5*time.Second
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
	if rng.IntN(3) == 0 && !simLeftOut("poison") {
		c.maxMessageSize = 1024
		c.poisonEvery = 5 + rng.IntN(40)
	}
	if rng.IntN(3) == 0 {
		// Many calls share two caller ids, and some messages come back
		// unroutable with their acks late: a return must be matched to
		// the exact attempt it belongs to.
		c.dupShare = 0.5
		c.startFaults = mlproducertest.Faults{
			ReturnRate:   0.05 + 0.2*rng.Float64(),
			ConfirmDelay: time.Duration(rng.Int64N(int64(2 * c.confirmTimeout))),
			Seed:         rng.Int64(),
		}
	}
	if rng.IntN(3) == 0 {
		// Slow retries: a failed message waits in the retry queue while
		// new publishes take the in-flight slots it left, and time out in
		// turn when the broker does not confirm (often from the start
		// here). Admission must count it.
		c.retryInitial = dur(200*time.Millisecond, time.Second)
		c.retryMax = c.retryInitial * time.Duration(1+rng.IntN(4))
		c.holdAtStart = rng.IntN(2) == 0
	}
	if rng.IntN(8) == 0 && !simLeftOut("nodeclare") {
		c.noDeclare = true
	}
	if rng.IntN(3) == 0 && !simLeftOut("closerace") {
		c.closeRace = true
		c.racers = 3 + rng.IntN(10)
		// Few: Close then has few messages to hand to the hook, and a
		// publish caught between admission and hand-off is more often
		// still there when Close has looked.
		c.raceCalls = 5 + rng.IntN(100)
		c.raceNoConn = rng.IntN(4) > 0
		if rng.IntN(3) > 0 {
			c.closeTimeout = -1
		} else {
			c.closeTimeout = dur(0, 2*time.Millisecond)
		}
		if c.raceNoConn {
			// Room for every racing call: a full queue or an open breaker
			// refuses them all, and a refused call cannot be lost.
			c.retryCap = max(c.retryCap, 1<<20)
			c.breakerThreshold = 1 << 20
		}
	}
	// Drawn last, so that the draws above stay those of older seeds.
	c.traced = rng.IntN(3) == 0
	c.async = rng.IntN(3) == 0
	c.attemptHeader = rng.IntN(2) == 0
	return c
}

func (c simConfig) String() string {
	s := fmt.Sprintf("reconnect %v..%v, retry %v..%v, confirm timeout %v, connection timeout %v, max retries %d, retry queue cap %d, max in flight %d, health %v, breaker %d/%v, publishers %d (gap %v), close after %v with timeout %v, fault gap %v",
		c.reconnectInitial, c.reconnectMax, c.retryInitial, c.retryMax, c.confirmTimeout, c.connectionTimeout,
		c.maxRetries, c.retryCap, c.maxInFlight, c.healthInterval, c.breakerThreshold, c.breakerCooldown,
		c.publishers, c.pubGap, c.runFor, c.closeTimeout, c.faultGap)
	if c.maxMessageSize > 0 {
		s += fmt.Sprintf("; poison: max message size %d, one call in %d over it", c.maxMessageSize, c.poisonEvery)
	}
	if c.noDeclare {
		s += "; NoDeclare, exchange missing"
	}
	if c.closeRace {
		s += fmt.Sprintf("; Close race: %d racers, %d calls, no connection %v", c.racers, c.raceCalls, c.raceNoConn)
	}
	if c.holdAtStart {
		s += "; confirms held from the start"
	}
	if c.attemptHeader {
		s += "; attempt header on"
	}
	if c.dupShare > 0 {
		s += fmt.Sprintf("; %.0f%% of calls share two caller ids; from the start returns %.2f, confirm delay %v",
			100*c.dupShare, c.startFaults.ReturnRate, c.startFaults.ConfirmDelay)
	}
	if c.heal {
		s += "; healed before Close"
		if c.healStall > 0 {
			s += fmt.Sprintf(" after writes stalled for %v with %.2f of confirms lost and %d calls", c.healStall, c.healLose, c.healBurst)
		}
		s += fmt.Sprintf(" (liveness bound %v), then %v more of publishers and faults", c.liveBound(), c.afterHeal)
	}
	if c.spool {
		s += fmt.Sprintf("; spool, capacity %d, restarts %v", c.retryCap+c.maxInFlight, c.restarts)
	}
	if c.traced {
		s += "; traced"
	}
	if c.async {
		s += "; async"
	}
	return s
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
	poison   bool // body over the broker's maximum message size
	racer    bool
	gen      int // the Producer it was made on (spool schedules restart it)

	async    bool                 // a PublishAsync call (sim_async_test.go)
	dlv      *mlproducer.Delivery // its Delivery, if taken
	asyncSeq int64                // its order among the async calls taken
}

// simDead is one call of the dead-letter hook.
type simDead struct {
	k        int // from body, filled in by check
	body     []byte
	id       string
	seq      uint64
	at       time.Time
	attempts int
	err      error
	gen      int // the Producer that called the hook
}

// simResult is what a schedule leaves for the report.
type simResult struct {
	seed       uint64
	cfg        simConfig
	log        []string
	violations []string
	calls      int
	accepted   int
	stats      simStats
}

// simStats counts what the schedules exercised, for the summary.
type simStats struct {
	deadOutOfAttempts int           // dead letters other than by Close
	poison, poisonDLQ int           // poison messages accepted; dead-lettered out of attempts
	raced             int           // calls accepted from racers
	noDeclareDLQ      int           // dead letters out of attempts in NoDeclare schedules
	healed            int           // schedules healed before Close
	settle            time.Duration // the longest a healed Producer took to be quiescent
	spooled           int           // schedules with a spool
	crashes, closes   int           // restarts on the spool: after a crash, after a Close
	recovered         int           // records a restarted Producer found in its spool
	resent            int           // messages written again after a restart although confirmed before it
	leftAtEnd         int           // records left in the spool after the last Close
}

func (a *simStats) add(b simStats) {
	a.deadOutOfAttempts += b.deadOutOfAttempts
	a.poison += b.poison
	a.poisonDLQ += b.poisonDLQ
	a.raced += b.raced
	a.noDeclareDLQ += b.noDeclareDLQ
	a.healed += b.healed
	a.settle = max(a.settle, b.settle)
	a.spooled += b.spooled
	a.crashes += b.crashes
	a.closes += b.closes
	a.recovered += b.recovered
	a.resent += b.resent
	a.leftAtEnd += b.leftAtEnd
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
	var stats simStats
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
		stats.add(r.stats)
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
	t.Logf("exercised: %d dead letters out of attempts (%d in NoDeclare schedules); %d poison messages accepted, %d of them dead-lettered out of attempts; %d calls accepted while racing Close; %d schedules healed before Close, the slowest quiescent after %v",
		stats.deadOutOfAttempts, stats.noDeclareDLQ, stats.poison, stats.poisonDLQ, stats.raced, stats.healed, stats.settle)
	t.Logf("spool: %d schedules with a spool, %d crashes and %d Closes followed by a New on the dir; the new Producers found %d records, wrote %d already confirmed messages again; %d records left after the last Close",
		stats.spooled, stats.crashes, stats.closes, stats.recovered, stats.resent, stats.leftAtEnd)
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
	dir := simSpoolDir(t)
	synctest.Test(t, func(t *testing.T) { simulate(seed, &res, dir) })
	return res
}

// simState is the shared state of one schedule.
type simState struct {
	cfg   simConfig
	t0    time.Time
	b     *mlproducertest.Broker
	net   *simNet
	cur   atomic.Pointer[simGen] // the Producer publishers use; see sim_spool_test.go
	gens  []*simGen              // every Producer of the schedule, in order (the restarter's; read after it ends)
	dir   string                 // the spool dir of a spool schedule
	seed  uint64
	logMu sync.Mutex
	res   *simResult

	closeCalled atomic.Bool
	stopPolls   atomic.Bool // Close race: the Status pollers stop
	lifted      atomic.Bool // the watchdog lifted the faults: add no more
	closeDone   chan struct{}
	maxRetryQ   atomic.Int64
	retryQAt    atomic.Int64 // fake ns since t0 of the max

	deadMu sync.Mutex
	dead   []simDead

	tracing *simTracing // a traced schedule's recorder; nil otherwise

	asyncSeq   atomic.Int64
	asyncMu    sync.Mutex
	asyncCalls []*simCall // the async calls taken, in asyncSeq order

	blockEpisodes, stallEpisodes int         // fault goroutine only
	opDials                      []time.Time // dials of the operator (declareTopology), fault goroutine only
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
	n := int64(s.prod().Status().RetryQueueSize)
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

func simulate(seed uint64, res *simResult, dir string) {
	rng := rand.New(rand.NewPCG(seed, 0x51a1))
	cfg := newSimConfig(rng)
	// Healing has its own generator: the schedule up to it is the one the
	// seed gave before healing existed.
	hrng := rand.New(rand.NewPCG(seed, 0x4ea1))
	if hrng.IntN(2) == 0 && !simLeftOut("heal") {
		cfg.heal = true
		cfg.afterHeal = time.Duration(hrng.Int64N(int64(cfg.runFor) + 1))
		if hrng.IntN(3) == 0 && !simLeftOut("healstall") {
			// A write held by back-pressure past its confirm timeout, its
			// confirm then lost: the attempt must still time out.
			cfg.healStall = cfg.confirmTimeout + simSlack + time.Duration(hrng.Int64N(int64(2*cfg.confirmTimeout)+1))
			cfg.healLose = 0.3 + 0.7*hrng.Float64()
			cfg.healBurst = 1 + hrng.IntN(3)
		}
	}
	spoolTraits(&cfg, rand.New(rand.NewPCG(seed, 0x5b01)))
	res.cfg = cfg
	s := &simState{cfg: cfg, t0: time.Now(), seed: seed, res: res, closeDone: make(chan struct{})}
	if cfg.traced {
		s.tracing = newSimTracing()
	}
	s.b = mlproducertest.NewBroker()
	defer s.b.Close()
	s.b.SetMaxMessageSize(cfg.maxMessageSize)
	s.b.HoldConfirms(cfg.holdAtStart)
	s.b.SetFaults(cfg.startFaults)
	s.net = newSimNet(s.b)
	s.dir = dir
	g := &simGen{}
	p, err := mlproducer.New(s.options(g)...)
	if err != nil {
		s.violate(0, "New: %v", err)
		return
	}
	g.p = p
	s.cur.Store(g)
	s.gens = append(s.gens, g)
	restarted := s.restarter()

	// Publishers, each with its own generator.
	calls := make([][]*simCall, cfg.publishers)
	var pubs sync.WaitGroup
	pubStop := s.closeDone
	if cfg.heal {
		pubStop = make(chan struct{})
	}
	for i := range cfg.publishers {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			calls[i] = s.publisher(i, rand.New(rand.NewPCG(seed, uint64(i)+1)), pubStop)
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

	// Faults, from the main generator, until Close has returned (or until
	// healing, and again after it).
	startFaults := func(rng *rand.Rand, holdConf, exchangeUp bool) (stop, done chan struct{}) {
		stop, done = make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			s.faults(rng, stop, holdConf, exchangeUp)
		}()
		return stop, done
	}
	frng := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
	stopFaults, faultsDone := startFaults(frng, cfg.holdAtStart, !cfg.noDeclare)
	endFaults := func(lift bool) {
		close(stopFaults)
		<-faultsDone
		stopFaults = nil
		if lift {
			s.liftFaults()
		}
	}

	time.Sleep(cfg.runFor)
	<-restarted
	p = s.prod()
	var after [][]*simCall
	if cfg.heal {
		// Liveness: stop the publishers, lift every fault, and the
		// Producer must settle by itself (invariant 10).
		endFaults(false)
		close(pubStop)
		s.await(pubs.Wait, "the publishers' last calls")
		calls = append(calls, s.heal(slices.Concat(calls...)))
		// Then publishers and faults again until Close, as in any
		// schedule, from generators of their own.
		stopFaults, faultsDone = startFaults(rand.New(rand.NewPCG(hrng.Uint64(), hrng.Uint64())), false, true)
		after = make([][]*simCall, cfg.publishers)
		for i := range cfg.publishers {
			pubs.Add(1)
			go func() {
				defer pubs.Done()
				after[i] = s.publisher(simAfterHeal+i, rand.New(rand.NewPCG(seed, uint64(simAfterHeal+i)+1)), s.closeDone)
			}()
		}
		time.Sleep(cfg.afterHeal)
	}

	// Close at a random moment with a random deadline.
	var racers sync.WaitGroup
	racing := make([][]*simCall, cfg.racers)
	if cfg.closeRace {
		if cfg.raceNoConn {
			endFaults(true)
			s.b.RefuseDials(errors.New("sim: connection refused (Close race)"))
			s.b.DropConnections(nil)
		}
		// Racers in a tight loop; Close is called, with no sleep in
		// between (fake time stands still while they spin), once they
		// have made raceCalls calls, so that some are caught between
		// admission and hand-off.
		var made atomic.Int64
		ready := make(chan struct{})
		for i := range cfg.racers {
			racers.Add(1)
			go func() {
				defer racers.Done()
				racing[i] = s.racer(cfg.publishers+i, &made, ready)
			}()
		}
		if cfg.raceNoConn {
			// Monitoring that polls Status (which takes the retry queue's
			// lock) in a tight loop, as a readiness probe might: a racer
			// between admission and hand-off then often waits for that
			// lock while Close looks at the queue. They poll while
			// nothing needs fake time to pass: until Close has returned
			// when its ctx has already expired, else until a racer sees
			// ErrClosed.
			for range 2 {
				racers.Add(1)
				go func() {
					defer racers.Done()
					for !s.stopPolls.Load() {
						s.prod().Status()
					}
				}()
			}
		}
		<-ready
		s.logf("Close race: %d calls made by %d racers", made.Load(), cfg.racers)
	}
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
	s.stopPolls.Store(true)
	cancel()
	close(s.closeDone)
	<-watchdogDone
	s.logf("Close returned after %v: %v", closeEnd.Sub(closeStart), closeErr)
	if closeEnd.After(closeDeadline.Add(simSlack)) {
		s.violate(6, "Close returned %v after its ctx deadline (deadline %v after the call, returned after %v)",
			closeEnd.Sub(closeDeadline), closeDeadline.Sub(closeStart), closeEnd.Sub(closeStart))
	}
	deadAtClose := s.deadCount()

	if stopFaults != nil {
		endFaults(true)
	}
	pubs.Wait()
	racers.Wait()
	close(stopSampler)
	sampler.Wait()
	st := p.Status()
	s.ended(s.cur.Load(), false, closeStart, closeErr, st)
	// Let anything still running (there should be nothing) show itself.
	time.Sleep(time.Second)
	s.b.Close()
	if n := s.deadCount(); n != deadAtClose {
		s.violate(8, "the dead-letter hook was called %d times after Close returned", n-deadAtClose)
	}
	s.check(slices.Concat(slices.Concat(calls...), slices.Concat(after...), slices.Concat(racing...)), st)
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
	s.b.HangChannels(false)
	s.b.StallWrites(false)
	s.b.HoldEvents(false)
	s.b.HangDials(false)
	s.b.RefuseDials(nil)
	s.b.FailChannels(nil)
	s.b.Unblock()
	s.b.HoldConfirms(false)
	s.b.SetFaults(mlproducertest.Faults{})
	s.b.NackNext(0)
}

// heal checks liveness (invariant 10), with the fault goroutine and the
// publishers stopped (calls are theirs) and the faults left as they were.
// Every fault is lifted as an operator would fix the broker, but what is
// lost stays lost: what the broker held (writes stalled or blocked, confirms
// and events held, dials and channel calls hung) is let go first, under the
// confirm faults in force (a confirm it then drops never comes, and the
// Producer must recover by its confirm timeout), and only then do nacks,
// lost confirms and refusals stop; a body over the maximum message size is
// still refused; the topology is declared again in case it was deleted.
// With healStall, every fault is lifted first and, once the Producer is
// connected, writes stall with confirms often lost while healBurst calls are
// made, for longer than the confirm timeout: the writes return after their
// callers were answered. Within liveBound, plus one session per attempt of
// every poison message still held (each attempt costs the channel), every
// accepted message must be final (confirmed or dead-lettered), the retry
// queue empty, nothing pending, the Producer connected and its breaker
// closed; then a new publish must be confirmed. It returns the calls it
// made, that publish last.
func (s *simState) heal(calls []*simCall) []*simCall {
	cfg := s.cfg
	var made []*simCall
	if cfg.healStall > 0 {
		s.liftFaults()
		s.declareTopology()
		start := time.Now()
		for st := s.prod().Status(); (st.ConnectionState != mlproducer.Connected || st.CircuitBreakerOpen) && time.Since(start) < cfg.liveBound(); st = s.prod().Status() {
			time.Sleep(5 * time.Millisecond)
		}
		s.logf("heal: every fault lifted; connected after %v; writes stall for %v, %.2f of confirms lost, %d calls", time.Since(start), cfg.healStall, cfg.healLose, cfg.healBurst)
		s.b.SetFaults(mlproducertest.Faults{LoseConfirmRate: cfg.healLose, Seed: int64(s.seed)})
		s.b.StallWrites(true)
		made = make([]*simCall, cfg.healBurst)
		var wg sync.WaitGroup
		for i := range made {
			made[i] = &simCall{k: simStall*1_000_000 + i}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.call(made[i], rand.New(rand.NewPCG(s.seed, simStall+uint64(i))))
			}()
		}
		time.Sleep(cfg.healStall)
		s.await(wg.Wait, "the calls made while writes stall") // each is back by the confirm timeout, within healStall
		calls = append(slices.Clone(calls), made...)
	}
	s.logf("heal: %d calls made, publishers stopped; the broker lets go of what it holds", len(calls))
	s.b.StallWrites(false)
	s.b.Unblock()
	s.b.HangChannels(false)
	s.b.HangDials(false)
	s.b.HoldEvents(false)
	s.b.HoldConfirms(false)
	synctest.Wait()
	s.liftFaults()
	s.declareTopology()
	dead := map[int]bool{}
	s.deadMu.Lock()
	for _, d := range s.dead {
		dead[tokenOf(d.body)] = true
	}
	s.deadMu.Unlock()
	poison := 0
	for _, c := range calls {
		if c.err == nil && c.poison && !dead[c.k] {
			poison++
		}
	}
	bound := cfg.liveBound() + time.Duration(poison*(cfg.maxRetries+1))*(cfg.reconnectMax+cfg.connectionTimeout+cfg.retryMax)
	s.logf("heal: every fault lifted (%d poison messages held); quiescent within %v?", poison, bound)
	start := time.Now()
	quiet := func(st mlproducer.Status) bool {
		// A Producer started on a spool also settles what it found there.
		return st.Accepted+uint64(s.cur.Load().recovered) == st.Confirmed+st.DeadLettered && st.RetryQueueSize == 0 && st.PendingConfirms == 0 &&
			st.ConnectionState == mlproducer.Connected
	}
	// The breaker may have opened on the last failures: once its cooldown
	// is over, the health check (a millisecond later) closes it, or with no
	// health check it lets the next publish through as its probe. Nothing
	// can open it once every message is final and the Producer connected.
	var quietAt time.Time
	settled := func(st mlproducer.Status) bool {
		if !quiet(st) {
			quietAt = time.Time{}
			return false
		}
		if quietAt.IsZero() {
			quietAt = time.Now()
		}
		return !st.CircuitBreakerOpen || cfg.healthInterval == 0 && time.Since(quietAt) > cfg.breakerCooldown
	}
	st := s.prod().Status()
	for !settled(st) && time.Since(start) < bound {
		time.Sleep(5 * time.Millisecond)
		st = s.prod().Status()
	}
	s.res.stats.healed++
	if settled(st) {
		s.res.stats.settle = time.Since(start)
		s.logf("heal: quiescent after %v", time.Since(start))
	} else {
		s.violate(10, "%v after every fault was lifted and the publishers stopped (bound %v from the config), the Producer is not quiescent (every message final, nothing queued or pending, connected, breaker closed or past its cooldown): accepted %d, confirmed %d, dead-lettered %d (%d neither), retry queue %d, pending confirms %d, state %v, breaker open %v, last error %q; %s",
			time.Since(start), bound, st.Accepted, st.Confirmed, st.DeadLettered, int64(st.Accepted)-int64(st.Confirmed+st.DeadLettered),
			st.RetryQueueSize, st.PendingConfirms, st.ConnectionState, st.CircuitBreakerOpen, st.LastError, s.unresolved(calls))
	}

	c := &simCall{k: simProbe * 1_000_000, what: "publish after healing", typ: mlproducer.TaskSummarization}
	made = append(made, c)
	c.deadline = time.Now().Add(10 * time.Second)
	ctx, cancel := context.WithDeadline(context.Background(), c.deadline)
	defer cancel()
	g := s.cur.Load()
	c.gen = g.n
	c.start = time.Now()
	c.rcpt, c.err = g.p.Publish(ctx, mlproducer.Message{Type: c.typ, Body: []byte(`{"sim":"simk` + strconv.Itoa(c.k) + `x"}`)})
	c.end = time.Now()
	s.logf("heal: a new publish: %v, %v after %v", c.rcpt.State, c.err, c.end.Sub(c.start))
	if c.err != nil || c.rcpt.State != mlproducer.Confirmed {
		st := s.prod().Status()
		s.violate(10, "after healing a new publish returned receipt %v, err %v after %v, not confirmed; state %v, breaker open %v, retry queue %d, pending confirms %d, last error %q",
			c.rcpt.State, c.err, c.end.Sub(c.start), st.ConnectionState, st.CircuitBreakerOpen, st.RetryQueueSize, st.PendingConfirms, st.LastError)
	}
	return made
}

// await runs wait, which waits for publish calls to return (by the confirm
// timeout, invariant 5) while faults may be in force. If they take much
// longer, which check reports, every fault is lifted so that the schedule
// ends (with the sampler ticking, fake time never stops for the bubble to
// report a deadlock).
func (s *simState) await(wait func(), what string) {
	done := make(chan struct{})
	go func() {
		wait()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-time.After(s.cfg.confirmTimeout + 5*time.Second):
	}
	s.logf("heal: %s still running %v past the confirm timeout; lifting every fault", what, 5*time.Second)
	s.liftFaults()
	<-done
}

// unresolved describes the accepted calls that are neither acked (a plain
// ack of one of their writes) nor dead-lettered, with their writes.
func (s *simState) unresolved(calls []*simCall) string {
	dead := map[int]bool{}
	s.deadMu.Lock()
	for _, d := range s.dead {
		dead[tokenOf(d.body)] = true
	}
	s.deadMu.Unlock()
	n := s.net
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	total := 0
	for _, c := range calls {
		if c.err != nil || dead[c.k] || slices.ContainsFunc(n.writes[c.k], func(w *simWrite) bool { return w.acked && !w.bounced }) {
			continue
		}
		total++
		if len(out) == 5 {
			continue
		}
		var ws []string
		for _, w := range n.writes[c.k] {
			ret := "never returned"
			if w.returned {
				ret = fmt.Sprintf("returned at %v", w.returnedAt.Sub(s.t0).Round(time.Microsecond))
			}
			ws = append(ws, fmt.Sprintf("%v(attempt %d, %s, tag %d, ack %v, nack %v, return %v, channel refused it %v)",
				w.began.Sub(s.t0).Round(time.Microsecond), w.n, ret, w.tag, w.acked, w.nacked, w.bounced, w.ch.messageClosed))
		}
		out = append(out, fmt.Sprintf("call %d (%s, receipt %v, started %v, returned after %v): writes %v",
			c.k, c.what, c.rcpt.State, c.start.Sub(s.t0).Round(time.Microsecond), c.end.Sub(c.start), ws))
	}
	return fmt.Sprintf("%d accepted calls neither acked nor dead-lettered: %s", total, strings.Join(out, "; "))
}

// publisher makes random calls until stop is closed (Close has returned, or
// the faults are lifted for healing).
func (s *simState) publisher(i int, rng *rand.Rand, stop <-chan struct{}) []*simCall {
	var out []*simCall
	for j := 0; ; j++ {
		select {
		case <-stop:
			return out
		default:
		}
		if rng.IntN(8) > 0 {
			time.Sleep(time.Duration(rng.Int64N(2*int64(s.cfg.pubGap) + 1)))
		}
		if s.cfg.async && rng.IntN(40) == 0 {
			s.flush(rng.Int64N(int64(4*s.cfg.confirmTimeout)) + 1)
		}
		c := &simCall{k: i*1_000_000 + j}
		out = append(out, c)
		s.call(c, rng)
		s.sample()
	}
}

// racer makes calls with no pause until one fails with ErrClosed; it closes
// ready when the racers together have made raceCalls calls. Its loop is
// lean (no deadline, no caller id, a prebuilt body) so that most of its time
// is spent inside Publish, between admission and hand-off among others.
func (s *simState) racer(i int, made *atomic.Int64, ready chan struct{}) []*simCall {
	out := make([]*simCall, 0, 1024)
	typ := simTypes[i%len(simTypes)]
	ctx := context.Background()
	for j := 0; ; j++ {
		c := &simCall{k: i*1_000_000 + j, racer: true, what: "publish", typ: typ}
		out = append(out, c)
		body := []byte(`{"sim":"simk` + strconv.Itoa(c.k) + `x"}`)
		g := s.cur.Load()
		c.gen = g.n
		c.start = time.Now()
		c.rcpt, c.err = g.p.Publish(ctx, mlproducer.Message{Type: typ, Body: body})
		c.end = time.Now()
		if made.Add(1) == int64(s.cfg.raceCalls) {
			close(ready)
		}
		if errors.Is(c.err, mlproducer.ErrClosed) {
			if s.cfg.closeTimeout >= 0 {
				s.stopPolls.Store(true) // Close waits for its ctx: let time pass
			}
			return out
		}
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
	c.poison = s.cfg.poisonEvery > 0 && rng.IntN(s.cfg.poisonEvery) == 0
	dup := rng.Float64() < s.cfg.dupShare
	g := s.cur.Load()
	c.gen = g.n
	c.start = time.Now()
	async := s.cfg.async && rng.IntN(3) == 0
	switch r := rng.IntN(10); {
	case async && !c.poison:
		c.what, c.typ = "async", simTypes[rng.IntN(len(simTypes))]
		if dup {
			c.callerID = fmt.Sprintf("dup-%d", rng.IntN(2))
		}
		s.publishAsync(ctx, c, g.p, mlproducer.Message{Type: c.typ, ID: c.callerID, Body: []byte(`{"sim":"` + token + `"}`)})
	case dup && !c.poison: // one of two caller ids that many calls share
		c.what, c.typ, c.callerID = "publish", simTypes[rng.IntN(len(simTypes))], fmt.Sprintf("dup-%d", rng.IntN(2))
		c.rcpt, c.err = g.p.Publish(ctx, mlproducer.Message{Type: c.typ, ID: c.callerID, Body: []byte(`{"sim":"` + token + `"}`)})
	case c.poison: // a body the broker refuses (406): it must end in the dead-letter hook
		c.what, c.typ = "poison", simTypes[rng.IntN(len(simTypes))]
		pad := strings.Repeat("p", s.cfg.maxMessageSize+rng.IntN(512))
		c.rcpt, c.err = g.p.Publish(ctx, mlproducer.Message{Type: c.typ, Body: []byte(`{"sim":"` + token + `","pad":"` + pad + `"}`)})
	case r < 2:
		c.what, c.typ = "summarization", mlproducer.TaskSummarization
		c.rcpt, c.err = g.p.PublishSummarization(ctx, token, "some text to summarise", mlproducer.SummarizationOptions{})
	case r < 4:
		c.what, c.typ = "transcription", mlproducer.TaskTranscription
		c.rcpt, c.err = g.p.PublishTranscription(ctx, token, "https://media.example/a.mp3", mlproducer.TranscriptionOptions{})
	case r < 6:
		c.what, c.typ = "embedding", mlproducer.TaskEmbedding
		c.rcpt, c.err = g.p.PublishEmbedding(ctx, token, "some text to embed", mlproducer.EmbeddingOptions{})
	default:
		c.what, c.typ = "publish", simTypes[rng.IntN(len(simTypes))]
		switch rng.IntN(4) {
		case 0: // a reused caller id, shared by several calls
			c.callerID = fmt.Sprintf("dup-%d", rng.IntN(3))
		case 1:
			c.callerID = "id-" + token
		}
		c.rcpt, c.err = g.p.Publish(ctx, mlproducer.Message{Type: c.typ, ID: c.callerID, Body: []byte(`{"sim":"` + token + `"}`)})
	}
	c.end = time.Now()
}

// faults applies a random fault every faultGap or so (never sooner than the
// reconnect backoff's initial interval after the last one, see invariant 7)
// until stop, and leaves them as they are. holdConf and exchangeUp say whether
// confirms are held and the exchange exists when it starts (NoDeclare: the
// exchange is missing until the operator declares it).
func (s *simState) faults(rng *rand.Rand, stop chan struct{}, holdConf, exchangeUp bool) {
	var blocked, stalled, hung, held, refused, hangDials, failCh bool
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
		r := rng.IntN(len(simFaultKinds))
		if simLeftOut(simFaultKinds[r]) {
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
			f.MultipleNacks = rng.IntN(2) == 0
			if rng.IntN(4) == 0 {
				f = mlproducertest.Faults{}
			}
			s.logf("fault: SetFaults(nack %.2f, lose %.2f, return %.2f, delay %v, multiple acks %v, multiple nacks %v)",
				f.NackRate, f.LoseConfirmRate, f.ReturnRate, f.ConfirmDelay, f.MultipleAcks, f.MultipleNacks)
			s.b.SetFaults(f)
		case 9:
			if blocked || stalled { // writes held by the fake hold the lock deleteQueue takes
				continue
			}
			q := simQueues[simTypes[rng.IntN(len(simTypes))]]
			if s.cfg.noDeclare {
				s.logf("fault: DeleteQueue(%s) (until the operator declares the topology)", q)
			} else {
				s.logf("fault: DeleteQueue(%s) (declared again on the next connection)", q)
			}
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
			s.logf("fault: HoldEvents(%v): returns and acks held together", held)
			s.b.HoldEvents(held)
		case 13:
			stalled = !stalled
			if stalled {
				s.stallEpisodes++
			}
			s.logf("fault: StallWrites(%v): writes blocked with no connection.blocked", stalled)
			s.b.StallWrites(stalled)
		case 14:
			hung = !hung
			s.logf("fault: HangChannels(%v): channel.open, declarations and confirm.select unanswered", hung)
			s.b.HangChannels(hung)
		case 15:
			switch {
			case !exchangeUp && (refused || hangDials || failCh || hung):
				continue // the operator could not get in either
			case !exchangeUp:
				s.logf("fault: the operator declares the topology")
				s.declareTopology()
				exchangeUp = true
			case s.cfg.noDeclare:
				s.logf("fault: DeleteExchange(ml.tasks) (until the operator declares it again)")
				s.b.DeleteExchange("ml.tasks")
				exchangeUp = false
			default:
				s.logf("fault: DeleteExchange(ml.tasks) (declared again on the next connection)")
				s.b.DeleteExchange("ml.tasks")
			}
		case 16:
			// Nacks held, then released together: a multiple nack when
			// MultipleNacks is on.
			n := 2 + rng.IntN(4)
			s.logf("fault: NackNext(%d) with HoldConfirms(true)", n)
			s.b.NackNext(n)
			if !holdConf {
				holdConf = true
				s.b.HoldConfirms(true)
			}
		}
	}
}

// declareTopology declares the Producer's default topology as an operator
// would, on a connection of its own (its dial is left out of invariant 7),
// with the arguments the Producer declares it with, so that either may
// declare it again.
// Call it only when no fault holds or refuses dials and channels.
func (s *simState) declareTopology() {
	s.opDials = append(s.opDials, time.Now())
	conn, err := s.b.Dial(context.Background(), "sim-operator", transport.Config{})
	if err != nil {
		s.logf("operator: dial: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		s.logf("operator: channel: %v", err)
		return
	}
	defer ch.Close()
	if err := ch.ExchangeDeclare("ml.tasks", "direct", true, nil); err != nil {
		s.logf("operator: %v", err)
		return
	}
	for _, q := range simQueues {
		if err := ch.QueueDeclare(q, true, transport.Table{"x-queue-type": string(mlproducer.QueueClassic)}); err != nil {
			s.logf("operator: %v", err)
			return
		}
		if err := ch.QueueBind(q, q, "ml.tasks"); err != nil {
			s.logf("operator: %v", err)
			return
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
			k := tokenOf(d.Body)
			stored[k]++
			// 13. A stored message's body is its own: the Producer recycles
			// its copies of bodies, and one given back too early would be
			// sent as (part of) another message.
			if c := byK[k]; c != nil && c.err == nil && c.rcpt.MessageID != "" && d.MessageID != c.rcpt.MessageID {
				s.violate(13, "a message with id %s is stored with the body of call %d, whose id is %s", d.MessageID, k, c.rcpt.MessageID)
			}
		}
	}
	for k, ws := range n.writes {
		c := byK[k]
		if c == nil || c.err != nil || c.rcpt.MessageID == "" {
			continue
		}
		for _, w := range ws {
			if w.id != c.rcpt.MessageID {
				s.violate(13, "a publishing with id %s was written with the body of call %d, whose id is %s", w.id, k, c.rcpt.MessageID)
				break
			}
		}
	}
	if n.unmatched > 0 || stored[-1] > 0 || len(n.mismatch) > 0 {
		s.violate(0, "harness: %d writes and %d stored messages carry no call token; tags: %v", n.unmatched, stored[-1], n.mismatch)
	}

	dead := map[int][]simDead{}
	s.deadMu.Lock()
	deadList := slices.Clone(s.dead)
	s.deadMu.Unlock()
	for _, d := range deadList {
		d.k = tokenOf(d.body)
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
		if c.err != nil && (len(n.writes[c.k]) > 0 || stored[c.k] > 0) {
			s.violate(9, "call %d (%s) was refused (%v) but its message was written %d times, stored %d times", c.k, c.what, c.err, len(n.writes[c.k]), stored[c.k])
		}
	}

	// 1 and 2. Every accepted message ends exactly one way; confirmed means stored.
	allowance := n.closures + s.blockEpisodes + s.stallEpisodes
	for _, c := range calls {
		if c.err != nil {
			continue
		}
		ds := dead[c.k]
		sent := n.sent(c.k)
		what := c.what
		if c.racer {
			what += ", racing Close"
		}
		desc := fmt.Sprintf("call %d (%s %s, id %s, caller id %q, receipt %v, started %v, returned after %v): written %d times, stored %d times, dead-lettered %d times",
			c.k, what, c.typ, c.rcpt.MessageID, c.callerID, c.rcpt.State, c.start.Sub(s.t0).Round(time.Microsecond), c.end.Sub(c.start), sent, stored[c.k], len(ds))
		if len(ds) > 1 && !s.deadAgainAllowed(ds) {
			s.violate(1, "the dead-letter hook was called more than once: %s", desc)
		}
		if c.rcpt.State == mlproducer.Confirmed && len(ds) > 0 && !s.confirmedThenDeadAllowed(c, ds) {
			s.violate(1, "reported confirmed and dead-lettered: %s", desc)
		}
		if c.rcpt.State == mlproducer.DeadLettered && len(ds) == 0 {
			s.violate(1, "receipt says dead-lettered, the hook never got it: %s", desc)
		}
		if c.rcpt.State == mlproducer.Confirmed && stored[c.k] == 0 {
			s.violate(2, "reported confirmed, never stored by the broker: %s", desc)
		} else if len(ds) == 0 && stored[c.k] == 0 && !s.leftInSpool(c) {
			s.violate(2, "accepted, not dead-lettered, never stored by the broker, not left in the spool (lost): %s", desc)
		}
		if c.poison && stored[c.k] > 0 {
			s.violate(0, "harness: a poison message was stored: %s", desc)
		}
		// 3. Sends bounded by the attempts plus what the connection cost.
		if limit := cfg.maxRetries + 1 + allowance + s.restartAllowance(c.k); sent > limit {
			s.violate(3, "written %d times, more than max retries %d + 1 + %d publishing channels ended + %d block and %d stall episodes + %d for the restarts of the spool: %s",
				sent, cfg.maxRetries, n.closures, s.blockEpisodes, s.stallEpisodes, s.restartAllowance(c.k), desc)
		}
		if c.poison {
			s.res.stats.poison++
		}
		if c.racer {
			s.res.stats.raced++
		}
		for _, d := range ds {
			if errors.Is(d.err, mlproducer.ErrClosed) {
				continue
			}
			s.res.stats.deadOutOfAttempts++
			if c.poison {
				s.res.stats.poisonDLQ++
			}
			if cfg.noDeclare {
				s.res.stats.noDeclareDLQ++
			}
			s.checkCharged(c, d, desc)
		}
	}
	s.checkTracing(calls, dead)
	s.checkAsync(calls, stored, dead)
	if cfg.spool {
		s.checkSpool(calls, byK, dead)
	} else if st.Accepted != uint64(accepted) || st.DeadLettered != uint64(len(deadList)) || st.Confirmed+st.DeadLettered != uint64(accepted) {
		s.violate(1, "counters: %d calls accepted, %d dead letters; Status says accepted %d, confirmed %d, dead-lettered %d (confirmed + dead-lettered should be accepted)",
			accepted, len(deadList), st.Accepted, st.Confirmed, st.DeadLettered)
	}
	if st.ConnectionState != mlproducer.Closed || st.RetryQueueSize != s.cur.Load().leftCount() || st.PendingConfirms != 0 {
		s.violate(1, "after Close: state %v, retry queue %d (records left in the spool %d), pending confirms %d", st.ConnectionState, st.RetryQueueSize, s.cur.Load().leftCount(), st.PendingConfirms)
	}

	// 4. Retry queue bound, as sampled, and the bound of admission: the
	// messages held (accepted, not yet final), wherever they are.
	if m := s.maxRetryQ.Load(); m > int64(cfg.retryCap+cfg.maxInFlight+s.staleRecords()) {
		s.violate(4, "the retry queue held %d messages at %v, above capacity %d + max in flight %d + %d records of confirmed messages a restart found",
			m, time.Duration(s.retryQAt.Load()).Round(time.Microsecond), cfg.retryCap, cfg.maxInFlight, s.staleRecords())
	}
	if m, at := s.maxHeld(calls, dead); m > cfg.retryCap+cfg.maxInFlight {
		s.violate(4, "at %v the Producer held at least %d messages accepted and not yet confirmed or dead-lettered, above retry queue capacity %d + max in flight %d",
			at.Sub(s.t0).Round(time.Microsecond), m, cfg.retryCap, cfg.maxInFlight)
	}

	// 5. Calls bounded by ctx and by the confirm timeout.
	late := 0
	for _, c := range calls {
		limit := c.start.Add(cfg.confirmTimeout)
		why := "the confirm timeout"
		if c.async {
			// Its ctx bounds the hand-off, which may wait for room.
			if c.deadline.IsZero() && c.cancelAt.Load() == 0 {
				continue
			}
			limit, why = c.start.Add(24*time.Hour), "its ctx"
		}
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
	// The dials are the fake's, less the operator's.
	dials := s.b.DialTimes()
	for _, t := range s.opDials {
		if i := slices.IndexFunc(dials, t.Equal); i >= 0 {
			dials = slices.Delete(dials, i, i+1)
		}
	}
	sort.Slice(dials, func(i, j int) bool { return dials[i].Before(dials[j]) })
	dials = s.startDials(dials)
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
	s.logf("end: %d calls, %d accepted, %d dead letters (%d out of attempts), %d dials, %d publishing channels ended, max retry queue %d; status %+v",
		len(calls), accepted, len(deadList), s.res.stats.deadOutOfAttempts, len(dials), n.closures, s.maxRetryQ.Load(), st)
}

// maxHeld returns a lower bound of the most messages the Producer held at
// once, and when: a message counts from the moment its call returned with
// a nil error until the first plain ack (not after a basic.return) of any
// of its writes or its dead-letter hook call, whichever is first; the
// Producer took it before the first and lets it go after the second. At one
// fake instant every end is counted before any start. Call with s.net.mu
// held.
func (s *simState) maxHeld(calls []*simCall, dead map[int][]simDead) (int, time.Time) {
	type ev struct {
		at    time.Time
		delta int
	}
	var evs []ev
	for _, c := range calls {
		if c.err != nil {
			continue
		}
		var end time.Time
		for _, d := range dead[c.k] {
			if end.IsZero() || d.at.Before(end) {
				end = d.at
			}
		}
		for _, w := range s.net.writes[c.k] {
			if w.acked && !w.bounced && (end.IsZero() || w.ackedAt.Before(end)) {
				end = w.ackedAt
			}
		}
		if !end.IsZero() && !c.end.Before(end) {
			continue // final before its call returned
		}
		evs = append(evs, ev{c.end, 1})
		if !end.IsZero() {
			evs = append(evs, ev{end, -1})
		}
	}
	sort.Slice(evs, func(i, j int) bool {
		if !evs[i].at.Equal(evs[j].at) {
			return evs[i].at.Before(evs[j].at)
		}
		return evs[i].delta < evs[j].delta
	})
	held, most := 0, 0
	var at time.Time
	for _, e := range evs {
		held += e.delta
		if held > most {
			most, at = held, e.at
		}
	}
	return most, at
}

// checkCharged checks a dead letter for running out of attempts (invariant
// 3): every attempt it spent was a write that reached the broker, and the
// last one failed before the hook was called: the broker nacked or returned
// it, closed its channel for a message-level reason (403, 404, 406), or its
// confirm timeout had passed since the write returned. An attempt charged
// twice, or a late answer to an earlier attempt charged to a retry that is
// still in flight, fails this. Call with s.net.mu held.
func (s *simState) checkCharged(c *simCall, d simDead, desc string) {
	var before []*simWrite
	returned := 0
	for _, w := range s.net.writes[c.k] {
		if w.seq < d.seq {
			before = append(before, w)
			if w.returned {
				returned++
			}
		}
	}
	var at []string
	for _, w := range before {
		at = append(at, fmt.Sprintf("%v(attempt %d, returned %v, ack %v, nack %v, return %v, channel refused it %v)",
			w.began.Sub(s.t0).Round(time.Microsecond), w.n, w.returned, w.acked, w.nacked, w.bounced, w.ch.messageClosed))
	}
	if returned < s.cfg.maxRetries+1 {
		s.violate(3, "dead-lettered at %v as out of attempts (%d attempts, %v) after only %d writes reached the broker (max retries %d; writes %v): %s",
			d.at.Sub(s.t0).Round(time.Microsecond), d.attempts, d.err, returned, s.cfg.maxRetries, at, desc)
		return
	}
	last := before[len(before)-1]
	failed := last.nacked || last.bounced ||
		last.returned && (last.ch.messageClosed || !d.at.Before(last.returnedAt.Add(s.cfg.confirmTimeout)))
	if !failed {
		s.violate(3, "dead-lettered at %v as out of attempts (%d attempts, %v) while its last write (attempt %d, returned at %v) had not failed: not nacked, returned or refused, and its confirm timeout %v not over (writes %v): %s",
			d.at.Sub(s.t0).Round(time.Microsecond), d.attempts, d.err, last.n, last.returnedAt.Sub(s.t0).Round(time.Microsecond), s.cfg.confirmTimeout, at, desc)
	}
}
