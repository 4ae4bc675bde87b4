package main

import "sync"

// dedup remembers the most recent message ids, up to a fixed number, so that
// a redelivered task (mlproducer delivers at least once, with a stable
// message id) is recognised and processed only once. When full, the oldest
// id is forgotten first. It is safe for concurrent use.
type dedup struct {
	mu   sync.Mutex
	ring []string       // ids in insertion order; "" is a free or removed slot
	next int            // the slot to write next (the oldest id when full)
	slot map[string]int // id -> its index in ring
}

// newDedup returns a dedup that remembers up to capacity ids (at least 1).
func newDedup(capacity int) *dedup {
	capacity = max(capacity, 1)
	return &dedup{ring: make([]string, capacity), slot: make(map[string]int, capacity)}
}

// Add records id and reports true, or reports false if id is already
// remembered (a duplicate). The empty id is never recorded.
func (d *dedup) Add(id string) bool {
	if id == "" {
		return true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.slot[id]; ok {
		return false
	}
	if old := d.ring[d.next]; old != "" {
		delete(d.slot, old)
	}
	d.ring[d.next] = id
	d.slot[id] = d.next
	d.next = (d.next + 1) % len(d.ring)
	return true
}

// Remove forgets id, for a task that was recorded but could not be
// processed and will be delivered again.
func (d *dedup) Remove(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if i, ok := d.slot[id]; ok {
		delete(d.slot, id)
		d.ring[i] = ""
	}
}

// Len returns how many ids are remembered.
func (d *dedup) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.slot)
}
