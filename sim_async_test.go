package mlproducer_test

// The simulation's PublishAsync and Flush (invariant 12). In one schedule in
// three, some calls are PublishAsync (their receipt is recorded as Pending:
// taken, not yet final; the ctx bounds only the hand-off, which may wait for
// room) and publishers now and then call Flush with a deadline. Then:
//   - a Flush that returned nil left no Delivery of its Producer unresolved
//     among those taken before it began;
//   - after Close every Delivery is resolved, exactly as the broker and the
//     hook saw its message: Confirmed means stored, DeadLettered means the
//     hook got it, and one the hook never got was confirmed. With a spool, a
//     Delivery may instead be Queued with an error wrapping ErrClosed, for a
//     message left in the spool, or unresolved if its Producer crashed.

import (
	"context"
	"errors"
	"time"

	"github.com/mlproducer/mlproducer"
)

// publishAsync makes c a PublishAsync call of msg on p.
func (s *simState) publishAsync(ctx context.Context, c *simCall, p *mlproducer.Producer, msg mlproducer.Message) {
	c.async = true
	d, err := p.PublishAsync(ctx, msg)
	c.err = err
	if err != nil {
		return
	}
	c.asyncSeq = s.asyncSeq.Add(1)
	c.dlv = d
	c.rcpt = mlproducer.Receipt{MessageID: d.MessageID(), State: mlproducer.Pending}
	s.asyncMu.Lock()
	s.asyncCalls = append(s.asyncCalls, c)
	s.asyncMu.Unlock()
}

// flush calls Flush on the current Producer with a random deadline and, if
// it returned nil, checks the Deliveries taken before it.
func (s *simState) flush(rangeNs int64) {
	g := s.cur.Load()
	before := s.asyncSeq.Load()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rangeNs))
	defer cancel()
	start := time.Now()
	err := g.p.Flush(ctx)
	s.logf("flush: %v after %v", err, time.Since(start))
	if err != nil {
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, mlproducer.ErrClosed) {
			s.violate(12, "Flush returned %v", err)
		}
		return
	}
	s.asyncMu.Lock()
	defer s.asyncMu.Unlock()
	for _, c := range s.asyncCalls {
		if c.asyncSeq > before || c.gen != g.n {
			continue
		}
		select {
		case <-c.dlv.Done():
		default:
			s.violate(12, "Flush returned nil at %v with the Delivery of call %d (taken %v) unresolved",
				time.Since(s.t0).Round(time.Microsecond), c.k, c.end.Sub(s.t0).Round(time.Microsecond))
			return
		}
	}
}

// checkAsync runs the after-Close part of invariant 12. Call with s.net.mu
// held.
func (s *simState) checkAsync(calls []*simCall, stored map[int]int, dead map[int][]simDead) {
	for _, c := range calls {
		if !c.async || c.err != nil {
			continue
		}
		var r mlproducer.Receipt
		var err error
		select {
		case <-c.dlv.Done():
			r, err = c.dlv.Wait(context.Background())
		default:
			if s.cfg.spool && s.gens[c.gen].crashed {
				continue // its Producer died: nobody resolves it
			}
			s.violate(12, "call %d (async, id %s): Delivery unresolved after Close", c.k, c.rcpt.MessageID)
			continue
		}
		ds := dead[c.k]
		switch {
		case r.State == mlproducer.Queued && errors.Is(err, mlproducer.ErrClosed) && s.cfg.spool:
			// Left in the spool by its Producer's Close.
		case err != nil:
			s.violate(12, "call %d (async): Delivery %v with error %v", c.k, r.State, err)
		case r.State == mlproducer.Confirmed && stored[c.k] == 0:
			s.violate(12, "call %d (async): Delivery confirmed, never stored by the broker", c.k)
		case r.State == mlproducer.DeadLettered && len(ds) == 0:
			s.violate(12, "call %d (async): Delivery dead-lettered, the hook never got it", c.k)
		case r.State != mlproducer.Confirmed && r.State != mlproducer.DeadLettered:
			s.violate(12, "call %d (async): Delivery resolved as %v", c.k, r.State)
		case r.State == mlproducer.Confirmed && len(ds) > 0 && !s.confirmedThenDeadAllowed(c, ds):
			s.violate(12, "call %d (async): Delivery confirmed and the hook got it too", c.k)
		}
	}
}
