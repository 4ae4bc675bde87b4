package mlproducer_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
	"github.com/mlproducer/mlproducer/transport"
)

// silentDialer dials the fake broker, but the connections to the URLs in
// silent complete the handshake and then answer nothing: channel.open never
// returns until the connection is closed, as with a cluster node without a
// majority or a paused one.
type silentDialer struct {
	b      *mlproducertest.Broker
	mu     sync.Mutex
	silent map[string]bool
	dials  map[string]int
}

func (d *silentDialer) Dial(ctx context.Context, url string, cfg transport.Config) (transport.Conn, error) {
	conn, err := d.b.Dial(ctx, url, cfg)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dials[url]++
	if d.silent[url] {
		return &silentConn{Conn: conn, closed: make(chan struct{})}, nil
	}
	return conn, nil
}

func (d *silentDialer) dialsTo(url string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dials[url]
}

type silentConn struct {
	transport.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *silentConn) Channel() (transport.Channel, error) {
	<-c.closed
	return nil, errors.New("connection closed")
}

func (c *silentConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// A node that completes the handshake and then answers nothing is left for
// the next URL within the connection timeout; meanwhile New, Publish and
// Close keep their deadlines (exactly, in the bubble's time).
func TestSilentNodeLeftForTheNextURL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		d := &silentDialer{b: b, silent: map[string]bool{nodeURLs[0]: true}, dials: map[string]int{}}
		start := time.Now()
		p, err := mlproducer.New(mlproducer.WithDialer(d), mlproducer.WithURLs(nodeURLs...), mlproducer.WithURLsInOrder(),
			mlproducer.WithConnectionTimeout(300*time.Millisecond), mlproducer.WithReconnectBackoff(10*time.Millisecond, 50*time.Millisecond))
		require.NoError(t, err)
		assert.Zero(t, time.Since(start), "New waits for no broker")

		// While the first node holds the set-up, a publish is queued at once.
		time.Sleep(10 * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		t0 := time.Now()
		r, err := p.PublishSummarization(ctx, "s", "text", mlproducer.SummarizationOptions{})
		cancel()
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Queued, r.State)
		assert.Zero(t, time.Since(t0), "the publish did not wait for the set-up")

		wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
		require.NoError(t, p.WaitConnected(wctx))
		wcancel()
		assert.Equal(t, "amqp://guest:xxxxx@node-b:5672/", p.Status().URL, "the next URL")
		assert.LessOrEqual(t, time.Since(start), 300*time.Millisecond+50*time.Millisecond, "left within the connection timeout and one backoff")
		assert.Equal(t, 1, d.dialsTo(nodeURLs[0]))
		for len(b.MessageIDs("ml.summarization")) == 0 {
			time.Sleep(time.Millisecond)
		}
		assert.Equal(t, []string{r.MessageID}, b.MessageIDs("ml.summarization"), "the queued message went out on the next node")
		require.NoError(t, closeProducer(t, p))
	})
}

// Close keeps its ctx while every node holds the set-up.
func TestCloseWhileEveryNodeIsSilent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		silent := map[string]bool{}
		for _, u := range nodeURLs {
			silent[u] = true
		}
		d := &silentDialer{b: b, silent: silent, dials: map[string]int{}}
		p, err := mlproducer.New(mlproducer.WithDialer(d), mlproducer.WithURLs(nodeURLs...),
			mlproducer.WithConnectionTimeout(10*time.Second))
		require.NoError(t, err)
		_, err = p.PublishEmbedding(context.Background(), "s", "text", mlproducer.EmbeddingOptions{})
		require.NoError(t, err)
		time.Sleep(time.Second) // inside the first set-up's timeout
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		var ce *mlproducer.CloseError
		require.ErrorAs(t, p.Close(ctx), &ce)
		assert.LessOrEqual(t, time.Since(start), 100*time.Millisecond+50*time.Millisecond, "Close returns by ctx + 50 ms")
		assert.Equal(t, 1, ce.DeadLettered, "the queued message went to the hook, counted")
	})
}
