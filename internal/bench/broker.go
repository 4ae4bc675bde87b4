package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const (
	rawExchange = "bench.raw"
	rawQueue    = "bench.raw" // with its type: bench.raw.classic, bench.raw.quorum
	// taskQueue is where the Producer's summarization tasks land (its
	// default topology: exchange ml.tasks, queue ml.summarization).
	taskQueue = "ml.summarization"
	// taskExchange is the Producer's default exchange, which the envelope
	// cases publish to, with envQueue's name as the routing key.
	taskExchange = "ml.tasks"
	envQueue     = "bench.env"
)

// withVhost returns raw with its virtual host replaced by vhost.
func withVhost(raw, vhost string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("bad broker URL: %v", err)
	}
	u.Path = "/" + vhost
	u.RawPath = "/" + url.PathEscape(vhost)
	return u.String(), nil
}

// withHost returns raw with its host and port replaced by addr.
func withHost(raw, addr string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	u.Host = addr
	return u.String()
}

// hostPort is the broker address of an amqp URL, default port included.
func hostPort(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("bad broker URL: %v", err)
	}
	if u.Port() != "" {
		return u.Host, nil
	}
	port := "5672"
	if u.Scheme == "amqps" {
		port = "5671"
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparsable URL>"
	}
	return u.Redacted()
}

func dial(raw, name string) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(name)
	return amqp.DialConfig(raw, amqp.Config{
		Heartbeat:  10 * time.Second,
		Locale:     "en_US",
		Properties: props,
		Dial:       amqp.DefaultDial(10 * time.Second),
	})
}

// ensureVhost makes sure the benchmark's virtual host exists, creating it
// with rabbitmqctl when the broker is local and it does not. A dedicated
// virtual host keeps the benchmark's ml.* queues apart from those of
// integration tests running at the same time on the same broker.
func ensureVhost(raw, vhost string) error {
	conn, err := dial(raw, "mlproducer-bench admin")
	if err == nil {
		return conn.Close()
	}
	var aerr *amqp.Error
	if !errors.As(err, &aerr) || (aerr.Code != amqp.NotAllowed && aerr.Code != amqp.AccessRefused) {
		return fmt.Errorf("dial %s: %w (is the broker up? bash scripts/ensure-rabbitmq.sh)", redact(raw), err)
	}
	u, _ := url.Parse(raw)
	if h := u.Hostname(); h != "127.0.0.1" && h != "localhost" && h != "::1" {
		return fmt.Errorf("virtual host %q missing on %s: create it, or pass -vhost '' to use the URL's own: %w", vhost, redact(raw), err)
	}
	user := u.User.Username()
	if user == "" {
		user = "guest"
	}
	logf("creating virtual host %q (rabbitmqctl add_vhost) for the benchmark's queues", vhost)
	for _, args := range [][]string{
		{"add_vhost", vhost},
		{"set_permissions", "-p", vhost, user, ".*", ".*", ".*"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, cerr := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput()
		cancel()
		if cerr != nil && !strings.Contains(string(out), "already exists") {
			return fmt.Errorf("rabbitmqctl %s: %v\n%s(pass -vhost '' to use the URL's own virtual host)", strings.Join(args, " "), cerr, out)
		}
	}
	conn, err = dial(raw, "mlproducer-bench admin")
	if err != nil {
		return fmt.Errorf("dial %s after creating the virtual host: %w", redact(raw), err)
	}
	return conn.Close()
}

// admin is a short-lived connection for declaring, purging and counting.
type admin struct{ conn *amqp.Connection }

func newAdmin(raw string) (*admin, error) {
	c, err := dial(raw, "mlproducer-bench admin")
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", redact(raw), err)
	}
	return &admin{conn: c}, nil
}

func (a *admin) close() { _ = a.conn.Close() }

// do runs op on a fresh channel: a channel error (such as 404 on a missing
// queue) closes only that channel.
func (a *admin) do(op func(ch *amqp.Channel) error) error {
	ch, err := a.conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	return op(ch)
}

// declareRaw declares the raw cases' durable direct exchange and a durable
// queue of the type (classic or quorum), bound with the queue's name.
func (a *admin) declareRaw(queue, queueType string) error {
	return a.do(func(ch *amqp.Channel) error {
		if err := ch.ExchangeDeclare(rawExchange, "direct", true, false, false, false, nil); err != nil {
			return err
		}
		if _, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-queue-type": queueType}); err != nil {
			return err
		}
		return ch.QueueBind(queue, queue, rawExchange, false, nil)
	})
}

// declareEnv declares the envelope cases' queue: a durable classic queue
// like the Producer's (x-queue-type classic, nothing else), bound to the
// Producer's exchange (declared as the Producer declares it) with a routing
// key of its own, so that a Producer case of another run on the same
// virtual host never puts messages in it.
func (a *admin) declareEnv() error {
	return a.do(func(ch *amqp.Channel) error {
		if err := ch.ExchangeDeclare(taskExchange, "direct", true, false, false, false, nil); err != nil {
			return err
		}
		if _, err := ch.QueueDeclare(envQueue, true, false, false, false, amqp.Table{"x-queue-type": "classic"}); err != nil {
			return err
		}
		return ch.QueueBind(envQueue, envQueue, taskExchange, false, nil)
	})
}

// purge empties queue; a missing queue is not an error.
func (a *admin) purge(queue string) error {
	err := a.do(func(ch *amqp.Channel) error {
		_, err := ch.QueuePurge(queue, false)
		return err
	})
	if isNotFound(err) {
		return nil
	}
	return err
}

// depth is the number of messages in queue (no consumer: all are ready).
func (a *admin) depth(queue string) (int, error) {
	var n int
	err := a.do(func(ch *amqp.Channel) error {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		n = q.Messages
		return err
	})
	return n, err
}

// settledDepth waits (at most timeout) for queue to hold at least want
// messages, then returns its depth once two reads 100 ms apart agree.
// Confirmed messages are counted at once; this covers publishings sent
// without confirms, which may still be on their way.
func (a *admin) settledDepth(queue string, want int, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	last := -1
	for {
		n, err := a.depth(queue)
		if err != nil {
			return 0, err
		}
		if (n >= want && n == last) || time.Now().After(deadline) {
			return n, nil
		}
		last = n
		time.Sleep(100 * time.Millisecond)
	}
}

func (a *admin) serverVersion() string {
	if v, ok := a.conn.Properties["version"].(string); ok {
		return v
	}
	return "unknown"
}

func isNotFound(err error) bool {
	var aerr *amqp.Error
	return errors.As(err, &aerr) && aerr.Code == amqp.NotFound
}

// brokerLock is the lock file the integration tests share
// (internal/rabbittest): tests hold it shared while they run, and the
// broker-wide helpers (a memory alarm, closing every connection) hold it
// exclusively. The benchmark holds it shared during each case, so that no
// such helper blocks or cuts its connections mid-measurement, and releases
// it between cases so that they are not kept waiting long.
type brokerLock struct{ f *os.File }

func openBrokerLock() (*brokerLock, error) {
	name := filepath.Join(os.TempDir(), "mlproducer-rabbittest.lock")
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return nil, fmt.Errorf("broker lock: %w", err)
	}
	return &brokerLock{f: f}, nil
}

func (l *brokerLock) shared() error {
	fd := int(l.f.Fd())
	err := syscall.Flock(fd, syscall.LOCK_SH|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		logf("waiting for the broker lock (an integration test is changing the whole broker)")
		err = syscall.Flock(fd, syscall.LOCK_SH)
	}
	return err
}

func (l *brokerLock) unlock() { _ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN) }

func (l *brokerLock) close() { _ = l.f.Close() }
