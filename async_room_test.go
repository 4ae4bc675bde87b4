package mlproducer_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// TestPublishAsyncWaitsForRoomWithoutSpinning: a PublishAsync held back by
// the byte capacity waits for a confirm to make room. Its failed try must
// not signal room itself: it used to (hold undid its bytes through
// release), so the waiter woke itself at once and spun through admission,
// the breaker and a new channel per turn until a confirm came: at 16 KiB
// and a window of 4096, 646 allocations per message (make bench,
// producer-async-w4096). The wait is measured in allocations, not time: a
// blocked waiter allocates nothing.
func TestPublishAsyncWaitsForRoomWithoutSpinning(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	p := newFake(t, b, mlproducer.WithRetryQueueCapacity(1000, 4<<10))
	waitConnected(t, p)
	b.HoldConfirms(true)
	ctx := context.Background()
	msg := mlproducer.Message{Type: mlproducer.TaskSummarization, Body: []byte(`{"text":"` + strings.Repeat("x", 1000) + `"}`)}
	var ds []*mlproducer.Delivery
	for range 4 { // 4 × 1,011 bytes: no room for a fifth
		d, err := p.PublishAsync(ctx, msg)
		require.NoError(t, err)
		ds = append(ds, d)
	}

	waitCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := p.PublishAsync(waitCtx, msg)
	runtime.ReadMemStats(&after)
	require.ErrorIs(t, err, context.DeadlineExceeded, "no room: the hand-off waits until ctx ends")
	assert.Less(t, after.Mallocs-before.Mallocs, uint64(2000), "allocations while waiting for room: the waiter spun")

	b.HoldConfirms(false)
	for _, d := range ds {
		r, err := d.Wait(ctx)
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Confirmed, r.State)
	}
	require.NoError(t, closeProducer(t, p))
}

// TestBodyOverTheHeldBytesIsRefusedAtOnce: a body larger than the bytes the
// Producer may hold (WithRetryQueueCapacity, or WithSpoolCapacity) can never
// be taken. It used to pass validation and then meet "no room" for good:
// Publish refused it with ErrRetryQueueFull, which says to try again, and
// PublishAsync waited for room until its ctx ended. Every way in refuses it
// at once with ErrTooLarge, and nothing is taken.
func TestBodyOverTheHeldBytesIsRefusedAtOnce(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	p := newFake(t, b, mlproducer.WithRetryQueueCapacity(1000, 4<<10))
	waitConnected(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	big := strings.Repeat("x", 5<<10)
	msg := mlproducer.Message{Type: mlproducer.TaskEmbedding, Body: []byte(`{"text":"` + big + `"}`)}

	refused := func(what string, err error) {
		t.Helper()
		require.ErrorIs(t, err, mlproducer.ErrTooLarge, what)
		assert.Contains(t, err.Error(), "WithRetryQueueCapacity", what+": the error names the option to change")
	}
	d, err := p.PublishAsync(ctx, msg)
	assert.Nil(t, d)
	refused("PublishAsync", err)
	_, err = p.Publish(ctx, msg)
	refused("Publish", err)
	_, err = p.PublishEmbedding(ctx, "share-1", big, mlproducer.EmbeddingOptions{})
	refused("PublishEmbedding", err)
	_, err = p.PublishSummarization(ctx, "share-1", big, mlproducer.SummarizationOptions{})
	refused("PublishSummarization", err)
	require.NoError(t, ctx.Err(), "a refusal waited for ctx")

	// A body that fits still goes.
	small := mlproducer.Message{Type: mlproducer.TaskEmbedding, Body: []byte(`{"text":"fits"}`)}
	r, err := p.Publish(ctx, small)
	require.NoError(t, err)
	assert.Equal(t, mlproducer.Confirmed, r.State)
	st := p.Status()
	assert.Equal(t, uint64(1), st.Accepted, "only the message that fits was taken")
	require.NoError(t, closeProducer(t, p))
}
