package rabbittest

import (
	"context"
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// must stops the test on an error.
func must(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func TestURL(t *testing.T) {
	for _, tc := range []struct{ env, want string }{
		{"", DefaultURL},
		{"amqp://u:p@h:1/v", "amqp://u:p@h:1/v"},
		{" amqp://a/ , amqp://b/", "amqp://a/"},
		{",amqp://b/", "amqp://b/"},
	} {
		t.Setenv("RABBITMQ_URL", tc.env)
		if got := URL(); got != tc.want {
			t.Errorf("RABBITMQ_URL=%q: URL() = %q, want %q", tc.env, got, tc.want)
		}
	}
}

func TestRedact(t *testing.T) {
	if got, want := Redact(DefaultURL), "amqp://guest:xxxxx@127.0.0.1:5672/"; got != want {
		t.Errorf("Redact = %q, want %q", got, want)
	}
	if got := Redact("amqps://u:s3cret@h/"); strings.Contains(got, "s3cret") {
		t.Errorf("Redact = %q shows the password", got)
	}
}

func TestWatermarkArgs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"0.4", []string{"0.4"}},
		{"0.6", []string{"0.6"}},
		{"1.0e-7", nil}, // left over from an aborted WithMemoryAlarm
		{"0.0", nil},
		{"{absolute,1073741824}", []string{"absolute", "1073741824"}},
		{"{absolute,x}", nil},
		{"Error: node down", nil},
	} {
		got, ok := watermarkArgs(tc.in)
		if ok != (tc.want != nil) || !slices.Equal(got, tc.want) {
			t.Errorf("watermarkArgs(%q) = %q, %v; want %q", tc.in, got, ok, tc.want)
		}
	}
}

// recorder stands in for a testing.TB to observe Fatal and Skip, which end
// the calling goroutine.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	failed bool
	skip   bool
	msg    string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatal(args ...any) { r.end(&r.failed, fmt.Sprint(args...)) }

func (r *recorder) Fatalf(format string, args ...any) { r.end(&r.failed, fmt.Sprintf(format, args...)) }

func (r *recorder) Skip(args ...any) { r.end(&r.skip, fmt.Sprint(args...)) }

func (r *recorder) end(flag *bool, msg string) {
	r.mu.Lock()
	*flag, r.msg = true, msg
	r.mu.Unlock()
	runtime.Goexit()
}

// run calls f with a recorder in its own goroutine, as the testing package would.
func run(t *testing.T, f func(testing.TB)) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r
}

func TestRequireUnreachable(t *testing.T) {
	// Nothing listens on port 1: the dial is refused at once.
	t.Setenv("RABBITMQ_URL", "amqp://guest:s3cret@127.0.0.1:1/")

	t.Setenv("CI", "")
	r := run(t, func(tb testing.TB) { Require(tb) })
	if !r.skip || r.failed {
		t.Errorf("outside CI: skipped=%v failed=%v, want a skip", r.skip, r.failed)
	}
	if !strings.Contains(r.msg, "scripts/ensure-rabbitmq.sh") || strings.Contains(r.msg, "s3cret") {
		t.Errorf("message %q: want the hint and no password", r.msg)
	}

	t.Setenv("CI", "true")
	r = run(t, func(tb testing.TB) { Require(tb) })
	if !r.failed || r.skip {
		t.Errorf("CI=true: skipped=%v failed=%v, want a failure", r.skip, r.failed)
	}
	if !strings.Contains(r.msg, "scripts/ensure-rabbitmq.sh") {
		t.Errorf("message %q: want the hint", r.msg)
	}
}

func TestRequireHoldsSharedLock(t *testing.T) {
	t.Run("require", func(t *testing.T) {
		Require(t)
		// Another open file description of the lock file behaves like
		// another process.
		fd := openLock(t)
		if err := syscall.Flock(fd, syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
			t.Errorf("shared lock elsewhere refused (%v): other processes' broker tests should run alongside", err)
		}
		must(t, syscall.Flock(fd, syscall.LOCK_UN), "unlock")
		if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			t.Error("exclusive lock elsewhere granted during a broker test")
		}
	})
	// Other packages' broker tests may hold the file shared right now, so
	// look at this process's own hold: released when the test ended.
	brokerLock.mu.Lock()
	shared, exclusive, mode := brokerLock.shared, brokerLock.exclusive, brokerLock.mode
	brokerLock.mu.Unlock()
	if shared != 0 || exclusive != 0 || mode != 0 {
		t.Errorf("after the test: shared=%d exclusive=%d mode=%d, want the lock released", shared, exclusive, mode)
	}
}

func openLock(t *testing.T) int {
	t.Helper()
	brokerLock.mu.Lock()
	name := brokerLock.f.Name()
	brokerLock.mu.Unlock()
	f, err := os.Open(name)
	must(t, err, "open lock file")
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

func TestCtl(t *testing.T) {
	Require(t)
	if got := strings.TrimSpace(Ctl(t, "-q", "eval", "1 + 1.")); got != "2" {
		t.Errorf("eval 1 + 1. = %q", got)
	}
	if r := run(t, func(tb testing.TB) { Ctl(tb, "no_such_command") }); !r.failed {
		t.Error("a failing rabbitmqctl command did not fail the test")
	}
}

// tempQueue declares a classic queue that is deleted when the test ends
// (and expires by itself should the run be killed).
func tempQueue(t *testing.T, url string) string {
	t.Helper()
	name := fmt.Sprintf("rabbittest.%s.%d", t.Name(), time.Now().UnixNano())
	ch, err := Dial(t, url).Channel()
	must(t, err, "channel")
	_, err = ch.QueueDeclare(name, false, false, false, false, amqp.Table{"x-expires": int32(10 * 60 * 1000)})
	must(t, err, "declare "+name)
	must(t, ch.Close(), "close channel")
	t.Cleanup(func() { DeleteQueues(t, url, name) })
	return name
}

// publish sends one message per id to the queue and waits for the confirms.
func publish(t *testing.T, url, queue string, ids ...string) {
	t.Helper()
	ch, err := Dial(t, url).Channel()
	must(t, err, "channel")
	defer ch.Close()
	must(t, ch.Confirm(false), "confirm mode")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, id := range ids {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false,
			amqp.Publishing{MessageId: id, Body: []byte("body of " + id)})
		must(t, err, "publish "+id)
		ok, err := dc.WaitContext(ctx)
		must(t, err, "confirm of "+id)
		if !ok {
			t.Fatalf("broker nacked %q", id)
		}
	}
}

func TestDrainIDs(t *testing.T) {
	url := Require(t)
	q := tempQueue(t, url)
	publish(t, url, q, "a", "b", "c", "b", "")
	if n := QueueLen(t, url, q); n != 5 {
		t.Errorf("QueueLen = %d, want 5", n)
	}

	got := DrainIDs(t, url, q, 300*time.Millisecond)
	if want := map[string]int{"a": 1, "b": 2, "c": 1, "": 1}; !maps.Equal(got, want) {
		t.Errorf("DrainIDs = %v, want %v", got, want)
	}
	if n := QueueLen(t, url, q); n != 0 {
		t.Errorf("QueueLen after drain = %d, want 0", n)
	}
	if got := DrainIDs(t, url, q, 100*time.Millisecond); len(got) != 0 {
		t.Errorf("DrainIDs of an empty queue = %v", got)
	}
}

func TestPurgeAndDeleteQueues(t *testing.T) {
	url := Require(t)
	q1, q2 := tempQueue(t, url), tempQueue(t, url)
	publish(t, url, q1, "1", "2")
	publish(t, url, q2, "3")

	PurgeQueues(t, url, q1, "rabbittest.no-such-queue", q2)
	if n1, n2 := QueueLen(t, url, q1), QueueLen(t, url, q2); n1 != 0 || n2 != 0 {
		t.Errorf("after purge: %d and %d messages", n1, n2)
	}

	DeleteQueues(t, url, q1, "rabbittest.no-such-queue")
	if r := run(t, func(tb testing.TB) { QueueLen(tb, url, q1) }); !r.failed {
		t.Error("QueueLen of a deleted queue did not fail the test")
	}
	DeleteQueues(t, url, q1) // already gone: ignored
}

func TestCloseAllConnections(t *testing.T) {
	url := Require(t)
	conn := Dial(t, url)
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))

	CloseAllConnections(t)
	select {
	case err := <-closed:
		if err == nil || err.Code != amqp.ConnectionForced {
			t.Errorf("connection closed with %v, want the broker's connection-forced", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("connection still open 10 s after close_all_connections")
	}
}

func TestWithMemoryAlarm(t *testing.T) {
	url := Require(t)
	before := MemoryWatermark(t)
	want := before
	if _, ok := watermarkArgs(before); !ok {
		want = defaultWatermark // a leftover of an aborted run is not restored
	}

	t.Run("alarm", func(t *testing.T) {
		// A publish may block in the socket write until the alarm clears, and
		// a blocked broker reads nothing, not even connection.close: the
		// connection is opened first so that it is closed after the alarm
		// is cleared (cleanups run last-in first-out).
		var wg sync.WaitGroup
		t.Cleanup(wg.Wait)
		conn := Dial(t, url)
		blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 2))
		ch, err := conn.Channel()
		must(t, err, "channel")

		WithMemoryAlarm(t)
		if !MemoryAlarm(t) {
			t.Fatal("no memory alarm after WithMemoryAlarm")
		}

		// The broker blocks a connection as soon as it publishes.
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = ch.Publish("", "rabbittest.no-such-queue", false, false, amqp.Publishing{Body: []byte("x")})
		}()
		select {
		case b := <-blocked:
			if !b.Active || !strings.Contains(b.Reason, "memory") {
				t.Errorf("got %+v, want connection.blocked for memory", b)
			}
		case <-time.After(15 * time.Second):
			t.Error("no connection.blocked 15 s into a memory alarm")
		}
	})

	if MemoryAlarm(t) {
		t.Error("memory alarm still on after the subtest's cleanup")
	}
	if got := MemoryWatermark(t); got != want {
		t.Errorf("watermark after cleanup = %s, want %s", got, want)
	}
}
