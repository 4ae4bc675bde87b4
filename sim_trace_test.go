package mlproducer_test

// The simulation's tracing (invariant 11). One schedule in three traces its
// publishes into a span recorder; after Close:
//   - a publish the Producer took has exactly one PRODUCER span with its
//     message id (calls sharing a caller id share spans by number), and that
//     span ends with the message's end: dead_lettered when the hook got it,
//     confirmed otherwise;
//   - a call refused after validation (closed, queue full, breaker, ctx) has
//     one span of outcome refused; a call refused by validation has none;
//   - every copy of a message the broker stored carries in traceparent the
//     context of one span of its message id, however often it was sent.
// With a spool the crashes leave spans unended, so there each message id
// has at most as many spans as calls took it, and the stored copies still
// name one of them (a send after a restart carries the first one's).

import (
	"errors"
	"strings"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/mlproducer/mlproducer"
)

// simTracing is the span recorder of a traced schedule; nil otherwise.
type simTracing struct {
	sr *tracetest.SpanRecorder
	tp *sdktrace.TracerProvider
}

func newSimTracing() *simTracing {
	sr := tracetest.NewSpanRecorder()
	return &simTracing{sr: sr, tp: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))}
}

func (t *simTracing) options() []mlproducer.Option {
	if t == nil {
		return nil
	}
	return []mlproducer.Option{mlproducer.WithTracerProvider(t.tp), mlproducer.WithPropagator(propagation.TraceContext{})}
}

// checkTracing runs invariant 11. Call with s.net.mu held.
func (s *simState) checkTracing(calls []*simCall, dead map[int][]simDead) {
	if s.tracing == nil {
		return
	}
	spans := map[string][]sdktrace.ReadOnlySpan{} // by message id
	refusedSpans := 0
	for _, sp := range s.tracing.sr.Ended() {
		if sp.SpanKind() != trace.SpanKindProducer {
			continue
		}
		var id, outcome string
		for _, kv := range sp.Attributes() {
			switch kv.Key {
			case "messaging.message.id":
				id = kv.Value.AsString()
			case "mlproducer.outcome":
				outcome = kv.Value.AsString()
			}
		}
		if outcome == "refused" {
			refusedSpans++
			continue
		}
		spans[id] = append(spans[id], sp)
	}

	byID := map[string][]*simCall{}
	refused := 0
	for _, c := range calls {
		switch {
		case c.err == nil:
			byID[c.rcpt.MessageID] = append(byID[c.rcpt.MessageID], c)
		case !errors.Is(c.err, mlproducer.ErrInvalidTask):
			refused++
		}
	}
	if refused != refusedSpans {
		s.violate(11, "%d calls refused after validation, %d spans of outcome refused", refused, refusedSpans)
	}
	for id, sps := range spans {
		if _, ok := byID[id]; !ok {
			s.violate(11, "%d spans of message id %q, which no accepted call has", len(sps), id)
		}
	}
	for id, cs := range byID {
		sps := spans[id]
		switch {
		case s.cfg.spool && len(sps) > len(cs):
			s.violate(11, "message id %q: %d spans for %d accepted calls", id, len(sps), len(cs))
		case !s.cfg.spool && len(sps) != len(cs):
			s.violate(11, "message id %q: %d spans for %d accepted calls (call %d, %s, receipt %v)", id, len(sps), len(cs), cs[0].k, cs[0].what, cs[0].rcpt.State)
		case !s.cfg.spool && len(cs) == 1:
			c := cs[0]
			outcome := ""
			for _, kv := range sps[0].Attributes() {
				if kv.Key == "mlproducer.outcome" {
					outcome = kv.Value.AsString()
				}
			}
			want := "confirmed"
			if len(dead[c.k]) > 0 {
				want = "dead_lettered"
			}
			// A message both confirmed and dead-lettered (the cases check
			// allows) ends its span with whichever came first.
			if outcome != want && !(c.rcpt.State == mlproducer.Confirmed && len(dead[c.k]) > 0) {
				s.violate(11, "call %d (%s, receipt %v, dead-lettered %d times): span outcome %q, want %q", c.k, c.what, c.rcpt.State, len(dead[c.k]), outcome, want)
			}
		}
		// Every stored copy names one of the id's spans.
		for _, q := range simQueues {
			for _, d := range s.b.Messages(q) {
				if d.MessageID != id {
					continue
				}
				tp, _ := d.Headers["traceparent"].(string)
				if !namesOne(tp, sps) && !(s.cfg.spool && len(sps) < len(cs)) {
					s.violate(11, "message id %q stored with traceparent %q, which names none of its %d spans", id, tp, len(sps))
				}
			}
		}
	}
}

// namesOne reports whether the W3C traceparent tp names one of spans.
func namesOne(tp string, spans []sdktrace.ReadOnlySpan) bool {
	for _, sp := range spans {
		sc := sp.SpanContext()
		if strings.HasPrefix(tp, "00-"+sc.TraceID().String()+"-"+sc.SpanID().String()+"-") {
			return true
		}
	}
	return false
}
