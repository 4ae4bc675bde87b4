package mlproducer_test

// Real RabbitMQ behind real network faults: an in-process toxiproxy-based
// proxy (internal/faults) and a TLS-terminating proxy (internal/tlsproxy)
// sit between the Producer and the broker.
//
// Each test publishes to an exchange and a queue of its own (the Producer
// with NoDeclare, bound with the three task routing keys), so it neither
// reads nor purges the shared ml.* queues that other tests, in this process
// or another, use at the same time.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/faults"
	"github.com/mlproducer/mlproducer/internal/rabbittest"
	"github.com/mlproducer/mlproducer/internal/tlsproxy"
)

// publishSlack is how much later than its ctx deadline a publish may return
// (the acceptance criterion of issue 4).
const publishSlack = 50 * time.Millisecond

// brokerHostPort is the host:port of a broker URL.
func brokerHostPort(t *testing.T, brokerURL string) string {
	t.Helper()
	u, err := url.Parse(brokerURL)
	require.NoError(t, err)
	if u.Port() != "" {
		return u.Host
	}
	return net.JoinHostPort(u.Hostname(), "5672")
}

// privateTopology declares a direct exchange and a queue for this test only,
// the queue bound with the three task routing keys, and deletes both when the
// test ends. The queue expires by itself if a crash skips the cleanup.
func privateTopology(t *testing.T, brokerURL string) (exchange, queue string) {
	t.Helper()
	name := fmt.Sprintf("mlproducer.test.%s.%d", t.Name(), time.Now().UnixNano())
	conn := rabbittest.Dial(t, brokerURL)
	ch, err := conn.Channel()
	require.NoError(t, err)
	require.NoError(t, ch.ExchangeDeclare(name, "direct", false, false, false, false, nil))
	_, err = ch.QueueDeclare(name, false, false, false, false, amqp.Table{"x-expires": int32(10 * time.Minute / time.Millisecond)})
	require.NoError(t, err)
	for _, key := range taskQueues {
		require.NoError(t, ch.QueueBind(name, key, name, false, nil))
	}
	t.Cleanup(func() {
		_, _ = ch.QueueDelete(name, false, false, false)
		_ = ch.ExchangeDelete(name, false, false)
		_ = ch.Close()
	})
	return name, name
}

// faultProducer is a Producer on url that publishes to exchange (declared by
// privateTopology) and reconnects quickly.
func faultProducer(t *testing.T, url, exchange string, dl *deadLetters, opts ...mlproducer.Option) *mlproducer.Producer {
	t.Helper()
	base := []mlproducer.Option{
		mlproducer.WithURLs(url),
		mlproducer.WithTopology(mlproducer.Topology{Exchange: exchange, NoDeclare: true}),
		mlproducer.WithDeadLetter(dl.hook),
		mlproducer.WithReconnectBackoff(20*time.Millisecond, 500*time.Millisecond),
		mlproducer.WithConnectionName("mlproducer faults test"),
	}
	p, err := mlproducer.New(append(base, opts...)...)
	require.NoError(t, err)
	return p
}

// publishCall is one publish as the caller saw it.
type publishCall struct {
	start   time.Time
	elapsed time.Duration
	id      string
	state   mlproducer.DeliveryState
	err     error
}

// publisher runs goroutines that each publish a summarization every `every`,
// with a ctx of `timeout` per call, until stop.
type publisher struct {
	stopCh   chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
	mu       sync.Mutex
	calls    []publishCall
}

// startPublishing starts the publishing goroutines; they are stopped at the
// latest when the test ends, even if it fails early.
func startPublishing(t *testing.T, p *mlproducer.Producer, goroutines int, every, timeout time.Duration, content string) *publisher {
	pub := &publisher{stopCh: make(chan struct{})}
	t.Cleanup(func() { pub.stop() })
	for g := 0; g < goroutines; g++ {
		pub.wg.Add(1)
		go func() {
			defer pub.wg.Done()
			tick := time.NewTicker(every)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-pub.stopCh:
					return
				case <-tick.C:
				}
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				start := time.Now()
				r, err := p.PublishSummarization(ctx, fmt.Sprintf("share-%d-%d", g, i), content, mlproducer.SummarizationOptions{})
				c := publishCall{start: start, elapsed: time.Since(start), id: r.MessageID, state: r.State, err: err}
				cancel()
				pub.mu.Lock()
				pub.calls = append(pub.calls, c)
				pub.mu.Unlock()
			}
		}()
	}
	return pub
}

// stop ends the publishing and returns every call made.
func (pub *publisher) stop() []publishCall {
	pub.stopOnce.Do(func() { close(pub.stopCh) })
	pub.wg.Wait()
	pub.mu.Lock()
	defer pub.mu.Unlock()
	return pub.calls
}

// checkCalls asserts that every publish returned within its ctx deadline plus
// publishSlack and was accepted (a breaker-refused publish is allowed: it is
// the contract, and is only counted). It logs the figures and returns the
// accepted ids.
func checkCalls(t *testing.T, calls []publishCall, timeout time.Duration) []string {
	t.Helper()
	var ids []string
	var late, refused int
	states := map[mlproducer.DeliveryState]int{}
	lat := make([]time.Duration, 0, len(calls))
	for _, c := range calls {
		lat = append(lat, c.elapsed)
		if c.elapsed > timeout+publishSlack {
			late++
			t.Errorf("a publish returned after %v, more than its %v ctx + %v", c.elapsed, timeout, publishSlack)
		}
		switch {
		case errors.Is(c.err, mlproducer.ErrCircuitOpen):
			refused++
		case c.err != nil:
			t.Errorf("publish refused: %v", c.err)
		default:
			ids = append(ids, c.id)
			states[c.state]++
		}
	}
	require.NotEmpty(t, lat, "no publish was made")
	slices.Sort(lat)
	p99 := lat[(len(lat)*99)/100]
	t.Logf("publishes=%d accepted=%d refused(breaker)=%d late=%d confirmed=%d pending=%d queued=%d p99=%v max=%v",
		len(calls), len(ids), refused, late, states[mlproducer.Confirmed], states[mlproducer.Pending],
		states[mlproducer.Queued], p99, lat[len(lat)-1])
	return ids
}

// checkDelivered closes the Producer (waiting for every owned message), then
// consumes the test's queue and asserts that every accepted id arrived or was
// dead-lettered.
func checkDelivered(t *testing.T, p *mlproducer.Producer, brokerURL, queue string, ids []string, dl *deadLetters) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	assert.NoError(t, p.Close(ctx), "every accepted message confirmed before Close's deadline")
	found := rabbittest.DrainIDs(t, brokerURL, queue, time.Second)
	dead := map[string]bool{}
	for _, d := range dl.all() {
		dead[d.Message.ID] = true
	}
	var arrived, duplicates, deadLettered, missing int
	for _, id := range ids {
		switch n := found[id]; {
		case n > 0:
			arrived++
			duplicates += n - 1
		case dead[id]:
			deadLettered++
		default:
			missing++
		}
	}
	st := p.Status()
	t.Logf("accepted=%d found=%d duplicates=%d dead-lettered=%d missing=%d reconnects=%d",
		len(ids), arrived, duplicates, deadLettered, missing, st.ReconnectAttempts)
	assert.Zero(t, missing, "accepted messages neither delivered nor dead-lettered")
	assert.EqualValues(t, st.Accepted, st.Confirmed+st.DeadLettered)
}

// A black hole between the Producer and RabbitMQ (bytes stop, no FIN, no
// RST) is noticed through heartbeats alone, within two heartbeat intervals;
// publishes into it return within their ctx; once the path heals the
// Producer reconnects by itself and every accepted message is delivered.
//
// The bound is 2 heartbeat intervals plus 500 ms of tolerance, for the 10 ms
// status poll and for scheduling on a loaded 2-core machine under -race. The
// health check (30 s) is kept out of the way: only heartbeats can notice.
func TestFaultsBlackHoleDetectedWithinTwoHeartbeats(t *testing.T) {
	brokerURL := rabbittest.Require(t)
	exchange, queue := privateTopology(t, brokerURL)
	proxy := faults.StartT(t, brokerHostPort(t, brokerURL))
	const (
		heartbeat = time.Second
		slack     = 500 * time.Millisecond
		timeout   = 300 * time.Millisecond
	)
	var dl deadLetters
	p := faultProducer(t, proxy.URL(brokerURL), exchange, &dl,
		mlproducer.WithHeartbeat(heartbeat),
		mlproducer.WithHealthCheckInterval(30*time.Second),
		// A dial during the black hole hangs; keep it short so the Producer
		// retries soon after the path heals.
		mlproducer.WithConnectionTimeout(time.Second),
	)
	defer closeProducer(t, p)
	waitConnected(t, p)

	pub := startPublishing(t, p, 4, 20*time.Millisecond, timeout, "text to summarise, published across a black hole")
	time.Sleep(300 * time.Millisecond)

	holeAt := time.Now()
	require.NoError(t, proxy.BlackHole())
	for p.Status().ConnectionState == mlproducer.Connected {
		if time.Since(holeAt) > 10*heartbeat {
			t.Fatalf("the black hole was not noticed in %v", time.Since(holeAt))
		}
		time.Sleep(10 * time.Millisecond)
	}
	detected := time.Since(holeAt)
	st := p.Status()
	t.Logf("black hole noticed after %v (heartbeat %v); state %v; last error: %s",
		detected.Round(time.Millisecond), heartbeat, st.ConnectionState, st.LastError)
	assert.LessOrEqual(t, detected, 2*heartbeat+slack, "noticed within two heartbeat intervals")

	time.Sleep(500 * time.Millisecond) // publishes go on while disconnected
	clearAt := time.Now()
	require.NoError(t, proxy.Clear())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, p.WaitConnected(ctx))
	t.Logf("reconnected %v after the path healed", time.Since(clearAt).Round(time.Millisecond))
	assert.Contains(t, p.Status().URL, proxy.Addr(), "through the proxy")
	time.Sleep(300 * time.Millisecond)
	calls := pub.stop()

	var inHole int
	for _, c := range calls {
		if c.err == nil && c.start.After(holeAt) && c.start.Add(c.elapsed).Before(clearAt) {
			inHole++
			assert.Contains(t, []mlproducer.DeliveryState{mlproducer.Pending, mlproducer.Queued}, c.state,
				"a publish into the black hole cannot be confirmed")
		}
	}
	assert.Positive(t, inHole, "publishes during the black hole")
	ids := checkCalls(t, calls, timeout)
	checkDelivered(t, p, brokerURL, queue, ids, &dl)
}

// Close on a black-holed connection returns by its ctx: the
// connection.close handshake nobody will answer gets what is left of Close's
// deadline, not its usual two seconds, and the unconfirmed message goes to
// the dead-letter hook. The bound leaves a second of slack for a loaded
// machine; the old behaviour took the ctx plus two seconds.
func TestFaultsCloseOnABlackHoleReturnsByItsDeadline(t *testing.T) {
	brokerURL := rabbittest.Require(t)
	exchange, _ := privateTopology(t, brokerURL)
	proxy := faults.StartT(t, brokerHostPort(t, brokerURL))
	var dl deadLetters
	p := faultProducer(t, proxy.URL(brokerURL), exchange, &dl,
		mlproducer.WithHeartbeat(time.Minute), mlproducer.WithHealthCheckInterval(time.Minute))
	waitConnected(t, p)
	require.NoError(t, proxy.BlackHole())
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := p.PublishSummarization(ctx, "s", "text sent into a black hole", mlproducer.SummarizationOptions{})
	cancel()
	require.NoError(t, err)

	const deadline = 200 * time.Millisecond
	start := time.Now()
	ctx, cancel = context.WithTimeout(context.Background(), deadline)
	defer cancel()
	err = p.Close(ctx)
	took := time.Since(start)
	t.Logf("Close(%v) on a black hole took %v: %v", deadline, took.Round(time.Millisecond), err)
	assert.Less(t, took, deadline+time.Second, "Close overran its ctx waiting for the broker")
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Len(t, dl.all(), 1, "the unconfirmed message is dead-lettered")
}

// Connections cut with a TCP RST while publishing: the Producer reconnects
// each time and loses nothing.
func TestFaultsResetsLoseNothing(t *testing.T) {
	brokerURL := rabbittest.Require(t)
	exchange, queue := privateTopology(t, brokerURL)
	proxy := faults.StartT(t, brokerHostPort(t, brokerURL))
	const timeout = time.Second
	var dl deadLetters
	p := faultProducer(t, proxy.URL(brokerURL), exchange, &dl)
	defer closeProducer(t, p)
	waitConnected(t, p)

	pub := startPublishing(t, p, 8, 5*time.Millisecond, timeout, "text to summarise, published across resets")
	const resets = 3
	for i := 0; i < resets; i++ {
		time.Sleep(300 * time.Millisecond)
		waitConnected(t, p)
		require.NoError(t, proxy.ResetPeers())
	}
	waitConnected(t, p)
	time.Sleep(300 * time.Millisecond)
	calls := pub.stop()

	st := p.Status()
	t.Logf("reconnect attempts: %d; last error: %s", st.ReconnectAttempts, st.LastError)
	assert.GreaterOrEqual(t, st.ReconnectAttempts, uint64(resets), "a reconnect per reset")
	ids := checkCalls(t, calls, timeout)
	checkDelivered(t, p, brokerURL, queue, ids, &dl)
}

// 50 ms ± 10 ms of latency each way: every publish still returns within its
// ctx, and everything accepted arrives.
func TestFaultsLatencyPublishesInTime(t *testing.T) {
	brokerURL := rabbittest.Require(t)
	exchange, queue := privateTopology(t, brokerURL)
	proxy := faults.StartT(t, brokerHostPort(t, brokerURL))
	const timeout = 200 * time.Millisecond
	var dl deadLetters
	p := faultProducer(t, proxy.URL(brokerURL), exchange, &dl)
	defer closeProducer(t, p)
	waitConnected(t, p)
	require.NoError(t, proxy.AddLatency(50*time.Millisecond, 10*time.Millisecond))

	pub := startPublishing(t, p, 8, 10*time.Millisecond, timeout, "text to summarise, published over a slow link")
	time.Sleep(1500 * time.Millisecond)
	calls := pub.stop()
	ids := checkCalls(t, calls, timeout)
	assert.Equal(t, mlproducer.Connected, p.Status().ConnectionState)
	checkDelivered(t, p, brokerURL, queue, ids, &dl)
}

// A 64 KB/s link, saturated: publishes that cannot be confirmed in time
// return Pending at their ctx deadline, and everything accepted arrives.
func TestFaultsBandwidthLimitPublishesInTime(t *testing.T) {
	brokerURL := rabbittest.Require(t)
	exchange, queue := privateTopology(t, brokerURL)
	proxy := faults.StartT(t, brokerHostPort(t, brokerURL))
	const timeout = 300 * time.Millisecond
	var dl deadLetters
	p := faultProducer(t, proxy.URL(brokerURL), exchange, &dl)
	defer closeProducer(t, p)
	waitConnected(t, p)
	require.NoError(t, proxy.LimitBandwidth(64))

	content := strings.Repeat("bandwidth-limited text to summarise. ", 55) // about 2 KB
	pub := startPublishing(t, p, 8, 10*time.Millisecond, timeout, content)
	time.Sleep(1500 * time.Millisecond)
	calls := pub.stop()
	ids := checkCalls(t, calls, timeout)
	checkDelivered(t, p, brokerURL, queue, ids, &dl)
}

// amqps through a TLS-terminating proxy: with the proxy's CA the Producer
// connects and a publish is confirmed.
func TestTLSProxyProducerConnectsWithTheRightCA(t *testing.T) {
	brokerURL := rabbittest.Require(t)
	exchange, queue := privateTopology(t, brokerURL)
	tp, err := tlsproxy.Start(brokerHostPort(t, brokerURL))
	require.NoError(t, err)
	defer tp.Close()
	var dl deadLetters
	p := faultProducer(t, tp.URL(brokerURL), exchange, &dl,
		mlproducer.WithTLSConfig(&tls.Config{RootCAs: tp.CAPool()}))
	defer closeProducer(t, p)
	waitConnected(t, p)
	assert.True(t, strings.HasPrefix(p.Status().URL, "amqps://"), p.Status().URL)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := p.PublishSummarization(ctx, "share-tls", "text sent over TLS", mlproducer.SummarizationOptions{})
	require.NoError(t, err)
	assert.Equal(t, mlproducer.Confirmed, r.State)
	checkDelivered(t, p, brokerURL, queue, []string{r.MessageID}, &dl)
}

// With a CA that did not sign the proxy's certificate (an unrelated fresh
// CA, or the system roots) the Producer never connects; the error says why
// (x509) and shows no password.
func TestTLSProxyProducerRefusesAWrongCA(t *testing.T) {
	brokerURL := rabbittest.Require(t)
	tp, err := tlsproxy.Start(brokerHostPort(t, brokerURL))
	require.NoError(t, err)
	defer tp.Close()
	other, err := tlsproxy.Start("127.0.0.1:1") // only for its unrelated CA
	require.NoError(t, err)
	other.Close()

	const secret = "Tls5ecretPw"
	u, err := url.Parse(tp.URL(brokerURL))
	require.NoError(t, err)
	u.User = url.UserPassword("guest", secret)
	for name, cfg := range map[string]*tls.Config{
		"unrelated CA": {RootCAs: other.CAPool()},
		"system roots": nil,
	} {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			opts := []mlproducer.Option{
				mlproducer.WithURLs(u.String()),
				mlproducer.WithReconnectBackoff(20*time.Millisecond, 200*time.Millisecond),
			}
			if cfg != nil {
				opts = append(opts, mlproducer.WithTLSConfig(cfg))
			}
			p, err := mlproducer.New(opts...)
			require.NoError(t, err)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			werr := p.WaitConnected(ctx)
			require.Error(t, werr)
			st := p.Status()
			assert.NotEqual(t, mlproducer.Connected, st.ConnectionState)
			assert.Contains(t, st.LastError, "x509", "the certificate is why")
			assert.Contains(t, st.LastError, "certificate")
			t.Logf("last error: %s", st.LastError)
			for what, text := range map[string]string{"LastError": st.LastError, "URL": st.URL, "WaitConnected": werr.Error()} {
				assert.NotContains(t, text, secret, what)
			}
			require.NoError(t, closeProducer(t, p))
		})
	}
}
