package mlproducer_test

import (
	"context"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// TestLateAckKeepsTheBodyOfTheRetry: the Producer recycles its copy of a
// body once the message is confirmed, but not when the confirm is the late
// ack of an attempt that timed out. A retry of that message may then be in
// the writer, with a publishing built on the copy. If the copy went back to
// the pool, the next message's body would overwrite it, and the retry would
// carry the next message's body under the first one's id.
func TestLateAckKeepsTheBodyOfTheRetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithConfirmTimeout(time.Second),
			mlproducer.WithRetryBackoff(200*time.Millisecond, 200*time.Millisecond))
		waitConnected(t, p)
		ctx := context.Background()
		bodies := map[string]string{} // message id -> body published
		publish := func(i int) *mlproducer.Delivery {
			t.Helper()
			body := fmt.Sprintf(`{"n":"message %04d"}`, i) // one size: one pool class
			d, err := p.PublishAsync(ctx, mlproducer.Message{Type: mlproducer.TaskSummarization, Body: []byte(body)})
			require.NoError(t, err)
			bodies[d.MessageID()] = body
			return d
		}

		b.HoldConfirms(true)
		first := publish(0)
		synctest.Wait()
		require.Equal(t, 1, b.Published())

		// Attempt 1 times out at 1 s; its retry is due 100–300 ms later
		// (jitter) and stalls in the write, its publishing built.
		time.Sleep(time.Second + time.Millisecond)
		synctest.Wait()
		b.StallWrites(true)
		time.Sleep(time.Second)
		synctest.Wait()
		require.Equal(t, 1, b.Published(), "the retry is held in its write")

		// The late ack of attempt 1 confirms the message.
		b.HoldConfirms(false)
		synctest.Wait()
		r, err := first.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, mlproducer.Confirmed, r.State)

		// New messages of the same size, which a recycled copy would serve.
		for i := 1; i <= 16; i++ {
			publish(i)
		}
		b.StallWrites(false)
		require.NoError(t, p.Flush(ctx))
		require.NoError(t, closeProducer(t, p))

		stored := b.Messages("ml.summarization")
		require.Len(t, stored, 18, "17 messages and the retry of the first")
		for _, d := range stored {
			assert.Equal(t, bodies[d.MessageID], string(d.Body), "the body stored with id %s", d.MessageID)
		}
	})
}
