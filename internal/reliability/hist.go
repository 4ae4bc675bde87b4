package reliability

import (
	"math"
	"sync/atomic"
	"time"
)

// Latency histogram: logarithmic buckets 3% wide from 100 ns, so that a
// quantile is known within 3% and recording costs one atomic add, whatever
// the number of calls.
const (
	histBase    = 100 * time.Nanosecond
	histRatio   = 1.03
	histBuckets = 800 // up to about 30 minutes; the last bucket holds the rest
)

type hist struct {
	buckets [histBuckets]atomic.Int64
	n       atomic.Int64
	max     atomic.Int64
}

func (h *hist) add(d time.Duration) {
	i := 0
	if d > histBase {
		i = int(math.Log(float64(d)/float64(histBase)) / math.Log(histRatio))
		i = min(max(i, 0), histBuckets-1)
	}
	h.buckets[i].Add(1)
	h.n.Add(1)
	for {
		m := h.max.Load()
		if int64(d) <= m || h.max.CompareAndSwap(m, int64(d)) {
			break
		}
	}
}

// quantile returns the upper bound of the bucket holding the q-quantile,
// never more than the largest value recorded; 0 when nothing was recorded.
func (h *hist) quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(n)))
	var cum int64
	for i := range h.buckets {
		cum += h.buckets[i].Load()
		if cum >= rank {
			if i == histBuckets-1 {
				break // the last bucket holds everything above
			}
			upper := time.Duration(float64(histBase) * math.Pow(histRatio, float64(i+1)))
			return min(upper, time.Duration(h.max.Load()))
		}
	}
	return time.Duration(h.max.Load())
}

func (h *hist) count() int64           { return h.n.Load() }
func (h *hist) maximum() time.Duration { return time.Duration(h.max.Load()) }
