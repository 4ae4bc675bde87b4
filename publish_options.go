package mlproducer

import (
	"bytes"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mlproducer/mlproducer/transport"
)

// PublishOption sets per-message metadata on one publish: the trailing
// arguments of [Producer.Publish] and the typed methods. Every option is
// validated before anything is sent (an [*InvalidTaskError] whose Field
// names the option), and the metadata is the same on every attempt, across
// reconnects and, with [WithSpool], across restarts.
type PublishOption func(*publishSettings)

// publishSettings collects the options of one publish.
type publishSettings struct {
	id            string
	headers       map[string]any
	priority      uint8
	hasPriority   bool
	expiration    time.Duration
	hasExpiration bool
	correlationID string
	err           error // the first option that could not be taken
}

// Limits of the per-message metadata.
const (
	maxHeaders       = 64
	maxHeaderKey     = 128
	maxHeadersBytes  = 16 << 10 // keys and string or []byte values, together
	maxCorrelationID = 255
	maxPriority      = 9
	reservedPrefix   = "x-mlproducer-"
)

// WithMessageID sets the message id: the caller's idempotency key, so that a
// retried request republishes under the same id and consumers de-duplicate
// it. It is 1 to 128 visible ASCII characters (0x21 to 0x7E). For
// [Producer.Publish] it replaces [Message.ID]; the typed methods also write
// it into the body's "messageId".
func WithMessageID(id string) PublishOption {
	return func(s *publishSettings) { s.id = id }
}

// WithHeaders adds AMQP headers to the message. Keys are 1 to 128 bytes of
// UTF-8 and must not start with "x-mlproducer-" (reserved: the Producer's
// own headers, such as [AttemptHeader]); values are bool, string, []byte,
// int, int8, int16, int32, int64, uint8, uint16, uint32, float32, float64
// (finite) or time.Time (no nested tables or arrays). At most 64 headers and 16 KiB of
// keys and values. The map is copied: the caller may reuse it. Called more
// than once, the maps are merged, later keys winning.
func WithHeaders(h map[string]any) PublishOption {
	return func(s *publishSettings) {
		if s.headers == nil {
			s.headers = make(map[string]any, len(h))
		}
		for k, v := range h {
			s.headers[k] = v
		}
	}
}

// WithPriority sets the AMQP priority, 0 to 9. It matters only on a queue
// declared with x-max-priority.
func WithPriority(p uint8) PublishOption {
	return func(s *publishSettings) { s.priority, s.hasPriority = p, true }
}

// WithExpiration sets the message's time to live in the queue (the AMQP
// expiration property): the broker drops, or dead-letters, a message not
// consumed within d. d is at least 1 ms and is sent in whole milliseconds.
func WithExpiration(d time.Duration) PublishOption {
	return func(s *publishSettings) { s.expiration, s.hasExpiration = d, true }
}

// WithCorrelationID sets the AMQP correlation id, 1 to 255 bytes of UTF-8
// (a request id, for example).
func WithCorrelationID(id string) PublishOption {
	return func(s *publishSettings) { s.correlationID = id }
}

// msgMeta is a message's metadata beyond its id: nil when the publish had
// no option but an id, so that a plain publish costs nothing more.
type msgMeta struct {
	headers       transport.Table // validated and copied; no reserved keys
	priority      uint8
	expiration    string // AMQP form: milliseconds
	correlationID string
}

// applyPublishOptions validates opts and returns the message id they set
// ("" for none) and the metadata (nil for none).
func applyPublishOptions(opts []PublishOption) (string, *msgMeta, error) {
	if len(opts) == 0 {
		return "", nil, nil
	}
	var s publishSettings
	for _, o := range opts {
		if o != nil {
			o(&s)
		}
	}
	if s.id != "" {
		if err := checkMessageID("WithMessageID", s.id); err != nil {
			return "", nil, err
		}
	}
	if s.headers == nil && !s.hasPriority && !s.hasExpiration && s.correlationID == "" {
		return s.id, nil, nil
	}
	meta := &msgMeta{}
	if s.hasPriority {
		if s.priority > maxPriority {
			return "", nil, invalid("WithPriority", "is "+strconv.Itoa(int(s.priority))+"; want 0 to 9")
		}
		meta.priority = s.priority
	}
	if s.hasExpiration {
		if s.expiration < time.Millisecond {
			return "", nil, invalid("WithExpiration", "is "+s.expiration.String()+"; want at least 1ms")
		}
		meta.expiration = strconv.FormatInt(s.expiration.Milliseconds(), 10)
	}
	if s.correlationID != "" {
		if len(s.correlationID) > maxCorrelationID || !utf8.ValidString(s.correlationID) {
			return "", nil, invalid("WithCorrelationID", "must be 1 to 255 bytes of UTF-8")
		}
		meta.correlationID = s.correlationID
	}
	if s.headers != nil {
		t, err := checkHeaders(s.headers)
		if err != nil {
			return "", nil, err
		}
		meta.headers = t
	}
	return s.id, meta, nil
}

// checkHeaders validates the headers of WithHeaders and returns a copy.
func checkHeaders(h map[string]any) (transport.Table, error) {
	if len(h) > maxHeaders {
		return nil, invalid("WithHeaders", "has "+strconv.Itoa(len(h))+" headers; at most 64")
	}
	t := make(transport.Table, len(h))
	size := 0
	for k, v := range h {
		field := "WithHeaders[" + strconv.Quote(k) + "]"
		switch {
		case k == "":
			return nil, invalid("WithHeaders", "has an empty key")
		case len(k) > maxHeaderKey || !utf8.ValidString(k):
			return nil, invalid(field, "key must be 1 to 128 bytes of UTF-8")
		case strings.HasPrefix(strings.ToLower(k), reservedPrefix):
			return nil, invalid(field, `keys starting with "x-mlproducer-" are reserved for the Producer`)
		}
		size += len(k)
		switch x := v.(type) {
		case string:
			if !utf8.ValidString(x) {
				return nil, invalid(field, "string value is not valid UTF-8")
			}
			size += len(x)
		case []byte:
			size += len(x)
			v = bytes.Clone(x)
		case float32:
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				return nil, invalid(field, "is NaN or infinite")
			}
			size += 8
		case float64:
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return nil, invalid(field, "is NaN or infinite")
			}
			size += 8
		default:
			if _, ok := headerType(v); !ok {
				return nil, invalid(field, fmt.Sprintf("value of type %T cannot be sent as an AMQP header; use bool, string, []byte, an integer of up to 32 bits unsigned or 64 bits signed, a float or time.Time", v))
			}
			size += 8
		}
		if size > maxHeadersBytes {
			return nil, tooLarge("WithHeaders", "keys and values are longer than 16 KiB")
		}
		t[k] = v
	}
	return t, nil
}

// headersFor returns the headers of attempt n of m: the caller's headers
// (with the trace context, when tracing is on), and the Producer's attempt
// header with [EnvelopeAttempt], in a table of its own for each attempt (the
// transport reads it while the next is built). Without EnvelopeAttempt, m's
// headers are sent as they are (nothing writes to them once m is accepted),
// and a message without any has no headers table at all.
func (p *Producer) headersFor(m *message, n int32) transport.Table {
	if p.cfg.envelope&EnvelopeAttempt == 0 {
		if m.meta == nil || len(m.meta.headers) == 0 {
			return nil
		}
		return m.meta.headers
	}
	if m.meta == nil || len(m.meta.headers) == 0 {
		return p.attemptHeaders(n)
	}
	t := make(transport.Table, len(m.meta.headers)+1)
	for k, v := range m.meta.headers {
		t[k] = v
	}
	t[AttemptHeader] = n
	return t
}
