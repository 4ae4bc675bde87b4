// Package reliability runs the reliability scenarios of issue 4 against a
// real RabbitMQ: each one drives a real [mlproducer.Producer] while a fault
// hits it (connection resets, rabbitmqctl close_all_connections, unroutable
// messages, an unreachable broker, a memory alarm, a broker restart, a
// network partition, or all of these at random), then closes the Producer and
// checks the outcome by consuming what arrived.
//
// Two more scenarios, [Crash] and [LongOutage], check the crash-safe spool
// of issue 10 (WithSpool); they take longer and are run only when named
// ([Extra]), not by "all".
//
// It is shared by examples/reliability (the command the NestJS service's
// guide promised as ./test-ml-producer-reliability.js) and by this package's
// tests, which run every scenario with short settings.
//
// # What a scenario checks
//
// Every scenario records each publish call: the message IDs it accepted, its
// latency, and whether it returned later than its ctx deadline plus 50 ms.
// After [mlproducer.Producer.Close], a consumer of the three ml.* queues must
// have received every accepted message ID, unless the dead-letter hook got
// it. A probe goroutine measures how late it wakes up from a ctx deadline
// of its own, every 10 ms: a call
// that was late only while the whole process was stalled that long (CPU
// starvation, the race detector) is reported apart, as LateStalled. A
// scenario passes when nothing is missing, no other call was late, the
// process is back to the goroutine count it started with, and the checks of
// the scenario itself hold (see [Names] for the list).
//
// # Isolation on a shared broker
//
// A [Runner] works in a virtual host of its own, created with rabbitmqctl
// when it starts and deleted by [Runner.Close], so that other tests using the
// ml.* queues of the default virtual host neither see its messages nor
// consume them. Faults that hit the whole broker (a memory alarm, stop_app)
// and close_all_connections (which only hits the Runner's virtual host) take
// the exclusive lock of [github.com/mlproducer/mlproducer/internal/rabbittest]
// for as long as they last; the other scenarios hold it shared while they
// run, as integration tests do. Network faults go through an in-process proxy
// ([github.com/mlproducer/mlproducer/internal/faults]) between the Producer
// and the broker and touch nobody else.
package reliability

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mlproducer/mlproducer/internal/rabbittest"
)

// Names of the scenarios, in the order "all" runs them.
const (
	// ConnectionResilience resets the Producer's connections through the
	// proxy and closes them with rabbitmqctl close_all_connections while
	// publishers run. It checks that every fault causes a reconnect and that
	// no message spends an attempt or is dead-lettered.
	ConnectionResilience = "connection-resilience"
	// MessageRetry publishes to an exchange on which the transcription
	// queue is not bound for a while, so those messages come back unroutable
	// (basic.return). It checks that they are retried with their attempt
	// number, that the ones whose retries ran out reach the dead-letter hook
	// with every attempt counted, and that the ones still retrying when the
	// binding appears are delivered.
	MessageRetry = "message-retry"
	// CircuitBreaker makes the broker unreachable (black hole, and every
	// connection attempt reset). It checks that the breaker opens, that no
	// publish is refused while the buffer has room, and that the breaker
	// closes, and sending resumes, within the reconnect backoff once the
	// broker is back, long before its cooldown.
	CircuitBreaker = "circuit-breaker"
	// FlowControl raises a memory alarm on the broker. It checks that the
	// Producer goes to Blocked, that publishes return in time (queued), that
	// the breaker stays closed, and that everything drains once the alarm
	// clears.
	FlowControl = "flow-control"
	// BrokerRestart stops the broker's application (rabbitmqctl stop_app)
	// and starts it again while publishers run. It checks that publishing
	// resumes by itself and nothing accepted is lost.
	BrokerRestart = "broker-restart"
	// Partition black-holes the network path (no byte, no FIN, no RST). It
	// checks that the heartbeat notices within two heartbeat intervals, that
	// the Producer reconnects once the path is back, and that the messages
	// sent into the hole are delivered afterwards.
	Partition = "partition"
	// Chaos has many publishers run while resets, black holes, latency and
	// close_all_connections hit at random every 2 to 5 seconds.
	Chaos = "chaos"
)

// Names returns the names of the scenarios "all" runs, in its order; see
// [Extra] for the others.
func Names() []string {
	var out []string
	for _, s := range scenarios() {
		if !s.extra {
			out = append(out, s.name)
		}
	}
	return out
}

// Describe returns the one-line description of a scenario, or "" for an
// unknown name.
func Describe(name string) string {
	for _, s := range scenarios() {
		if s.name == name {
			return s.desc
		}
	}
	return ""
}

// Config configures a [Runner]. The zero value runs every scenario with its
// default settings against [rabbittest.URL].
type Config struct {
	// BrokerURL is the broker, as given to the Producer. Default
	// [rabbittest.URL] (RABBITMQ_URL, or amqp://guest:guest@127.0.0.1:5672/).
	// rabbitmqctl always acts on the local node.
	BrokerURL string
	// ChaosDuration is how long the chaos scenario publishes. Default 60 s.
	ChaosDuration time.Duration
	// ChaosPublishers is the number of publisher goroutines of the chaos
	// scenario. Default 64.
	ChaosPublishers int
	// Publishers is the number of publisher goroutines of the other
	// scenarios. Default 16.
	Publishers int
	// Seed seeds the chaos scenario's choice of faults; 0 takes one from the
	// clock. The seed used is reported in the result's notes.
	Seed uint64
	// CrashKills is the least number of SIGKILLs of the crash scenario.
	// Default 12.
	CrashKills int
	// ChildCommand is the program the crash scenario starts as its
	// publishing child, with its arguments. It must call IsChild and Main
	// of [github.com/mlproducer/mlproducer/internal/spoolchild] first
	// thing, as examples/reliability does. Default: this program (os.Executable).
	ChildCommand []string
	// OutageDuration is how long the broker refuses connections in the
	// long-outage scenario. Default 2 minutes.
	OutageDuration time.Duration
	// ClusterPublishers is the number of publisher goroutines of the
	// cluster scenario. Default 64.
	ClusterPublishers int
	// ClusterOutage is how long two of the cluster's three nodes stay down
	// in the cluster scenario. Default 20 s.
	ClusterOutage time.Duration
	// ClusterRollingApps makes the cluster scenario's rolling restart
	// restart each node's rabbit application (rabbitmqctl stop_app,
	// start_app) instead of its Erlang VM: for each node the listener,
	// the connections and the queue members go and come back as in a node
	// restart, in about 3 s instead of about 16 s. The node the Producer
	// is on, the leader and the two nodes of the outage still stop whole.
	ClusterRollingApps bool
	// ClusterTap puts a wire tap ([github.com/mlproducer/mlproducer/internal/amqptap])
	// between the Producer and each node in the cluster scenario, which
	// then judges by the wire: every message the Producer counts confirmed
	// must have a basic.ack from the broker for one of its publishes, and a
	// message the broker acked but the queues never held is counted in
	// [Result.BrokerLost], not in Missing. Also set by ClusterTapDir.
	ClusterTap bool
	// ClusterTapDir, if set, is where the cluster scenario writes the tap's
	// records (cluster-tap.log: every publish, its tag and the broker's
	// answer; cluster-missing.log: the wire history of every message
	// missing). Default: the environment's MLP_CLUSTER_TAP.
	ClusterTapDir string
	// Logger is the Producers' logger. Default: their logs are discarded.
	Logger *slog.Logger
	// Logf receives progress messages, one call per line, from the
	// goroutine that called [Runner.Run]. Default: discarded.
	Logf func(format string, args ...any)
}

func (c Config) withDefaults() Config {
	if c.BrokerURL == "" {
		c.BrokerURL = rabbittest.URL()
	}
	if c.ChaosDuration <= 0 {
		c.ChaosDuration = 60 * time.Second
	}
	if c.ChaosPublishers <= 0 {
		c.ChaosPublishers = 64
	}
	if c.Publishers <= 0 {
		c.Publishers = 16
	}
	if c.CrashKills <= 0 {
		c.CrashKills = 12
	}
	if c.OutageDuration <= 0 {
		c.OutageDuration = 2 * time.Minute
	}
	if c.ClusterPublishers <= 0 {
		c.ClusterPublishers = 64
	}
	if c.ClusterOutage <= 0 {
		c.ClusterOutage = 20 * time.Second
	}
	if c.ClusterTapDir == "" {
		c.ClusterTapDir = os.Getenv(ClusterTapEnv)
	}
	if c.ClusterTapDir != "" {
		c.ClusterTap = true
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	return c
}

// lockGap is the least time between two Runs' holds of the broker lock.
const lockGap = 200 * time.Millisecond

// vhostPrefix starts the name of every Runner's virtual host; the process
// ID follows, so that a Runner can delete the ones of dead processes.
const vhostPrefix = "mlproducer-reliability-"

// Runner runs scenarios in a virtual host of its own. Create one with
// [NewRunner], run scenarios one at a time with [Runner.Run], and delete the
// virtual host with [Runner.Close]. A Runner is not safe for concurrent use.
type Runner struct {
	cfg       Config
	vhost     string
	url       string // cfg.BrokerURL in the Runner's virtual host
	brokerURL *url.URL
	// lastRun is when the last Run released the broker lock.
	lastRun   time.Time
	closeOnce sync.Once
	closeErr  error
}

// NewRunner checks that the broker answers, deletes the virtual hosts left
// by Runners of processes that no longer exist, and creates a virtual host
// for this one (rabbitmqctl add_vhost, set_permissions for the URL's user).
// It takes a few seconds: each rabbitmqctl call takes about one.
func NewRunner(ctx context.Context, cfg Config) (*Runner, error) {
	cfg = cfg.withDefaults()
	u, err := url.Parse(cfg.BrokerURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("reliability: bad broker URL %s", rabbittest.Redact(cfg.BrokerURL))
	}
	conn, err := amqp.DialConfig(cfg.BrokerURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return nil, fmt.Errorf("reliability: no RabbitMQ at %s: %v (start one with scripts/ensure-rabbitmq.sh)", rabbittest.Redact(cfg.BrokerURL), err)
	}
	_ = conn.Close()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	removeStaleVhosts(cfg.Logf)

	user := "guest"
	if u.User != nil && u.User.Username() != "" {
		user = u.User.Username()
	}
	vhost := fmt.Sprintf("%s%d-%d", vhostPrefix, os.Getpid(), time.Now().UnixNano()%1_000_000)
	if out, err := rabbittest.Rabbitmqctl("add_vhost", vhost); err != nil {
		return nil, fmt.Errorf("reliability: rabbitmqctl add_vhost %s: %v\n%s", vhost, err, out)
	}
	r := &Runner{cfg: cfg, vhost: vhost, brokerURL: u}
	if out, err := rabbittest.Rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*"); err != nil {
		_ = r.Close()
		return nil, fmt.Errorf("reliability: rabbitmqctl set_permissions -p %s %s: %v\n%s", vhost, user, err, out)
	}
	v := *u
	v.Path = "/" + vhost
	v.RawPath = ""
	r.url = v.String()
	cfg.Logf("reliability: working in virtual host %s", vhost)
	return r, nil
}

// removeStaleVhosts deletes the virtual hosts of Runners whose process is
// gone (killed before its Close ran).
func removeStaleVhosts(logf func(string, ...any)) {
	out, err := rabbittest.Rabbitmqctl("-q", "list_vhosts", "name")
	if err != nil {
		return
	}
	for _, line := range strings.Split(out, "\n") {
		name := strings.TrimSpace(line)
		rest, ok := strings.CutPrefix(name, vhostPrefix)
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			continue // alive, or not ours to judge
		}
		if _, err := rabbittest.Rabbitmqctl("delete_vhost", name); err == nil {
			logf("reliability: deleted virtual host %s left by process %d", name, pid)
		}
	}
}

// VHost returns the name of the Runner's virtual host.
func (r *Runner) VHost() string { return r.vhost }

// Close deletes the Runner's virtual host, with every queue and message in
// it. Calling it again returns the first result.
func (r *Runner) Close() error {
	r.closeOnce.Do(func() {
		if out, err := rabbittest.Rabbitmqctl("delete_vhost", r.vhost); err != nil {
			r.closeErr = fmt.Errorf("reliability: rabbitmqctl delete_vhost %s: %v\n%s", r.vhost, err, out)
		}
	})
	return r.closeErr
}

// Run runs the scenario name and returns its result; an unknown name or a
// scenario that could not be set up is a failed result whose Failures say
// why. ctx bounds the run: when it ends, the scenario stops its fault,
// restores the broker and closes the Producer as it would at its end, and
// fails. Run holds the broker lock while it runs (see the package
// documentation): exclusively for flow-control and broker-restart, whose
// faults hit the whole broker, and for connection-resilience when it can
// have it within a minute; shared otherwise.
func (r *Runner) Run(ctx context.Context, name string) Result {
	list := scenarios()
	i := slices.IndexFunc(list, func(s scenario) bool { return s.name == name })
	if i < 0 {
		return Result{Name: name, Failures: []string{fmt.Sprintf("unknown scenario %q; want one of %s", name, strings.Join(append(Names(), Extra()...), ", "))}}
	}
	// Leave other processes waiting for the exclusive lock a chance to take
	// it between two scenarios: they poll every 50 ms.
	if gap := lockGap - time.Since(r.lastRun); gap > 0 {
		time.Sleep(gap)
	}
	start := time.Now()
	res := Result{Name: name}
	sc := list[i]
	exclusive := sc.lock != lockShared
	var (
		unlock func()
		err    error
	)
	switch sc.lock {
	case lockExclusive:
		r.cfg.Logf("reliability: %s: waiting for the exclusive broker lock", name)
		unlock, err = rabbittest.Lock(true)
	case lockPreferExclusive:
		if unlock, err = rabbittest.LockWithin(true, preferWait); err != nil {
			res.notef("the broker lock stayed busy for %s (another process is running integration tests or a benchmark): run without it, so close_all_connections is replaced by a reset", preferWait)
			exclusive = false
			unlock, err = rabbittest.Lock(false)
		}
	default:
		unlock, err = rabbittest.Lock(false)
	}
	if err != nil {
		res.Failures = append(res.Failures, err.Error())
		return res
	}
	defer func() {
		unlock()
		r.lastRun = time.Now()
	}()
	h := newRun(ctx, r, &res)
	h.exclusive = exclusive
	sc.run(h)
	h.finish()
	res.Elapsed = time.Since(start)
	if ctx.Err() != nil {
		res.failf("interrupted: %v", ctx.Err())
	}
	res.Pass = len(res.Failures) == 0
	if !res.Pass {
		if recs, n := h.logs.last(); len(recs) > 0 {
			res.notef("the Producer's last %d of %d log records (time since the run began):\n%s", len(recs), n, strings.Join(recs, "\n"))
		}
	}
	return res
}

type scenario struct {
	name string
	desc string
	lock lockMode
	run  func(h *run)
	// extra: not run by "all" (see Extra).
	extra bool
}

// lockMode is how a scenario holds the broker lock for its whole run.
type lockMode int

const (
	// lockShared: like an integration test; broker-wide faults take the
	// lock exclusively for their own duration, waiting a bounded time.
	lockShared lockMode = iota
	// lockExclusive: the scenario's fault hits the whole broker; it takes
	// the lock exclusively before it starts, so that it never waits with
	// publishers running, and nobody else's fault hits it meanwhile.
	lockExclusive
	// lockPreferExclusive: exclusive if it can be had within preferWait,
	// shared otherwise.
	lockPreferExclusive
)

// preferWait bounds the wait for the exclusive lock of lockPreferExclusive.
const preferWait = time.Minute

// scenarios returns the scenarios, in the order "all" runs them.
func scenarios() []scenario {
	return []scenario{
		{ConnectionResilience, "connection resets and close_all_connections while publishing", lockPreferExclusive, connectionResilience, false},
		{MessageRetry, "unroutable messages retried, then delivered or dead-lettered", lockShared, messageRetry, false},
		{CircuitBreaker, "broker unreachable: breaker opens, fails fast, closes after the cooldown", lockShared, circuitBreaker, false},
		{FlowControl, "memory alarm: blocked, queued, drained", lockExclusive, flowControl, false},
		{BrokerRestart, "rabbitmqctl stop_app / start_app while publishing", lockExclusive, brokerRestart, false},
		{Partition, "black hole: heartbeat detection, reconnect, delivery after", lockShared, partition, false},
		{Chaos, "random resets, black holes, latency and close_all_connections", lockShared, chaos, false},
		{Crash, "spool: publisher process killed with SIGKILL 12+ times (mid-outage, mid-Close), restarted on its dir", lockShared, crash, true},
		{LongOutage, "spool: broker refusing connections for 2 minutes under load; no refusal, all delivered", lockShared, longOutage, true},
		{Cluster, "local 3-node cluster, quorum queues: the Producer's node, a leader, a rolling restart, then no majority for 20 s", lockShared, cluster, true},
	}
}
