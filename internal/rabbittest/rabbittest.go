// Package rabbittest holds helpers for integration tests that run against a
// real RabbitMQ broker (RABBITMQ_URL, default amqp://guest:guest@127.0.0.1:5672/).
//
// Every integration test starts with [Require], which skips the test when no
// broker answers, or fails it when CI=true: in CI an integration test never
// skips silently. scripts/ensure-rabbitmq.sh starts (and if needed installs)
// a local broker; `make test` runs it first.
//
// # Sharing one broker
//
// The broker is shared by every test process on the machine (`go test ./...`
// runs packages in parallel, and several developers may run tests at once).
// Helpers that change the whole broker ([WithMemoryAlarm],
// [CloseAllConnections]) would break tests running elsewhere, so the package
// keeps a lock file in [os.TempDir]: [Require] holds it shared until the
// test ends, and the broker-wide helpers hold it exclusively until the test
// ends. A broker-wide helper therefore waits until no other process is in
// the middle of an integration test, and other processes' tests wait until
// it is done. Inside one process the lock is not exclusive: a test that uses
// a broker-wide helper must not run in parallel (t.Parallel) with other
// broker tests of its package. scripts/ensure-rabbitmq.sh takes the same
// lock before it repairs a broker left in a bad state. Code that runs outside
// a test (examples/reliability) takes it with [Lock] and raises an alarm with
// [SetMemoryAlarm].
//
// Each helper opens its own short-lived connection, named "mlproducer
// rabbittest", and closes it before it returns.
package rabbittest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultURL is the broker used when RABBITMQ_URL is not set.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// ConnectionName is the connection_name of the helpers' own connections.
const ConnectionName = "mlproducer rabbittest"

const (
	dialTimeout = 5 * time.Second
	ctlTimeout  = 60 * time.Second
	// alarmWait bounds the wait for a memory alarm to be raised or cleared.
	alarmWait = 60 * time.Second
	// lockWait bounds the wait for the exclusive broker lock.
	lockWait = 5 * time.Minute
	// drainLimit bounds DrainIDs when messages keep arriving.
	drainLimit = 2 * time.Minute
	// alarmWatermark is low enough that any broker is over it at once.
	alarmWatermark = "0.0000001"
	// defaultWatermark is RabbitMQ's default vm_memory_high_watermark.
	defaultWatermark = "0.4"
	// lockFileName is also used by scripts/ensure-rabbitmq.sh.
	lockFileName = "mlproducer-rabbittest.lock"
)

const ensureHint = "start a local broker with scripts/ensure-rabbitmq.sh (make test runs it), or set RABBITMQ_URL"

// URL returns the broker URL for integration tests: the first entry of
// RABBITMQ_URL (a comma-separated list is allowed), or [DefaultURL].
func URL() string {
	for _, u := range strings.Split(os.Getenv("RABBITMQ_URL"), ",") {
		if u = strings.TrimSpace(u); u != "" {
			return u
		}
	}
	return DefaultURL
}

// Redact returns rawURL with its password replaced by "xxxxx", for messages.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// Require checks that the broker at [URL] accepts a connection (within 5 s)
// and returns the URL. When it does not, the test is skipped, or failed when
// the environment has CI=true. Require first takes the shared broker lock
// (see the package documentation) until the test ends; it waits while
// another process holds it exclusively, since that process may have the
// broker stopped.
func Require(t testing.TB) string {
	t.Helper()
	u := URL()
	// The lock first: a process holding it exclusively may have the broker
	// stopped (stop_app) until it is done.
	acquire(t, false)
	conn, err := dial(u)
	if err != nil {
		msg := fmt.Sprintf("rabbittest: no RabbitMQ at %s: %v; %s", Redact(u), err, ensureHint)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	_ = conn.Close()
	return u
}

// Dial opens a connection to url named [ConnectionName] and closes it when
// the test ends. It fails the test when the broker does not answer within 5 s.
func Dial(t testing.TB, url string) *amqp.Connection {
	t.Helper()
	conn, err := dial(url)
	if err != nil {
		t.Fatalf("rabbittest: dial %s: %v; %s", Redact(url), err, ensureHint)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func dial(url string) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(ConnectionName)
	return amqp.DialConfig(url, amqp.Config{
		Heartbeat:  10 * time.Second,
		Properties: props,
		Dial:       amqp.DefaultDial(dialTimeout),
	})
}

// Ctl runs `rabbitmqctl args...` (bounded by 60 s) and returns its combined
// output. It fails the test, showing the output, when the command fails.
// rabbitmqctl talks to the local node only, whatever RABBITMQ_URL says.
func Ctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := ctl(args...)
	if err != nil {
		t.Fatalf("rabbittest: rabbitmqctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// Rabbitmqctl runs `rabbitmqctl args...` (bounded by 60 s) and returns its
// combined output, for code that runs outside a test; see [Ctl].
func Rabbitmqctl(args ...string) (string, error) { return ctl(args...) }

func ctl(args ...string) (string, error) {
	bin, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		bin = "/usr/sbin/rabbitmqctl" // not in PATH for every user on Debian
	}
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v", ctlTimeout)
	}
	return string(out), err
}

// CloseAllConnections closes every client connection of the broker's "/"
// virtual host (`rabbitmqctl close_all_connections "mlproducer test"`), as
// a broker restart or a network failure would. It takes the exclusive broker
// lock until the test ends, so that other processes' tests are not hit.
func CloseAllConnections(t testing.TB) {
	t.Helper()
	acquire(t, true)
	Ctl(t, "close_all_connections", "mlproducer test")
}

// DeleteQueues deletes the queues; a queue that does not exist is ignored.
func DeleteQueues(t testing.TB, url string, queues ...string) {
	t.Helper()
	eachQueue(t, url, queues, func(ch *amqp.Channel, q string) error {
		_, err := ch.QueueDelete(q, false, false, false)
		return err
	})
}

// PurgeQueues removes every ready message from the queues; a queue that
// does not exist is ignored.
func PurgeQueues(t testing.TB, url string, queues ...string) {
	t.Helper()
	eachQueue(t, url, queues, func(ch *amqp.Channel, q string) error {
		_, err := ch.QueuePurge(q, false)
		return err
	})
}

// eachQueue runs op on a fresh channel per queue (a 404 closes the channel)
// and ignores "not found".
func eachQueue(t testing.TB, url string, queues []string, op func(*amqp.Channel, string) error) {
	t.Helper()
	if len(queues) == 0 {
		return
	}
	conn, err := dial(url)
	if err != nil {
		t.Fatalf("rabbittest: dial %s: %v; %s", Redact(url), err, ensureHint)
	}
	defer conn.Close()
	for _, q := range queues {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatalf("rabbittest: open channel: %v", err)
		}
		err = op(ch, q)
		if err != nil && !isNotFound(err) {
			t.Fatalf("rabbittest: queue %q: %v", q, err)
		}
		_ = ch.Close()
	}
}

func isNotFound(err error) bool {
	var aerr *amqp.Error
	return errors.As(err, &aerr) && aerr.Code == amqp.NotFound
}

// QueueLen returns the number of ready messages in the queue (messages
// delivered but not yet acknowledged are not counted). It fails the test if
// the queue does not exist.
func QueueLen(t testing.TB, url, queue string) int {
	t.Helper()
	conn, err := dial(url)
	if err != nil {
		t.Fatalf("rabbittest: dial %s: %v; %s", Redact(url), err, ensureHint)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("rabbittest: open channel: %v", err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil)
	if err != nil {
		t.Fatalf("rabbittest: queue %q: %v", queue, err)
	}
	return q.Messages
}

// DrainIDs consumes (with automatic acknowledgement) every message of the
// queue until none has arrived for idle, and returns how many times each
// MessageId was seen; a message without one counts under "". It fails the
// test if messages keep arriving for more than 2 minutes.
func DrainIDs(t testing.TB, url, queue string, idle time.Duration) map[string]int {
	t.Helper()
	conn, err := dial(url)
	if err != nil {
		t.Fatalf("rabbittest: dial %s: %v; %s", Redact(url), err, ensureHint)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("rabbittest: open channel: %v", err)
	}
	defer ch.Close()
	const tag = "rabbittest-drain"
	deliveries, err := ch.Consume(queue, tag, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("rabbittest: consume %q: %v", queue, err)
	}

	ids := make(map[string]int)
	limit := time.NewTimer(drainLimit)
	defer limit.Stop()
	timer := time.NewTimer(idle)
	defer timer.Stop()
loop:
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				t.Fatalf("rabbittest: consumer on %q closed early (%d ids seen)", queue, len(ids))
			}
			ids[d.MessageId]++
			timer.Reset(idle)
		case <-timer.C:
			break loop
		case <-limit.C:
			t.Fatalf("rabbittest: queue %q still delivering after %v", queue, drainLimit)
		}
	}
	// Messages already on their way were acknowledged by the broker when it
	// sent them: count them too. The channel closes on cancel-ok.
	if err := ch.Cancel(tag, false); err != nil {
		t.Fatalf("rabbittest: cancel consumer on %q: %v", queue, err)
	}
	for d := range deliveries {
		ids[d.MessageId]++
	}
	return ids
}

// WithMemoryAlarm raises a memory alarm on the broker by lowering
// vm_memory_high_watermark to almost nothing, and returns once the broker
// reports the alarm; from then on the broker blocks every publishing
// connection (connection.blocked). When the test ends, whether it passed or
// not, the previous watermark is restored (0.4 if it could not be read or
// was itself absurdly low) and the cleanup waits until the alarm is gone.
// The returned clear does the same earlier, for a test that goes on after the
// alarm; calling it more than once is harmless.
//
// It takes the exclusive broker lock until the test ends (see the package
// documentation); the test must not run in parallel with other broker
// tests of its package.
func WithMemoryAlarm(t testing.TB) (clear func()) {
	t.Helper()
	acquire(t, true)
	restore, err := SetMemoryAlarm()
	if err != nil {
		t.Fatalf("rabbittest: %v", err)
	}
	var once sync.Once
	clear = func() {
		once.Do(func() {
			if err := restore(); err != nil {
				t.Errorf("rabbittest: %v", err)
			}
		})
	}
	t.Cleanup(clear)
	return clear
}

// SetMemoryAlarm is [WithMemoryAlarm] for code that runs outside a test. It
// takes the exclusive broker lock ([Lock]), raises the alarm and returns
// once the broker reports it. restore puts the previous watermark back,
// waits until the alarm is gone and releases the lock; it must be called
// (a defer is the safe way), and calling it again returns the first result.
// When SetMemoryAlarm fails it has restored the watermark and released the
// lock itself.
func SetMemoryAlarm() (restore func() error, err error) {
	unlock, err := Lock(true)
	if err != nil {
		return nil, err
	}
	args := []string{"set_vm_memory_high_watermark", defaultWatermark}
	if out, err := ctl("-q", "eval", "vm_memory_monitor:get_vm_memory_high_watermark()."); err == nil {
		if wm, ok := watermarkArgs(strings.TrimSpace(out)); ok {
			args = append([]string{"set_vm_memory_high_watermark"}, wm...)
		}
	}
	var (
		once sync.Once
		rerr error
	)
	restore = func() error {
		once.Do(func() {
			defer unlock()
			if out, err := ctl(args...); err != nil {
				rerr = fmt.Errorf("restoring the memory watermark: rabbitmqctl %s: %v\n%s",
					strings.Join(args, " "), err, out)
				return
			}
			rerr = waitAlarm(false)
		})
		return rerr
	}
	if out, err := ctl("set_vm_memory_high_watermark", alarmWatermark); err != nil {
		_ = restore()
		return nil, fmt.Errorf("rabbitmqctl set_vm_memory_high_watermark %s: %v\n%s", alarmWatermark, err, out)
	}
	if err := waitAlarm(true); err != nil {
		_ = restore()
		return nil, err
	}
	return restore, nil
}

// MemoryAlarm reports whether the broker has a memory alarm in effect.
func MemoryAlarm(t testing.TB) bool {
	t.Helper()
	on, err := memoryAlarm()
	if err != nil {
		t.Fatalf("rabbittest: %v", err)
	}
	return on
}

// MemoryWatermark returns vm_memory_high_watermark as rabbitmqctl prints it:
// a fraction such as "0.4", or "{absolute,N}".
func MemoryWatermark(t testing.TB) string {
	t.Helper()
	return strings.TrimSpace(Ctl(t, "-q", "eval", "vm_memory_monitor:get_vm_memory_high_watermark()."))
}

// watermarkArgs turns a watermark as printed by rabbitmqctl eval into the
// arguments of set_vm_memory_high_watermark. A relative watermark below 0.01
// is a leftover of an aborted test, not a value to restore.
func watermarkArgs(v string) ([]string, bool) {
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		if f < 0.01 || f > 1 {
			return nil, false
		}
		return []string{v}, true
	}
	if n, ok := strings.CutPrefix(v, "{absolute,"); ok {
		n = strings.TrimSuffix(n, "}")
		if _, err := strconv.ParseUint(n, 10, 64); err == nil {
			return []string{"absolute", n}, true
		}
	}
	return nil, false
}

func memoryAlarm() (bool, error) {
	out, err := ctl("-q", "eval", "rabbit_alarm:get_alarms().")
	if err != nil {
		return false, fmt.Errorf("rabbitmqctl eval rabbit_alarm:get_alarms(): %v\n%s", err, out)
	}
	return strings.Contains(out, "resource_limit,memory"), nil
}

// waitAlarm waits until the memory alarm is on (or off), for at most alarmWait.
func waitAlarm(on bool) error {
	deadline := time.Now().Add(alarmWait)
	for {
		got, err := memoryAlarm()
		if err == nil && got == on {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return err
			}
			want := "raised"
			if !on {
				want = "cleared"
			}
			return fmt.Errorf("memory alarm not %s after %v", want, alarmWait)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// lockState is the broker lock of this process: one open file, locked with
// flock(2) in the strongest mode that any current holder needs.
type lockState struct {
	mu        sync.Mutex
	f         *os.File
	shared    int // holders taken by Require
	exclusive int // holders taken by the broker-wide helpers
	mode      int // flock mode held now: 0, syscall.LOCK_SH or syscall.LOCK_EX
}

// brokerLock is process-wide by nature: it stands for a file lock that
// the kernel keeps per process.
var brokerLock lockState

// acquire takes the broker lock, shared or exclusive, until the test ends.
func acquire(t testing.TB, exclusive bool) {
	t.Helper()
	unlock, err := Lock(exclusive)
	if err != nil {
		t.Fatalf("rabbittest: %v", err)
	}
	t.Cleanup(unlock)
}

// Lock takes the broker lock (see the package documentation), shared or
// exclusive, for code that runs outside a test, and returns the function
// that releases it (calling it again does nothing). Take it shared for the
// whole of a run against the broker, and exclusive around a broker-wide
// change (an alarm, close_all_connections, stop_app) until the broker is
// back to normal; an exclusive hold while a shared one is held upgrades the
// process's lock. It waits at most 5 minutes for other processes.
func Lock(exclusive bool) (unlock func(), err error) { return LockWithin(exclusive, lockWait) }

// LockWithin is [Lock] waiting at most wait for other processes; it fails
// when they still hold the lock after that.
func LockWithin(exclusive bool, wait time.Duration) (unlock func(), err error) {
	return brokerLock.take(lockFileName, "broker lock", exclusive, wait)
}

// take adds a holder to l, opening its file (name, in os.TempDir) the first
// time, and brings the file lock in line, waiting at most wait for other
// processes. It returns the function that removes the holder (calling it
// again does nothing). what names the lock in errors.
func (l *lockState) take(name, what string, exclusive bool, wait time.Duration) (unlock func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		f, err := os.OpenFile(filepath.Join(os.TempDir(), name), os.O_RDWR|os.O_CREATE, 0o666)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		l.f = f
	}
	l.add(exclusive, 1)
	if err := l.apply(wait); err != nil {
		l.add(exclusive, -1)
		_ = l.apply(lockWait)
		return nil, fmt.Errorf("%s %s: %w", what, l.f.Name(), err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.add(exclusive, -1)
			_ = l.apply(lockWait)
		})
	}, nil
}

func (l *lockState) add(exclusive bool, n int) {
	if exclusive {
		l.exclusive += n
	} else {
		l.shared += n
	}
}

// apply brings the flock mode in line with the holder counts, waiting at
// most wait for other processes. Called with mu held.
func (l *lockState) apply(wait time.Duration) error {
	want := 0
	switch {
	case l.exclusive > 0:
		want = syscall.LOCK_EX
	case l.shared > 0:
		want = syscall.LOCK_SH
	}
	if want == l.mode {
		return nil
	}
	if want == 0 {
		l.mode = 0
		return syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	}
	// Polled rather than blocking, to bound the wait. A failed conversion
	// drops the lock held before (flock(2)), so l.mode is 0 until it succeeds.
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(l.f.Fd()), want|syscall.LOCK_NB)
		if err == nil {
			l.mode = want
			return nil
		}
		l.mode = 0
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still held by another test process after %v", wait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
