package mlproducer

import (
	"math/bits"
	"sync"
)

// bodyPool recycles the Producer's own copies of message bodies. Every
// accepted message is copied once (the caller may reuse its buffer), and at
// a few thousand messages a second those copies are most of what the
// Producer allocates: the garbage collector, the scavenger handing the pages
// back to the OS and the page faults taking them again cost more client CPU
// per message than the copy itself (BENCHMARKS.md, "Body copies").
//
// A copy goes back to the pool only when nothing can read it any more: see
// message.recycle. Every other copy is left to the garbage collector, as
// before. Sizes go in classes two to an octave (256, 384, 512, 768, ...),
// so a copy wastes at most a third of its capacity; bodies above the largest
// class are not pooled.
type bodyPool struct {
	classes [numBodyClasses]sync.Pool // of *[]byte, cap bodyClassSize(i)
}

const (
	minBodyShift   = 8  // the smallest class: 256 bytes
	maxBodyShift   = 20 // the largest: 1 MiB
	numBodyClasses = 2*(maxBodyShift-minBodyShift) + 1
)

// bodyClass returns the index of the smallest class that holds n bytes, or
// -1 when n is over the largest.
func bodyClass(n int) int {
	if n <= 1<<minBodyShift {
		return 0
	}
	if n > 1<<maxBodyShift {
		return -1
	}
	s := bits.Len(uint(n - 1)) // 1<<(s-1) < n <= 1<<s
	i := 2 * (s - minBodyShift)
	if n <= 3<<(s-2) {
		i-- // the class between the two powers of two
	}
	return i
}

// bodyClassSize is the capacity of class i.
func bodyClassSize(i int) int {
	s := minBodyShift + (i+1)/2
	if i%2 == 1 {
		return 3 << (s - 2)
	}
	return 1 << s
}

// get returns a buffer of length n from the pool, and the handle to give
// back to put; the handle is nil when n is too large to pool (the buffer is
// then a plain allocation). A nil pool allocates.
func (p *bodyPool) get(n int) ([]byte, *[]byte) {
	i := bodyClass(n)
	if p == nil || i < 0 {
		return make([]byte, n), nil
	}
	h, _ := p.classes[i].Get().(*[]byte)
	if h == nil {
		b := make([]byte, bodyClassSize(i))
		h = &b
	}
	return (*h)[:n], h
}

// clone returns a pooled copy of b and its handle.
func (p *bodyPool) clone(b []byte) ([]byte, *[]byte) {
	c, h := p.get(len(b))
	copy(c, b)
	return c, h
}

// put gives a buffer back. h must come from get, and nothing may read or
// write the buffer after put.
func (p *bodyPool) put(h *[]byte) {
	if p == nil || h == nil {
		return
	}
	i := bodyClass(cap(*h))
	if i < 0 || bodyClassSize(i) != cap(*h) {
		return // not one of ours: left to the garbage collector
	}
	p.classes[i].Put(h)
}

// kept returns the handle of a buffer from get that body was appended to,
// or nil (after giving the buffer back) when the append outgrew it and body
// is a new allocation.
func (p *bodyPool) kept(body []byte, h *[]byte) *[]byte {
	if h != nil && cap(body) != cap(*h) {
		p.put(h)
		return nil
	}
	return h
}
