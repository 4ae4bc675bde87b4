// Package transport is the small AMQP 0-9-1 surface that mlproducer needs from a
// broker connection. The default implementation wraps
// github.com/rabbitmq/amqp091-go (see [AMQP]); package
// github.com/mlproducer/mlproducer/mlproducertest provides an in-memory fake
// behind the same interfaces so that a Producer can be tested with no broker.
//
// Implementations keep to these rules, which the Producer relies on:
//
//   - Event callbacks ([ChannelEvents], [Config.OnBlocked]) are called from a
//     goroutine owned by the implementation, never from inside a call made by
//     the Producer, and they are called one at a time per channel.
//   - A [Return] for a publishing is delivered before the [Confirmation] of
//     the same publishing (RabbitMQ sends basic.return before basic.ack).
//   - After [ChannelEvents.Closed] has been called, no other callback of that
//     channel is called again.
//   - Publish may block while the broker applies back-pressure; it returns
//     when the channel or its connection is closed.
package transport

import (
	"context"
	"crypto/tls"
	"time"
)

// Table holds AMQP field-table arguments (queue arguments, headers).
type Table map[string]any

// Dialer opens connections to a broker.
type Dialer interface {
	// Dial connects to the broker at url and completes the AMQP handshake.
	// ctx bounds the whole handshake.
	Dial(ctx context.Context, url string, cfg Config) (Conn, error)
}

// Config is what a Dialer needs besides the URL.
type Config struct {
	// Heartbeat is the heartbeat interval to negotiate; 0 disables heartbeats.
	Heartbeat time.Duration
	// TLS is used for amqps URLs. Nil means the system roots with full
	// verification.
	TLS *tls.Config
	// ConnectionName is shown in the broker's management UI.
	ConnectionName string
	// OnBlocked is called with true on connection.blocked and false on
	// connection.unblocked. It must not block.
	OnBlocked func(blocked bool, reason string)
	// OnClosed is called once when the connection ends, with the reason
	// (nil after Close). It must not block.
	OnClosed func(err error)
}

// Conn is one broker connection.
type Conn interface {
	// Channel opens a channel on the connection.
	Channel() (Channel, error)
	// Close closes the connection and every channel on it. Safe to call more
	// than once.
	Close() error
}

// DeadlineCloser is implemented by a [Conn] whose Close can be bounded: the
// closing handshake gets until deadline (the default implementation gives it
// two seconds at most), then the socket is closed. The Producer uses it so
// that Close returns by its ctx even when the broker does not answer.
type DeadlineCloser interface {
	CloseDeadline(deadline time.Time) error
}

// Channel is one AMQP channel.
type Channel interface {
	// ExchangeDeclare declares an exchange of the given kind.
	ExchangeDeclare(name, kind string, durable bool, args Table) error
	// QueueDeclare declares a queue.
	QueueDeclare(name string, durable bool, args Table) error
	// QueueBind binds queue to exchange with the routing key.
	QueueBind(queue, key, exchange string) error
	// Confirm puts the channel into publisher-confirm mode and routes its
	// events to ev. Delivery tags of later publishings start at 1.
	Confirm(ev ChannelEvents) error
	// Publish sends one publishing and returns its delivery tag. It may block
	// under broker back-pressure for as long as the connection lives; ctx is
	// honoured only where the implementation can (amqp091-go ignores it once
	// the frames are being written).
	Publish(ctx context.Context, exchange, key string, mandatory bool, msg Publishing) (tag uint64, err error)
	// Close closes the channel. Safe to call more than once.
	Close() error
}

// ExchangeChecker is implemented by a [Channel] that can check that an
// exchange exists without declaring it (exchange.declare with passive set).
// The Producer uses it at each connection when it declares nothing
// (Topology.NoDeclare), so that a missing exchange is reported as such
// rather than as a failure of every publish. Both implementations of this
// module (amqp091-go's and package mlproducertest's) implement it.
type ExchangeChecker interface {
	// ExchangeDeclarePassive returns nil when the exchange name exists.
	// When it does not, the broker answers 404 NOT_FOUND ([ReplyCode]
	// gives 404) and closes the channel, as for any channel error.
	ExchangeDeclarePassive(name string) error
}

// Batcher is implemented by a [Channel] that can coalesce the publishings
// made between BeginBatch and EndBatch into fewer socket writes. Writes made
// meanwhile by other users of the connection are held too, so a batch must be
// short: publish what is ready, then end it.
type Batcher interface {
	// BeginBatch starts holding writes.
	BeginBatch()
	// EndBatch writes what was held and stops holding.
	EndBatch() error
}

// ChannelEvents receives the asynchronous events of a channel in confirm mode.
// Every function must be set and must not block.
type ChannelEvents struct {
	// Confirm reports basic.ack (Ack true) or basic.nack for a delivery tag,
	// or for every tag up to it when Multiple is set.
	Confirm func(Confirmation)
	// Return reports a mandatory publishing the broker could not route.
	Return func(Return)
	// Closed is called once when the channel or its connection ends.
	Closed func(err error)
}

// Confirmation is a publisher confirm.
type Confirmation struct {
	DeliveryTag uint64
	Ack         bool
	Multiple    bool
}

// Return is a basic.return of an unroutable mandatory publishing. It carries
// the publishing's message ID, headers and body back, so that the client can
// tell which of several publishings with one message ID it belongs to.
type Return struct {
	ReplyCode  uint16
	ReplyText  string
	Exchange   string
	RoutingKey string
	MessageID  string
	Headers    Table
	Body       []byte
}

// ReplyCoder is implemented by the broker exceptions (AMQP channel and
// connection errors) that an implementation reports, so that a user can tell a
// message-level refusal (406 PRECONDITION_FAILED, 403 ACCESS_REFUSED) from a
// network failure. amqp091-go's *amqp.Error is recognised by [ReplyCode] too.
type ReplyCoder interface {
	error
	// ReplyCode is the AMQP reply code, for example 406.
	ReplyCode() uint16
}

// Publishing is one message as sent on the wire.
type Publishing struct {
	ContentType   string
	MessageID     string
	CorrelationID string
	Timestamp     time.Time
	Type          string
	AppID         string
	Persistent    bool
	Priority      uint8  // 0 to 9; 0 is AMQP's default
	Expiration    string // per-message TTL in milliseconds; "" for none
	Headers       Table
	Body          []byte
}
