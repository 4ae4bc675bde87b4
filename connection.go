package mlproducer

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/mlproducer/mlproducer/transport"
)

// supervise owns the connection: it connects in the background with
// exponential backoff and full jitter, fails over across the configured URLs,
// declares the topology on every new connection, and replaces a session that
// died. amqp091-go's own recovery stays off, so delivery tags never restart
// behind the Producer's back.
func (p *Producer) supervise() {
	defer p.wg.Done()
	bo := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(p.cfg.reconnectInitial),
		backoff.WithMaxInterval(p.cfg.reconnectMax),
		backoff.WithRandomizationFactor(1), // full jitter: [0, 2×interval]
		backoff.WithMultiplier(2),
		backoff.WithMaxElapsedTime(0),
	)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	// wait sleeps d, or reports false when Close stops the Producer.
	wait := func(d time.Duration) bool {
		timer.Reset(d)
		select {
		case <-p.stop:
			timer.Stop()
			return false
		case <-timer.C:
			return true
		}
	}
	next := 0 // index of the URL to try next
	for {
		select {
		case <-p.stop:
			return
		default:
		}
		raw := p.cfg.urls[next%len(p.cfg.urls)]
		p.stmu.Lock()
		p.url = redactURL(raw)
		p.stmu.Unlock()
		if p.ever {
			p.metrics.reconnects.Add(1)
		}
		s, err := p.connect(raw)
		if err != nil {
			p.breaker.dialFailed(err)
			next++
			// A configuration error (the broker refuses the topology: see
			// topology.go) is logged once and retried at the backoff's
			// cap: only a change on the broker can end it.
			d := p.cfg.reconnectMax
			if !p.noteConfigError(raw, err) {
				p.noteError(raw, err)
				d = p.reconnectWait(bo)
			}
			if !wait(d) {
				return
			}
			continue
		}
		p.clearConfigError()
		// A dial that got through, with the topology declared: the broker is
		// back. It closes a breaker opened by failed dials, and is the probe
		// of a half-open one; it resets nothing else (see breaker.connected).
		p.breaker.connected()
		p.ever = true
		next %= len(p.cfg.urls)
		p.stmu.Lock()
		p.url = s.url
		p.lastErr = ""
		p.stmu.Unlock()
		p.sess.Store(s)
		p.refreshState(s)
		up := time.Now()
		p.log.Info("mlproducer: connected", slog.String("url", s.url), slog.Uint64("epoch", s.epoch))
		p.wakeRetry()

		stopping := false
		select {
		case <-s.died:
			p.noteError(raw, s.dieErr)
		case <-p.stop:
			stopping = true
		}
		p.sess.Store(nil)
		if !stopping {
			p.setState(Reconnecting)
		}
		s.teardown()
		if stopping {
			return
		}
		// A session that lived is followed by an immediate redial with the
		// backoff reset; one that died young (refused at once: a missing
		// exchange, a poison message, an unstable broker) waits its turn
		// like a failed dial, so that nothing loops at full speed.
		if time.Since(up) >= stableSession(p.cfg.reconnectMax) {
			bo.Reset()
		} else if !wait(p.reconnectWait(bo)) {
			return
		}
	}
}

// reconnectWait returns the wait before the next connection attempt: the
// backoff's full-jitter draw, never more than the reconnect backoff's maximum,
// so that a broker that is back is found within that maximum.
func (p *Producer) reconnectWait(bo backoff.BackOff) time.Duration {
	return min(bo.NextBackOff(), p.cfg.reconnectMax)
}

// stableSession is how long a session must have lived for the reconnect
// backoff to start again from its initial interval.
func stableSession(reconnectMax time.Duration) time.Duration {
	return max(reconnectMax, time.Second)
}

// refreshState sets the state from the current session: Connected, or
// Blocked while the broker blocks it. Called by the supervisor and by the
// flow-control callback; both read the latest values under stmu, so the last
// one to run always leaves the true state.
func (p *Producer) refreshState(s *session) {
	p.stmu.Lock()
	defer p.stmu.Unlock()
	if p.sess.Load() != s || p.state == Closed {
		return
	}
	st := Connected
	if s.blocked.Load() {
		st = Blocked
	}
	if p.state != st {
		p.state = st
		close(p.stateCh)
		p.stateCh = make(chan struct{})
	}
}

func (p *Producer) noteError(raw string, err error) {
	msg := redactErr(raw, err)
	p.stmu.Lock()
	p.lastErr = msg
	p.stmu.Unlock()
	p.log.Warn("mlproducer: connection failed", slog.String("url", redactURL(raw)), slog.String("error", msg))
}

// redactErr renders err with any trace of the URL's password removed.
func redactErr(raw string, err error) string {
	if err == nil {
		return ""
	}
	return redactSecrets(err.Error(), raw)
}

// connect dials url, declares the topology and opens the publishing channel
// in confirm mode.
func (p *Producer) connect(raw string) (*session, error) {
	p.epoch++
	s := newSession(p, p.epoch, redactURL(raw))
	// Every round trip of the set-up has one deadline, and Close cuts it
	// short.
	ctx, cancel := context.WithTimeout(p.stopCtx, p.cfg.connectionTimeout)
	defer cancel()
	conn, err := p.dialer.Dial(ctx, raw, transport.Config{
		Heartbeat:      p.cfg.heartbeat,
		TLS:            p.cfg.tlsConfig,
		ConnectionName: p.cfg.connectionName,
		OnBlocked: func(blocked bool, reason string) {
			s.blocked.Store(blocked)
			p.refreshState(s)
			if !blocked {
				p.wakeRetry()
			}
			p.log.Warn("mlproducer: broker flow control", slog.Bool("blocked", blocked), slog.String("reason", reason))
		},
		OnClosed: func(err error) {
			if err == nil {
				err = fmt.Errorf("mlproducer: connection closed")
			}
			s.fail(err)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", redactURL(raw), err)
	}
	s.conn = conn
	// The channel calls below take no context; closing the connection ends
	// a call the broker never answers (a broker that completed the
	// handshake, then stopped answering).
	setUp := make(chan struct{})
	watched := make(chan bool, 1)
	go func() {
		select {
		case <-ctx.Done():
			conn.Close()
			watched <- true
		case <-setUp:
			watched <- false
		}
	}()
	fail := func(what string, err error) (*session, error) {
		close(setUp)
		timedOut := <-watched
		s.stopF()
		conn.Close()
		if timedOut {
			err = fmt.Errorf("no answer within the connection timeout (%v): %w", err, ctx.Err())
		}
		return nil, fmt.Errorf("%s on %s: %w", what, redactURL(raw), err)
	}
	if err := p.declare(conn); err != nil {
		return fail("declare topology", err)
	}
	ch, err := conn.Channel()
	if err != nil {
		return fail("open channel", err)
	}
	s.ch = ch
	if err := ch.Confirm(transport.ChannelEvents{
		Confirm: s.onConfirm,
		Return:  s.onReturn,
		Closed: func(err error) {
			if err == nil {
				err = fmt.Errorf("mlproducer: channel closed")
			}
			s.fail(err)
		},
	}); err != nil {
		return fail("enable publisher confirms", err)
	}
	close(setUp)
	if <-watched {
		s.stopF()
		return nil, fmt.Errorf("set up on %s: no answer within the connection timeout: %w", redactURL(raw), ctx.Err())
	}
	s.start()
	return s, nil
}
