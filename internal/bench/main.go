// Command bench measures mlproducer's Producer against raw amqp091-go on a
// real RabbitMQ (RABBITMQ_URL, default amqp://guest:guest@127.0.0.1:5672/),
// in one process, with the cases interleaved and repeated so that drift hits
// them alike, and prints a markdown table, the Producer/raw ratios checked
// against the targets of issue 5, and a delivery check of every case.
//
//	go run ./internal/bench               # the full run (about 10 minutes, 7 more for the envelope cases)
//	go run ./internal/bench -quick        # about a minute: 1 s cases, 1 KiB only
//	go run ./internal/bench -only '^producer-publish-64$' -sizes 1024 -cpuprofile cpu.prof
//	go run ./internal/bench -json /tmp/bench.json  # also the results as JSON, for internal/bench/chart
//
// Cases, for each body size and caller count N:
//
//   - raw-N: N goroutines share one amqp091-go channel in confirm mode; each
//     publishes and waits for its own DeferredConfirmation.
//   - raw-window256: one goroutine keeps 256 confirms outstanding (the upper
//     bound with confirms); -raw-windows adds other windows, e.g. 64, the
//     most any client gets from 64 messages in flight.
//   - raw-noconfirm: one goroutine publishes without confirms (the broker's
//     ingest ceiling).
//   - producer-publish-N: N goroutines call Producer.Publish with a prebuilt
//     JSON body of the size.
//   - producer-summarization-N: N goroutines call
//     Producer.PublishSummarization with content of the size (so the body
//     is a little larger, and its encoding is part of the call).
//   - retry-drain: the retry queue of a Producer that cannot reach the broker
//     is filled with 1 KiB messages; its heap is measured, then it connects
//     and the drain rate is compared with steady publishing.
//   - producer-spool-publish-N (1 KiB only): producer-publish-N with
//     WithSpool, beside it; spool-drain: retry-drain with the spool;
//     spool-heap: the heap of a Producer holding 1,000,000 spooled messages
//     (fake broker, dials refused; once per run, not under -quick). The
//     spool dirs go under -spool-dir, whose filesystem is printed. Issue
//     10's targets are checked in a table of their own.
//   - producer-async-wN (-async-windows): one goroutine calls
//     Producer.PublishAsync with WithMaxInFlight(N), against raw-window256.
//   - raw-64-env-P (issue 13 item 5): raw-64 publishing to the Producer's
//     exchange (ml.tasks; queue bench.env, a classic queue like the
//     Producer's, routing key bench.env) a persistent message
//     with one envelope property P on top: msgid, timestamp, type, appid,
//     ctype (content type), attempt (the attempt header), mandatory (the
//     flag); bare has none, keep has message id, content type and mandatory,
//     props every property and mandatory but no headers table, all
//     everything the Producer sent before issue 13. The report
//     gives each as a ratio to bare, round by round (-only 'raw-64-env'),
//     and so producer-publish-64 (the default envelope) and
//     producer-publish-64-envall (WithEnvelope(EnvelopeAll)) when they ran.
//   - raw-N-quorum and producer-publish-N-quorum (N = 1, 64; -cluster): the
//     same as raw-N and producer-publish-N on a quorum queue of the local
//     3-node cluster (scripts/rabbitmq-cluster.sh, started if needed).
//
// Every message is persistent and goes to a durable classic queue. Each case
// warms up, then is measured for -duration: msg/s counts the calls that got
// their confirm inside the window, latency runs from the call to its confirm,
// and CPU is the whole process's (getrusage: user+system, Go runtime and GC
// included) over the window divided by the messages. After each case, the
// queue must hold every confirmed message (the Producer may add duplicates,
// never lose one); a mismatch is reported and the exit status is 1.
//
// The benchmark uses its own virtual host (-vhost, created with rabbitmqctl on
// a local broker if missing) so that it neither purges nor fills the queues of
// integration tests running on the same broker, and it holds the integration
// tests' shared broker lock during each case.
//
// Progress goes to stderr; the report (markdown) to stdout.
package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mlproducer/mlproducer/internal/rabbittest"
)

// quorumCallers are the caller counts of the quorum cases (-cluster).
var quorumCallers = []int{1, 64}

type config struct {
	duration   time.Duration
	warmup     time.Duration
	repeat     int
	sizes      []int
	callers    []int
	only       *regexp.Regexp
	vhost      string
	drainMsgs  int
	cpuprofile string
	// rawChannels spreads raw-N's callers over this many channels.
	rawChannels int
	// rawWindows are the windows of the raw-window cases.
	rawWindows []int
	// asyncWindows are the WithMaxInFlight values of the producer-async
	// cases.
	asyncWindows []int
	// spoolBase is where the spool cases make their dirs; spoolFS says
	// which filesystem that is.
	spoolBase string
	spoolFS   string
	// spoolHeapMsgs is the spool-heap case's message count (0: skipped).
	spoolHeapMsgs int
	// asyncHeapMsgs and asyncHeapWindow are the async-heap case's calls
	// (0: skipped) and WithMaxInFlight.
	asyncHeapMsgs, asyncHeapWindow int
	// cluster adds the quorum cases, on the local 3-node cluster.
	cluster bool
	// jsonPath, if set, is where the results go as JSON (-json).
	jsonPath string
}

type env struct {
	cfg   config
	url   string
	lock  *brokerLock
	probe *probe
	// clusterURL is the cluster node the quorum cases use, raw and
	// Producer alike (its first; the queues' leaders are placed there).
	clusterURL string
	bodies     map[int][]byte // prebuilt task bodies by size
	contents   map[int]string // summarization contents by size
}

func main() { os.Exit(run()) }

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func parseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive whole number", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("empty list")
	}
	return out, nil
}

func parseFlags() (config, error) {
	var (
		cfg              config
		sizes, callers   string
		windows          string
		asyncWindows     string
		only             string
		quick            bool
		duration, warmup time.Duration
	)
	flag.DurationVar(&duration, "duration", 5*time.Second, "measured time of each case, after its warm-up")
	flag.DurationVar(&warmup, "warmup", 0, "unmeasured time at the start of each case (default duration/10, within 100ms..300ms)")
	flag.IntVar(&cfg.repeat, "repeat", 3, "rounds; each case runs once per round and the median is reported")
	flag.StringVar(&sizes, "sizes", "1024,16384", "body sizes in bytes, comma-separated")
	flag.StringVar(&callers, "callers", "1,16,64,256", "concurrent callers, comma-separated")
	flag.BoolVar(&quick, "quick", false, "a run of about a minute: -duration 1s -sizes 1024 -drain-messages 20000 (flags given explicitly win)")
	flag.StringVar(&only, "only", "", "run only the cases whose name matches this regexp (e.g. '^producer-publish-64$', 'retry-drain')")
	flag.StringVar(&cfg.vhost, "vhost", "mlproducer-bench", "virtual host to use, created if missing on a local broker; empty: the URL's own")
	flag.IntVar(&cfg.drainMsgs, "drain-messages", 100_000, "messages queued in the retry-drain case")
	flag.StringVar(&cfg.cpuprofile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.StringVar(&windows, "raw-windows", "1,16,64,256,1024,4096", "confirms kept outstanding by the raw-window cases, comma-separated: raw-windowN is the ideal client with N in flight, which producer-publish-N is compared with (N = 1, 16, 64, 256), and the larger ones are drawn beside producer-async-wN")
	flag.StringVar(&asyncWindows, "async-windows", "64,256,1024,4096", "WithMaxInFlight of the producer-async-wN cases (one goroutine calling PublishAsync), comma-separated")
	flag.IntVar(&cfg.rawChannels, "raw-channels", 1, "spread the callers of raw-N over this many channels of its connection (cases then named raw-N-chK; the ratios need 1)")
	flag.StringVar(&cfg.spoolBase, "spool-dir", os.TempDir(), "where the spool cases make their dirs: on a real disk, not tmpfs (the filesystem is printed)")
	flag.IntVar(&cfg.spoolHeapMsgs, "spool-heap-messages", 1_000_000, "messages held by the spool-heap case (0 skips it; -quick skips it unless given)")
	flag.IntVar(&cfg.asyncHeapMsgs, "async-heap-messages", 1_000_000, "PublishAsync calls of the async-heap case (0 skips it; -quick skips it unless given)")
	flag.IntVar(&cfg.asyncHeapWindow, "async-heap-window", 1024, "WithMaxInFlight of the async-heap case (the default window)")
	flag.BoolVar(&cfg.cluster, "cluster", false, "also run raw-N-quorum and producer-publish-N-quorum (N = 1, 64) on quorum queues of the local 3-node cluster, started with scripts/rabbitmq-cluster.sh up if needed (make bench passes it)")
	flag.StringVar(&cfg.jsonPath, "json", "", "also write every case's rounds and medians to this file as JSON (what internal/bench/chart draws; make bench passes it)")
	flag.Parse()
	if flag.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if quick {
		if !set["duration"] {
			duration = time.Second
		}
		if !set["sizes"] {
			sizes = "1024"
		}
		if !set["drain-messages"] {
			cfg.drainMsgs = 20_000
		}
		if !set["spool-heap-messages"] {
			cfg.spoolHeapMsgs = 0
		}
		if !set["async-heap-messages"] {
			cfg.asyncHeapMsgs = 0
		}
	}
	if duration <= 0 {
		return cfg, errors.New("-duration must be > 0")
	}
	if warmup <= 0 {
		warmup = min(max(duration/10, 100*time.Millisecond), 300*time.Millisecond)
	}
	cfg.duration, cfg.warmup = duration, warmup
	if cfg.repeat < 1 {
		return cfg, errors.New("-repeat must be >= 1")
	}
	if cfg.rawChannels < 1 {
		return cfg, errors.New("-raw-channels must be >= 1")
	}
	if cfg.asyncHeapMsgs < 0 || cfg.asyncHeapWindow < 1 {
		return cfg, errors.New("-async-heap-messages must be >= 0 and -async-heap-window >= 1")
	}
	if cfg.spoolHeapMsgs < 0 {
		return cfg, errors.New("-spool-heap-messages must be >= 0")
	}
	if cfg.drainMsgs < 1 {
		return cfg, errors.New("-drain-messages must be >= 1")
	}
	var err error
	if cfg.sizes, err = parseInts(sizes); err != nil {
		return cfg, fmt.Errorf("-sizes: %v", err)
	}
	if cfg.callers, err = parseInts(callers); err != nil {
		return cfg, fmt.Errorf("-callers: %v", err)
	}
	if cfg.rawWindows, err = parseInts(windows); err != nil {
		return cfg, fmt.Errorf("-raw-windows: %v", err)
	}
	if cfg.asyncWindows, err = parseInts(asyncWindows); err != nil {
		return cfg, fmt.Errorf("-async-windows: %v", err)
	}
	if only != "" {
		if cfg.only, err = regexp.Compile(only); err != nil {
			return cfg, fmt.Errorf("-only: %v", err)
		}
	}
	return cfg, nil
}

// plan is the order of one round: for each size, each caller count's raw
// and Producer cases side by side, then the single-goroutine cases; then the
// drain cases. Each ratio's two cases run next to each other, so that a slow
// spell of the machine (single-caller rates here move 3× within minutes)
// falls on both: producer-publish-N beside raw-N and raw-windowN (for 64,
// beside raw-window64 and raw-64-env-bare), and producer-async-wW beside
// raw-windowW. With 1 KiB bodies, each caller count's spool case comes just
// before its raw-N. Odd rounds run the same list backwards, so that a case
// is not always the one that follows the same other.
func plan(cfg config, round int) (specs []spec, drain, spoolDrain bool) {
	for _, size := range cfg.sizes {
		placed := map[spec]bool{}
		add := func(ss ...spec) {
			for _, s := range ss {
				if !placed[s] {
					placed[s] = true
					specs = append(specs, s)
				}
			}
		}
		// The window cases of w, if -raw-windows or -async-windows has it.
		addRawW := func(w int) {
			if slices.Contains(cfg.rawWindows, w) {
				add(spec{kind: kindRawWindow, callers: 1, size: size, window: w})
			}
		}
		addAsyncW := func(w int) {
			if slices.Contains(cfg.asyncWindows, w) {
				add(spec{kind: kindPublishAsync, callers: 1, size: size, window: w})
			}
		}
		for _, n := range cfg.callers {
			if size == spoolSize {
				add(spec{kind: kindPublishSpool, callers: n, size: size})
			}
			add(spec{kind: kindRaw, callers: n, size: size, channels: cfg.rawChannels})
			pub := spec{kind: kindPublish, callers: n, size: size}
			if n == envCallers {
				// Publish-64 has three partners: raw-window64 and
				// raw-64-env-bare (issue 13) beside it, raw-64 one further.
				addRawW(n)
				add(pub, spec{kind: kindRawEnv, callers: n, size: size, env: envBare})
			} else {
				add(pub)
				if slices.Contains(cfg.rawWindows, n) {
					addRawW(n)
					addAsyncW(n)
				}
			}
			add(spec{kind: kindSummarization, callers: n, size: size})
			if n == envCallers {
				add(spec{kind: kindPublish, callers: n, size: size, env: envAll})
				for _, prop := range envCases {
					add(spec{kind: kindRawEnv, callers: n, size: size, env: prop})
				}
			}
		}
		if cfg.cluster {
			for _, n := range quorumCallers {
				add(spec{kind: kindRaw, callers: n, size: size, quorum: true},
					spec{kind: kindPublish, callers: n, size: size, quorum: true})
			}
		}
		// The windows no caller count took, smallest first, each raw
		// window beside the async case of the same window; raw-noconfirm,
		// the ceiling, after the largest.
		ws := slices.Sorted(slices.Values(append(slices.Clone(cfg.rawWindows), cfg.asyncWindows...)))
		for _, w := range slices.Compact(ws) {
			addRawW(w)
			addAsyncW(w)
		}
		add(spec{kind: kindRawNoConfirm, callers: 1, size: size})
	}
	if cfg.only != nil {
		specs = slices.DeleteFunc(specs, func(s spec) bool { return !cfg.only.MatchString(s.name()) })
	}
	if round%2 == 1 {
		slices.Reverse(specs)
	}
	drain = cfg.only == nil || cfg.only.MatchString(drainName)
	spoolDrain = cfg.only == nil || cfg.only.MatchString(spoolDrainNm)
	return specs, drain, spoolDrain
}

func run() int {
	cfg, err := parseFlags()
	if err != nil {
		logf("%v", err)
		return 2
	}
	base := os.Getenv("RABBITMQ_URL")
	if i := strings.IndexByte(base, ','); i >= 0 {
		base = base[:i]
	}
	base = strings.TrimSpace(base)
	if base == "" {
		base = "amqp://guest:guest@127.0.0.1:5672/"
	}
	e := &env{cfg: cfg, url: base, bodies: map[int][]byte{}, contents: map[int]string{}}
	if cfg.vhost != "" {
		if e.url, err = withVhost(base, cfg.vhost); err != nil {
			logf("%v", err)
			return 2
		}
		if err := ensureVhost(e.url, cfg.vhost); err != nil {
			logf("%v", err)
			return 2
		}
	}
	for _, size := range append([]int{drainSize, asyncHeapSize}, cfg.sizes...) {
		if e.bodies[size], err = taskBody(size); err != nil {
			logf("-sizes: %v", err)
			return 2
		}
		e.contents[size] = filler(size)
	}
	if err := os.MkdirAll(cfg.spoolBase, 0o700); err != nil {
		logf("-spool-dir: %v", err)
		return 2
	}
	fs, inMemory := fsInfo(cfg.spoolBase)
	cfg.spoolFS = fs
	e.cfg.spoolFS = fs
	logf("spool dirs under %s, on %s", cfg.spoolBase, fs)
	if inMemory {
		logf("WARNING: -spool-dir %s is in memory: its syncs cost nothing and the spool figures say nothing about a disk", cfg.spoolBase)
		e.cfg.spoolFS += " — WARNING: in memory, not a disk"
		cfg.spoolFS = e.cfg.spoolFS
	}
	if u, err := url.Parse(e.url); err == nil {
		port := u.Port()
		if port == "" {
			port = "5672"
			if u.Scheme == "amqps" {
				port = "5671"
			}
		}
		e.probe = newProbe(u.Hostname(), port)
	}
	if cfg.cluster {
		logf("starting the local 3-node cluster (scripts/rabbitmq-cluster.sh up) for the quorum cases")
		urls, err := rabbittest.ClusterUp()
		if err != nil {
			logf("-cluster: %v", err)
			return 2
		}
		e.clusterURL = urls[0]
	}
	if e.lock, err = openBrokerLock(); err != nil {
		logf("%v", err)
		return 2
	}
	defer e.lock.close()
	adm, err := newAdmin(e.url)
	if err != nil {
		logf("%v", err)
		return 2
	}
	info := machineInfo(adm.serverVersion(), redact(e.url))
	adm.close()

	if cfg.cpuprofile != "" {
		f, err := os.Create(cfg.cpuprofile)
		if err != nil {
			logf("-cpuprofile: %v", err)
			return 2
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			logf("-cpuprofile: %v", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}

	res := results{byKey: map[string][]outcome{}}
	failed := false
	steadyCallers := slices.Max(cfg.callers)
	started := time.Now()
	runSpoolDrain := func(round int) {
		d, err := e.runDrain(steadyCallers, true)
		if err != nil {
			logf("round %d %s: ERROR: %v", round+1, spoolDrainNm, err)
			d.bad, d.check = true, "ERROR: "+err.Error()
		} else {
			logf("round %d %-26s fill %s msg/s, drain %s msg/s, steady %s msg/s (ratio %.2f) %s",
				round+1, spoolDrainNm, fmtRate(d.fillRate), fmtRate(d.drainRate), fmtRate(d.steadyRate), d.drainRatio(), d.check)
		}
		failed = failed || d.bad
		res.spoolDrains = append(res.spoolDrains, d)
	}
	for round := range cfg.repeat {
		specs, drain, spoolDrain := plan(cfg, round)
		runDrain := func() {
			if spoolDrain && round%2 == 1 {
				runSpoolDrain(round)
			}
			defer func() {
				if spoolDrain && round%2 == 0 {
					runSpoolDrain(round)
				}
			}()
			if !drain {
				return
			}
			d, err := e.runDrain(steadyCallers, false)
			if err != nil {
				logf("round %d %s: ERROR: %v", round+1, drainName, err)
				d.bad, d.check = true, "ERROR: "+err.Error()
			} else {
				logf("round %d %-26s heap/payload %.2f, drain %s msg/s, steady %s msg/s (ratio %.2f) %s",
					round+1, drainName, d.heapRatio(), fmtRate(d.drainRate), fmtRate(d.steadyRate), d.drainRatio(), d.check)
			}
			failed = failed || d.bad
			res.drains = append(res.drains, d)
		}
		if round%2 == 1 {
			runDrain()
		}
		for _, s := range specs {
			o, err := e.runCase(s)
			if err != nil {
				o = outcome{bad: true, check: "ERROR: " + err.Error()}
				logf("round %d %-26s %6s  ERROR: %v", round+1, s.name(), fmtSize(s.size), err)
			} else {
				logf("round %d %-26s %6s  %8s msg/s  p50 %7s  p99 %7s  cpu %6s/msg  broker %6s/msg  others %.2f cores  %s",
					round+1, s.name(), fmtSize(s.size), fmtRate(o.m.rate()), fmtDur(o.m.p50), fmtDur(o.m.p99),
					fmtDur(o.m.cpuPerMsg()), fmtDur(o.m.brokerPerMsg()), o.m.othersShare(), o.check)
			}
			failed = failed || o.bad
			if !res.has(s) {
				res.order = append(res.order, s)
			}
			res.byKey[s.key()] = append(res.byKey[s.key()], o)
		}
		if round%2 == 0 {
			runDrain()
		}
	}
	if cfg.spoolHeapMsgs > 0 && (cfg.only == nil || cfg.only.MatchString(spoolHeapName)) {
		logf("%s: filling a spool with %d messages (broker down: the fake, every dial refused)", spoolHeapName, cfg.spoolHeapMsgs)
		h := e.runSpoolHeap(cfg.spoolHeapMsgs)
		if h.err != nil {
			logf("%s: ERROR: %v", spoolHeapName, h.err)
			failed = true
		} else {
			logf("%s: %d spooled: HeapAlloc %s, HeapInuse %s (before: %s, %s), file %s, fill %s msg/s", spoolHeapName, h.msgs,
				fmtBytes(h.full.alloc), fmtBytes(h.full.inuse), fmtBytes(h.before.alloc), fmtBytes(h.before.inuse), fmtBytes(uint64(h.fileBytes)), fmtRate(h.fillRate))
		}
		res.heap = &h
	}
	if cfg.asyncHeapMsgs > 0 && (cfg.only == nil || cfg.only.MatchString(asyncHeapName)) {
		logf("%s: %d PublishAsync calls of %s, WithMaxInFlight(%d), on the broker", asyncHeapName, cfg.asyncHeapMsgs, fmtSize(asyncHeapSize), cfg.asyncHeapWindow)
		h := e.runAsyncHeap(cfg.asyncHeapMsgs, cfg.asyncHeapWindow)
		if h.err != nil {
			logf("%s: ERROR: %v", asyncHeapName, h.err)
			failed = true
		} else {
			logf("%s: peak live heap %s, peak heap objects %s, %s msg/s (target %s)", asyncHeapName,
				fmtBytes(h.peakLive), fmtBytes(h.peakObjects), fmtRate(h.rate), fmtBytes(h.target()))
		}
		res.asyncHeap = &h
	}
	logf("done in %v", time.Since(started).Round(time.Second))

	report(os.Stdout, cfg, info, &res, steadyCallers)
	envReport(os.Stdout, cfg, &res)
	spoolReport(os.Stdout, cfg, &res, steadyCallers)
	asyncHeapReport(os.Stdout, res.asyncHeap)
	jsonFailed := false
	if cfg.jsonPath != "" {
		if err := writeJSONFile(cfg.jsonPath, toJSON(cfg, info, &res, started)); err != nil {
			logf("-json: %v", err)
			jsonFailed = true
		} else {
			logf("results written to %s", cfg.jsonPath)
		}
	}
	if failed {
		fmt.Println("\n**DELIVERY CHECK FAILED** (or a case failed): see the delivery column above.")
		logf("DELIVERY CHECK FAILED or a case failed: exit status 1")
		return 1
	}
	if jsonFailed {
		return 1
	}
	return 0
}

// results gathers every run of every case.
type results struct {
	order  []spec // first-seen order; sorted for the report
	byKey  map[string][]outcome
	drains []drainResult
	// spoolDrains and heap are the spool cases (issue 10).
	spoolDrains []drainResult
	heap        *heapResult
	asyncHeap   *asyncHeapResult
}

func (r *results) has(s spec) bool { _, ok := r.byKey[s.key()]; return ok }

// sortedSpecs orders the cases for the table: by size, then raw cases by
// callers, the raw window and no-confirm cases, then the Producer's.
func (r *results) sortedSpecs() []spec {
	s := slices.Clone(r.order)
	slices.SortFunc(s, func(a, b spec) int {
		q := func(s spec) int {
			if s.quorum {
				return 1
			}
			return 0
		}
		return cmp.Or(cmp.Compare(a.size, b.size), cmp.Compare(q(a), q(b)), cmp.Compare(a.kind, b.kind), cmp.Compare(a.callers, b.callers), cmp.Compare(a.channels, b.channels),
			cmp.Compare(slices.Index(envCases, a.env), slices.Index(envCases, b.env)))
	})
	return s
}

func machineInfo(brokerVersion, url string) []string {
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	host, _ := os.Hostname()
	return []string{
		fmt.Sprintf("date: %s, host %s", time.Now().UTC().Format(time.RFC3339), host),
		fmt.Sprintf("machine: %d CPUs (%s), GOMAXPROCS %d, %s/%s", runtime.NumCPU(), cpu, runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH),
		fmt.Sprintf("software: %s, RabbitMQ %s at %s", runtime.Version(), brokerVersion, url),
	}
}
