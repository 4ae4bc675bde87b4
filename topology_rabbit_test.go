package mlproducer_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/rabbittest"
)

// realTopology gives a test a prefix and an exchange of its own on the
// shared broker, and deletes every queue under that prefix and the
// exchange when the test ends, failed or not.
func realTopology(t *testing.T, url string) (prefix, exchange string) {
	t.Helper()
	id := fmt.Sprintf("mlptopo%08x", rand.Uint32())
	prefix, exchange = id+".", id+".tasks"
	t.Cleanup(func() {
		var qs []string
		for _, q := range append(taskQueues, "dlq") {
			qs = append(qs, prefix+q)
		}
		rabbittest.DeleteQueues(t, url, qs...)
		conn := rabbittest.Dial(t, url)
		for _, ex := range []string{exchange, prefix + "dlx"} {
			if ch, err := conn.Channel(); err == nil {
				_ = ch.ExchangeDelete(ex, false, false)
				_ = ch.Close()
			}
		}
	})
	return prefix, exchange
}

// listQueues returns `rabbitmqctl list_queues name arguments` as a map
// from queue name to its arguments as rabbitmqctl prints them.
func listQueues(t *testing.T) map[string]string {
	t.Helper()
	out := rabbittest.Ctl(t, "list_queues", "-q", "--no-table-headers", "name", "arguments")
	queues := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if name, args, ok := strings.Cut(strings.TrimSpace(line), "\t"); ok {
			queues[name] = args
		}
	}
	return queues
}

// Real RabbitMQ: a queue declared by the Producer carries each argument of
// the Topology, as rabbitmqctl shows it, under the prefixed name.
func TestRabbitMQTopologyArguments(t *testing.T) {
	url := rabbittest.Require(t)
	for _, tc := range []struct {
		name string
		top  mlproducer.Topology
		want []string
	}{
		{"classic", mlproducer.Topology{
			MaxLength: 1000, Overflow: mlproducer.OverflowRejectPublishDLX, MessageTTL: 90 * time.Second,
			DeadLetterExchange: "dlx", MaxPriority: 9,
		}, []string{`{"x-queue-type","classic"}`, `{"x-max-length",1000}`, `{"x-overflow","reject-publish-dlx"}`,
			`{"x-message-ttl",90000}`, `{"x-dead-letter-exchange","dlx"}`, `{"x-max-priority",9}`}},
		{"quorum", mlproducer.Topology{
			QueueType: mlproducer.QueueQuorum, MaxLength: 50, Overflow: mlproducer.OverflowRejectPublish,
			MessageTTL: time.Minute, DeadLetterExchange: "dlx", DeliveryLimit: 4,
		}, []string{`{"x-queue-type","quorum"}`, `{"x-max-length",50}`, `{"x-overflow","reject-publish"}`,
			`{"x-message-ttl",60000}`, `{"x-dead-letter-exchange","dlx"}`, `{"x-delivery-limit",4}`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix, exchange := realTopology(t, url)
			top := tc.top
			top.QueuePrefix, top.Exchange = prefix, exchange
			p, err := mlproducer.New(mlproducer.WithURLs(url), mlproducer.WithTopology(top))
			require.NoError(t, err)
			defer closeProducer(t, p)
			waitConnected(t, p)
			queues := listQueues(t)
			for _, q := range taskQueues {
				args, ok := queues[prefix+q]
				require.True(t, ok, "queue %s%s listed", prefix, q)
				for _, w := range tc.want {
					assert.Contains(t, args, w, "queue %s%s", prefix, q)
				}
			}
			_, ok := queues[prefix[:len(prefix)-1]]
			assert.False(t, ok)
		})
	}
}

// Real RabbitMQ: a queue pre-declared by its consumer with other arguments
// answers the Producer's declare with 406. That is a configuration error:
// logged once, in Status.LastError and readiness; the Producer keeps trying
// at its backoff's cap and recovers once the queue is deleted.
func TestRabbitMQTopologyConflict(t *testing.T) {
	url := rabbittest.Require(t)
	prefix, exchange := realTopology(t, url)
	conn := rabbittest.Dial(t, url)
	ch, err := conn.Channel()
	require.NoError(t, err)
	_, err = ch.QueueDeclare(prefix+"ml.summarization", true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	require.NoError(t, err)

	logs := &records{}
	p, err := mlproducer.New(mlproducer.WithURLs(url), mlproducer.WithLogger(slog.New(logs)),
		mlproducer.WithTopology(mlproducer.Topology{Exchange: exchange, QueuePrefix: prefix}),
		mlproducer.WithReconnectBackoff(10*time.Millisecond, 200*time.Millisecond))
	require.NoError(t, err)
	defer closeProducer(t, p)

	require.Eventually(t, func() bool { return logs.count(slog.LevelDebug, "configuration error persists") >= 3 },
		30*time.Second, 10*time.Millisecond, "the Producer keeps redialling")
	st := p.Status()
	want := fmt.Sprintf(`configuration error: queue "%sml.summarization" exists with x-queue-type "quorum" but the Producer declares "classic"`, prefix)
	assert.Contains(t, st.LastError, want)
	assert.Contains(t, st.LastError, "inequivalent arg 'x-queue-type'", "the broker's text is kept")
	assert.NotContains(t, st.LastError, "guest:guest")
	assert.NotEqual(t, mlproducer.Connected, st.ConnectionState)
	assert.ErrorContains(t, p.Ready(), want)
	assert.Equal(t, 1, logs.count(slog.LevelError, "configuration error"), "logged once")

	r, err := p.PublishSummarization(context.Background(), "s", "kept", mlproducer.SummarizationOptions{})
	require.NoError(t, err)
	assert.Equal(t, mlproducer.Queued, r.State)

	rabbittest.DeleteQueues(t, url, prefix+"ml.summarization")
	waitConnected(t, p)
	assert.NoError(t, p.Ready())
	require.Eventually(t, func() bool { return p.Status().Confirmed == 1 }, 30*time.Second, 10*time.Millisecond)
	assert.Contains(t, listQueues(t)[prefix+"ml.summarization"], `{"x-queue-type","classic"}`)
}

// Real RabbitMQ: with NoDeclare, a missing exchange is reported as such at
// set-up, and the Producer connects once it is declared.
func TestRabbitMQNoDeclareMissingExchange(t *testing.T) {
	url := rabbittest.Require(t)
	_, exchange := realTopology(t, url)
	p, err := mlproducer.New(mlproducer.WithURLs(url),
		mlproducer.WithTopology(mlproducer.Topology{Exchange: exchange, NoDeclare: true}),
		mlproducer.WithReconnectBackoff(10*time.Millisecond, 200*time.Millisecond))
	require.NoError(t, err)
	defer closeProducer(t, p)
	want := fmt.Sprintf("exchange %q does not exist; declare it or drop NoDeclare", exchange)
	require.Eventually(t, func() bool { return strings.Contains(p.Status().LastError, want) },
		30*time.Second, 10*time.Millisecond)
	assert.ErrorContains(t, p.Ready(), want)

	conn := rabbittest.Dial(t, url)
	ch, err := conn.Channel()
	require.NoError(t, err)
	require.NoError(t, ch.ExchangeDeclare(exchange, "direct", true, false, false, false, nil))
	waitConnected(t, p)
	assert.NoError(t, p.Ready())
}

// Real RabbitMQ: a full queue with x-overflow reject-publish nacks; the
// Producer retries each refused message and, its retries spent, hands it to
// the dead-letter hook with the nack, while the message that fitted is
// confirmed. With reject-publish-dlx the broker also dead-letters the refused
// message to the queue's dead-letter exchange.
func TestRabbitMQRejectPublishNacksThenDeadLetters(t *testing.T) {
	url := rabbittest.Require(t)
	for _, overflow := range []mlproducer.Overflow{mlproducer.OverflowRejectPublish, mlproducer.OverflowRejectPublishDLX} {
		t.Run(string(overflow), func(t *testing.T) {
			prefix, exchange := realTopology(t, url)
			// The broker's own dead-lettering: a fanout exchange and a queue.
			conn := rabbittest.Dial(t, url)
			ch, err := conn.Channel()
			require.NoError(t, err)
			require.NoError(t, ch.ExchangeDeclare(prefix+"dlx", "fanout", false, false, false, false, nil))
			_, err = ch.QueueDeclare(prefix+"dlq", false, false, false, false, nil)
			require.NoError(t, err)
			require.NoError(t, ch.QueueBind(prefix+"dlq", "", prefix+"dlx", false, nil))

			var dl deadLetters
			p, err := mlproducer.New(mlproducer.WithURLs(url), mlproducer.WithDeadLetter(dl.hook),
				mlproducer.WithTopology(mlproducer.Topology{
					Exchange: exchange, QueuePrefix: prefix,
					MaxLength: 1, Overflow: overflow, DeadLetterExchange: prefix + "dlx",
				}),
				mlproducer.WithMaxRetries(2), mlproducer.WithRetryBackoff(5*time.Millisecond, 20*time.Millisecond))
			require.NoError(t, err)
			waitConnected(t, p)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			first, err := p.PublishSummarization(ctx, "s", "fits", mlproducer.SummarizationOptions{})
			require.NoError(t, err)
			require.Equal(t, mlproducer.Confirmed, first.State)
			var refused []string
			for i := range 3 {
				r, err := p.PublishSummarization(ctx, "s", fmt.Sprint("over ", i), mlproducer.SummarizationOptions{})
				require.NoError(t, err, "a nacked message is taken and retried, not refused")
				assert.NotEqual(t, mlproducer.Confirmed, r.State)
				refused = append(refused, r.MessageID)
			}
			require.Eventually(t, func() bool { return len(dl.all()) >= len(refused) }, 30*time.Second, 10*time.Millisecond,
				"the refused messages dead-lettered once their retries are spent")
			got := dl.all()
			require.Len(t, got, len(refused))
			for _, d := range got {
				assert.Contains(t, refused, d.Message.ID)
				assert.Equal(t, 3, d.Attempts, "WithMaxRetries(2): three sends")
				assert.ErrorContains(t, d.Err, "nacked")
			}
			st := p.Status()
			assert.EqualValues(t, 1, st.Confirmed)
			assert.EqualValues(t, len(refused), st.DeadLettered)
			require.NoError(t, closeProducer(t, p))
			assert.Equal(t, map[string]int{first.MessageID: 1}, rabbittest.DrainIDs(t, url, prefix+"ml.summarization", 200*time.Millisecond))
			inDLQ := rabbittest.DrainIDs(t, url, prefix+"dlq", 200*time.Millisecond)
			if overflow == mlproducer.OverflowRejectPublishDLX {
				for _, id := range refused {
					assert.Equal(t, 3, inDLQ[id], "each refused send dead-lettered by the broker")
				}
			} else {
				assert.Empty(t, inDLQ, "reject-publish dead-letters nothing")
			}
		})
	}
}
