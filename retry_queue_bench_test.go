package mlproducer

import (
	"fmt"
	"testing"
)

// BenchmarkRetryQueuePushPop is one push and one pop on the in-memory retry
// store holding depth messages: the message pushed comes after all the
// others (as a message sent again after its backoff usually does), and the
// one popped is the first. The Producer's retry lock is not included. The
// messages share one due time and are ordered by their sequence number,
// the store's tie-break, so that the benchmark does not depend on how due
// times are represented.
func BenchmarkRetryQueuePushPop(b *testing.B) {
	body := make([]byte, 1024)
	for _, depth := range []int{0, 1_000, 100_000} {
		b.Run(fmt.Sprintf("depth=%d", depth), func(b *testing.B) {
			s := &memRetryStore{}
			seq := uint64(0)
			next := func(m *message) *message {
				seq++
				m.seq = seq
				return m
			}
			for range depth {
				s.push(next(&message{body: body, heapIndex: -1}), true)
			}
			m := next(&message{body: body, heapIndex: -1})
			b.ReportAllocs()
			for b.Loop() {
				s.push(m, true)
				got, _ := s.pop()
				m = next(got)
			}
			if s.len() != depth {
				b.Fatalf("store holds %d, want %d", s.len(), depth)
			}
		})
	}
}
