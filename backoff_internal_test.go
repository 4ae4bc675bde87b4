package mlproducer

import (
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/assert"
)

// The jittered waits stay within the documented caps: the retry backoff's
// max (WithRetryBackoff) and the reconnect backoff's max
// (WithReconnectBackoff). cenkalti/backoff applies its jitter after its cap,
// so without the clamp a draw reached 1.5x (retry) or 2x (reconnect) it.
func TestBackoffWaitsStayWithinTheirCaps(t *testing.T) {
	cfg := defaultConfig()
	p := &Producer{cfg: cfg}

	var maxRetry time.Duration
	for range 200 {
		m := &message{}
		for range 20 { // past the cap: 200 ms doubles to 10 s in 6 steps
			d := p.backoffFor(m)
			maxRetry = max(maxRetry, d)
			assert.LessOrEqual(t, d, cfg.retryMax, "a retry wait above WithRetryBackoff's max")
			assert.Positive(t, d)
		}
	}
	assert.Greater(t, maxRetry, cfg.retryMax/2, "the draws reach the cap's neighbourhood")

	bo := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(cfg.reconnectInitial),
		backoff.WithMaxInterval(cfg.reconnectMax),
		backoff.WithRandomizationFactor(1),
		backoff.WithMultiplier(2),
		backoff.WithMaxElapsedTime(0),
	)
	for range 2000 {
		d := p.reconnectWait(bo)
		assert.LessOrEqual(t, d, cfg.reconnectMax, "a reconnect wait above WithReconnectBackoff's max")
		assert.GreaterOrEqual(t, d, time.Duration(0))
	}
}
