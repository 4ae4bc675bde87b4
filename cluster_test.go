package mlproducer_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/rabbittest"
)

// The tests of this file run on the local 3-node cluster of
// scripts/rabbitmq-cluster.sh (rabbittest.RequireCluster starts it), with
// quorum queues, as a deployment on a cluster would.

var quorum = mlproducer.WithTopology(mlproducer.Topology{QueueType: mlproducer.QueueQuorum})

// nodeOf returns the cluster node (1..3) a Producer is connected to, from
// the URL its Status shows, or 0.
func nodeOf(t *testing.T, urls []string, p *mlproducer.Producer) int {
	t.Helper()
	shown := p.Status().URL
	u, err := url.Parse(shown)
	if err != nil {
		return 0
	}
	for i, c := range urls {
		cu, err := url.Parse(c)
		require.NoError(t, err)
		if cu.Host == u.Host {
			return i + 1
		}
	}
	return 0
}

// 20 Producers given the same three URLs spread over the three nodes: none
// has more than 10 of them (each URL in the same order would put all 20 on
// the first node).
func TestClusterProducersSpreadOverNodes(t *testing.T) {
	urls := rabbittest.RequireCluster(t)
	const producers, most = 20, 10
	name := fmt.Sprintf("mlproducer cluster spread %d", time.Now().UnixNano())
	var perNode [rabbittest.ClusterNodes + 1]int
	var ps []*mlproducer.Producer
	defer func() {
		for _, p := range ps {
			assert.NoError(t, closeProducer(t, p))
		}
	}()
	for i := range producers {
		p, err := mlproducer.New(mlproducer.WithURLs(urls...), quorum,
			mlproducer.WithConnectionName(fmt.Sprintf("%s #%d", name, i)))
		require.NoError(t, err)
		ps = append(ps, p)
	}
	for _, p := range ps {
		waitConnected(t, p)
		perNode[nodeOf(t, urls, p)]++
	}
	t.Logf("Producers per node (Status().URL): node1=%d node2=%d node3=%d", perNode[1], perNode[2], perNode[3])
	require.Zero(t, perNode[0], "Status().URL names none of the cluster's URLs")
	for n := 1; n <= rabbittest.ClusterNodes; n++ {
		assert.LessOrEqual(t, perNode[n], most, "node %d has %d of the %d Producers", n, perNode[n], producers)
	}

	// The broker's view agrees: each Producer's connection is on the node
	// its Status names (it lists them once their handshake is done).
	var listed [rabbittest.ClusterNodes]int
	deadline := time.Now().Add(15 * time.Second)
	for {
		listed = rabbittest.ClusterConnections(t, name)
		if listed[0]+listed[1]+listed[2] >= producers || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("connections per node (rabbitmqctl list_connections): %v", listed)
	assert.Equal(t, [rabbittest.ClusterNodes]int{perNode[1], perNode[2], perNode[3]}, listed)
}

// A paused node (SIGSTOP: it accepts TCP connections, in the kernel, and
// answers nothing) is left for the next URL within the connection timeout,
// and the Producer publishes on the next node.
func TestClusterPausedNodeLeftForNextURL(t *testing.T) {
	urls := rabbittest.RequireCluster(t)
	// The queues exist, as in a deployment: declaring a new quorum queue
	// waits for every member node, the paused one too.
	declareQuorumQueues(t, urls[1])
	t.Cleanup(func() { rabbittest.PurgeQueues(t, urls[1], taskQueues...) })
	rabbittest.PauseNode(t, 1)
	// Four Producers: whatever order each takes the two URLs in (the given
	// one, or turns from a random start), some try the paused node first.
	const producers = 4
	var ps []*mlproducer.Producer
	defer func() {
		for _, p := range ps {
			assert.NoError(t, closeProducer(t, p))
		}
	}()
	for range producers {
		// NoDeclare: binding a queue is a transaction of every node, which
		// a paused one holds up (see the test below).
		p, err := mlproducer.New(mlproducer.WithURLs(urls[0], urls[1]),
			mlproducer.WithTopology(mlproducer.Topology{QueueType: mlproducer.QueueQuorum, NoDeclare: true}),
			mlproducer.WithConnectionTimeout(time.Second),
			mlproducer.WithConnectionName("mlproducer cluster paused"))
		require.NoError(t, err)
		ps = append(ps, p)
	}
	for i, p := range ps {
		// Without a deadline on the handshake, a Producer that tried the
		// paused node first would still be waiting on it.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := p.WaitConnected(ctx)
		cancel()
		require.NoError(t, err, "Producer %d: not connected (status %+v)", i, p.Status())
		assert.Equal(t, 2, nodeOf(t, urls, p), "Producer %d connected to %s", i, p.Status().URL)
		ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
		_, err = p.PublishEmbedding(ctx, "share-paused", "a text to embed", mlproducer.EmbeddingOptions{})
		cancel()
		assert.NoError(t, err, "Producer %d", i)
	}
}

// declareQuorumQueues has a Producer on url declare the task queues
// (quorum), while every node runs.
func declareQuorumQueues(t *testing.T, url string) {
	t.Helper()
	p, err := mlproducer.New(mlproducer.WithURLs(url), quorum)
	require.NoError(t, err)
	waitConnected(t, p)
	require.NoError(t, closeProducer(t, p))
}

// While a node is paused, the set-up on the other nodes hangs too: binding a
// queue (even one bound already) is a transaction that waits for every node
// of the cluster, until the paused one is declared down (net_ticktime, 60 s
// by default). Every round trip of the set-up has a deadline, so the
// Producer gives up on each node in turn and keeps trying the next: within
// a few connection timeouts it has tried both URLs, instead of waiting on
// the first node whose bind hangs.
func TestClusterSetupHungInBindMovesOn(t *testing.T) {
	urls := rabbittest.RequireCluster(t)
	declareQuorumQueues(t, urls[1])
	rabbittest.PauseNode(t, 1)
	const connTO = 500 * time.Millisecond
	p, err := mlproducer.New(mlproducer.WithURLs(urls[0], urls[1]), quorum,
		mlproducer.WithConnectionTimeout(connTO),
		mlproducer.WithReconnectBackoff(50*time.Millisecond, 200*time.Millisecond),
		mlproducer.WithConnectionName("mlproducer cluster bind"))
	require.NoError(t, err)
	defer func() { assert.NoError(t, closeProducer(t, p)) }()
	// Node changes of Status().URL: one that hangs on the bind of the
	// second node it tries never makes a second change.
	var tried []int
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && len(tried) < 3 {
		if n := nodeOf(t, urls, p); n != 0 && (len(tried) == 0 || tried[len(tried)-1] != n) {
			tried = append(tried, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	st := p.Status()
	t.Logf("nodes tried, in turn: %v; last status %+v", tried, st)
	require.NotEmpty(t, tried, "no URL tried")
	assert.GreaterOrEqual(t, len(tried), 3, "stuck on node %d: its set-up (the bind) waits with no deadline", tried[len(tried)-1])
	assert.NotEqual(t, mlproducer.Connected, st.ConnectionState, "connected although every node's bind hangs")
}

// closeLate measures how far past its ctx deadline Close returns (0 when it
// returns before).
func closeLate(p *mlproducer.Producer, d time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	err := p.Close(ctx)
	dl, _ := ctx.Deadline()
	return max(0, time.Since(dl)), err
}

// While the handshake with a paused node hangs, Publish keeps its deadline
// and Close(ctx) returns by ctx + 50 ms. A close that overshoots is tried
// again on a new Producer, twice: a scheduler stall of this busy machine
// makes one late, a missing deadline (seconds late) makes all three.
func TestClusterCloseKeepsDeadlineOnPausedNode(t *testing.T) {
	urls := rabbittest.RequireCluster(t)
	rabbittest.PauseNode(t, 1)
	const (
		closeCtx = 200 * time.Millisecond
		slack    = 50 * time.Millisecond
		tries    = 3
	)
	var lates []string
	for try := range tries {
		p, err := mlproducer.New(mlproducer.WithURLs(urls[0]), quorum,
			// Far longer than the test: only the Producer's own deadlines
			// can end the hung handshake.
			mlproducer.WithConnectionTimeout(time.Minute),
			mlproducer.WithConnectionName("mlproducer cluster close"))
		require.NoError(t, err)
		time.Sleep(300 * time.Millisecond) // well into the handshake
		assert.NotEqual(t, mlproducer.Connected, p.Status().ConnectionState)

		pctx, cancel := context.WithTimeout(context.Background(), closeCtx)
		start := time.Now()
		_, perr := p.PublishEmbedding(pctx, "share-close", "a text", mlproducer.EmbeddingOptions{})
		publishTook := time.Since(start)
		cancel()

		late, cerr := closeLate(p, closeCtx)
		t.Logf("try %d: Publish returned after %v (%v); Close(%v) returned %v past its deadline: %v",
			try+1, publishTook, perr, closeCtx, late, cerr)
		if late <= slack && publishTook <= closeCtx+slack {
			return
		}
		lates = append(lates, fmt.Sprintf("Publish %v, Close %v late", publishTook, late))
	}
	t.Fatalf("on a node that answers nothing, Publish(ctx %v) or Close(ctx %v) overran its deadline + %v in all %d tries: %s",
		closeCtx, closeCtx, slack, tries, strings.Join(lates, "; "))
}
