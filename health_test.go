package mlproducer_test

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

func TestFailedHealthProbeForcesReconnect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		// A high breaker threshold keeps the failed reconnects from opening it.
		p := newFake(t, b, mlproducer.WithHealthCheckInterval(10*time.Second), mlproducer.WithCircuitBreaker(1<<20, time.Second))
		waitConnected(t, p)
		dials := b.Dials()

		// Healthy probes change nothing.
		time.Sleep(35 * time.Second)
		synctest.Wait()
		assert.Equal(t, dials, b.Dials())
		assert.Zero(t, p.Status().ReconnectAttempts)

		// The broker stops answering requests: the next probe fails and the
		// Producer reconnects.
		b.FailChannels(errors.New("channel.open timed out"))
		time.Sleep(10 * time.Second)
		synctest.Wait()
		st := p.Status()
		assert.NotEqual(t, mlproducer.Connected, st.ConnectionState)
		assert.Positive(t, st.ReconnectAttempts)
		assert.Contains(t, st.LastError, "channel.open timed out")

		b.FailChannels(nil)
		waitConnected(t, p)
		assert.Greater(t, b.Dials(), dials)
		r, err := publishOne(p)
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Confirmed, r.State)
		require.NoError(t, closeProducer(t, p))
	})
}

func TestHealthCheckQuietWhileBlocked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithHealthCheckInterval(time.Second))
		waitConnected(t, p)
		b.Block("memory alarm")
		b.FailChannels(errors.New("would time out: blocked connections are not read"))
		time.Sleep(time.Minute)
		synctest.Wait()
		st := p.Status()
		assert.Equal(t, mlproducer.Blocked, st.ConnectionState)
		assert.Zero(t, st.ReconnectAttempts, "a memory alarm is no reason to reconnect")
		b.FailChannels(nil)
		b.Unblock()
		synctest.Wait()
		assert.Equal(t, mlproducer.Connected, p.Status().ConnectionState)
		require.NoError(t, closeProducer(t, p))
	})
}
