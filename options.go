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

	"github.com/mlproducer/mlproducer/transport"
)

// DefaultURL is the broker [New] connects to when no URL is given.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// Option configures a [Producer]. Options are applied in order by [New], which
// then validates the result as a whole.
type Option func(*config)

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

// Topology is what the Producer declares on every new connection: a durable
// direct exchange and, for each task type, a durable queue named after the
// routing key ("ml.summarization", "ml.transcription", "ml.embedding") bound
// to it with that key.
type Topology struct {
	// Exchange is the exchange tasks are published to. Default "ml.tasks".
	Exchange string
	// QueueType is the type of the declared queues. Default [QueueClassic].
	QueueType QueueType
	// NoDeclare turns declaration off: the Producer then expects the exchange
	// (and whatever queues consume from it) to exist already.
	NoDeclare bool
}

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
	// the value of [AttemptHeader] on its last send, counted across
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
	dialer            transport.Dialer
	deadLetter        func(DeadLetter)
	registerer        prometheus.Registerer
	appID             string
	connectionName    string
	limits            taskLimits
	spoolDir          string
	spoolCapCount     int
	spoolCapBytes     int64
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
		maxInFlight:       4096,
		topology:          Topology{Exchange: "ml.tasks", QueueType: QueueClassic},
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
	case c.topology.QueueType != QueueClassic && c.topology.QueueType != QueueQuorum:
		return optErr("WithTopology", c.topology.QueueType, `QueueType must be "classic" or "quorum"`)
	case c.logger == nil:
		return optErr("WithLogger", "nil", "pass a *slog.Logger")
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

// WithURLs sets the brokers to connect to, tried in order with failover: when
// one cannot be reached the next is tried. List every node of a cluster here.
// Default [DefaultURL]. Passwords in URLs are never logged or reported.
//
// A user name or password with a character that has a meaning in a URL must
// be percent-encoded ("p#ss/w?rd@1" as "p%23ss%2Fw%3Frd%401"): [New] refuses a
// URL with more than one '@', an '@' after the host, or a '#', which is what
// such a password gives unencoded, rather than dial the wrong host.
func WithURLs(urls ...string) Option {
	return func(c *config) { c.urls = append([]string(nil), urls...) }
}

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
// 10000 messages and 64 MiB.
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
// [ErrRetryQueueFull]. Default 1,000,000 messages and 1 GiB.
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
// threshold is from 1 to 4294967295 (the environment variable allows up to
// 1000000); [New] refuses any other.
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
// confirmed; past it, new publishes wait in the retry queue. Default 4096.
func WithMaxInFlight(n int) Option { return func(c *config) { c.maxInFlight = n } }

// WithTopology changes what the Producer declares on each connection, or
// turns declaration off. Default: exchange "ml.tasks", classic queues.
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

// WithTLSConfig sets the TLS configuration for amqps URLs. Default: the
// system roots, with the server certificate verified. It applies to amqps
// URLs only: an amqp URL, also one after an amqps URL in a failover list,
// connects in plain text; to require TLS, list only amqps URLs.
func WithTLSConfig(t *tls.Config) Option { return func(c *config) { c.tlsConfig = t } }

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

// WithConnectionName sets the name the connection shows in the broker's
// management UI. Default "mlproducer".
func WithConnectionName(name string) Option { return func(c *config) { c.connectionName = name } }

// OptionsFromEnv reads the environment variables of the service mlproducer
// replaces and returns the matching options:
//
//	RABBITMQ_URL                  broker URL; a comma-separated list for failover
//	RABBITMQ_HEARTBEAT            heartbeat, whole seconds (0 disables)
//	RABBITMQ_CONNECTION_TIMEOUT   connection timeout, milliseconds
//	ML_MAX_MESSAGE_RETRIES        retries per message
//	ML_CIRCUIT_BREAKER_THRESHOLD  consecutive failures that open the breaker
//	ML_CIRCUIT_BREAKER_COOLDOWN   how long the breaker stays open, milliseconds
//	ML_SPOOL_DIR                  directory of the crash-safe spool ([WithSpool])
//
// A variable that is unset or empty leaves the default. A value that cannot be
// used is an [*OptionError] naming the variable and the value; nothing falls
// back silently.
func OptionsFromEnv() ([]Option, error) { return optionsFromLookup(os.LookupEnv) }

func optionsFromLookup(lookup func(string) (string, bool)) ([]Option, error) {
	var opts []Option
	get := func(name string) (string, bool) {
		v, ok := lookup(name)
		v = strings.TrimSpace(v)
		return v, ok && v != ""
	}
	intVar := func(name string, min, max int) (int, bool, error) {
		v, ok := get(name)
		if !ok {
			return 0, false, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < min || n > max {
			return 0, false, optErr(name, v, fmt.Sprintf("want a whole number from %d to %d", min, max))
		}
		return n, true, nil
	}
	if v, ok := get("RABBITMQ_URL"); ok {
		var urls []string
		for _, u := range strings.Split(v, ",") {
			u = strings.TrimSpace(u)
			if err := checkURL(u); err != nil {
				return nil, optErr("RABBITMQ_URL", redactURL(u), err.Error()+"; want amqp://user:pass@host:5672/vhost, comma-separated for failover")
			}
			urls = append(urls, u)
		}
		opts = append(opts, WithURLs(urls...))
	}
	if n, ok, err := intVar("RABBITMQ_HEARTBEAT", 0, 3600); err != nil {
		return nil, err
	} else if ok {
		opts = append(opts, WithHeartbeat(time.Duration(n)*time.Second))
	}
	if n, ok, err := intVar("RABBITMQ_CONNECTION_TIMEOUT", 1, 3600_000); err != nil {
		return nil, err
	} else if ok {
		opts = append(opts, WithConnectionTimeout(time.Duration(n)*time.Millisecond))
	}
	if n, ok, err := intVar("ML_MAX_MESSAGE_RETRIES", 0, 1000); err != nil {
		return nil, err
	} else if ok {
		opts = append(opts, WithMaxRetries(n))
	}
	threshold, hasT, err := intVar("ML_CIRCUIT_BREAKER_THRESHOLD", 1, 1_000_000)
	if err != nil {
		return nil, err
	}
	cooldown, hasC, err := intVar("ML_CIRCUIT_BREAKER_COOLDOWN", 1, 86_400_000)
	if err != nil {
		return nil, err
	}
	if v, ok := get("ML_SPOOL_DIR"); ok {
		opts = append(opts, WithSpool(v))
	}
	if hasT || hasC {
		opts = append(opts, func(c *config) {
			if hasT {
				c.breakerThreshold = threshold
			}
			if hasC {
				c.breakerCooldown = time.Duration(cooldown) * time.Millisecond
			}
		})
	}
	return opts, nil
}
