package spoolchild_test

import (
	"context"
	"net/url"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/faults"
	"github.com/mlproducer/mlproducer/internal/rabbittest"
	"github.com/mlproducer/mlproducer/internal/spoolchild"
)

// The test binary is also the child: Run starts it again with the child's
// settings in its environment.
func TestMain(m *testing.M) {
	if spoolchild.IsChild() {
		os.Exit(spoolchild.Main())
	}
	goleak.VerifyTestMain(m)
}

// Kill test on the real broker (issue 10): a child publishing from 64
// goroutines with the spool is killed with SIGKILL at least 12 times at
// random moments (some while the broker is cut off, some in the middle of
// its Close after SIGTERM) and restarted on the same dir; then a Producer on
// the dir sends what is left. Every ID a child reported accepted (its publish
// returned nil) must be in the queue; duplicates are allowed and logged.
func TestKillLoopLosesNoAcceptedMessage(t *testing.T) {
	brokerURL := rabbittest.Require(t)
	u, err := url.Parse(brokerURL)
	require.NoError(t, err)

	// A topology of the test's own, in the default virtual host: an
	// exchange and a queue bound to it for the embedding tasks. The queue
	// expires 10 minutes after its last use if the cleanup never runs.
	name := "mlproducer.test.spoolkill-" + time.Now().Format("150405.000000")
	conn := rabbittest.Dial(t, brokerURL)
	ch, err := conn.Channel()
	require.NoError(t, err)
	require.NoError(t, ch.ExchangeDeclare(name, "direct", true, true, false, false, nil))
	_, err = ch.QueueDeclare(name, true, false, false, false, amqp.Table{"x-expires": int32(10 * 60 * 1000)})
	require.NoError(t, err)
	require.NoError(t, ch.QueueBind(name, mlproducer.TaskEmbedding.RoutingKey(), name, false, nil))
	t.Cleanup(func() {
		// The exchange is auto-delete: it goes with the queue's binding.
		rabbittest.DeleteQueues(t, brokerURL, name)
		_ = ch.Close()
	})

	px, err := faults.Start(u.Host)
	require.NoError(t, err)
	cut := spoolchild.NewProxyCut(px, true)
	t.Cleanup(func() {
		_ = cut.Restore()
		_ = px.Close()
	})

	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := spoolchild.Run(ctx, spoolchild.Config{
		Command:   []string{os.Args[0], "-test.run=^$"},
		URL:       px.URL(brokerURL),
		Dir:       dir,
		Exchange:  name,
		NoDeclare: true,
		Kills:     12,
		Cut:       cut.Cut,
		Restore:   cut.Restore,
		Logf:      t.Logf,
	})
	t.Logf("kill loop: seed %d, %d starts in %s: %d kills (%d mid-outage, %d mid-Close), %d Closes finished first %v; %d accepted",
		res.Seed, res.Starts, res.Elapsed.Round(time.Millisecond), res.Kills, res.KillsMidOutage, res.KillsMidClose,
		len(res.Closed), res.Closed, len(res.Accepted))
	require.NoError(t, err)
	assert.GreaterOrEqual(t, res.Kills, 10)
	assert.Positive(t, res.KillsMidOutage, "no kill while the broker was cut off")
	assert.Positive(t, res.KillsMidClose, "no kill in the middle of a Close")
	assert.NotEmpty(t, res.Accepted)
	assert.Empty(t, res.DeadLettered, "no message may run out of attempts here")

	// What the last child left in the spool, sent by a Producer of ours
	// straight to the broker.
	var mu sync.Mutex
	var dead []string
	p, err := mlproducer.New(mlproducer.WithURLs(brokerURL), mlproducer.WithSpool(dir),
		mlproducer.WithTopology(mlproducer.Topology{Exchange: name, NoDeclare: true}),
		mlproducer.WithMaxRetries(1000),
		mlproducer.WithDeadLetter(func(dl mlproducer.DeadLetter) {
			mu.Lock()
			dead = append(dead, dl.Message.ID)
			mu.Unlock()
		}))
	require.NoError(t, err)
	left := p.Status().RetryQueueSize
	dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
	defer dcancel()
	st, err := spoolchild.Drain(dctx, p)
	require.NoError(t, err)
	t.Logf("drain: %d messages left in the spool by the last child, %d confirmed", left, st.Confirmed)
	mu.Lock()
	assert.Empty(t, dead, "the draining Producer dead-lettered messages")
	mu.Unlock()

	// The spool is empty now.
	p, err = mlproducer.New(mlproducer.WithURLs(brokerURL), mlproducer.WithSpool(dir),
		mlproducer.WithTopology(mlproducer.Topology{Exchange: name, NoDeclare: true}))
	require.NoError(t, err)
	assert.Zero(t, p.Status().RetryQueueSize, "records left in the spool after the drain")
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	require.NoError(t, p.Close(cctx))

	got := rabbittest.DrainIDs(t, brokerURL, name, 2*time.Second)
	reported := make(map[string]bool, len(res.Accepted))
	var missing []string
	for _, id := range res.Accepted {
		if reported[id] {
			continue
		}
		reported[id] = true
		if got[id] == 0 {
			missing = append(missing, id)
		}
	}
	duplicates, unreported := 0, 0
	for id, n := range got {
		duplicates += n - 1
		if !reported[id] {
			unreported++
		}
	}
	t.Logf("consumed %d distinct ids: kills=%d accepted=%d missing=%d duplicates=%d (accepted but not reported before a kill: %d)",
		len(got), res.Kills, len(reported), len(missing), duplicates, unreported)
	if len(missing) > 0 {
		sort.Strings(missing)
		t.Errorf("%d accepted messages never arrived, e.g. %v", len(missing), missing[:min(5, len(missing))])
	}
	assert.Equal(t, len(res.Accepted), len(reported), "a child reported an id twice")
}
