package mlproducer

import "time"

// crash stops the Producer as a killed process would: its goroutines end,
// nothing is dead-lettered or counted, and the spool's pending deletes and
// attempt counts (the writes that were never synced) are lost. Everything
// synced stays in the file for the next New on the dir. After crash, Close
// returns at once.
func (p *Producer) crash() {
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	p.closing.Store(true)
	p.admit.Lock()
	p.admit.Unlock() //nolint:staticcheck // the barrier of Close
	p.closeBy.Store(time.Now().UnixNano())
	close(p.stop)
	p.stopAll()
	p.wg.Wait()
	p.dropHooks()
	if p.spool != nil {
		p.spool.crash()
	}
	p.setState(Closed)
	if p.cfg.registerer != nil {
		p.cfg.registerer.Unregister(p.collector)
	}
}

// crash closes the store without committing what is pending.
func (sp *spool) crash() {
	sp.mu.Lock()
	if sp.closed {
		sp.mu.Unlock()
		return
	}
	sp.closed = true
	sp.mu.Unlock()
	sp.crashed.Store(true)
	close(sp.quit)
	<-sp.exited
	_ = sp.db.Close()
}
