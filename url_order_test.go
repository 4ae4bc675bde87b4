package mlproducer_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// errNodeDown is what a stopped node gives a dial.
var errNodeDown = errors.New("connection refused")

var nodeURLs = []string{"amqp://guest:guest@node-a:5672/", "amqp://guest:guest@node-b:5672/", "amqp://guest:guest@node-c:5672/"}

// connectedTo starts n Producers on the same URLs and counts the node each
// connected to.
func connectedTo(t *testing.T, b *mlproducertest.Broker, n int, opts ...mlproducer.Option) map[string]int {
	t.Helper()
	count := map[string]int{}
	for range n {
		p := newFake(t, b, append([]mlproducer.Option{mlproducer.WithURLs(nodeURLs...)}, opts...)...)
		waitConnected(t, p)
		count[p.Status().URL]++
		require.NoError(t, closeProducer(t, p))
	}
	return count
}

// Producers with the same URLs spread over the nodes: 20 on three nodes, no
// node has more than 10 (the Producers of one process take turns, so it is 7,
// 7 and 6 unless other tests make Producers at the same time).
func TestURLsSpreadOverNodes(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	count := connectedTo(t, b, 20)
	require.Len(t, count, 3, "every node has Producers: %v", count)
	for u, n := range count {
		assert.LessOrEqual(t, n, 10, "%s has %d of 20 Producers: %v", u, n, count)
	}
}

// WithURLsInOrder: every Producer connects to the first URL, and after it is
// lost goes back to the first one that answers in the order given.
func TestURLsInOrder(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	count := connectedTo(t, b, 10, mlproducer.WithURLsInOrder())
	assert.Equal(t, map[string]int{"amqp://guest:xxxxx@node-a:5672/": 10}, count)

	b.RefuseURL(nodeURLs[0], errNodeDown)
	p := newFake(t, b, mlproducer.WithURLs(nodeURLs...), mlproducer.WithURLsInOrder())
	defer closeProducer(t, p)
	waitConnected(t, p)
	assert.Equal(t, "amqp://guest:xxxxx@node-b:5672/", p.Status().URL, "the standby, next in order")
}

// A shuffled order still fails over through every URL: with two of three
// nodes refusing, each Producer finds the third.
func TestShuffledURLsFailOver(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	b.RefuseURL(nodeURLs[0], errNodeDown)
	b.RefuseURL(nodeURLs[2], errNodeDown)
	for range 6 {
		p := newFake(t, b, mlproducer.WithURLs(nodeURLs...))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		require.NoError(t, p.WaitConnected(ctx))
		cancel()
		assert.Equal(t, "amqp://guest:xxxxx@node-b:5672/", p.Status().URL)
		require.NoError(t, closeProducer(t, p))
	}
}
