package main

import "github.com/mlproducer/mlproducer"

// minPending is the least number of Deliveries the tracker keeps before it
// compacts them.
const minPending = 16384

// tracker keeps the Deliveries not yet known to be resolved, oldest first,
// and counts the others: no goroutine per message, and memory bounded by
// about twice what the Producer holds unresolved (its window and buffer,
// which PublishAsync's back-pressure bounds), not by the input's length.
//
// Confirms mostly come in order, so add pops the resolved ones at the head;
// when one stays unresolved at the head (a message being retried) the
// slice grows behind it until limit, and is then compacted: resolved ones
// are counted and dropped wherever they are. Only the loop's goroutine
// uses it.
type tracker struct {
	con     *console
	pending []entry
	head    int
	limit   int
	min     int // minPending, or less in tests
}

type entry struct {
	d *mlproducer.Delivery
	n int64 // input line
}

func newTracker(con *console) *tracker { return newTrackerMin(con, minPending) }

func newTrackerMin(con *console, min int) *tracker {
	return &tracker{con: con, limit: min, min: min}
}

func resolved(e entry) bool {
	select {
	case <-e.d.Done():
		return true
	default:
		return false
	}
}

// add keeps d, from input line n, and counts whatever has resolved.
func (t *tracker) add(d *mlproducer.Delivery, n int64, c *counts) {
	t.pending = append(t.pending, entry{d, n})
	for t.head < len(t.pending) && resolved(t.pending[t.head]) {
		t.count(t.pending[t.head], c)
		t.pending[t.head] = entry{}
		t.head++
	}
	if len(t.pending) >= t.limit {
		t.compact(c)
	}
}

// compact counts and drops every resolved Delivery and returns how many
// are left.
func (t *tracker) compact(c *counts) int {
	k := 0
	for _, e := range t.pending[t.head:] {
		if resolved(e) {
			t.count(e, c)
			continue
		}
		t.pending[k] = e
		k++
	}
	clear(t.pending[k:])
	t.pending, t.head = t.pending[:k], 0
	t.limit = max(t.min, 2*k)
	return k
}

// finish counts what has resolved, after Flush and Close, and returns how
// many Deliveries are still unresolved: messages neither confirmed nor
// dead-lettered when the command ends.
func (t *tracker) finish(c *counts) int64 {
	return int64(t.compact(c))
}

func (t *tracker) count(e entry, c *counts) {
	switch r := e.d.Receipt(); r.State {
	case mlproducer.Confirmed:
		c.confirmed.Add(1)
	case mlproducer.DeadLettered:
		c.deadLettered.Add(1)
		t.con.printf("backfill: line %d: message %s dead-lettered\n", e.n, r.MessageID)
	default:
		// Queued: Close left it in the spool (ML_SPOOL_DIR) for the next
		// start; it is not confirmed.
		c.spooled.Add(1)
		t.con.printf("backfill: line %d: message %s left in the spool, unconfirmed\n", e.n, r.MessageID)
	}
}
