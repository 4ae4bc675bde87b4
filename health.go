package mlproducer

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

var errProbeTimeout = errors.New("mlproducer: health probe got no answer in time")

// health checks the session every health-check interval with a real round
// trip to the broker (opening and closing a channel); a failure or no answer
// in time ends the session, so the supervisor reconnects. Heartbeats catch a
// dead TCP peer; this catches a broker that answers heartbeats but not
// requests. It stays quiet while the broker blocks the connection, since a
// blocked connection is not read and the probe could only time out.
//
// The same round trip is the circuit breaker's probe when no publish comes to
// be one: once the breaker's cooldown ends, a successful check closes it, so a
// Producer taken out of rotation by its readiness answer gets back in without
// traffic. A failed one opens it again.
func (s *session) health() {
	defer s.wg.Done()
	interval := s.p.cfg.healthInterval
	t := time.NewTimer(s.nextCheck(interval))
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if s.blocked.Load() {
			t.Reset(interval)
			continue
		}
		err := s.p.breaker.probe(func() error { return s.probe(min(interval, s.p.cfg.connectionTimeout)) })
		if errors.Is(err, errNotSent) {
			return // the session is ending
		}
		if err != nil {
			s.p.log.Warn("mlproducer: health check failed; reconnecting",
				slog.String("url", s.url), slog.String("error", err.Error()))
			s.fail(fmt.Errorf("health check: %w", err))
			return
		}
		t.Reset(s.nextCheck(interval))
	}
}

// nextCheck returns the wait before the next check: the interval, or less if
// an open breaker lets a probe through sooner (a millisecond after its
// cooldown, so that it is half-open by then).
func (s *session) nextCheck(interval time.Duration) time.Duration {
	if d := s.p.breaker.waitOpen(); d > 0 {
		return min(interval, d+time.Millisecond)
	}
	return interval
}

// probe makes one round trip. The call runs on its own goroutine because the
// transport's Channel takes no context; teardown closes the connection, which
// ends a call that never got its answer.
func (s *session) probe(timeout time.Duration) error {
	res := make(chan error, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ch, err := s.conn.Channel()
		if err == nil {
			err = ch.Close()
		}
		res <- err
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err := <-res:
		return err
	case <-timer.C:
		return errProbeTimeout
	case <-s.ctx.Done():
		return errNotSent
	}
}

// configNotReady is the readiness reason of a configuration error (the
// broker refuses the topology, see [WithTopology]), or "". Such a Producer
// can buffer a message but never send one until someone changes the broker
// or the options, so it is not ready whatever its buffer.
func (p *Producer) configNotReady() string { return p.configError() }
