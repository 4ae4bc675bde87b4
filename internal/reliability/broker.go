package reliability

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mlproducer/mlproducer/internal/rabbittest"
)

// ctl runs rabbitmqctl and turns a failure into an error with its output.
func ctl(args ...string) error {
	out, err := rabbittest.Rabbitmqctl(args...)
	if err != nil {
		return fmt.Errorf("rabbitmqctl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out))
	}
	return nil
}

// lockWaitHeld bounds a wait for the exclusive lock that this process
// already holds: it is granted at once.
const lockWaitHeld = 5 * time.Second

// errLockBusy: other processes held the broker lock for longer than the
// caller was willing to wait.
var errLockBusy = errors.New("the broker lock stayed busy (another process is running integration tests or a benchmark)")

// closeAllConnections closes every connection of the Runner's virtual host
// (the Producer's and the checking consumer's) with rabbitmqctl
// close_all_connections, under the exclusive broker lock. Unless the
// scenario holds it already, it waits at most wait for the lock, then fails
// with errLockBusy.
func (h *run) closeAllConnections(wait time.Duration) error {
	if h.exclusive {
		wait = lockWaitHeld
	}
	unlock, err := rabbittest.LockWithin(true, wait)
	if err != nil {
		return fmt.Errorf("%w: %v", errLockBusy, err)
	}
	defer unlock()
	return ctl("close_all_connections", "--vhost", h.r.vhost, "mlproducer reliability scenario "+h.name)
}

// stopApp stops the broker's application (rabbitmqctl stop_app) and returns
// the function that starts it again and waits until it accepts AMQP
// connections. The exclusive broker lock is held from before stop_app until
// start returns. start must be called, even when the scenario fails (defer
// it); calling it again returns the first result. If stop_app fails, stopApp
// starts the application again itself.
func (h *run) stopApp() (start func() error, err error) {
	unlock, err := rabbittest.Lock(true)
	if err != nil {
		return nil, err
	}
	var (
		started  bool
		startErr error
	)
	start = func() error {
		if started {
			return startErr
		}
		started = true
		defer unlock()
		startErr = ctl("start_app")
		if startErr == nil {
			startErr = waitAMQP(h.r.cfg.BrokerURL, 90*time.Second)
		}
		return startErr
	}
	if err := ctl("stop_app"); err != nil {
		_ = start()
		return nil, err
	}
	return start, nil
}

// waitAMQP waits until the broker accepts an AMQP connection, for at most
// limit. It does not stop early on a cancelled scenario: it restores the
// broker.
func waitAMQP(url string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for {
		conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)})
		if err == nil {
			return conn.Close()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the broker does not accept connections %v after start_app: %v", limit, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
