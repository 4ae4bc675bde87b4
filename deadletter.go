package mlproducer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// deadLetterGrace is how long Close waits for the dead-letter hook after its
// ctx ended: the messages still unconfirmed at that moment are handed to the
// hook only then, and a quick hook should get them all.
const deadLetterGrace = time.Second

// errNoConnection is the reason given for messages left at Close when ctx
// did not end first: the connection could not take them.
var errNoConnection = errors.New("no connection to the broker")

// deadItem is one message waiting for the dead-letter hook.
type deadItem struct {
	m  *message
	dl DeadLetter
}

// startHooks starts the goroutine that calls the dead-letter hook, if there
// is one. Close stops it (waitHooks).
func (p *Producer) startHooks() {
	if p.cfg.deadLetter == nil {
		return
	}
	p.hookCond = sync.NewCond(&p.hookMu)
	p.hookDone = make(chan struct{})
	go p.hookLoop()
}

// queueHook hands a dead-lettered message to the hook goroutine. It never
// blocks: the queue holds at most the messages the Producer holds, which its
// capacity bounds. After Close stopped waiting for the hook, the message is
// finished here without it.
func (p *Producer) queueHook(it deadItem) {
	p.hookMu.Lock()
	if p.hookAbandon {
		p.hookMu.Unlock()
		p.skipHook(it.m)
		return
	}
	p.hookq = append(p.hookq, it)
	p.hookCond.Signal()
	p.hookMu.Unlock()
}

// hookLoop calls the hook for each queued message, one at a time and in
// order. It returns when Close asks it to (hookStop, once the queue is empty)
// or gives up on it (hookAbandon, after the call under way).
func (p *Producer) hookLoop() {
	defer close(p.hookDone)
	for {
		p.hookMu.Lock()
		for len(p.hookq) == 0 && !p.hookStop && !p.hookAbandon {
			p.hookCond.Wait()
		}
		if p.hookAbandon || len(p.hookq) == 0 {
			p.hookMu.Unlock()
			return
		}
		it := p.hookq[0]
		p.hookq[0] = deadItem{}
		p.hookq = p.hookq[1:]
		if len(p.hookq) == 0 {
			p.hookq = nil // let the backing array go
		}
		p.hookMu.Unlock()
		p.callDeadLetter(it.dl)
		p.finishDead(it.m, true)
	}
}

// finishDead ends the Producer's ownership of a dead-lettered message, once
// the hook returned (hooked) or Close gave up on it. Only a hooked message
// leaves the spool: one the hook never got is sent again by the next New on
// the dir.
func (p *Producer) finishDead(m *message, hooked bool) {
	if p.spool != nil && hooked {
		if err := p.spool.removeNow(m.key); err != nil && !errors.Is(err, ErrClosed) {
			p.log.Error("mlproducer: cannot remove a dead-lettered message from the spool; it may be sent again after a restart",
				slog.String("messageId", m.id), slog.Any("error", err))
		}
	}
	p.release(len(m.body))
	p.disown()
}

// skipHook finishes a message whose hook call Close did not wait for.
func (p *Producer) skipHook(m *message) {
	if p.spool != nil {
		p.log.Error("mlproducer: Close ended before the dead-letter hook got this message; it stays in the spool for the next start",
			slog.String("messageId", m.id), slog.String("type", string(m.typ)))
	} else {
		p.log.Error("mlproducer: Close ended before the dead-letter hook got this message; it is dropped",
			slog.String("messageId", m.id), slog.String("type", string(m.typ)))
	}
	p.finishDead(m, false)
}

// waitHooks stops the hook goroutine: it waits until the hook has had every
// queued message, or ctx ended and deadLetterGrace passed since. Then it gives
// up: the messages still queued are finished without the hook (logged, and
// kept in the spool if there is one), and a hook call still under way is
// left to return on its own goroutine, which then exits. It returns how many
// messages the hook did not get.
func (p *Producer) waitHooks(ctx context.Context) int {
	if p.hookDone == nil {
		return 0
	}
	p.hookMu.Lock()
	p.hookStop = true
	p.hookCond.Broadcast()
	p.hookMu.Unlock()
	select {
	case <-p.hookDone:
		return 0
	case <-ctx.Done():
	}
	grace := time.NewTimer(deadLetterGrace)
	defer grace.Stop()
	select {
	case <-p.hookDone:
		return 0
	case <-grace.C:
	}
	p.hookMu.Lock()
	p.hookAbandon = true
	rest := p.hookq
	p.hookq = nil
	p.hookCond.Broadcast()
	p.hookMu.Unlock()
	for _, it := range rest {
		p.skipHook(it.m)
	}
	p.log.Error("mlproducer: Close stopped waiting for the dead-letter hook",
		slog.Int("notHandedOver", len(rest)), slog.Any("error", ctx.Err()))
	return len(rest)
}

// dropHooks stops the hook goroutine at once, as a killed process would: the
// queued messages never reach the hook and stay in the spool. For tests
// (crash).
func (p *Producer) dropHooks() {
	if p.hookDone == nil {
		return
	}
	p.hookMu.Lock()
	p.hookAbandon = true
	p.hookq = nil
	p.hookCond.Broadcast()
	p.hookMu.Unlock()
}

// closedErr is the DeadLetter.Err of a message left unconfirmed at Close:
// [ErrClosed], and why (cause: ctx's error; nil when the connection could
// not take the message), and what its sends got.
func closedErr(m *message, cause error) error {
	if cause == nil {
		cause = errNoConnection
	}
	n := m.sends.Load()
	switch {
	case n == 0 && m.lastErr == nil:
		return fmt.Errorf("%w before the message could be sent (%w)", ErrClosed, cause)
	case m.lastErr == nil:
		return fmt.Errorf("%w before the broker confirmed the message (after %d sends; %w)", ErrClosed, n, cause)
	}
	return fmt.Errorf("%w before the message was confirmed (after %d sends; %w; last attempt: %w)", ErrClosed, n, cause, m.lastErr)
}
