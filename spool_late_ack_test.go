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

// A message's first attempt is stored but its ack comes late, after the
// confirm timeout; the retry is returned as unroutable, its return before
// either ack. Without the attempt header the return marks both attempts
// (TestReturnWithoutAttemptHeaderMarksEveryMatch), yet two acks for one
// return prove one copy stored: the message is confirmed, and its record
// leaves the spool. Before, the late ack counted as the return's and the
// message waited for a retry: a Close then left its record in the spool, and
// the next start sent a confirmed message again.
func TestSpoolLateAckOfStoredAttemptWithReturnedRetry(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []mlproducer.Option
	}{
		{"default envelope", nil},
		{"with the attempt header", []mlproducer.Option{mlproducer.WithEnvelope(mlproducer.EnvelopeAttempt)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			synctest.Test(t, func(t *testing.T) {
				b := mlproducertest.NewBroker()
				defer b.Close()
				var dl deadLetters
				p := newFake(t, b, append([]mlproducer.Option{mlproducer.WithSpool(dir), mlproducer.WithDeadLetter(dl.hook),
					mlproducer.WithConfirmTimeout(time.Second)}, tc.opts...)...)
				waitConnected(t, p)
				b.HoldConfirms(true) // returns still come at once

				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
				r, err := p.PublishSummarization(ctx, "s", "text", mlproducer.SummarizationOptions{})
				cancel()
				require.NoError(t, err)
				synctest.Wait()
				require.Equal(t, 1, b.Published())
				b.SetFaults(mlproducertest.Faults{ReturnRate: 1}) // attempt 1 is stored, the retry returned

				// Attempt 1 times out at 1 s; the retry is written and
				// returned at once; its own timeout (2 s) is not due yet.
				time.Sleep(1500 * time.Millisecond)
				synctest.Wait()
				require.Equal(t, 2, b.Published(), "attempt 1 and its retry were written")
				require.Equal(t, 1, b.StoredIDs()[r.MessageID])
				b.SetFaults(mlproducertest.Faults{})
				b.HoldConfirms(false) // ack(1) late, ack(2) of the returned retry
				synctest.Wait()
				st := p.Status()

				// Close at once: no time for another attempt.
				done, stop := context.WithCancel(context.Background())
				stop()
				err = p.Close(done)
				assert.NoError(t, err, "nothing is left unconfirmed")
				assert.EqualValues(t, 1, st.Confirmed, "two acks for one return: one copy was stored")
				assert.Zero(t, spoolRecords(t, dir), "a confirmed message's record leaves the spool")
				assert.Equal(t, 1, b.StoredIDs()[r.MessageID], "stored once")
				assert.Empty(t, dl.all())
			})
		})
	}
}
