package mlproducer

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// The estimate for a full buffer: what is held, at the confirm rate between
// the older sample and now, within the initial retry interval and a minute.
func TestDrainEstimate(t *testing.T) {
	newP := func(confirmed uint64, held int64) *Producer {
		p := &Producer{}
		p.cfg.retryInitial = 100 * time.Millisecond
		p.metrics.messages[0][outConfirmed].Add(confirmed)
		p.held.Store(held)
		return p
	}
	t.Run("rate", func(t *testing.T) {
		p := newP(3000, 1500)
		p.drain.lastAt = time.Now().Add(-10 * time.Second) // 0 confirmed then
		d := p.drain.estimate(p)
		// 3000 confirms in 10 s (a little more: the time since) is 300/s,
		// and 1500 held take 5 s.
		assert.InDelta(t, 5*time.Second, d, float64(500*time.Millisecond), "%v", d)
		assert.GreaterOrEqual(t, d, 5*time.Second, "the longer span only lowers the rate")
	})
	t.Run("capped at a minute", func(t *testing.T) {
		p := newP(10, 1_000_000)
		p.drain.lastAt = time.Now().Add(-10 * time.Second)
		assert.Equal(t, maxRetryAfter, p.drain.estimate(p))
	})
	t.Run("at least the initial retry interval", func(t *testing.T) {
		p := newP(1_000_000, 1)
		p.drain.lastAt = time.Now().Add(-10 * time.Second)
		assert.Equal(t, 100*time.Millisecond, p.drain.estimate(p))
	})
	t.Run("nothing confirmed", func(t *testing.T) {
		p := newP(0, 1000)
		p.drain.lastAt = time.Now().Add(-10 * time.Second)
		assert.Equal(t, 100*time.Millisecond, p.drain.estimate(p))
	})
	t.Run("first call", func(t *testing.T) {
		p := newP(3000, 1500)
		assert.Equal(t, 100*time.Millisecond, p.drain.estimate(p))
	})
	t.Run("stale samples", func(t *testing.T) {
		p := newP(3000, 1500)
		p.drain.lastAt = time.Now().Add(-time.Hour)
		assert.Equal(t, 100*time.Millisecond, p.drain.estimate(p), "an hour-old rate is not recent")
	})
}
