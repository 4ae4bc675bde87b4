package mlproducer_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// The default envelope is what consumers need and no more: persistent,
// mandatory, content type and message id; no timestamp, type, app id nor
// headers table.
func TestEnvelopeDefault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b)
		r, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		require.NoError(t, closeProducer(t, p))
		msgs := b.Messages("ml.summarization")
		require.Len(t, msgs, 1)
		m := msgs[0]
		assert.Equal(t, r.MessageID, m.MessageID)
		assert.Equal(t, "application/json", m.ContentType)
		assert.True(t, m.Persistent)
		assert.True(t, m.Timestamp.IsZero(), "timestamp %v", m.Timestamp)
		assert.Empty(t, m.Type)
		assert.Empty(t, m.AppID)
		assert.Nil(t, m.Headers, "no headers table")
	})
}

// Each EnvelopeField adds its property; EnvelopeAll gives the envelope of
// before issue 13; a later WithEnvelope replaces an earlier one; the caller's
// headers go without the attempt header unless EnvelopeAttempt.
func TestEnvelopeFields(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   []mlproducer.Option
		want   mlproducer.EnvelopeField
		header map[string]any
	}{
		{"timestamp", []mlproducer.Option{mlproducer.WithEnvelope(mlproducer.EnvelopeTimestamp)}, mlproducer.EnvelopeTimestamp, nil},
		{"type and app id", []mlproducer.Option{mlproducer.WithEnvelope(mlproducer.EnvelopeType, mlproducer.EnvelopeAppID)}, mlproducer.EnvelopeType | mlproducer.EnvelopeAppID, nil},
		{"attempt", []mlproducer.Option{mlproducer.WithEnvelope(mlproducer.EnvelopeAttempt)}, mlproducer.EnvelopeAttempt, nil},
		{"all", []mlproducer.Option{mlproducer.WithEnvelope(mlproducer.EnvelopeAll)}, mlproducer.EnvelopeAll, nil},
		{"later replaces", []mlproducer.Option{mlproducer.WithEnvelope(mlproducer.EnvelopeAll), mlproducer.WithEnvelope()}, 0, nil},
		{"caller's headers", nil, 0, map[string]any{"tenant": "t1"}},
		{"caller's headers with attempt", []mlproducer.Option{mlproducer.WithEnvelope(mlproducer.EnvelopeAttempt)}, mlproducer.EnvelopeAttempt, map[string]any{"tenant": "t1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := mlproducertest.NewBroker()
				defer b.Close()
				p := newFake(t, b, tc.opts...)
				var popts []mlproducer.PublishOption
				if tc.header != nil {
					popts = append(popts, mlproducer.WithHeaders(tc.header))
				}
				before := time.Now()
				_, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{}, popts...)
				require.NoError(t, err)
				require.NoError(t, closeProducer(t, p))
				msgs := b.Messages("ml.summarization")
				require.Len(t, msgs, 1)
				m := msgs[0]
				assert.Equal(t, "application/json", m.ContentType)
				assert.True(t, m.Persistent)
				assert.NotEmpty(t, m.MessageID)
				if tc.want&mlproducer.EnvelopeTimestamp != 0 {
					assert.False(t, m.Timestamp.Before(before), "timestamp %v, published at %v", m.Timestamp, before)
				} else {
					assert.True(t, m.Timestamp.IsZero())
				}
				assert.Equal(t, tc.want&mlproducer.EnvelopeType != 0, m.Type == "summarization", "type %q", m.Type)
				assert.Equal(t, tc.want&mlproducer.EnvelopeAppID != 0, m.AppID == "mlproducer", "app id %q", m.AppID)
				want := map[string]any{}
				for k, v := range tc.header {
					want[k] = v
				}
				if tc.want&mlproducer.EnvelopeAttempt != 0 {
					want[mlproducer.AttemptHeader] = int32(1)
				}
				if len(want) == 0 {
					assert.Nil(t, m.Headers)
				} else {
					assert.Equal(t, want, map[string]any(m.Headers))
				}
			})
		})
	}
}

func TestEnvelopeUnknownFieldRefused(t *testing.T) {
	_, err := mlproducer.New(mlproducer.WithEnvelope(mlproducer.EnvelopeField(1 << 7)))
	var oe *mlproducer.OptionError
	require.ErrorAs(t, err, &oe)
	assert.Equal(t, "WithEnvelope", oe.Name)
}

// Without the attempt header, the retry of a message and its timed-out first
// attempt, both pending on one session, are identical publishings. Here the
// first attempt is nacked (late) and the retry returned as unroutable, its
// return arriving before either confirm: the return must mark both. Marking
// only the oldest, as onReturn did when the header told attempts apart, let
// the retry's ack count as a confirm although no copy was stored anywhere.
// With the header, the return names its attempt and the outcome is the same.
func TestReturnWithoutAttemptHeaderMarksEveryMatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []mlproducer.Option
	}{
		{"default envelope", nil},
		{"with the attempt header", []mlproducer.Option{mlproducer.WithEnvelope(mlproducer.EnvelopeAttempt)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := mlproducertest.NewBroker()
				defer b.Close()
				var dl deadLetters
				p := newFake(t, b, append([]mlproducer.Option{mlproducer.WithDeadLetter(dl.hook),
					mlproducer.WithConfirmTimeout(time.Second), mlproducer.WithMaxRetries(1)}, tc.opts...)...)
				waitConnected(t, p)
				b.HoldConfirms(true) // returns still come at once
				b.NackNext(1)        // attempt 1 will be nacked: nothing stored

				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
				_, err := p.PublishSummarization(ctx, "s", "text", mlproducer.SummarizationOptions{})
				cancel()
				require.NoError(t, err)
				synctest.Wait()
				require.Equal(t, 1, b.Published())
				b.DeleteQueue("ml.summarization") // the retry will be unroutable

				// Attempt 1 times out at 1 s; the retry is written and
				// returned at once; its own timeout (2 s) is not due yet.
				time.Sleep(1500 * time.Millisecond)
				synctest.Wait()
				require.Equal(t, 2, b.Published(), "attempt 1 and its retry were written")
				b.HoldConfirms(false) // nack(1), ack(2)
				time.Sleep(5 * time.Second)
				synctest.Wait()
				st := p.Status()
				require.NoError(t, closeProducer(t, p))
				assert.Zero(t, st.Confirmed, "a message of which no copy was stored was reported confirmed")
				require.Len(t, dl.all(), 1, "retried to the end and dead-lettered")
				assert.Equal(t, 2, dl.all()[0].Attempts)
			})
		})
	}
}
