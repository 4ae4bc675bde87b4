// Package mlproducer publishes ML tasks (summarization, transcription,
// embedding) to RabbitMQ reliably, from code that must answer in time: an HTTP
// handler calls [Producer.PublishSummarization] with its request's context and
// gets an answer before that context ends, whatever the broker is doing.
//
// # Guarantees
//
// Delivery is at-least-once and nothing is lost silently. Every outcome of a
// publish is one of these (the same list as in [Producer.Publish] and the
// README). An error means the Producer did not take the message, and nothing
// was sent or kept:
//   - an [*InvalidTaskError], wrapping [ErrInvalidTask], and [ErrTooLarge] as
//     well for content or a body over its limit;
//   - [ErrClosed]: [Producer.Close] has begun;
//   - [ErrCircuitOpen]: the breaker is open, only without a buffer
//     ([WithRetryQueueCapacity](0, 0)); [RetryAfter] gives the remaining
//     cooldown;
//   - [ErrRetryQueueFull]: the message would have to wait and the buffer is
//     full (or there is none); [RetryAfter] gives an estimate of the wait;
//   - [ErrSpoolUnavailable]: with [WithSpool], the disk refused the write;
//   - ctx's error: ctx ended before the hand-off.
//
// A nil error means the Producer owns the message until the broker confirms
// it (publisher confirms, basic.ack) or, when its retries run out or
// [Producer.Close] ends first, hands it to the dead-letter hook
// ([WithDeadLetter]) and counts it. The [Receipt] says how far it got:
//   - [Confirmed]: the broker confirmed it;
//   - [Pending]: sent, not yet confirmed when ctx ended or the confirm
//     timeout passed; the Producer keeps tracking it;
//   - [Queued]: waiting in the retry queue;
//   - [DeadLettered]: its attempts ran out before the call returned (only
//     with [WithMaxRetries](0)); it went to the dead-letter hook.
//
// A service maps these to HTTP statuses as Example (httpStatus) shows; the
// error of Close is a [*CloseError] with the counts of what it left.
//
// An attempt counts against [WithMaxRetries] only when the message reached
// the broker and failed: a nack, a return, no confirm one confirm timeout
// after its write returned, or a channel the broker closed for what was
// published on it (403, 404, 406: a message over its max_message_size, a
// missing exchange). A lost connection, a write held by back-pressure or a
// late answer to an attempt already counted spends nothing more.
//
// A message may reach the broker more than once (after a lost connection or a
// confirm timeout); its message ID stays the same across attempts, so
// consumers de-duplicate by message ID. Messages are persistent and published
// as mandatory: one the broker cannot route is returned and retried, never
// reported as confirmed.
//
// Every body is bounded: a [Message] body, and a typed task's body once its
// content is escaped as JSON, is at most the content limit
// ([WithMaxContentBytes], 1 MiB by default) plus 64 KiB, or the publish
// fails with an [*InvalidTaskError] that wraps [ErrTooLarge]. Consumers read
// bodies with [DecodeTask], which applies the same limits and rules to what
// it reads from the queue.
//
// # Concurrency
//
// A Producer is safe for concurrent use, and concurrent callers overlap: no
// lock is held while a caller waits for its confirm. Callers never write to
// the socket: each connection has one writer goroutine, so a write held by
// broker back-pressure (a memory or disk alarm can last hours) holds no
// caller. While there is no connection, or the broker blocks publishers, a
// publish goes straight to the bounded retry queue and returns [Queued].
//
// A publish waits for its confirm until ctx ends or the confirm timeout
// ([WithConfirmTimeout]) passes, counted from the hand-off, whichever comes
// first.
//
// # Connection
//
// [New] connects in the background and never fails because the broker is
// down. One supervisor goroutine owns the connection: it reconnects with
// exponential backoff and full jitter across every URL given to [WithURLs],
// declares the topology on each new connection, and puts everything that was
// unconfirmed on a lost connection back in the retry queue. Time spent
// disconnected costs a message no attempt. Every round trip of a connection's
// set-up (dial, topology, channel, confirm mode) is bounded by the connection
// timeout. A connection that dies young (within the reconnect backoff's
// maximum, at least a second) is followed by a backoff wait like a failed
// dial, so a broker that refuses each session at once is not redialed in a
// loop.
//
// # Failures and flow control
//
// A circuit breaker ([WithCircuitBreaker]) opens after a run of consecutive
// failures: nacks, unroutable returns, confirm timeouts, a connection lost
// with messages in flight (one failure per connection: the redial that follows
// does not reset the count), failed dials. While
// it is open nothing is sent: publishes wait in the retry queue ([Queued])
// while it has room, so an outage of any length the buffer can hold refuses
// nothing; only with buffering off ([WithRetryQueueCapacity](0, 0)) does a
// publish fail at once with [ErrCircuitOpen]. After the cooldown one probe
// goes through, and its success closes the breaker. The probe is a retry, a
// publish (without a buffer), a dial, or, with no traffic at all, the next
// health check. A breaker opened by failed dials does not wait for its
// cooldown: the first dial that gets through closes it, so sending resumes
// within the reconnect backoff's maximum once the broker is back. A caller's
// cancelled ctx or an invalid task never counts.
//
// [Producer.Ready] means "can take a message and send it": not ready when
// closing or closed, when the buffer is full, when the spool cannot write,
// while the broker refuses the topology (a configuration error: what it
// takes could never be sent until the configuration is fixed), or, without a
// buffer, while there is no usable connection or the breaker is open. A
// broker outage alone does not take every replica out of its load balancer.
//
// Every health-check interval ([WithHealthCheckInterval]) the Producer makes a
// real round trip to the broker; a failure forces a reconnect. When the
// broker raises a memory or disk alarm (connection.blocked) the state becomes
// [Blocked]: publishes go to the retry queue instead of waiting, and neither
// the health check nor the breaker holds the alarm against the connection.
//
// # Shutdown
//
// [Producer.Close] works like [net/http.Server.Shutdown]: new publishes fail
// with [ErrClosed], owned messages are given until ctx ends to be confirmed,
// then the connection closes and whatever is still unconfirmed goes to the
// dead-letter hook, which Close waits for at most one second more; the error,
// a [*CloseError], says how many. No goroutine survives Close but a
// dead-letter hook call still running then ([WithDeadLetter]).
//
// # Crash-safe spool
//
// With [WithSpool] the Producer keeps every accepted message in an embedded
// store (go.etcd.io/bbolt) under a dir, synced before the publish returns
// nil, and removes it once confirmed or dead-lettered. A crash, a kill or a
// Close that ran out of time leaves the unconfirmed messages there, and the
// next [New] on the dir sends them with the same id, attempt count and
// creation time. Close then leaves, rather than dead-letters, what is still
// unconfirmed at its deadline. A failing disk refuses new publishes with
// [ErrSpoolUnavailable] and loses nothing accepted.
//
// # Observability
//
// [Producer.Status] reports the connection state, reconnect attempts, breaker,
// retry queue size and pending confirms, with URLs redacted. Prometheus
// metrics are registered on the registerer given to [WithRegisterer] (never
// the global one) and read at scrape time; [Producer.MetricsHandler],
// [Producer.StatusHandler], [Producer.LivenessHandler] and
// [Producer.ReadinessHandler] serve them, the status as JSON, and health
// answers over HTTP. Logs go to the [log/slog] logger given to [WithLogger]
// (discarded by default); passwords never appear in logs, errors, status or
// metrics.
//
// Tracing uses OpenTelemetry: OpenTelemetry's global tracer provider and
// propagator unless [WithTracerProvider] and [WithPropagator] say otherwise.
// Each publish is a PRODUCER span, a child of the span in its ctx, that ends
// when the message is final (retries are its events), and the propagator
// writes its context into the message's headers, the same on every attempt.
// Until a service sets a provider, no span is started and nothing more is
// allocated. The README's "Tracing" lists the attributes.
//
// # Testing
//
// Package github.com/mlproducer/mlproducer/mlproducertest is an in-memory fake
// broker with fault injection; pass it to [WithDialer] to test a service
// against a real Producer with no broker.
package mlproducer
