package mlproducer

import (
	"net/url"
	"slices"
	"strings"
)

// ConnectionState is the state of the Producer's connection. The numbers are
// part of the contract: alerts compare ml_producer_connection_state with 3.
type ConnectionState int

const (
	// Disconnected: no connection and none being made.
	Disconnected ConnectionState = 0
	// Connecting: the first connection is being made.
	Connecting ConnectionState = 1
	// Reconnecting: the connection was lost and a new one is being made.
	Reconnecting ConnectionState = 2
	// Connected: ready to publish.
	Connected ConnectionState = 3
	// Blocked: connected, but the broker blocks publishers (memory or disk
	// alarm); publishes wait in the retry queue.
	Blocked ConnectionState = 4
	// Closed: [Producer.Close] has finished.
	Closed ConnectionState = 5
)

func (s ConnectionState) String() string {
	switch s {
	case Disconnected:
		return "disconnected"
	case Connecting:
		return "connecting"
	case Reconnecting:
		return "reconnecting"
	case Connected:
		return "connected"
	case Blocked:
		return "blocked"
	case Closed:
		return "closed"
	}
	return "unknown"
}

// Status is a snapshot of the Producer, as the service it replaces reported
// it. It holds no secret: URLs are redacted.
type Status struct {
	ConnectionState    ConnectionState `json:"connectionState"`
	ReconnectAttempts  uint64          `json:"reconnectAttempts"`
	CircuitBreakerOpen bool            `json:"circuitBreakerOpen"`
	RetryQueueSize     int             `json:"retryQueueSize"`
	PendingConfirms    int             `json:"pendingConfirms"`
	// URL is the broker in use or last tried, password redacted.
	URL string `json:"url,omitempty"`
	// LastError is the last connection error, password redacted.
	LastError string `json:"lastError,omitempty"`
	// Accepted, Confirmed and DeadLettered count messages since New.
	Accepted     uint64 `json:"accepted"`
	Confirmed    uint64 `json:"confirmed"`
	DeadLettered uint64 `json:"deadLettered"`
}

// Status returns a snapshot of the Producer's state. It does not block on the
// network.
func (p *Producer) Status() Status {
	p.stmu.Lock()
	st := Status{ConnectionState: p.state, URL: p.url, LastError: p.lastErr}
	p.stmu.Unlock()
	st.ReconnectAttempts = p.metrics.reconnects.Load()
	st.CircuitBreakerOpen = p.breaker.open()
	p.rmu.Lock()
	st.RetryQueueSize = p.retry.len()
	p.rmu.Unlock()
	if s := p.sess.Load(); s != nil {
		st.PendingConfirms = s.pendingCount()
	}
	st.Accepted = p.metrics.total(outAccepted)
	st.Confirmed = p.metrics.total(outConfirmed)
	st.DeadLettered = p.metrics.total(outDeadLettered)
	return st
}

// redactSecrets replaces with "xxxxx", in text, every form of the password
// of rawURL that text may hold: as written in rawURL, percent-decoded, and
// re-encoded as a query or a path would encode it. The password as written
// is taken as a reader sees it (from the first ':' after "//" to the last
// '@'), so even a URL that url.Parse splits elsewhere keeps it out.
func redactSecrets(text, rawURL string) string {
	var secrets []string
	if _, rest, ok := strings.Cut(rawURL, "//"); ok {
		if at := strings.LastIndexByte(rest, '@'); at >= 0 {
			if _, pw, ok := strings.Cut(rest[:at], ":"); ok {
				secrets = append(secrets, pw)
			}
		}
	}
	if u, err := url.Parse(rawURL); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok {
			secrets = append(secrets, pw, url.QueryEscape(pw), url.PathEscape(pw))
		}
	}
	// Longest first, so that no part of a longer form is left behind.
	slices.SortFunc(secrets, func(a, b string) int { return len(b) - len(a) })
	for _, s := range secrets {
		if s != "" {
			text = strings.ReplaceAll(text, s, "xxxxx")
		}
	}
	return text
}
