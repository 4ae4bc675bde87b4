package reliability

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(closeRunner{m}) }

// closeRunner deletes the shared Runner's virtual host once the tests have
// run, before goleak looks for leaks.
type closeRunner struct{ m *testing.M }

func (c closeRunner) Run() int {
	code := c.m.Run()
	if shared.r != nil {
		if err := shared.r.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// shared is the Runner of every test: creating its virtual host takes a few
// rabbitmqctl calls, so it is made once.
var shared struct {
	once sync.Once
	r    *Runner
	err  error
}

// runner returns the shared Runner, or skips the test without a broker
// (fails it with CI=true, like rabbittest.Require).
func runner(t *testing.T) *Runner {
	t.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		shared.r, shared.err = NewRunner(ctx, Config{
			ChaosDuration:   20 * time.Second,
			ChaosPublishers: 64,
			Publishers:      8, // short settings: a smaller backlog to drain on 2 cores with -race
			// The cluster's three Erlang VMs share the 2 cores: fewer callers
			// than the command's 64, so that ctx timers are not starved.
			ClusterPublishers: 8,
			ClusterOutage:     8 * time.Second,
			// Restarting three Erlang VMs in turn would take about 40 s
			// more of the suite; the whole-node stops are the other faults.
			ClusterRollingApps: true,
			// The wire judges the cluster scenario (see TestCluster).
			ClusterTap: true,
		})
	})
	if shared.err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(shared.err)
		}
		t.Skip(shared.err)
	}
	return shared.r
}

// runScenario runs one scenario, logs its report and fails the test unless it
// passed.
func runScenario(t *testing.T, name string) Result {
	r := runner(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res := r.Run(ctx, name)
	var b strings.Builder
	_ = res.WriteReport(&b)
	t.Log("\n" + b.String())
	if !res.Pass {
		t.Errorf("%s failed: %s", name, strings.Join(res.Failures, "; "))
	}
	return res
}

func TestConnectionResilience(t *testing.T) {
	res := runScenario(t, ConnectionResilience)
	if res.Accepted == 0 || res.TimeToRecover == 0 {
		t.Errorf("nothing measured: %+v", res)
	}
}

func TestMessageRetry(t *testing.T) {
	res := runScenario(t, MessageRetry)
	if res.DeadLettered == 0 {
		t.Error("no dead letter")
	}
}

func TestCircuitBreaker(t *testing.T) {
	// The scenario fails if any publish is refused with ErrCircuitOpen or
	// ErrRetryQueueFull.
	runScenario(t, CircuitBreaker)
}

func TestFlowControl(t *testing.T) { runScenario(t, FlowControl) }

// A broker restart (stop_app, start_app) in the middle of a publishing run:
// publishing resumes by itself and nothing accepted is lost.
func TestBrokerRestart(t *testing.T) { runScenario(t, BrokerRestart) }

func TestPartition(t *testing.T) { runScenario(t, Partition) }

// The short chaos test: 64 publishers for 20 s under random faults.
func TestChaos(t *testing.T) {
	res := runScenario(t, Chaos)
	if res.Accepted == 0 {
		t.Error("nothing accepted")
	}
}

// The cluster scenario on the local 3-node cluster (quorum queues): the
// Producer's node, a leader, a rolling restart, then no majority. The
// Runner has ClusterTap set: the wire judges what the Producer counts
// confirmed. MLP_CLUSTER_TAP=dir keeps the tap's records.
func TestCluster(t *testing.T) {
	res := runScenario(t, Cluster)
	if res.Accepted == 0 {
		t.Error("nothing accepted")
	}
}

func TestUnknownScenario(t *testing.T) {
	res := (&Runner{}).Run(context.Background(), "no-such-scenario")
	if res.Pass || len(res.Failures) == 0 || !strings.Contains(res.Failures[0], ConnectionResilience) {
		t.Errorf("got %+v, want a failure listing the scenarios", res)
	}
}

func TestNames(t *testing.T) {
	names := Names()
	want := []string{ConnectionResilience, MessageRetry, CircuitBreaker, FlowControl, BrokerRestart, Partition, Chaos}
	if strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("Names() = %v, want %v", names, want)
	}
	if extra := Extra(); strings.Join(extra, ",") != Crash+","+LongOutage+","+Cluster {
		t.Errorf("Extra() = %v, want %v", extra, []string{Crash, LongOutage, Cluster})
	}
	for _, n := range append(names, Extra()...) {
		if Describe(n) == "" {
			t.Errorf("no description for %s", n)
		}
	}
}

func TestHistQuantile(t *testing.T) {
	var h hist
	if h.quantile(0.99) != 0 {
		t.Error("empty histogram")
	}
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Millisecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {1, time.Second}} {
		got := h.quantile(tc.q)
		if got < tc.want || float64(got) > float64(tc.want)*1.031 {
			t.Errorf("quantile(%v) = %v, want %v within 3%%", tc.q, got, tc.want)
		}
	}
	if h.maximum() != time.Second || h.count() != 1000 {
		t.Errorf("max %v count %d", h.maximum(), h.count())
	}
	h.add(0)
	h.add(time.Hour * 1000)
	if h.quantile(1) != time.Hour*1000 {
		t.Errorf("largest value: %v", h.quantile(1))
	}
}

func TestReport(t *testing.T) {
	results := []Result{
		{Name: Partition, Pass: true, Accepted: 10, Confirmed: 10, P99: 1500 * time.Microsecond, TimeToRecover: 1200 * time.Millisecond,
			PeakHeap: 3 << 20, GoroutinesBefore: 4, GoroutinesAfter: 4, Notes: []string{"a note"}},
		{Name: Chaos, Accepted: 5, Missing: 1, Failures: []string{"1 accepted message missing"}},
	}
	var b strings.Builder
	for _, r := range results {
		if err := r.WriteReport(&b); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteTable(&b, results); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"PASS partition accepted=10 confirmed=10", "p99=1.5ms recover=1.20s peak-heap=3.0MiB goroutines=4→4",
		"    - a note", "FAIL chaos", "missing=1", "recover=-", "    ! 1 accepted message missing", "scenario", "p99 publish",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
