package rabbittest

// Helpers for tests against the local 3-node RabbitMQ cluster of
// scripts/rabbitmq-cluster.sh (nodes mlp1@localhost..mlp3@localhost, AMQP on
// 127.0.0.1:5681..5683), separate from the single broker of [Require].
//
// # Sharing the cluster
//
// Like the single broker, the cluster is shared by every test process on the
// machine, so it has a lock file of its own in [os.TempDir]: [RequireCluster]
// holds it shared until the test ends, and the helpers that take a node away
// ([StopNode], [PauseNode]) hold it exclusively until the test ends, after
// their cleanup has put the node back. Inside one process the lock is not
// exclusive: a test that stops nodes must not run in parallel (t.Parallel)
// with other cluster tests of its package. Code that runs outside a test
// (the reliability command) takes it with [ClusterLock] and uses the
// variants that return errors ([ClusterUp], [StopClusterNodes],
// [StartClusterNodes], [PauseClusterNode], [ClusterRabbitmqctl]).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ClusterNodes is the number of nodes of the local cluster; nodes are
// numbered 1..ClusterNodes.
const ClusterNodes = 3

const (
	// clusterUpTimeout bounds `rabbitmq-cluster.sh up` (about 30 s from
	// nothing on an idle machine; the script's own steps time out first).
	clusterUpTimeout = 6 * time.Minute
	// clusterStepTimeout bounds the script's other commands.
	clusterStepTimeout = 4 * time.Minute
	// clusterLockFileName is the cluster's lock, beside the broker's.
	clusterLockFileName = "mlproducer-rabbittest-cluster.lock"
)

const clusterHint = "start it with scripts/rabbitmq-cluster.sh up (make cluster-test runs it)"

// ClusterNodeName returns the Erlang node name of cluster node n (1..3).
func ClusterNodeName(n int) string { return fmt.Sprintf("mlp%d@localhost", n) }

// ClusterScript returns the path of scripts/rabbitmq-cluster.sh in this
// checkout: found from this source file, else from the working directory up.
func ClusterScript() (string, error) { return scriptPath("rabbitmq-cluster.sh") }

// scriptPath returns the path of scripts/name in this checkout: beside this
// source file, or above the working directory.
func scriptPath(name string) (string, error) {
	rel := "scripts/" + name
	if _, file, _, ok := runtime.Caller(0); ok {
		p := filepath.Join(filepath.Dir(file), "..", "..", rel)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, rel)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%s not found above the working directory; run from the mlproducer checkout", rel)
		}
		dir = parent
	}
}

// clusterScript runs the script with args, bounded by timeout, and returns
// its standard output (trimmed); an error carries the standard error.
func clusterScript(timeout time.Duration, args ...string) (string, error) {
	script, err := ClusterScript()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{script}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	// The script's daemons must not keep the test's output pipes open.
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v", timeout)
	}
	if err != nil {
		return strings.TrimSpace(string(out)), fmt.Errorf("rabbitmq-cluster.sh %s: %v\n%s%s",
			strings.Join(args, " "), err, out, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// clusterState remembers, per process, that `up` has run.
type clusterState struct {
	mu   sync.Mutex
	urls []string // set once `up` has succeeded
}

// cluster is process-wide by nature: the cluster is a machine-wide resource,
// and `up` is run at most once per process unless a node went missing.
var cluster clusterState

// ClusterURLs returns the AMQP URLs of the three nodes (node n is at index
// n-1), without checking that they run.
func ClusterURLs() []string {
	urls := make([]string, ClusterNodes)
	for n := 1; n <= ClusterNodes; n++ {
		urls[n-1] = fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", 5680+n)
	}
	return urls
}

// ClusterUp makes sure the local cluster runs (`rabbitmq-cluster.sh up`,
// which starts, and on a machine without RabbitMQ installs, what is missing)
// and returns the URLs of its nodes. The script runs once per process; later
// calls only check that every node accepts a connection, and run it again
// when one does not. Hold [ClusterLock] (shared) around it, so that it does
// not restart a node another process has stopped on purpose.
func ClusterUp() ([]string, error) {
	cluster.mu.Lock()
	defer cluster.mu.Unlock()
	if cluster.urls != nil && allDial(cluster.urls) == nil {
		return cluster.urls, nil
	}
	if _, err := clusterScript(clusterUpTimeout, "up"); err != nil {
		return nil, err
	}
	out, err := clusterScript(clusterStepTimeout, "urls")
	if err != nil {
		return nil, err
	}
	urls := strings.Split(out, ",")
	if len(urls) != ClusterNodes {
		return nil, fmt.Errorf("rabbitmq-cluster.sh urls printed %q, want %d URLs", out, ClusterNodes)
	}
	if err := allDial(urls); err != nil {
		return nil, err
	}
	cluster.urls = urls
	return urls, nil
}

func allDial(urls []string) error {
	for _, u := range urls {
		conn, err := dial(u)
		if err != nil {
			return fmt.Errorf("cluster node %s: %w", Redact(u), err)
		}
		_ = conn.Close()
	}
	return nil
}

// RequireCluster takes the shared cluster lock until the test ends, makes
// sure the local 3-node cluster runs ([ClusterUp]) and returns the URLs of
// its nodes, node n at index n-1. When the cluster cannot be had the test is
// skipped, or failed when the environment has CI=true.
func RequireCluster(t testing.TB) []string {
	t.Helper()
	acquireCluster(t, false)
	urls, err := ClusterUp()
	if err != nil {
		msg := fmt.Sprintf("rabbittest: no local RabbitMQ cluster: %v; %s", err, clusterHint)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return urls
}

func checkNode(n int) error {
	if n < 1 || n > ClusterNodes {
		return fmt.Errorf("cluster node %d: give 1..%d", n, ClusterNodes)
	}
	return nil
}

// StopClusterNodes stops the nodes (each 1..3) at once and keeps their
// data; see [StopNode].
func StopClusterNodes(nodes ...int) error { return nodesCmd("stop", nodes) }

// StopClusterApps stops only the rabbit application of the nodes (each
// 1..3) at once (`rabbitmqctl stop_app`): their listeners, client
// connections and quorum queue members go as in [StopClusterNodes], but the
// Erlang VMs stay, so [StartClusterNodes] has them back in about 3 s instead
// of the about 16 s a node's boot takes here.
func StopClusterApps(nodes ...int) error { return nodesCmd("stop-app", nodes) }

// StartClusterNodes starts the nodes (each 1..3) at once and returns once
// they run, whether [StopClusterNodes] or [StopClusterApps] stopped them.
// Start together the nodes stopped together: a node that was not the last
// of the cluster to stop waits for its peers when it boots.
func StartClusterNodes(nodes ...int) error { return nodesCmd("start", nodes) }

func nodesCmd(cmd string, nodes []int) error {
	if len(nodes) == 0 {
		return fmt.Errorf("rabbittest: %s which cluster node? give 1..%d", cmd, ClusterNodes)
	}
	args := []string{cmd}
	for _, n := range nodes {
		if err := checkNode(n); err != nil {
			return err
		}
		args = append(args, strconv.Itoa(n))
	}
	_, err := clusterScript(clusterStepTimeout, args...)
	return err
}

// StopNode stops cluster node n (1..3), keeping its data, and starts it
// again when the test ends, whether it passed or not (or earlier, with the
// returned start; calling it again does nothing). It takes the exclusive
// cluster lock until the test ends.
func StopNode(t testing.TB, n int) (start func()) {
	t.Helper()
	acquireCluster(t, true)
	var once sync.Once
	start = func() {
		once.Do(func() {
			if err := StartClusterNodes(n); err != nil {
				t.Errorf("rabbittest: %v", err)
			}
		})
	}
	// Registered before the stop: a stop that fails half-way is undone too.
	t.Cleanup(start)
	if err := StopClusterNodes(n); err != nil {
		t.Fatalf("rabbittest: %v", err)
	}
	return start
}

// StartNode starts cluster node n (1..3) and waits until it runs; for a node
// stopped with [StopNode] earlier than its cleanup would.
func StartNode(t testing.TB, n int) {
	t.Helper()
	if err := StartClusterNodes(n); err != nil {
		t.Fatalf("rabbittest: %v", err)
	}
}

// ClusterNodePID returns the OS pid of node n's Erlang VM.
func ClusterNodePID(n int) (int, error) {
	if err := checkNode(n); err != nil {
		return 0, err
	}
	out, err := clusterScript(clusterStepTimeout, "pid", strconv.Itoa(n))
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(out)
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("rabbitmq-cluster.sh pid %d printed %q", n, out)
	}
	return pid, nil
}

// PauseClusterNode freezes node n's Erlang VM (SIGSTOP): its sockets stay
// open and it answers nothing, like a node hung on a disk or a VM paused.
// resume sends SIGCONT; it must be called (a defer is the safe way), and
// calling it again returns the first result.
func PauseClusterNode(n int) (resume func() error, err error) {
	pid, err := ClusterNodePID(n)
	if err != nil {
		return nil, err
	}
	var (
		once sync.Once
		rerr error
	)
	resume = func() error {
		once.Do(func() {
			if err := syscall.Kill(pid, syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
				rerr = fmt.Errorf("resume cluster node %d (pid %d): %w", n, pid, err)
			}
		})
		return rerr
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return nil, fmt.Errorf("pause cluster node %d (pid %d): %w", n, pid, err)
	}
	return resume, nil
}

// PauseNode is [PauseClusterNode] in a test: the node is resumed when the
// test ends, whether it passed or not (or earlier, with the returned
// resume). It takes the exclusive cluster lock until the test ends.
func PauseNode(t testing.TB, n int) (resume func()) {
	t.Helper()
	acquireCluster(t, true)
	r, err := PauseClusterNode(n)
	if err != nil {
		t.Fatalf("rabbittest: %v", err)
	}
	resume = func() {
		if err := r(); err != nil {
			t.Errorf("rabbittest: %v", err)
		}
	}
	t.Cleanup(resume)
	return resume
}

// ClusterRabbitmqctl runs `rabbitmqctl -n <node n> args...` with the
// cluster's Erlang cookie (bounded by 4 minutes; rabbitmqctl's own calls by
// 60 s) and returns its standard output.
func ClusterRabbitmqctl(n int, args ...string) (string, error) {
	if err := checkNode(n); err != nil {
		return "", err
	}
	return clusterScript(clusterStepTimeout, append([]string{"ctl", strconv.Itoa(n)}, args...)...)
}

// ClusterCtl is [ClusterRabbitmqctl] in a test: it fails the test, showing
// the output, when the command fails.
func ClusterCtl(t testing.TB, n int, args ...string) string {
	t.Helper()
	out, err := ClusterRabbitmqctl(n, args...)
	if err != nil {
		t.Fatalf("rabbittest: %v", err)
	}
	return out
}

// clusterLock is the cluster's lock of this process (see brokerLock).
var clusterLock lockState

// ClusterLock takes the cluster lock, shared or exclusive, for code that
// runs outside a test, and returns the function that releases it (calling it
// again does nothing). Take it shared for the whole of a run against the
// cluster and exclusive while a node is stopped or paused. It waits at most
// 5 minutes for other processes.
func ClusterLock(exclusive bool) (unlock func(), err error) {
	return clusterLock.take(clusterLockFileName, "cluster lock", exclusive, lockWait)
}

func acquireCluster(t testing.TB, exclusive bool) {
	t.Helper()
	unlock, err := ClusterLock(exclusive)
	if err != nil {
		t.Fatalf("rabbittest: %v", err)
	}
	t.Cleanup(unlock)
}

// ClusterConnections returns how many client connections each node (index
// n-1) has whose connection_name starts with prefix, as the cluster lists
// them (`rabbitmqctl list_connections port client_properties` on the first
// node that answers; the server port tells the node).
func ClusterConnections(t testing.TB, prefix string) [ClusterNodes]int {
	t.Helper()
	got, err := ClusterConnectionCounts(prefix)
	if err != nil {
		t.Fatalf("rabbittest: %v", err)
	}
	return got
}

// ClusterConnectionCounts is [ClusterConnections] for code outside a test.
func ClusterConnectionCounts(prefix string) ([ClusterNodes]int, error) {
	var (
		got  [ClusterNodes]int
		out  string
		errs []error
	)
	for n := 1; n <= ClusterNodes; n++ {
		o, err := ClusterRabbitmqctl(n, "-q", "--no-table-headers", "list_connections", "port", "client_properties")
		if err == nil {
			out, errs = o, nil
			break
		}
		errs = append(errs, err)
	}
	if errs != nil {
		return got, errors.Join(errs...)
	}
	for _, line := range strings.Split(out, "\n") {
		port, props, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if !ok || !strings.Contains(props, `{"connection_name","`+prefix) {
			continue
		}
		p, err := strconv.Atoi(port)
		if err != nil || p <= 5680 || p > 5680+ClusterNodes {
			return got, fmt.Errorf("list_connections: unexpected line %q", line)
		}
		got[p-5681]++
	}
	return got, nil
}
