package mlproducer_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/rabbittest"
)

var taskQueues = []string{"ml.summarization", "ml.transcription", "ml.embedding"}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Real RabbitMQ: 64 goroutines publish at least 10,000 tasks of the three
// types while every connection is forced closed three times. Every accepted
// message id must be found in the queues afterwards, or dead-lettered.
func TestRabbitMQForcedClosesLoseNothing(t *testing.T) {
	url := rabbittest.Require(t)
	rabbittest.PurgeQueues(t, url, taskQueues...)
	var dl deadLetters
	p, err := mlproducer.New(
		mlproducer.WithURLs(url),
		mlproducer.WithDeadLetter(dl.hook),
		mlproducer.WithReconnectBackoff(50*time.Millisecond, time.Second),
		mlproducer.WithRetryQueueCapacity(1_000_000, 1<<30),
	)
	require.NoError(t, err)
	waitConnected(t, p)

	var (
		accepted   sync.Map
		nAccepted  atomic.Int64
		closesDone atomic.Bool
		wg         sync.WaitGroup
	)
	const goroutines, atLeast = 64, 10_000
	// Even when a step below fails the test, stop the publishers and the
	// Producer before the next test runs.
	defer closeProducer(t, p)
	defer func() { closesDone.Store(true); wg.Wait() }()
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; nAccepted.Load() < atLeast || !closesDone.Load(); i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				var r mlproducer.Receipt
				var err error
				share := fmt.Sprintf("share-%d-%d", g, i)
				switch i % 3 {
				case 0:
					r, err = p.PublishSummarization(ctx, share, "some text to summarise", mlproducer.SummarizationOptions{})
				case 1:
					r, err = p.PublishTranscription(ctx, share, "https://media.example/a.mp3", mlproducer.TranscriptionOptions{})
				default:
					r, err = p.PublishEmbedding(ctx, share, "some text to embed", mlproducer.EmbeddingOptions{})
				}
				cancel()
				if err != nil {
					t.Errorf("publish refused: %v", err)
					return
				}
				accepted.Store(r.MessageID, true)
				nAccepted.Add(1)
			}
		}()
	}
	for i := 0; i < 3; i++ {
		time.Sleep(300 * time.Millisecond)
		rabbittest.CloseAllConnections(t)
	}
	closesDone.Store(true)
	wg.Wait()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, p.Close(ctx))

	found := map[string]int{}
	for _, q := range taskQueues {
		for id, n := range rabbittest.DrainIDs(t, url, q, 2*time.Second) {
			found[id] += n
		}
	}
	dead := map[string]bool{}
	for _, d := range dl.all() {
		dead[d.Message.ID] = true
	}
	var confirmed, duplicates, missing int
	accepted.Range(func(k, _ any) bool {
		switch n := found[k.(string)]; {
		case n > 0:
			confirmed++
			duplicates += n - 1
		case dead[k.(string)]:
		default:
			missing++
		}
		return true
	})
	st := p.Status()
	t.Logf("accepted=%d found=%d duplicates=%d dead-lettered=%d missing=%d reconnects=%d",
		nAccepted.Load(), confirmed, duplicates, len(dead), missing, st.ReconnectAttempts)
	if duplicates > 0 {
		t.Logf("%d duplicates delivered (at-least-once; consumers de-duplicate by message id)", duplicates)
	}
	assert.Zero(t, missing)
	assert.GreaterOrEqual(t, nAccepted.Load(), int64(atLeast))
	assert.EqualValues(t, st.Accepted, st.Confirmed+st.DeadLettered)
	assert.GreaterOrEqual(t, st.ReconnectAttempts, uint64(3), "each forced close causes a reconnect")
}

// Real RabbitMQ: the first URL refuses connections, the second works.
func TestRabbitMQFailoverToSecondURL(t *testing.T) {
	url := rabbittest.Require(t)
	refusing := "amqp://guest:guest@127.0.0.1:1/"
	p, err := mlproducer.New(mlproducer.WithURLs(refusing, url), mlproducer.WithReconnectBackoff(10*time.Millisecond, 100*time.Millisecond))
	require.NoError(t, err)
	waitConnected(t, p)
	assert.Equal(t, rabbittest.Redact(url), p.Status().URL)
	r, err := p.PublishSummarization(context.Background(), "share-failover", "text", mlproducer.SummarizationOptions{})
	require.NoError(t, err)
	assert.Equal(t, mlproducer.Confirmed, r.State)
	require.NoError(t, closeProducer(t, p))
}

// The password of a URL never appears in logs, errors or Status.
func TestPasswordNeverShown(t *testing.T) {
	url := rabbittest.Require(t)
	const secret = "Sup3rS3cretPw"
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// Wrong password on a live broker, then a refused port: both fail with
	// errors that must not show it.
	// RabbitMQ answers a wrong password after about 3 s.
	bad := []string{"amqp://guest:" + secret + "@127.0.0.1:1/", "amqp://guest:" + secret + "@127.0.0.1:5672/"}
	p, err := mlproducer.New(mlproducer.WithURLs(bad...), mlproducer.WithLogger(logger),
		mlproducer.WithReconnectBackoff(10*time.Millisecond, 50*time.Millisecond))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	werr := p.WaitConnected(ctx)
	require.Error(t, werr)
	st := p.Status()
	require.NotEmpty(t, st.LastError)
	_, perr := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
	require.NoError(t, perr)
	cctx, ccancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer ccancel()
	cerr := p.Close(cctx)
	require.Error(t, cerr)

	_, oerr := mlproducer.New(mlproducer.WithURLs("amqp://guest:" + secret + "@/nohost"))
	require.Error(t, oerr)

	for what, text := range map[string]string{
		"logs": logs.String(), "WaitConnected error": werr.Error(), "Close error": cerr.Error(),
		"option error": oerr.Error(), "status": fmt.Sprintf("%+v", st),
	} {
		assert.NotContains(t, text, secret, what)
	}
	assert.Contains(t, logs.String(), "xxxxx", "URLs are logged redacted")
	assert.Contains(t, logs.String(), "username or password not allowed", "the broker's refusal is logged")
	_ = url
}

// Real RabbitMQ: a mandatory message that no queue is bound for comes back as
// basic.return before its ack; it is never counted as confirmed.
func TestRabbitMQUnroutableIsNotConfirmed(t *testing.T) {
	url := rabbittest.Require(t)
	conn := rabbittest.Dial(t, url)
	ch, err := conn.Channel()
	require.NoError(t, err)
	const ex = "mlproducer.test.unbound"
	require.NoError(t, ch.ExchangeDeclare(ex, "direct", false, true, false, false, nil))
	t.Cleanup(func() { ch.ExchangeDelete(ex, false, false); ch.Close() })

	var dl deadLetters
	p, err := mlproducer.New(mlproducer.WithURLs(url),
		mlproducer.WithTopology(mlproducer.Topology{Exchange: ex, NoDeclare: true}),
		mlproducer.WithMaxRetries(1), mlproducer.WithRetryBackoff(10*time.Millisecond, 10*time.Millisecond),
		mlproducer.WithDeadLetter(dl.hook))
	require.NoError(t, err)
	waitConnected(t, p)
	r, err := p.PublishSummarization(context.Background(), "share-unroutable", "text", mlproducer.SummarizationOptions{})
	require.NoError(t, err)
	assert.NotEqual(t, mlproducer.Confirmed, r.State)
	require.NoError(t, closeProducer(t, p))
	got := dl.all()
	require.Len(t, got, 1)
	assert.Equal(t, 2, got[0].Attempts)
	var ret *mlproducer.ReturnedError
	require.ErrorAs(t, got[0].Err, &ret)
	assert.EqualValues(t, 312, ret.Code)
	assert.Zero(t, p.Status().Confirmed)
}

// Real RabbitMQ: a memory alarm blocks publishers. The Producer moves to
// Blocked (4), publishes return within their ctx as Queued (the first one,
// already on the wire, as Pending), and once the alarm clears every one of
// them is confirmed and found in the queue.
func TestRabbitMQMemoryAlarmQueuesThenDrains(t *testing.T) {
	url := rabbittest.Require(t)
	rabbittest.PurgeQueues(t, url, taskQueues...)
	var dl deadLetters
	p, err := mlproducer.New(mlproducer.WithURLs(url), mlproducer.WithDeadLetter(dl.hook))
	require.NoError(t, err)
	defer closeProducer(t, p)
	waitConnected(t, p)

	clearAlarm := rabbittest.WithMemoryAlarm(t)
	var ids []string
	deadline := time.Now().Add(30 * time.Second)
	for p.Status().ConnectionState != mlproducer.Blocked {
		require.True(t, time.Now().Before(deadline), "never saw connection.blocked; state %v", p.Status().ConnectionState)
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		start := time.Now()
		r, err := p.PublishEmbedding(ctx, "share-alarm", "text", mlproducer.EmbeddingOptions{})
		elapsed := time.Since(start)
		cancel()
		require.NoError(t, err)
		assert.Less(t, elapsed, 200*time.Millisecond+100*time.Millisecond, "returned within its ctx")
		ids = append(ids, r.MessageID)
	}
	for i := 0; i < 20; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		r, err := p.PublishEmbedding(ctx, "share-alarm", "text", mlproducer.EmbeddingOptions{})
		cancel()
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Queued, r.State, "blocked: straight to the retry queue")
		ids = append(ids, r.MessageID)
	}
	assert.Equal(t, mlproducer.Blocked, p.Status().ConnectionState)
	assert.False(t, p.Status().CircuitBreakerOpen, "flow control is not a broker failure")

	clearAlarm()
	for p.Status().Confirmed < uint64(len(ids)) {
		require.True(t, time.Now().Before(deadline.Add(30*time.Second)), "not drained: %+v", p.Status())
		time.Sleep(50 * time.Millisecond)
	}
	assert.Equal(t, mlproducer.Connected, p.Status().ConnectionState)
	require.NoError(t, closeProducer(t, p))
	found := rabbittest.DrainIDs(t, url, "ml.embedding", time.Second)
	for _, id := range ids {
		assert.Positive(t, found[id], "message %s missing", id)
	}
	assert.Empty(t, dl.all())
}
