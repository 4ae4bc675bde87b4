package mlproducer

import (
	"time"

	"github.com/mlproducer/mlproducer/transport"
)

// EnvelopeField is an AMQP property the Producer can put on every message on
// top of its default envelope; [WithEnvelope] takes them.
//
// By default a message carries what consumers need and nothing the broker
// would pay for without need: it is published persistent and mandatory to the
// topology's exchange with the task's routing key, with content_type
// "application/json" and message_id (the body's messageId). The body already
// holds the task type and the creation time ("type", "createdAt"). The
// broker parses and stores the properties with every message: at 64
// callers, 1 KiB, the four below together cost it a measurable share of its
// throughput and CPU (BENCHMARKS.md, "Envelope cost"), so they are opt-in.
type EnvelopeField uint8

const (
	// EnvelopeTimestamp sets timestamp: the time the message was accepted
	// (the body's createdAt, to the second).
	EnvelopeTimestamp EnvelopeField = 1 << iota
	// EnvelopeType sets type: the task type ("summarization", ...), which
	// the routing key and the body's "type" also say.
	EnvelopeType
	// EnvelopeAppID sets app_id "mlproducer".
	EnvelopeAppID
	// EnvelopeAttempt sets the header [AttemptHeader] ("x-mlproducer-attempt",
	// an int32): 1 on the first send of a message, 2 on the next, counted
	// across restarts with [WithSpool]. It makes the broker decode a
	// headers table with every message.
	EnvelopeAttempt

	// EnvelopeAll is every field: the envelope of the Producer before
	// issue 13.
	EnvelopeAll = EnvelopeTimestamp | EnvelopeType | EnvelopeAppID | EnvelopeAttempt
)

// WithEnvelope adds the given properties to every message, on top of the
// default envelope (persistent, mandatory, content_type, message_id; see
// [EnvelopeField]); fields are combined, and a later WithEnvelope replaces an
// earlier one. WithEnvelope() keeps the default. Env ML_ENVELOPE.
//
// A headers table is sent anyway when the message has headers of its own:
// those of [WithHeaders], and the trace context (traceparent) when tracing
// is on ([WithTracerProvider], or a global TracerProvider).
//
// The Producer's own bookkeeping does not read the properties back: the
// attempts it counts ([DeadLetter].Attempts, retries) are the same with or
// without [EnvelopeAttempt], and a basic.return is matched to its message
// either way (without the header, possibly to more than one attempt of it,
// which only sends it once more).
func WithEnvelope(fields ...EnvelopeField) Option {
	return func(c *config) {
		c.envelope = 0
		for _, f := range fields {
			c.envelope |= f
		}
	}
}

// publishing is attempt n of m as it goes on the wire.
func (p *Producer) publishing(m *message, n int32) transport.Publishing {
	pub := transport.Publishing{
		ContentType: "application/json",
		MessageID:   m.id,
		Persistent:  true,
		Headers:     p.headersFor(m, n),
		Body:        m.body,
	}
	if e := p.cfg.envelope; e != 0 {
		if e&EnvelopeTimestamp != 0 {
			pub.Timestamp = time.Unix(0, m.created)
		}
		if e&EnvelopeType != 0 {
			pub.Type = string(m.typ)
		}
		if e&EnvelopeAppID != 0 {
			pub.AppID = p.cfg.appID
		}
	}
	if md := m.meta; md != nil {
		pub.Priority, pub.Expiration, pub.CorrelationID = md.priority, md.expiration, md.correlationID
	}
	return pub
}
