package mlproducer_test

import (
	"context"
	"errors"
	"math"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// The breaker counts failures in a uint32: a threshold above it is refused
// (it was truncated: 1<<32 became 0, and one failure opened the breaker),
// and the largest one is kept whole.
func TestBreakerThresholdFitsItsCounter(t *testing.T) {
	huge := int64(1) << 32
	_, err := mlproducer.New(mlproducer.WithCircuitBreaker(int(huge), time.Minute))
	var oe *mlproducer.OptionError
	require.ErrorAs(t, err, &oe)
	assert.True(t, errors.Is(err, mlproducer.ErrInvalidOption))
	assert.Equal(t, "WithCircuitBreaker", oe.Name)
	assert.Equal(t, strconv.Itoa(int(huge)), oe.Value)

	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		largest := int(min(uint64(math.MaxInt), math.MaxUint32))
		p := newFake(t, b, mlproducer.WithCircuitBreaker(largest, time.Minute), mlproducer.WithMaxRetries(0))
		waitConnected(t, p)
		b.NackNext(1)
		_, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		synctest.Wait()
		assert.False(t, p.Status().CircuitBreakerOpen, "one failure of %d opened the breaker", largest)
		_, err = p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		assert.NoError(t, err)
		require.NoError(t, closeProducer(t, p))
	})
}
