package mlproducer

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBodyClassIsTheSmallestThatHolds(t *testing.T) {
	prev := 0
	for i := range numBodyClasses {
		size := bodyClassSize(i)
		require.Greater(t, size, prev, "class %d", i)
		if i > 0 {
			require.LessOrEqual(t, size, prev*3/2, "class %d wastes more than a third", i)
		}
		prev = size
	}
	require.Equal(t, 1<<maxBodyShift, prev)
	for n := 0; n <= 1<<maxBodyShift; n++ {
		i := bodyClass(n)
		require.True(t, i >= 0 && bodyClassSize(i) >= n, "%d bytes: class %d", n, i)
		require.True(t, i == 0 || bodyClassSize(i-1) < n, "%d bytes: class %d is not the smallest", n, i)
	}
	assert.Equal(t, -1, bodyClass(1<<maxBodyShift+1))
}

func TestBodyPoolReusesOnlyItsOwnBuffers(t *testing.T) {
	var p bodyPool
	b, h := p.clone([]byte("hello"))
	require.Equal(t, "hello", string(b))
	require.NotNil(t, h)
	assert.Equal(t, 256, cap(b))

	big, h2 := p.get(1<<maxBodyShift + 1)
	assert.Len(t, big, 1<<maxBodyShift+1)
	assert.Nil(t, h2, "over the largest class: not pooled")
	p.put(h2) // nothing

	foreign := make([]byte, 300)
	p.put(&foreign) // not a class's capacity: dropped, not handed out as a 384-byte buffer
	for range 100 {
		c, h := p.get(300)
		require.Equal(t, 384, cap(c))
		p.put(h)
	}

	var nilPool *bodyPool
	c, h3 := nilPool.clone([]byte("x"))
	assert.Equal(t, "x", string(c))
	assert.Nil(t, h3, "a nil pool only allocates")

	buf, h4 := p.get(10)
	grown := append(buf[:0], make([]byte, 1000)...)
	assert.Nil(t, p.kept(grown, h4), "an append that outgrew the buffer is not the buffer")
	buf, h5 := p.get(10)
	assert.Same(t, h5, p.kept(append(buf[:0], "0123456789"...), h5))
}
