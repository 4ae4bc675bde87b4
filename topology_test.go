package mlproducer_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
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

// declareExchange declares the durable direct exchange name on b, as an
// operator would.
func declareExchange(t *testing.T, b *mlproducertest.Broker, name string) {
	t.Helper()
	conn, err := b.Dial(context.Background(), "fake", transport.Config{})
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	require.NoError(t, ch.ExchangeDeclare(name, "direct", true, nil))
}

// records is a slog.Handler that keeps every record.
type records struct {
	mu   sync.Mutex
	list []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = append(r.list, rec.Clone())
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

// count returns how many records at level have a message containing msg.
func (r *records) count(level slog.Level, msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.list {
		if rec.Level == level && strings.Contains(rec.Message, msg) {
			n++
		}
	}
	return n
}

func TestTopologyNamesAndArguments(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithTopology(mlproducer.Topology{
			QueueType:          mlproducer.QueueQuorum,
			QueuePrefix:        "staging.",
			TranscriptionQueue: "asr",
			MaxLength:          1000,
			Overflow:           mlproducer.OverflowRejectPublish,
			MessageTTL:         90 * time.Second,
			DeadLetterExchange: "ml.dlx",
			DeliveryLimit:      5,
		}))
		defer closeProducer(t, p)
		waitConnected(t, p)
		want := transport.Table{
			"x-queue-type":           "quorum",
			"x-max-length":           int64(1000),
			"x-overflow":             "reject-publish",
			"x-message-ttl":          int64(90000),
			"x-dead-letter-exchange": "ml.dlx",
			"x-delivery-limit":       int64(5),
		}
		for _, q := range []string{"staging.ml.summarization", "staging.asr", "staging.ml.embedding"} {
			args, ok := b.QueueArgs(q)
			require.True(t, ok, "queue %s declared", q)
			assert.Equal(t, want, args, q)
		}
		_, ok := b.QueueArgs("ml.summarization")
		assert.False(t, ok, "no queue under the unprefixed name")

		// The routing keys stay: each task reaches its own queue.
		ctx := context.Background()
		r, err := p.PublishTranscription(ctx, "s", "https://example.com/a.mp3", mlproducer.TranscriptionOptions{})
		require.NoError(t, err)
		require.Equal(t, mlproducer.Confirmed, r.State)
		assert.Equal(t, []string{r.MessageID}, b.MessageIDs("staging.asr"))
		msgs := b.Messages("staging.asr")
		require.Len(t, msgs, 1)
		assert.Equal(t, "ml.transcription", msgs[0].RoutingKey)
		r, err = p.PublishSummarization(ctx, "s", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		assert.Equal(t, []string{r.MessageID}, b.MessageIDs("staging.ml.summarization"))
	})
}

func TestTopologyClassicPriority(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithTopology(mlproducer.Topology{MaxPriority: 9, Overflow: mlproducer.OverflowRejectPublishDLX}))
		defer closeProducer(t, p)
		waitConnected(t, p)
		args, ok := b.QueueArgs("ml.embedding")
		require.True(t, ok)
		assert.Equal(t, transport.Table{"x-queue-type": "classic", "x-max-priority": int64(9), "x-overflow": "reject-publish-dlx"}, args)
	})
}

func TestTopologyValidation(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("q", 250)
	bad := []struct {
		field string
		top   mlproducer.Topology
	}{
		{"QueueType", mlproducer.Topology{QueueType: "stream"}},
		{"MaxLength", mlproducer.Topology{MaxLength: -1}},
		{"Overflow", mlproducer.Topology{Overflow: "drop-tail"}},
		{"Overflow", mlproducer.Topology{QueueType: mlproducer.QueueQuorum, Overflow: mlproducer.OverflowRejectPublishDLX}},
		{"MessageTTL", mlproducer.Topology{MessageTTL: -time.Second}},
		{"MessageTTL", mlproducer.Topology{MessageTTL: 1500 * time.Microsecond}},
		{"MaxPriority", mlproducer.Topology{QueueType: mlproducer.QueueQuorum, MaxPriority: 5}},
		{"DeliveryLimit", mlproducer.Topology{DeliveryLimit: 3}},
		{"DeliveryLimit", mlproducer.Topology{QueueType: mlproducer.QueueQuorum, DeliveryLimit: -1}},
		{"SummarizationQueue", mlproducer.Topology{SummarizationQueue: "amq.mine"}},
		{"QueuePrefix", mlproducer.Topology{QueuePrefix: long}},
		{"QueuePrefix", mlproducer.Topology{QueuePrefix: "amq.x"}},
		{"EmbeddingQueue", mlproducer.Topology{QueuePrefix: "p.", EmbeddingQueue: long + "1234"}},
		{"TranscriptionQueue", mlproducer.Topology{TranscriptionQueue: long + "123456"}},
		{"Exchange", mlproducer.Topology{Exchange: long + long}},
		{"DeadLetterExchange", mlproducer.Topology{DeadLetterExchange: long + long}},
		{"QueuePrefix", mlproducer.Topology{NoDeclare: true, QueuePrefix: "staging."}},
		{"MaxLength", mlproducer.Topology{NoDeclare: true, MaxLength: 10}},
	}
	for _, tc := range bad {
		_, err := mlproducer.New(mlproducer.WithTopology(tc.top))
		var oe *mlproducer.OptionError
		require.ErrorAs(t, err, &oe, "%+v", tc.top)
		assert.ErrorIs(t, err, mlproducer.ErrInvalidOption)
		assert.Equal(t, "WithTopology", oe.Name)
		assert.True(t, strings.HasPrefix(oe.Reason, "Topology."+tc.field+":"), "%q names %s", oe.Reason, tc.field)
	}
	good := []mlproducer.Topology{
		{},
		{QueueType: mlproducer.QueueQuorum, DeliveryLimit: 1, Overflow: mlproducer.OverflowDropHead, MaxLength: 1},
		{MaxPriority: 255, MessageTTL: time.Millisecond, Overflow: mlproducer.OverflowRejectPublishDLX, DeadLetterExchange: "dlx"},
		{QueuePrefix: "x.", SummarizationQueue: "same", TranscriptionQueue: "same"},
		{NoDeclare: true, Exchange: "theirs"},
	}
	for _, top := range good {
		p, err := mlproducer.New(mlproducer.WithTopology(top), mlproducer.WithDialer(mlproducertest.NewBroker()))
		require.NoError(t, err, "%+v", top)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = p.Close(ctx)
		cancel()
	}
}

// A queue that exists with other arguments is a configuration error: logged
// once, in Status.LastError and in the readiness answer, retried at the
// reconnect backoff's cap; deleting the queue recovers by itself, and what
// was published meanwhile is sent.
func TestTopologyConflictIsConfigError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.DeclareQueue("ml.summarization", transport.Table{"x-queue-type": "quorum"})
		logs := &records{}
		const capWait = 10 * time.Second
		p := newFake(t, b, mlproducer.WithLogger(slog.New(logs)),
			mlproducer.WithReconnectBackoff(100*time.Millisecond, capWait))
		defer closeProducer(t, p)

		time.Sleep(5*capWait + time.Second)
		synctest.Wait()
		st := p.Status()
		assert.Equal(t, mlproducer.Connecting, st.ConnectionState)
		assert.Contains(t, st.LastError, `configuration error: queue "ml.summarization" exists with x-queue-type "quorum" but the Producer declares "classic"`)
		assert.Contains(t, st.LastError, "delete the queue")
		assert.Equal(t, 1, logs.count(slog.LevelError, "configuration error"), "logged once")
		assert.Zero(t, logs.count(slog.LevelWarn, "connection failed"), "not logged as a connection failure")

		err := p.Ready()
		require.ErrorIs(t, err, mlproducer.ErrNotReady)
		assert.ErrorContains(t, err, "x-queue-type")
		rec := httptest.NewRecorder()
		p.ReadinessHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
		assert.Contains(t, rec.Body.String(), "configuration error")

		// Redials are spaced by the cap, not by the initial interval.
		dials := b.DialTimes()
		require.GreaterOrEqual(t, len(dials), 5)
		require.LessOrEqual(t, len(dials), 6)
		for i := 1; i < len(dials); i++ {
			assert.Equal(t, capWait, dials[i].Sub(dials[i-1]), "gap before dial %d", i)
		}

		// Publishes meanwhile are kept, as in any outage.
		r, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Queued, r.State)

		// The operator deletes the queue: the next redial declares it.
		b.DeleteQueue("ml.summarization")
		time.Sleep(capWait)
		synctest.Wait()
		st = p.Status()
		assert.Equal(t, mlproducer.Connected, st.ConnectionState)
		assert.Empty(t, st.LastError)
		assert.NoError(t, p.Ready())
		assert.Equal(t, []string{r.MessageID}, b.MessageIDs("ml.summarization"))
		args, _ := b.QueueArgs("ml.summarization")
		assert.Equal(t, "classic", args["x-queue-type"])
		assert.Equal(t, 1, logs.count(slog.LevelInfo, "configuration error resolved"))
	})
}

// The same conflict seen again after it was resolved is logged again.
func TestTopologyConflictLoggedAgainAfterRecovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.DeclareQueue("ml.embedding", transport.Table{"x-queue-type": "classic", "x-max-length": int64(7)})
		logs := &records{}
		p := newFake(t, b, mlproducer.WithLogger(slog.New(logs)),
			mlproducer.WithReconnectBackoff(time.Millisecond, time.Second))
		defer closeProducer(t, p)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		assert.Contains(t, p.Status().LastError, `queue "ml.embedding" exists with x-max-length "7" but the Producer declares none`)
		b.DeleteQueue("ml.embedding")
		waitConnected(t, p)
		b.DeleteQueue("ml.embedding")
		b.DeclareQueue("ml.embedding", transport.Table{"x-queue-type": "classic", "x-max-length": int64(7)})
		b.DropConnections(errors.New("dropped"))
		time.Sleep(10 * time.Second)
		synctest.Wait()
		assert.Equal(t, 2, logs.count(slog.LevelError, "configuration error"))
		assert.Error(t, p.Ready())
	})
}

// With NoDeclare, a missing exchange is found at set-up and reported as
// such, with the same configuration-error treatment.
func TestNoDeclareMissingExchange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		logs := &records{}
		const capWait = 5 * time.Second
		p := newFake(t, b, mlproducer.WithLogger(slog.New(logs)),
			mlproducer.WithTopology(mlproducer.Topology{NoDeclare: true}),
			mlproducer.WithReconnectBackoff(time.Millisecond, capWait))
		defer closeProducer(t, p)
		time.Sleep(4*capWait + time.Second)
		synctest.Wait()
		assert.Contains(t, p.Status().LastError, `exchange "ml.tasks" does not exist; declare it or drop NoDeclare`)
		assert.ErrorContains(t, p.Ready(), "does not exist")
		assert.Equal(t, 1, logs.count(slog.LevelError, "configuration error"))
		dials := b.DialTimes()
		for i := 1; i < len(dials); i++ {
			assert.Equal(t, capWait, dials[i].Sub(dials[i-1]), "gap before dial %d", i)
		}
		_, ok := b.ExchangeKind("ml.tasks")
		assert.False(t, ok, "NoDeclare declares nothing")

		declareExchange(t, b, "ml.tasks")
		time.Sleep(capWait)
		synctest.Wait()
		assert.Equal(t, mlproducer.Connected, p.Status().ConnectionState)
		assert.NoError(t, p.Ready())
	})
}

// A full queue with x-overflow reject-publish nacks: the Producer retries
// each refused message and, its retries spent, dead-letters it with the
// nack; the message that fitted is confirmed.
func TestRejectPublishNacksThenDeadLetters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithDeadLetter(dl.hook), mlproducer.WithMaxRetries(2),
			mlproducer.WithTopology(mlproducer.Topology{MaxLength: 1, Overflow: mlproducer.OverflowRejectPublish}))
		defer closeProducer(t, p)
		waitConnected(t, p)
		ctx := context.Background()
		first, err := p.PublishEmbedding(ctx, "s", "fits", mlproducer.EmbeddingOptions{})
		require.NoError(t, err)
		require.Equal(t, mlproducer.Confirmed, first.State)
		over, err := p.PublishEmbedding(ctx, "s", "over", mlproducer.EmbeddingOptions{})
		require.NoError(t, err, "a nacked message is taken and retried")
		assert.NotEqual(t, mlproducer.Confirmed, over.State)
		time.Sleep(time.Minute)
		synctest.Wait()
		got := dl.all()
		require.Len(t, got, 1)
		assert.Equal(t, over.MessageID, got[0].Message.ID)
		assert.Equal(t, 3, got[0].Attempts)
		assert.ErrorContains(t, got[0].Err, "nacked")
		assert.Equal(t, 3, b.SendCounts()[over.MessageID])
		assert.Equal(t, []string{first.MessageID}, b.MessageIDs("ml.embedding"))
	})
}
