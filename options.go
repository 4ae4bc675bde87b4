package mlproducer

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/mlproducer/mlproducer/transport"
)

// DefaultURL is the broker [New] connects to when no URL is given.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// Option configures a [Producer]. Options are applied in order by [New], which
// then validates the result as a whole.
type Option func(*config)

// DeadLetter is a message the Producer accepted but could not get confirmed:
// its retries ran out ([WithMaxRetries]), or [Producer.Close] ended before it
// was confirmed. Without a spool, Close hands every message still unconfirmed
// to the hook; with [WithSpool] those stay in the spool instead, and only the
// messages whose retries ran out are dead-lettered.
type DeadLetter struct {
	// Message is the message as accepted: its type, ID and body (the
	// hook may keep it; the Producer no longer writes to it).
	Message Message
	// Attempts is how many times the message was written to a connection:
	// the attempt number of its last send (what [AttemptHeader] carries
	// with [WithEnvelope]([EnvelopeAttempt])), counted across
	// restarts with [WithSpool]. A message whose retries ran out was sent
	// maxRetries+1 times, plus any send lost with its connection (those
	// are retried without spending a retry). At Close it is 0 for a
	// message that never left the retry queue, and 1 for one sent once and
	// never confirmed.
	Attempts int
	// Err says why the message was given up on. When its retries ran out:
	// the last attempt's error (a nack, a return as unroutable, or no
	// confirm within the confirm timeout). At Close: an error that
	// [errors.Is] [ErrClosed] and also wraps why: ctx's error
	// ([context.DeadlineExceeded] or [context.Canceled]), or, when ctx had
	// not ended, that there was no connection to take the message; and, if
	// an attempt failed, that attempt's error.
	Err error
}

type config struct {
	urls              []string
	urlsInOrder       bool // WithURLsInOrder
	heartbeat         time.Duration
	connectionTimeout time.Duration
	confirmTimeout    time.Duration
	maxRetries        int
	retryCapCount     int
	retryCapBytes     int
	retryInitial      time.Duration
	retryMax          time.Duration
	reconnectInitial  time.Duration
	reconnectMax      time.Duration
	breakerThreshold  int
	breakerCooldown   time.Duration
	healthInterval    time.Duration
	maxInFlight       int
	topology          Topology
	logger            *slog.Logger
	tlsConfig         *tls.Config
	tlsSet            bool // WithTLSConfig was given, even with nil
	plaintextAllowed  bool // WithPlaintextAllowed: amqp:// beside WithTLSConfig
	dialer            transport.Dialer
	deadLetter        func(DeadLetter)
	registerer        prometheus.Registerer
	appID             string
	envelope          EnvelopeField // WithEnvelope: properties beyond the default envelope
	connectionName    string
	limits            taskLimits
	spoolDir          string
	spoolCapCount     int
	spoolCapBytes     int64
	tracerProvider    trace.TracerProvider          // nil: otel's global one
	propagator        propagation.TextMapPropagator // nil: otel's global one
}

func defaultConfig() config {
	return config{
		urls:              []string{DefaultURL},
		heartbeat:         10 * time.Second,
		connectionTimeout: 10 * time.Second,
		confirmTimeout:    5 * time.Second,
		maxRetries:        3,
		retryCapCount:     10000,
		retryCapBytes:     64 << 20,
		retryInitial:      200 * time.Millisecond,
		retryMax:          10 * time.Second,
		reconnectInitial:  100 * time.Millisecond,
		reconnectMax:      10 * time.Second,
		breakerThreshold:  10,
		breakerCooldown:   30 * time.Second,
		healthInterval:    30 * time.Second,
		maxInFlight:       1024,
		topology:          defaultTopology(),
		appID:             "mlproducer",
		connectionName:    "mlproducer",
		limits:            defaultTaskLimits(),
		spoolCapCount:     1_000_000,
		spoolCapBytes:     1 << 30,
	}
}

func optErr(name string, value any, reason string) error {
	return &OptionError{Name: name, Value: fmt.Sprint(value), Reason: reason}
}

// validate checks the whole configuration; each error names the option.
func (c *config) validate() error {
	if len(c.urls) == 0 {
		return optErr("WithURLs", "", "at least one amqp:// or amqps:// URL is required")
	}
	for _, u := range c.urls {
		if err := checkURL(u); err != nil {
			return optErr("WithURLs", redactURL(u), err.Error())
		}
		if c.tlsSet && !c.plaintextAllowed && strings.HasPrefix(strings.ToLower(u), "amqp://") {
			return optErr("WithURLs", redactURL(u), "an amqp:// URL connects in plain text, "+
				"so with WithTLSConfig it would send the password in clear; use amqps:// "+
				"(or WithPlaintextAllowed to mean plain text)")
		}
	}
	switch {
	case c.heartbeat < 0:
		return optErr("WithHeartbeat", c.heartbeat, "must be >= 0 (0 disables heartbeats)")
	case c.connectionTimeout <= 0:
		return optErr("WithConnectionTimeout", c.connectionTimeout, "must be > 0")
	case c.confirmTimeout <= 0:
		return optErr("WithConfirmTimeout", c.confirmTimeout, "must be > 0")
	case c.maxRetries < 0:
		return optErr("WithMaxRetries", c.maxRetries, "must be >= 0")
	// (0, 0) is valid: no buffer.
	case c.retryCapCount <= 0 && (c.retryCapCount != 0 || c.retryCapBytes != 0):
		return optErr("WithRetryQueueCapacity", c.retryCapCount, "message count must be > 0 (or both 0: no buffer)")
	case c.retryCapBytes <= 0 && (c.retryCapCount != 0 || c.retryCapBytes != 0):
		return optErr("WithRetryQueueCapacity", c.retryCapBytes, "byte size must be > 0 (or both 0: no buffer)")
	case c.spoolDir != "" && c.spoolCapCount <= 0:
		return optErr("WithSpoolCapacity", c.spoolCapCount, "message count must be > 0")
	case c.spoolDir != "" && c.spoolCapBytes <= 0:
		return optErr("WithSpoolCapacity", c.spoolCapBytes, "byte size must be > 0")
	case c.retryInitial <= 0 || c.retryMax < c.retryInitial:
		return optErr("WithRetryBackoff", fmt.Sprintf("%v..%v", c.retryInitial, c.retryMax), "need 0 < initial <= max")
	case c.reconnectInitial <= 0 || c.reconnectMax < c.reconnectInitial:
		return optErr("WithReconnectBackoff", fmt.Sprintf("%v..%v", c.reconnectInitial, c.reconnectMax), "need 0 < initial <= max")
	case c.breakerThreshold <= 0 || uint64(c.breakerThreshold) > math.MaxUint32:
		return optErr("WithCircuitBreaker", c.breakerThreshold, "threshold must be from 1 to 4294967295")
	case c.breakerCooldown <= 0:
		return optErr("WithCircuitBreaker", c.breakerCooldown, "cooldown must be > 0")
	case c.healthInterval < 0:
		return optErr("WithHealthCheckInterval", c.healthInterval, "must be >= 0 (0 disables the health check)")
	case c.maxInFlight <= 0:
		return optErr("WithMaxInFlight", c.maxInFlight, "must be > 0")
	case c.logger == nil:
		return optErr("WithLogger", "nil", "pass a *slog.Logger")
	case c.envelope&^EnvelopeAll != 0:
		return optErr("WithEnvelope", uint8(c.envelope), "unknown field; use EnvelopeTimestamp, EnvelopeType, EnvelopeAppID, EnvelopeAttempt or EnvelopeAll")
	}
	if err := c.topology.validate(); err != nil {
		return err
	}
	return c.limits.validate()
}

// urlEncodeHint ends the reason of every refused URL that may hold a
// password: the usual cause is a password with a character that has a
// meaning in a URL.
const urlEncodeHint = "percent-encode the user name and password " +
	"(for example '#' as %23, '/' as %2F, '?' as %3F, '@' as %40, ':' in the user name as %3A)"

// checkURL says why raw cannot be used as a broker URL, or returns nil. A URL
// that a reader and url.Parse would split differently is refused: one with
// more than one '@', or an '@' after the host (in the path, query or
// fragment), or a fragment at all. Each of these is what an unencoded '@',
// '#', '/' or '?' in a password gives, and url.Parse would then take part of
// the password for the host, the vhost or the fragment: the Producer would
// dial the wrong host and show the password in its status and logs.
func checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		if strings.Contains(raw, "@") {
			return errors.New("not a URL; " + urlEncodeHint)
		}
		return errors.New("not a URL")
	}
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		return errors.New("scheme must be amqp or amqps")
	}
	if u.Host == "" {
		return errors.New("host is missing")
	}
	// u.Host is not empty, so raw starts with the scheme, "://" and the
	// authority, which ends at the first '/', '?' or '#'.
	_, rest, _ := strings.Cut(raw, "://")
	authority := rest
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority = rest[:i]
	}
	switch ats := strings.Count(authority, "@"); {
	case ats > 1:
		return errors.New("more than one '@' before the host; " + urlEncodeHint)
	case strings.Count(rest, "@") > ats:
		return errors.New("an '@' after the host; " + urlEncodeHint)
	case strings.Contains(rest, "#"):
		return errors.New("a '#' (an AMQP URL has no fragment); " + urlEncodeHint)
	case strings.HasSuffix(u.Host, ":"):
		return errors.New("the port is empty; " + urlEncodeHint)
	}
	return nil
}

// redactURL returns raw fit to show in an error or a log line.
//
// A valid broker URL ([checkURL]) is shown rebuilt from its parts: scheme,
// user name, "xxxxx" for the password, host and port, and the vhost path;
// never the query, nor anything of the password, encoded or not.
//
// A value that is not one may hold a password that url.Parse does not see as
// one ("guest:pw@host", "amqp:/guest:pw@host", "amqp://u:p#w@host"), so
// everything up to its last '@' is hidden. One without an '@' holds no user
// information: it is shown up to any '#', or as "<unparsable URL>" when
// url.Parse refuses it.
func redactURL(raw string) string {
	if checkURL(raw) == nil {
		u, _ := url.Parse(raw) // checkURL parsed it
		return shownURL(u)
	}
	if at := strings.LastIndexByte(raw, '@'); at >= 0 {
		return "xxxxx" + raw[at:]
	}
	if _, err := url.Parse(raw); err != nil {
		return "<unparsable URL>"
	}
	if i := strings.IndexByte(raw, '#'); i >= 0 {
		return raw[:i] + "#xxxxx"
	}
	return raw
}

// shownURL builds the form of a valid broker URL that may be shown: scheme,
// user name, host[:port] and path, with the password replaced by "xxxxx".
func shownURL(u *url.URL) string {
	var b strings.Builder
	b.WriteString(u.Scheme)
	b.WriteString("://")
	if u.User != nil {
		name := u.User.Username()
		if _, ok := u.User.Password(); ok {
			b.WriteString(url.UserPassword(name, "xxxxx").String())
		} else {
			b.WriteString(url.User(name).String())
		}
		b.WriteByte('@')
	}
	b.WriteString(u.Host)
	b.WriteString(u.EscapedPath())
	return b.String()
}

// WithURLs sets the brokers to connect to, with failover: when one cannot be
// reached the next is tried. List every node of a cluster here. Each
// Producer tries them in an order of its own, so that the pods of a service
// spread over the nodes instead of all connecting to the first: it starts on
// a random one (the Producers of one process take turns from there) and goes
// on in a shuffled order. [WithURLsInOrder] keeps the order given instead.
// Default [DefaultURL]. Passwords in URLs are never logged or reported.
//
// A user name or password with a character that has a meaning in a URL must
// be percent-encoded ("p#ss/w?rd@1" as "p%23ss%2Fw%3Frd%401"): [New] refuses a
// URL with more than one '@', an '@' after the host, or a '#', which is what
// such a password gives unencoded, rather than dial the wrong host.
func WithURLs(urls ...string) Option {
	return func(c *config) { c.urls = append([]string(nil), urls...) }
}

// WithURLsInOrder makes the Producer try the URLs of [WithURLs] in the order
// given, first to last, and always the first again after a connection is
// lost, for a primary broker and a standby (env RABBITMQ_URLS_IN_ORDER=true).
// By default each Producer shuffles them to spread the load over a cluster.
func WithURLsInOrder() Option { return func(c *config) { c.urlsInOrder = true } }

// WithHeartbeat sets the AMQP heartbeat interval (env RABBITMQ_HEARTBEAT, in
// seconds). Default 10 s; 0 disables heartbeats, and a dead TCP peer then
// takes minutes to notice.
func WithHeartbeat(d time.Duration) Option { return func(c *config) { c.heartbeat = d } }

// WithConnectionTimeout bounds each connection attempt, TCP, TLS and AMQP
// handshake included (env RABBITMQ_CONNECTION_TIMEOUT, in ms). Default 10 s.
func WithConnectionTimeout(d time.Duration) Option {
	return func(c *config) { c.connectionTimeout = d }
}

// WithConfirmTimeout sets how long a sent message waits for its publisher
// confirm before the attempt counts as failed and the message goes to the
// retry queue. It also bounds how long a publish call waits. Default 5 s.
func WithConfirmTimeout(d time.Duration) Option { return func(c *config) { c.confirmTimeout = d } }

// WithMaxRetries sets how many times a message is sent again after a failed
// attempt (nack, return, confirm timeout) before it is dead-lettered (env
// ML_MAX_MESSAGE_RETRIES). Default 3, so at most 4 attempts. Time spent
// disconnected costs no attempt.
func WithMaxRetries(n int) Option { return func(c *config) { c.maxRetries = n } }

// WithRetryQueueCapacity bounds the retry queue by message count and by the
// total size of the bodies. It is the buffer that absorbs outages: a new
// publish waits there while there is no connection, the broker blocks
// publishers or the circuit breaker is open, and fails with
// [ErrRetryQueueFull] only when the queue is full; messages already accepted
// always get back in. Since a message sent at once can fail and come back, a
// new publish also fails with [ErrRetryQueueFull] when the Producer already
// holds messages + [WithMaxInFlight] unconfirmed messages, or bytes of their
// bodies, wherever they are: the queue never holds more than that. Default
// 10000 messages and 64 MiB. A body larger than bytes could never be held:
// it is refused at once with an [*InvalidTaskError] that wraps
// [ErrTooLarge], as a body over the body limit is.
//
// (0, 0) turns buffering off: a publish goes to the broker at once or is
// refused, with [ErrRetryQueueFull] while there is no connection to take it
// (or it is blocked, or its in-flight window is full) and with
// [ErrCircuitOpen] while the breaker is open. Accepted messages whose attempt
// fails are still retried. Other values must both be > 0.
func WithRetryQueueCapacity(messages, bytes int) Option {
	return func(c *config) { c.retryCapCount, c.retryCapBytes = messages, bytes }
}

// WithSpool makes the Producer crash-safe: every message it accepts is written
// to an embedded store under dir and synced to disk before the publish returns
// nil, and leaves it once confirmed or handed to the dead-letter hook. A
// [New] on the same dir after a crash, a kill or a [Producer.Close] that ran
// out of time sends what was left there again, with the same message id,
// attempt count and creation time. Concurrent publishes share their syncs.
//
// One Producer at a time may use a dir: [New] fails at once when another
// Producer, in this process or another, holds it. The dir is created if
// needed. With a spool, [WithSpoolCapacity] bounds the buffer instead of
// [WithRetryQueueCapacity], and the bodies of queued messages stay on disk
// until they are sent. The sync before a publish returns waits for the disk,
// not for the publish's ctx: a message must not be reported "not taken" and
// then be found in the spool. Default: no spool (memory only).
func WithSpool(dir string) Option { return func(c *config) { c.spoolDir = dir } }

// WithSpoolCapacity bounds the spool of [WithSpool] by message count and by
// the bytes of their bodies. A publish that would pass either fails with
// [ErrRetryQueueFull]; a body larger than bytes, which could never be held,
// with an [*InvalidTaskError] that wraps [ErrTooLarge]. Default 1,000,000
// messages and 1 GiB.
func WithSpoolCapacity(messages int, bytes int64) Option {
	return func(c *config) { c.spoolCapCount, c.spoolCapBytes = messages, bytes }
}

// WithRetryBackoff sets the exponential backoff between the attempts of one
// message: it starts at initial, doubles with ±50% jitter, and is capped at
// max. Default 200 ms to 10 s.
func WithRetryBackoff(initial, max time.Duration) Option {
	return func(c *config) { c.retryInitial, c.retryMax = initial, max }
}

// WithReconnectBackoff sets the exponential backoff with full jitter between
// connection attempts; no wait is longer than max, so a broker that is back
// is found within max. Default 100 ms to 10 s.
func WithReconnectBackoff(initial, max time.Duration) Option {
	return func(c *config) { c.reconnectInitial, c.reconnectMax = initial, max }
}

// WithCircuitBreaker sets the breaker's threshold of consecutive failures
// (env ML_CIRCUIT_BREAKER_THRESHOLD) and how long it stays open (env
// ML_CIRCUIT_BREAKER_COOLDOWN, in ms). Default 10 failures and 30 s. The
// threshold is from 1 to 4294967295; [New] refuses any other.
//
// While open the breaker holds sends back (the retry queue waits, then one
// probe goes) and shows in [Producer.Status] and the metrics; it refuses a
// publish ([ErrCircuitOpen]) only when buffering is off. A breaker opened by
// failed dials closes as soon as a dial gets through again, so sending
// resumes within the reconnect backoff rather than after the cooldown; one
// opened by nacks, returns, confirm timeouts or connections lost with
// messages in flight waits out the cooldown.
func WithCircuitBreaker(threshold int, cooldown time.Duration) Option {
	return func(c *config) { c.breakerThreshold, c.breakerCooldown = threshold, cooldown }
}

// WithHealthCheckInterval sets how often the connection is checked with a
// round trip to the broker. Default 30 s; 0 disables the check.
func WithHealthCheckInterval(d time.Duration) Option {
	return func(c *config) { c.healthInterval = d }
}

// WithMaxInFlight bounds the messages handed to a connection and not yet
// confirmed; past it, Publish waits in the retry queue and PublishAsync waits
// for a slot. Default 1024: measured on one RabbitMQ queue (BENCHMARKS.md,
// "Choosing the window"), one PublishAsync loop gets within 11 % of the best
// window at 1 KiB (4096) and at 16 KiB (1024), with a quarter of 4096's
// latency and bytes in flight; Publish callers each hold one slot, so a
// Producer serves up to 1024 of them at once before any waits behind the
// window. Raise it for many more concurrent callers or small messages on a
// high-latency link; the heap holds up to about window × message size.
func WithMaxInFlight(n int) Option { return func(c *config) { c.maxInFlight = n } }

// WithTopology changes what the Producer declares on each connection (queue
// names, prefix and arguments, the exchange), or turns declaration off. See
// [Topology] for each field. Default: exchange "ml.tasks", classic queues
// named after the routing keys, no arguments but x-queue-type. An empty
// Exchange or QueueType keeps its default.
//
// A declaration the broker refuses because what exists differs (406
// PRECONDITION_FAILED: a queue declared by its consumer with other
// arguments), or, with NoDeclare, a missing exchange (404), is a
// configuration error: redialling cannot fix it. The Producer logs it once
// (at Error level, with the queue and the argument in conflict), shows it in
// [Status].LastError, answers [Producer.Ready] with "configuration error:
// ...", and tries again at the reconnect backoff's cap
// ([WithReconnectBackoff]), so that fixing the broker (deleting the queue,
// declaring the exchange) or the options recovers by itself. Publishes meanwhile
// are taken as in any outage: kept in the retry queue ([Queued]) while it has
// room, and sent once the topology is declared.
func WithTopology(t Topology) Option {
	return func(c *config) {
		if t.Exchange == "" {
			t.Exchange = "ml.tasks"
		}
		if t.QueueType == "" {
			t.QueueType = QueueClassic
		}
		c.topology = t
	}
}

// WithLogger sets the logger. Default: logs are discarded.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithTracerProvider sets where the Producer's spans go: one PRODUCER span
// per publish (see the README's "Tracing"). Default: OpenTelemetry's global
// provider ([otel.GetTracerProvider]), looked up at each publish, so one set
// after [New] is used too; until a service sets one it is a no-op and
// publishing costs nothing more. nil means that default.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tracerProvider = tp }
}

// WithPropagator sets how a publish's trace context is written into the
// message's AMQP headers (W3C traceparent and tracestate with
// [propagation.TraceContext]). Default: OpenTelemetry's global propagator
// ([otel.GetTextMapPropagator]), looked up at each publish. nil means that
// default.
func WithPropagator(prop propagation.TextMapPropagator) Option {
	return func(c *config) { c.propagator = prop }
}

// WithTLSConfig sets the TLS configuration for amqps URLs. Default: the
// system roots, with the server certificate verified (nil means that
// default too). TLS is spoken on amqps URLs only, so once WithTLSConfig is
// given [New] refuses an amqp URL, also one after an amqps URL in a failover
// list: it would send the user name and password in clear. Pass
// [WithPlaintextAllowed] to mean plain text on those URLs.
func WithTLSConfig(t *tls.Config) Option {
	return func(c *config) { c.tlsConfig, c.tlsSet = t, true }
}

// WithPlaintextAllowed lets amqp:// URLs stand beside [WithTLSConfig]: they
// connect in plain text, credentials included, while the amqps:// URLs of the
// list use TLS. Without it, [New] refuses that mix. Without WithTLSConfig,
// amqp:// URLs are allowed anyway and this option changes nothing.
func WithPlaintextAllowed() Option { return func(c *config) { c.plaintextAllowed = true } }

// WithDialer replaces the transport, for tests: pass an
// [github.com/mlproducer/mlproducer/mlproducertest.Broker] to run a real
// Producer against an in-memory fake broker. Default: amqp091-go.
func WithDialer(d transport.Dialer) Option { return func(c *config) { c.dialer = d } }

// WithDeadLetter sets the function that receives each message the Producer
// gave up on (see [DeadLetter]). The Producer counts and logs each such message
// at once, then calls f on a goroutine of its own, one message at a time in
// the order they were given up on, so a slow or panicking hook holds up
// neither confirms, retries nor publishes. A panic in f is recovered, logged
// (with the stack) and counted (ml_producer_dead_letter_hook_panics_total);
// the message still counts as dead-lettered.
//
// Until f returns, the message is still the Producer's: it counts against
// the capacity of [WithRetryQueueCapacity] (or [WithSpool], whose record is
// deleted only after f returned, so a crash during f sends it again after
// the restart). A hook that stays blocked therefore makes publishes fail
// with [ErrRetryQueueFull] once that capacity is used up, and never
// otherwise.
//
// f may call [Producer.Publish] (and the other publish methods) and
// [Producer.Status]: a publish from f works as from any goroutine (once Close
// began it returns [ErrClosed]), and only delays the next dead letters. f
// must not call [Producer.Close]: Close waits for the hook, so a Close
// called from f returns only when its ctx has ended, and never with a ctx
// that does not end.
//
// [Producer.Close] waits for the hook until its ctx ends, and then at most
// one second more, in which the messages still unconfirmed at that moment
// are handed to f (a quick hook gets them all). After that, Close returns:
// the messages f has not been called with are logged at level Error with
// their ID and are left in the spool with [WithSpool], dropped without one;
// a call of f still running is the one thing Close does not wait for: it
// finishes on its own goroutine, which then exits and calls f no more.
// Default: none (dead letters are still logged and counted).
func WithDeadLetter(f func(DeadLetter)) Option { return func(c *config) { c.deadLetter = f } }

// WithRegisterer registers the Producer's Prometheus metrics on r when [New]
// runs, and unregisters them when [Producer.Close] finishes. Each metric
// carries the constant label producer="<connection name>" ([WithConnectionName]),
// so Producers registered on one registerer need distinct names. Default:
// nothing is registered ([Producer.MetricsHandler] still serves them).
func WithRegisterer(r prometheus.Registerer) Option { return func(c *config) { c.registerer = r } }

// WithMaxContentBytes bounds the content of summarization and embedding tasks
// and so the body size (n + 64 KiB). Default 1 MiB; at most 512 MiB - 64 KiB,
// RabbitMQ's own ceiling.
func WithMaxContentBytes(n int) Option {
	return func(c *config) {
		c.limits.maxContent = n
		c.limits.maxBody = n + 64<<10
	}
}

// WithMediaURLSchemes sets the schemes a transcription's media URL may use.
// Default https, http, s3, gs.
func WithMediaURLSchemes(schemes ...string) Option {
	return func(c *config) { c.limits.mediaSchemes = append([]string(nil), schemes...) }
}

// WithPrivateMediaHosts lets a transcription's media URL name an internal
// host. By default the Producer and [DecodeTask] refuse a media URL whose
// host is "localhost" (or a subdomain of it), or an IP address that is
// loopback, link-local, private (RFC 1918, 100.64.0.0/10, RFC 4193),
// unspecified (0.0.0.0/8, ::) or a cloud metadata address (169.254.169.254,
// fd00:ec2::254), in any form net/netip parses (IPv4-mapped IPv6 and zones
// included), or a number some resolvers read as an address (127.1,
// 2130706433): workers fetch media URLs, so such a task would make them
// reach inside the network. Other host names are not resolved, so a name
// whose DNS points inside passes; a worker that must be safe from that
// checks the address it connects to. Use this option where the media store
// is internal (a MinIO on the LAN, tests), and give it to DecodeTask too.
func WithPrivateMediaHosts() Option { return func(c *config) { c.limits.privateHosts = true } }

// WithConnectionName sets the name the connection shows in the broker's
// management UI. Default "mlproducer".
func WithConnectionName(name string) Option { return func(c *config) { c.connectionName = name } }

// OptionsFromEnv reads the environment variables below and returns the
// matching options; it is [OptionsFromLookup] of [os.LookupEnv]. The first
// six are those of the service mlproducer replaces. Durations are whole
// milliseconds, except RABBITMQ_HEARTBEAT (whole seconds).
//
//	RABBITMQ_URL                  broker URL; a comma-separated list for failover (WithURLs)
//	RABBITMQ_URLS_IN_ORDER        true to try those URLs in the order given, not shuffled (WithURLsInOrder)
//	RABBITMQ_HEARTBEAT            heartbeat, seconds, 0 to 3600; 0 disables (WithHeartbeat)
//	RABBITMQ_CONNECTION_TIMEOUT   connection timeout, ms (WithConnectionTimeout)
//	ML_MAX_MESSAGE_RETRIES        retries per message, >= 0 (WithMaxRetries)
//	ML_CIRCUIT_BREAKER_THRESHOLD  consecutive failures that open the breaker, 1 to 4294967295 (WithCircuitBreaker)
//	ML_CIRCUIT_BREAKER_COOLDOWN   how long the breaker stays open, ms (WithCircuitBreaker)
//	ML_CONFIRM_TIMEOUT            wait for a publisher confirm, ms (WithConfirmTimeout)
//	ML_RETRY_QUEUE_MESSAGES       retry queue capacity, messages; 0 with ML_RETRY_QUEUE_BYTES=0 turns buffering off (WithRetryQueueCapacity)
//	ML_RETRY_QUEUE_BYTES          retry queue capacity, bytes of bodies; 0 as above (WithRetryQueueCapacity)
//	ML_RETRY_BACKOFF_INITIAL      first wait between attempts of a message, ms (WithRetryBackoff)
//	ML_RETRY_BACKOFF_MAX          cap of that wait, ms (WithRetryBackoff)
//	ML_RECONNECT_BACKOFF_INITIAL  first wait between connection attempts, ms (WithReconnectBackoff)
//	ML_RECONNECT_BACKOFF_MAX      cap of that wait, ms (WithReconnectBackoff)
//	ML_HEALTH_CHECK_INTERVAL      connection check interval, ms; 0 disables (WithHealthCheckInterval)
//	ML_MAX_IN_FLIGHT              messages sent and not yet confirmed, >= 1 (WithMaxInFlight)
//	ML_MAX_CONTENT_BYTES          content limit per task, bytes, 1 to 536805376 (WithMaxContentBytes)
//	ML_MEDIA_URL_SCHEMES          comma-separated schemes a media URL may use (WithMediaURLSchemes)
//	ML_CONNECTION_NAME            connection name shown by the broker (WithConnectionName)
//	ML_ENVELOPE                   properties beyond the default envelope: comma-separated timestamp, type, app_id, attempt, or all, or none (WithEnvelope)
//	ML_SPOOL_DIR                  directory of the crash-safe spool (WithSpool)
//	ML_SPOOL_MESSAGES             spool capacity, messages, >= 1 (WithSpoolCapacity)
//	ML_SPOOL_BYTES                spool capacity, bytes of bodies, >= 1 (WithSpoolCapacity)
//	ML_TOPOLOGY_EXCHANGE          exchange tasks are published to (WithTopology)
//	ML_TOPOLOGY_QUEUE_TYPE        "classic" or "quorum" (WithTopology)
//	ML_TOPOLOGY_NO_DECLARE        true to declare nothing, as strconv.ParseBool reads it (WithTopology)
//	ML_TOPOLOGY_QUEUE_PREFIX      put before every queue name, e.g. "staging." (Topology.QueuePrefix)
//	ML_TOPOLOGY_SUMMARIZATION_QUEUE  queue of summarization tasks (Topology.SummarizationQueue)
//	ML_TOPOLOGY_TRANSCRIPTION_QUEUE  queue of transcription tasks (Topology.TranscriptionQueue)
//	ML_TOPOLOGY_EMBEDDING_QUEUE   queue of embedding tasks (Topology.EmbeddingQueue)
//	ML_TOPOLOGY_MAX_LENGTH        x-max-length, messages, >= 1 (Topology.MaxLength)
//	ML_TOPOLOGY_OVERFLOW          x-overflow: drop-head, reject-publish or reject-publish-dlx (Topology.Overflow)
//	ML_TOPOLOGY_MESSAGE_TTL       x-message-ttl, ms, >= 1 (Topology.MessageTTL)
//	ML_TOPOLOGY_DEAD_LETTER_EXCHANGE  x-dead-letter-exchange (Topology.DeadLetterExchange)
//	ML_TOPOLOGY_MAX_PRIORITY      x-max-priority, 1 to 255, classic queues (Topology.MaxPriority)
//	ML_TOPOLOGY_DELIVERY_LIMIT    x-delivery-limit, >= 1, quorum queues (Topology.DeliveryLimit)
//
// A variable that is unset or empty (after trimming spaces) leaves the value
// of the options before it, by default the default. One half of a pair
// (capacity messages and bytes, backoff initial and max, breaker threshold and
// cooldown) set alone keeps the other half; so do the Topology fields. A value
// that cannot be used is an [*OptionError] naming the variable and the value;
// nothing falls back silently. Put the returned options first in [New] so that
// options in code override them.
func OptionsFromEnv() ([]Option, error) { return optionsFromLookup(os.LookupEnv) }

// OptionsFromLookup is [OptionsFromEnv] with the variables read from lookup,
// which returns a variable's value and whether it is set, as [os.LookupEnv]
// does: a map, a secret store, a parsed config file, or a test's own
// environment (so tests that set variables can run in parallel).
func OptionsFromLookup(lookup func(name string) (value string, ok bool)) ([]Option, error) {
	if lookup == nil {
		return nil, optErr("OptionsFromLookup", "nil", "pass a lookup function, for example os.LookupEnv")
	}
	return optionsFromLookup(lookup)
}

// maxMillis is the largest whole number of milliseconds a time.Duration holds.
const maxMillis = math.MaxInt64 / int64(time.Millisecond)

// envReader reads variables from lookup and keeps the first error: once it
// has one, every read reports the variable unset.
type envReader struct {
	lookup func(string) (string, bool)
	err    error
}

// given returns the value of name as given, trimmed, for an error about it.
func (r *envReader) given(name string) string {
	v, _ := r.lookup(name)
	return strings.TrimSpace(v)
}

func (r *envReader) fail(name, value, reason string) {
	if r.err == nil {
		r.err = optErr(name, value, reason)
	}
}

// str returns the trimmed value of name; ok is false when it is unset, empty
// or an error was already found.
func (r *envReader) str(name string) (string, bool) {
	if r.err != nil {
		return "", false
	}
	v, ok := r.lookup(name)
	v = strings.TrimSpace(v)
	return v, ok && v != ""
}

// bool reads true or false (as strconv.ParseBool: 1, t, TRUE, 0, f…).
func (r *envReader) bool(name string) (bool, bool) {
	v, ok := r.str(name)
	if !ok {
		return false, false
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.fail(name, v, "want true or false (or 1 or 0)")
		return false, false
	}
	return b, true
}

// int reads a whole number from min to max.
func (r *envReader) int(name string, min, max int64) (int64, bool) {
	v, ok := r.str(name)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < min || n > max {
		r.fail(name, v, fmt.Sprintf("want a whole number from %d to %d", min, max))
		return 0, false
	}
	return n, true
}

// millis reads a duration in whole milliseconds, at least min.
func (r *envReader) millis(name string, min int64) (time.Duration, bool) {
	v, ok := r.str(name)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < min || n > maxMillis {
		r.fail(name, v, fmt.Sprintf("want whole milliseconds from %d to %d (for example 2500 for 2.5 s)", min, maxMillis))
		return 0, false
	}
	return time.Duration(n) * time.Millisecond, true
}

// list reads a comma-separated list without empty entries.
func (r *envReader) list(name string) ([]string, bool) {
	v, ok := r.str(name)
	if !ok {
		return nil, false
	}
	parts := strings.Split(v, ",")
	for i, p := range parts {
		parts[i] = strings.TrimSpace(p)
		if parts[i] == "" {
			r.fail(name, v, "want a comma-separated list without empty entries")
			return nil, false
		}
	}
	return parts, true
}

// backoff reads a pair of durations (initial, max), each at least 1 ms, and
// refuses an initial over the max: the one of the two given, or the default.
func (r *envReader) backoff(initName, maxName string, defInit, defMax time.Duration) (initial, max time.Duration, hasI, hasM bool) {
	initial, hasI = r.millis(initName, 1)
	max, hasM = r.millis(maxName, 1)
	switch {
	case r.err != nil:
	case hasI && hasM && initial > max:
		r.fail(initName, r.given(initName),
			fmt.Sprintf("over %s=%d: want initial <= max", maxName, max.Milliseconds()))
	case hasI && !hasM && initial > defMax:
		r.fail(initName, r.given(initName),
			fmt.Sprintf("over the default %s of %d ms: set that too", maxName, defMax.Milliseconds()))
	case hasM && !hasI && max < defInit:
		r.fail(maxName, r.given(maxName),
			fmt.Sprintf("under the default %s of %d ms: set that too", initName, defInit.Milliseconds()))
	}
	return initial, max, hasI, hasM
}

func optionsFromLookup(lookup func(string) (string, bool)) ([]Option, error) {
	r := &envReader{lookup: lookup}
	def := defaultConfig()
	var opts []Option
	add := func(o Option) { opts = append(opts, o) }

	if v, ok := r.str("RABBITMQ_URL"); ok {
		var urls []string
		for _, u := range strings.Split(v, ",") {
			u = strings.TrimSpace(u)
			if err := checkURL(u); err != nil {
				return nil, optErr("RABBITMQ_URL", redactURL(u), err.Error()+"; want amqp://user:pass@host:5672/vhost, comma-separated for failover")
			}
			urls = append(urls, u)
		}
		add(WithURLs(urls...))
	}
	if b, ok := r.bool("RABBITMQ_URLS_IN_ORDER"); ok && b {
		add(WithURLsInOrder())
	}
	if n, ok := r.int("RABBITMQ_HEARTBEAT", 0, 3600); ok {
		add(WithHeartbeat(time.Duration(n) * time.Second))
	}
	if d, ok := r.millis("RABBITMQ_CONNECTION_TIMEOUT", 1); ok {
		add(WithConnectionTimeout(d))
	}
	if n, ok := r.int("ML_MAX_MESSAGE_RETRIES", 0, math.MaxInt); ok {
		add(WithMaxRetries(int(n)))
	}
	threshold, hasT := r.int("ML_CIRCUIT_BREAKER_THRESHOLD", 1, min(math.MaxUint32, math.MaxInt))
	cooldown, hasC := r.millis("ML_CIRCUIT_BREAKER_COOLDOWN", 1)
	if hasT || hasC {
		add(func(c *config) {
			if hasT {
				c.breakerThreshold = int(threshold)
			}
			if hasC {
				c.breakerCooldown = cooldown
			}
		})
	}
	if d, ok := r.millis("ML_CONFIRM_TIMEOUT", 1); ok {
		add(WithConfirmTimeout(d))
	}

	// (0, 0) turns buffering off; a 0 with the other half > 0 is refused.
	qMsgs, hasQM := r.int("ML_RETRY_QUEUE_MESSAGES", 0, math.MaxInt)
	qBytes, hasQB := r.int("ML_RETRY_QUEUE_BYTES", 0, math.MaxInt)
	switch {
	case r.err != nil:
	case hasQM && qMsgs == 0 && !(hasQB && qBytes == 0):
		r.fail("ML_RETRY_QUEUE_MESSAGES", r.given("ML_RETRY_QUEUE_MESSAGES"), "0 turns buffering off only with ML_RETRY_QUEUE_BYTES=0 too; otherwise want a whole number > 0")
	case hasQB && qBytes == 0 && !(hasQM && qMsgs == 0):
		r.fail("ML_RETRY_QUEUE_BYTES", r.given("ML_RETRY_QUEUE_BYTES"), "0 turns buffering off only with ML_RETRY_QUEUE_MESSAGES=0 too; otherwise want a whole number > 0")
	case hasQM || hasQB:
		add(func(c *config) {
			if hasQM {
				c.retryCapCount = int(qMsgs)
			}
			if hasQB {
				c.retryCapBytes = int(qBytes)
			}
		})
	}

	rInit, rMax, hasRI, hasRM := r.backoff("ML_RETRY_BACKOFF_INITIAL", "ML_RETRY_BACKOFF_MAX", def.retryInitial, def.retryMax)
	if hasRI || hasRM {
		add(func(c *config) {
			if hasRI {
				c.retryInitial = rInit
			}
			if hasRM {
				c.retryMax = rMax
			}
		})
	}
	cInit, cMax, hasCI, hasCM := r.backoff("ML_RECONNECT_BACKOFF_INITIAL", "ML_RECONNECT_BACKOFF_MAX", def.reconnectInitial, def.reconnectMax)
	if hasCI || hasCM {
		add(func(c *config) {
			if hasCI {
				c.reconnectInitial = cInit
			}
			if hasCM {
				c.reconnectMax = cMax
			}
		})
	}

	if d, ok := r.millis("ML_HEALTH_CHECK_INTERVAL", 0); ok {
		add(WithHealthCheckInterval(d))
	}
	if n, ok := r.int("ML_MAX_IN_FLIGHT", 1, math.MaxInt); ok {
		add(WithMaxInFlight(int(n)))
	}
	if n, ok := r.int("ML_MAX_CONTENT_BYTES", 1, maxContentLimit); ok {
		add(WithMaxContentBytes(int(n)))
	}
	if schemes, ok := r.list("ML_MEDIA_URL_SCHEMES"); ok {
		add(WithMediaURLSchemes(schemes...))
	}
	if v, ok := r.str("ML_CONNECTION_NAME"); ok {
		add(WithConnectionName(v))
	}
	if fields, ok := r.list("ML_ENVELOPE"); ok {
		var e EnvelopeField
		for _, f := range fields {
			switch strings.ToLower(f) {
			case "timestamp":
				e |= EnvelopeTimestamp
			case "type":
				e |= EnvelopeType
			case "app_id":
				e |= EnvelopeAppID
			case "attempt":
				e |= EnvelopeAttempt
			case "all":
				e |= EnvelopeAll
			case "none":
				if len(fields) > 1 {
					r.fail("ML_ENVELOPE", r.given("ML_ENVELOPE"), `"none" stands alone`)
				}
			default:
				r.fail("ML_ENVELOPE", r.given("ML_ENVELOPE"), `want a comma-separated list of timestamp, type, app_id, attempt, or "all", or "none"`)
			}
		}
		if r.err == nil {
			add(WithEnvelope(e))
		}
	}

	if v, ok := r.str("ML_SPOOL_DIR"); ok {
		add(WithSpool(v))
	}
	sMsgs, hasSM := r.int("ML_SPOOL_MESSAGES", 1, math.MaxInt)
	sBytes, hasSB := r.int("ML_SPOOL_BYTES", 1, math.MaxInt64)
	if hasSM || hasSB {
		add(func(c *config) {
			if hasSM {
				c.spoolCapCount = int(sMsgs)
			}
			if hasSB {
				c.spoolCapBytes = sBytes
			}
		})
	}

	exchange, hasEx := r.str("ML_TOPOLOGY_EXCHANGE")
	qt, hasQT := r.str("ML_TOPOLOGY_QUEUE_TYPE")
	if hasQT && qt != string(QueueClassic) && qt != string(QueueQuorum) {
		r.fail("ML_TOPOLOGY_QUEUE_TYPE", qt, `want "classic" or "quorum"`)
	}
	var noDeclare, hasND bool
	if v, ok := r.str("ML_TOPOLOGY_NO_DECLARE"); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			r.fail("ML_TOPOLOGY_NO_DECLARE", v, "want true or false (or 1 or 0)")
		}
		noDeclare, hasND = b, err == nil
	}
	if hasEx || hasQT || hasND {
		add(func(c *config) {
			if hasEx {
				c.topology.Exchange = exchange
			}
			if hasQT {
				c.topology.QueueType = QueueType(qt)
			}
			if hasND {
				c.topology.NoDeclare = noDeclare
			}
		})
	}
	base := def.topology
	if hasEx {
		base.Exchange = exchange
	}
	if hasQT {
		base.QueueType = QueueType(qt)
	}
	base.NoDeclare = hasND && noDeclare
	topologyFromLookup(r, add, base)

	if r.err != nil {
		return nil, r.err
	}
	return opts, nil
}

// topologyFromLookup reads the Topology's queue names and arguments. Each
// variable set changes only its own field. How they fit together with the
// other ML_TOPOLOGY_ variables (x-delivery-limit only with quorum queues,
// ...) is checked on base, the Topology those give: an error names the
// variable of the field in fault.
func topologyFromLookup(r *envReader, add func(Option), base Topology) {
	name := func(v string) (string, bool) {
		s, ok := r.str(v)
		switch {
		case !ok:
		case len(s) > maxShortStr:
			r.fail(v, s, "at most 255 bytes")
			ok = false
		case v != "ML_TOPOLOGY_DEAD_LETTER_EXCHANGE" && strings.HasPrefix(s, "amq."):
			r.fail(v, s, `names starting with "amq." are reserved by the broker`)
			ok = false
		}
		return s, ok
	}
	var sets []func(*Topology)
	str := func(v string, field func(*Topology) *string) {
		if s, ok := name(v); ok {
			sets = append(sets, func(t *Topology) { *field(t) = s })
		}
	}
	str("ML_TOPOLOGY_QUEUE_PREFIX", func(t *Topology) *string { return &t.QueuePrefix })
	str("ML_TOPOLOGY_SUMMARIZATION_QUEUE", func(t *Topology) *string { return &t.SummarizationQueue })
	str("ML_TOPOLOGY_TRANSCRIPTION_QUEUE", func(t *Topology) *string { return &t.TranscriptionQueue })
	str("ML_TOPOLOGY_EMBEDDING_QUEUE", func(t *Topology) *string { return &t.EmbeddingQueue })
	str("ML_TOPOLOGY_DEAD_LETTER_EXCHANGE", func(t *Topology) *string { return &t.DeadLetterExchange })
	if n, ok := r.int("ML_TOPOLOGY_MAX_LENGTH", 1, math.MaxInt64); ok {
		sets = append(sets, func(t *Topology) { t.MaxLength = n })
	}
	if v, ok := r.str("ML_TOPOLOGY_OVERFLOW"); ok {
		switch o := Overflow(v); o {
		case OverflowDropHead, OverflowRejectPublish, OverflowRejectPublishDLX:
			sets = append(sets, func(t *Topology) { t.Overflow = o })
		default:
			r.fail("ML_TOPOLOGY_OVERFLOW", v, `want "drop-head", "reject-publish" or "reject-publish-dlx"`)
		}
	}
	if d, ok := r.millis("ML_TOPOLOGY_MESSAGE_TTL", 1); ok {
		sets = append(sets, func(t *Topology) { t.MessageTTL = d })
	}
	if n, ok := r.int("ML_TOPOLOGY_MAX_PRIORITY", 1, math.MaxUint8); ok {
		sets = append(sets, func(t *Topology) { t.MaxPriority = uint8(n) })
	}
	if n, ok := r.int("ML_TOPOLOGY_DELIVERY_LIMIT", 1, math.MaxInt); ok {
		sets = append(sets, func(t *Topology) { t.DeliveryLimit = int(n) })
	}
	if r.err != nil {
		return
	}
	for _, set := range sets {
		set(&base)
	}
	if err := base.validate(); err != nil {
		var oe *OptionError
		if errors.As(err, &oe) {
			field, reason, _ := strings.Cut(strings.TrimPrefix(oe.Reason, "Topology."), ": ")
			if v, ok := topologyVars[field]; ok {
				r.fail(v, r.given(v), reason)
				return
			}
		}
		r.err = err
		return
	}
	if len(sets) > 0 {
		add(func(c *config) {
			for _, set := range sets {
				set(&c.topology)
			}
		})
	}
}

// topologyVars maps a Topology field to its variable.
var topologyVars = map[string]string{
	"Exchange":           "ML_TOPOLOGY_EXCHANGE",
	"QueueType":          "ML_TOPOLOGY_QUEUE_TYPE",
	"QueuePrefix":        "ML_TOPOLOGY_QUEUE_PREFIX",
	"SummarizationQueue": "ML_TOPOLOGY_SUMMARIZATION_QUEUE",
	"TranscriptionQueue": "ML_TOPOLOGY_TRANSCRIPTION_QUEUE",
	"EmbeddingQueue":     "ML_TOPOLOGY_EMBEDDING_QUEUE",
	"MaxLength":          "ML_TOPOLOGY_MAX_LENGTH",
	"Overflow":           "ML_TOPOLOGY_OVERFLOW",
	"MessageTTL":         "ML_TOPOLOGY_MESSAGE_TTL",
	"DeadLetterExchange": "ML_TOPOLOGY_DEAD_LETTER_EXCHANGE",
	"MaxPriority":        "ML_TOPOLOGY_MAX_PRIORITY",
	"DeliveryLimit":      "ML_TOPOLOGY_DELIVERY_LIMIT",
}
