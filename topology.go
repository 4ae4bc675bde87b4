package mlproducer

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/mlproducer/mlproducer/transport"
)

// QueueType is the kind of queue the Producer declares for each task type.
type QueueType string

const (
	// QueueClassic declares classic durable queues (the default): right for a
	// single broker.
	QueueClassic QueueType = "classic"
	// QueueQuorum declares quorum queues: replicated, the choice for a
	// RabbitMQ cluster.
	QueueQuorum QueueType = "quorum"
)

// Overflow is what a queue with a length limit ([Topology.MaxLength]) does
// with a message that arrives when it is full: RabbitMQ's x-overflow.
type Overflow string

const (
	// OverflowDropHead drops (or dead-letters) the oldest message of the
	// queue to make room: RabbitMQ's default. The publish is confirmed.
	OverflowDropHead Overflow = "drop-head"
	// OverflowRejectPublish refuses the new message: the broker nacks it,
	// and the Producer retries it with backoff and, once its retries
	// ([WithMaxRetries]) are spent, hands it to the dead-letter hook.
	OverflowRejectPublish Overflow = "reject-publish"
	// OverflowRejectPublishDLX is [OverflowRejectPublish] that also
	// dead-letters the refused message to the queue's dead-letter exchange.
	// Classic queues only.
	OverflowRejectPublishDLX Overflow = "reject-publish-dlx"
)

// Topology is what the Producer declares on every new connection: a durable
// direct exchange and, for each task type, a durable queue bound to it with
// the task's routing key ("ml.summarization", "ml.transcription",
// "ml.embedding"). The routing keys never change; the queue names and
// arguments below only change what is declared, so consumers that own their
// queues can have the Producer declare exactly the queues they declare.
//
// The zero value of every field but Exchange and QueueType means "not set":
// nothing is added to the declaration. [WithTopology] validates the whole
// struct in [New], with an [*OptionError] that names the field.
//
// A queue that already exists with other arguments makes the broker refuse
// the declaration (406 PRECONDITION_FAILED): the Producer treats that as a
// configuration error (see [WithTopology]).
type Topology struct {
	// Exchange is the exchange tasks are published to. Default "ml.tasks".
	Exchange string
	// QueueType is the type of the declared queues (x-queue-type).
	// Default [QueueClassic].
	QueueType QueueType
	// NoDeclare turns declaration off: the Producer then expects the
	// exchange (and whatever queues consume from it) to exist already, and
	// checks at each connection that the exchange exists (a passive
	// declare). The queue fields below must then be left unset.
	NoDeclare bool

	// QueuePrefix is put before every queue name, for one broker shared by
	// several environments: "staging." gives "staging.ml.summarization".
	// Default none. It applies to the names below too.
	QueuePrefix string
	// SummarizationQueue, TranscriptionQueue and EmbeddingQueue name the
	// queue of each task type. Default: the routing key
	// ("ml.summarization", ...). Two types may share one queue.
	SummarizationQueue string
	TranscriptionQueue string
	EmbeddingQueue     string

	// MaxLength is the most messages a queue holds (x-max-length); what
	// happens past it is Overflow. Default 0: no limit.
	MaxLength int64
	// Overflow is what a full queue does with a new message (x-overflow).
	// Default "": the broker's default, [OverflowDropHead].
	Overflow Overflow
	// MessageTTL is how long a message may wait in a queue before it
	// expires, or is dead-lettered (x-message-ttl), in whole milliseconds.
	// Default 0: no limit.
	MessageTTL time.Duration
	// DeadLetterExchange is where the broker sends messages that expire,
	// are dropped or refused by the queue, or are rejected by consumers
	// (x-dead-letter-exchange). Default "": none.
	DeadLetterExchange string
	// MaxPriority makes a classic queue a priority queue with priorities 0
	// to MaxPriority (x-max-priority), so that [WithPriority] orders
	// delivery; RabbitMQ advises at most 10. Classic queues only. Default 0:
	// no priorities.
	MaxPriority uint8
	// DeliveryLimit is how many times a consumer may get a message back
	// (rejected or not acknowledged) before the broker drops or
	// dead-letters it (x-delivery-limit). Quorum queues only. Default 0:
	// the broker's default.
	DeliveryLimit int
}

// maxShortStr is the longest AMQP short string: queue and exchange names.
const maxShortStr = 255

// defaultTopology is the topology of a Producer without [WithTopology].
func defaultTopology() Topology {
	return Topology{Exchange: "ml.tasks", QueueType: QueueClassic}
}

func topoErr(field string, value any, reason string) error {
	return optErr("WithTopology", value, "Topology."+field+": "+reason)
}

// validate checks t; each error names the field and what to do.
func (t Topology) validate() error {
	if t.QueueType != QueueClassic && t.QueueType != QueueQuorum {
		return topoErr("QueueType", t.QueueType, `must be "classic" or "quorum"`)
	}
	if len(t.Exchange) > maxShortStr {
		return topoErr("Exchange", t.Exchange, "at most 255 bytes")
	}
	if t.NoDeclare {
		for _, f := range []struct {
			name  string
			set   bool
			value any
		}{
			{"QueuePrefix", t.QueuePrefix != "", t.QueuePrefix},
			{"SummarizationQueue", t.SummarizationQueue != "", t.SummarizationQueue},
			{"TranscriptionQueue", t.TranscriptionQueue != "", t.TranscriptionQueue},
			{"EmbeddingQueue", t.EmbeddingQueue != "", t.EmbeddingQueue},
			{"MaxLength", t.MaxLength != 0, t.MaxLength},
			{"Overflow", t.Overflow != "", t.Overflow},
			{"MessageTTL", t.MessageTTL != 0, t.MessageTTL},
			{"DeadLetterExchange", t.DeadLetterExchange != "", t.DeadLetterExchange},
			{"MaxPriority", t.MaxPriority != 0, t.MaxPriority},
			{"DeliveryLimit", t.DeliveryLimit != 0, t.DeliveryLimit},
		} {
			if f.set {
				return topoErr(f.name, f.value, "has no effect with NoDeclare (the Producer declares no queue); drop one of the two")
			}
		}
		return nil
	}
	for _, typ := range taskTypes {
		q := t.queueName(typ)
		field := queueField(typ)
		if q == t.QueuePrefix+typ.RoutingKey() || strings.HasPrefix(t.QueuePrefix, "amq.") {
			field = "QueuePrefix" // the name is the default one
		}
		switch {
		case len(q) > maxShortStr:
			return topoErr(field, q, "the queue name (with QueuePrefix) is at most 255 bytes")
		case strings.HasPrefix(q, "amq."):
			return topoErr(field, q, `names starting with "amq." are reserved by the broker; choose another name or prefix`)
		}
	}
	switch {
	case t.MaxLength < 0:
		return topoErr("MaxLength", t.MaxLength, "must be > 0 (or 0 for no limit)")
	case t.Overflow != "" && t.Overflow != OverflowDropHead && t.Overflow != OverflowRejectPublish && t.Overflow != OverflowRejectPublishDLX:
		return topoErr("Overflow", t.Overflow, `must be "drop-head", "reject-publish" or "reject-publish-dlx" (or "" for the broker's default)`)
	case t.Overflow == OverflowRejectPublishDLX && t.QueueType == QueueQuorum:
		return topoErr("Overflow", t.Overflow, `quorum queues support only "drop-head" and "reject-publish"`)
	case t.MessageTTL < 0:
		return topoErr("MessageTTL", t.MessageTTL, "must be > 0 (or 0 for no limit)")
	case t.MessageTTL%time.Millisecond != 0:
		return topoErr("MessageTTL", t.MessageTTL, "must be a whole number of milliseconds")
	case len(t.DeadLetterExchange) > maxShortStr:
		return topoErr("DeadLetterExchange", t.DeadLetterExchange, "at most 255 bytes")
	case t.MaxPriority != 0 && t.QueueType == QueueQuorum:
		return topoErr("MaxPriority", t.MaxPriority, "applies only to classic queues (RabbitMQ refuses x-max-priority on a quorum queue); drop it or use QueueClassic")
	case t.DeliveryLimit < 0:
		return topoErr("DeliveryLimit", t.DeliveryLimit, "must be > 0 (or 0 for the broker's default)")
	case t.DeliveryLimit != 0 && t.QueueType != QueueQuorum:
		return topoErr("DeliveryLimit", t.DeliveryLimit, "applies only to quorum queues (x-delivery-limit); set QueueType to QueueQuorum or drop it")
	}
	return nil
}

// queueField is the Topology field that names the queue of typ.
func queueField(typ TaskType) string {
	switch typ {
	case TaskSummarization:
		return "SummarizationQueue"
	case TaskTranscription:
		return "TranscriptionQueue"
	}
	return "EmbeddingQueue"
}

// queueName is the name of the queue declared for typ.
func (t Topology) queueName(typ TaskType) string {
	name := typ.RoutingKey()
	switch {
	case typ == TaskSummarization && t.SummarizationQueue != "":
		name = t.SummarizationQueue
	case typ == TaskTranscription && t.TranscriptionQueue != "":
		name = t.TranscriptionQueue
	case typ == TaskEmbedding && t.EmbeddingQueue != "":
		name = t.EmbeddingQueue
	}
	return t.QueuePrefix + name
}

// queueArgs are the arguments of every declared queue. Integers are sent as
// AMQP long-long (int64), which RabbitMQ accepts for each of them.
func (t Topology) queueArgs() transport.Table {
	args := transport.Table{"x-queue-type": string(t.QueueType)}
	if t.MaxLength > 0 {
		args["x-max-length"] = t.MaxLength
	}
	if t.Overflow != "" {
		args["x-overflow"] = string(t.Overflow)
	}
	if t.MessageTTL > 0 {
		args["x-message-ttl"] = t.MessageTTL.Milliseconds()
	}
	if t.DeadLetterExchange != "" {
		args["x-dead-letter-exchange"] = t.DeadLetterExchange
	}
	if t.MaxPriority > 0 {
		args["x-max-priority"] = int64(t.MaxPriority)
	}
	if t.DeliveryLimit > 0 {
		args["x-delivery-limit"] = int64(t.DeliveryLimit)
	}
	return args
}

var taskTypes = [...]TaskType{TaskSummarization, TaskTranscription, TaskEmbedding}

// declare declares the exchange and one queue per task type on a channel of
// its own, so a refused declaration never takes the publishing channel down.
// With NoDeclare it only checks that the exchange exists. An error the broker
// gives because the declaration conflicts with what exists is a
// [*topologyError].
func (p *Producer) declare(conn transport.Conn) error {
	t := p.cfg.topology
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if t.NoDeclare {
		pc, ok := ch.(transport.ExchangeChecker)
		if !ok {
			return nil // a transport that cannot check
		}
		if err := pc.ExchangeDeclarePassive(t.Exchange); err != nil {
			if transport.ReplyCode(err) == 404 {
				return &topologyError{
					msg: fmt.Sprintf("exchange %q does not exist; declare it or drop NoDeclare", t.Exchange),
					err: err,
				}
			}
			return fmt.Errorf("check exchange %q: %w", t.Exchange, err)
		}
		return nil
	}
	if err := ch.ExchangeDeclare(t.Exchange, "direct", true, nil); err != nil {
		return conflict("exchange", t.Exchange, err)
	}
	args := t.queueArgs()
	for _, typ := range taskTypes {
		q := t.queueName(typ)
		if err := ch.QueueDeclare(q, true, args); err != nil {
			return conflict("queue", q, err)
		}
		if err := ch.QueueBind(q, typ.RoutingKey(), t.Exchange); err != nil {
			return fmt.Errorf("bind queue %q: %w", q, err)
		}
	}
	return nil
}

// topologyError is a declaration the broker refuses because of what already
// exists there: redialling cannot help until someone changes the options or
// the broker. msg says what conflicts and what to do.
type topologyError struct {
	msg string
	err error
}

func (e *topologyError) Error() string { return "configuration error: " + e.msg }
func (e *topologyError) Unwrap() error { return e.err }

// inequivalent matches RabbitMQ's reply text for a declaration with other
// arguments than the existing entity's, for example "PRECONDITION_FAILED -
// inequivalent arg 'x-queue-type' for queue 'ml.summarization' in vhost '/':
// received 'quorum' but current is 'classic'".
var inequivalent = regexp.MustCompile(`inequivalent arg '([^']*)' for (?:queue|exchange) '(?:[^']*)' in vhost '(?:[^']*)': received (.*) but current is (.*)$`)

// argValue is a value as RabbitMQ's reply text shows it: "'quorum'", "the
// value '5' of type 'long'", or "none".
var argValue = regexp.MustCompile(`^(?:the value )?'(.*?)'(?: of type '[^']*')?$`)

// conflict turns a 406 PRECONDITION_FAILED on the declaration of kind
// ("queue" or "exchange") name into a *topologyError that names the argument
// in conflict when the broker's reply text does; other errors are only
// annotated.
func conflict(kind, name string, err error) error {
	if transport.ReplyCode(err) != 406 {
		return fmt.Errorf("%s %q: %w", kind, name, err)
	}
	text := replyText(err)
	fix := "make WithTopology match it, or delete the " + kind + " so that the Producer declares it again"
	if m := inequivalent.FindStringSubmatch(text); m != nil {
		return &topologyError{
			msg: fmt.Sprintf("%s %q exists with %s %s but the Producer declares %s; %s (broker: %s)",
				kind, name, m[1], shownArg(m[3]), shownArg(m[2]), fix, text),
			err: err,
		}
	}
	return &topologyError{msg: fmt.Sprintf("%s %q refused by the broker: %s; %s", kind, name, text, fix), err: err}
}

func shownArg(v string) string {
	if v == "none" {
		return "none"
	}
	if m := argValue.FindStringSubmatch(v); m != nil {
		return fmt.Sprintf("%q", m[1])
	}
	return v
}

// replyText is the broker's reply text in err ("PRECONDITION_FAILED - ..."),
// or err's text when it has none.
func replyText(err error) string {
	s := err.Error()
	if i := strings.Index(s, "PRECONDITION_FAILED"); i >= 0 {
		return strings.TrimSuffix(s[i:], `"`)
	}
	return s
}

// configError returns the configuration error in force, or "".
func (p *Producer) configError() string {
	p.stmu.Lock()
	defer p.stmu.Unlock()
	return p.cfgErr
}

// noteConfigError reports whether err is a configuration error; if so it
// puts it in Status.LastError and logs it, once for as long as it stays the
// same.
func (p *Producer) noteConfigError(raw string, err error) bool {
	var te *topologyError
	if !errors.As(err, &te) {
		return false
	}
	msg := redactErr(raw, err)
	p.stmu.Lock()
	p.lastErr = msg
	first := p.cfgErr != te.Error()
	p.cfgErr = te.Error()
	p.stmu.Unlock()
	if first {
		p.log.Error("mlproducer: configuration error; retrying at the reconnect backoff's cap until it is fixed",
			slog.String("url", redactURL(raw)), slog.String("error", msg),
			slog.Duration("retryEvery", p.cfg.reconnectMax))
	} else {
		p.log.Debug("mlproducer: configuration error persists", slog.String("url", redactURL(raw)))
	}
	return true
}

// clearConfigError forgets the configuration error once a connection got
// its topology declared.
func (p *Producer) clearConfigError() {
	p.stmu.Lock()
	had := p.cfgErr != ""
	p.cfgErr = ""
	p.stmu.Unlock()
	if had {
		p.log.Info("mlproducer: configuration error resolved; topology declared")
	}
}
