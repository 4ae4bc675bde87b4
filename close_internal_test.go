package mlproducer

// Close against a publish caught between its two halves (begin, then submit):
// a legal schedule of the public Publish when another goroutine calls Close.

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer/mlproducertest"
)

// A publish admitted before Close set closing hands its message off before
// Close looks at what is left, so the message is dead-lettered by Close (its
// ctx is over) instead of being stranded in a queue nobody drains.
func TestPublishAdmittedBeforeCloseIsAccountedFor(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	b.RefuseDials(errors.New("down"))
	var hooked atomic.Int32
	p, err := New(WithDialer(b), WithReconnectBackoff(time.Millisecond, 10*time.Millisecond),
		WithDeadLetter(func(DeadLetter) { hooked.Add(1) }))
	require.NoError(t, err)

	done, err := p.begin(context.Background(), TaskSummarization) // Publish, first half
	require.NoError(t, err)

	expired, cancel := context.WithCancel(context.Background())
	cancel() // Close from a SIGTERM handler whose deadline has passed
	closed := make(chan error, 1)
	go func() { closed <- p.Close(expired) }()
	time.Sleep(20 * time.Millisecond)
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a publish it admitted had not handed off", err)
	default:
	}

	id, _ := newMessageID()
	r, err := p.submit(context.Background(), done, id, TaskSummarization, []byte(`{"a":1}`), nil, time.Now(), nil) // second half
	require.NoError(t, err)
	assert.Equal(t, Queued, r.State)
	closeErr := <-closed
	assert.Error(t, closeErr, "Close owned an unconfirmed message")
	assert.EqualValues(t, 1, hooked.Load(), "handed to the dead-letter hook by Close")
	_, err = p.PublishSummarization(context.Background(), "s", "t", SummarizationOptions{})
	assert.ErrorIs(t, err, ErrClosed)
}

// The same race through the public API: publishers hammer a Producer with no
// connection while Close(expired ctx) runs. Every message accepted with a nil
// error is dead-lettered.
func TestPublishesRacingCloseAreAccountedFor(t *testing.T) {
	for iter := range 50 {
		b := mlproducertest.NewBroker()
		b.RefuseDials(errors.New("down"))
		var hooked atomic.Int64
		p, err := New(WithDialer(b), WithReconnectBackoff(time.Millisecond, 10*time.Millisecond),
			WithDeadLetter(func(DeadLetter) { hooked.Add(1) }))
		require.NoError(t, err)
		var accepted atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					_, err := p.PublishSummarization(context.Background(), "s", "text", SummarizationOptions{})
					if errors.Is(err, ErrClosed) {
						return
					}
					if err == nil {
						accepted.Add(1)
					}
				}
			}()
		}
		time.Sleep(time.Millisecond)
		expired, cancel := context.WithCancel(context.Background())
		cancel()
		closeErr := p.Close(expired)
		wg.Wait()
		st := p.Status()
		b.Close()
		if lost := accepted.Load() - hooked.Load() - int64(st.Confirmed); lost != 0 {
			t.Fatalf("iteration %d: accepted=%d deadLettered=%d confirmed=%d -> %d unaccounted; Close: %v",
				iter, accepted.Load(), hooked.Load(), st.Confirmed, lost, closeErr)
		}
	}
}
