package faults

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mlproducer/mlproducer/internal/rabbittest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// amqpHeader opens an AMQP 0-9-1 connection; the broker answers with a
// connection.start method frame, whose first byte is 1.
var amqpHeader = []byte("AMQP\x00\x00\x09\x01")

// brokerAddr is the host:port of the broker URL.
func brokerAddr(t *testing.T, brokerURL string) string {
	t.Helper()
	u, err := url.Parse(brokerURL)
	require.NoError(t, err)
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "amqps" {
		return net.JoinHostPort(u.Hostname(), "5671")
	}
	return net.JoinHostPort(u.Hostname(), "5672")
}

// startProxy requires the broker and puts a proxy in front of it.
func startProxy(t *testing.T) (*Proxy, string) {
	t.Helper()
	brokerURL := rabbittest.Require(t)
	p := StartT(t, brokerAddr(t, brokerURL))
	return p, brokerURL
}

func dialAMQP(t *testing.T, u string, heartbeat time.Duration) *amqp.Connection {
	t.Helper()
	conn, err := amqp.DialConfig(u, amqp.Config{Heartbeat: heartbeat, Dial: amqp.DefaultDial(5 * time.Second)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.CloseDeadline(time.Now().Add(time.Second)) })
	return conn
}

// rawHandshake dials addr, sends the AMQP header and reports whether the
// broker answered within wait (and the connection, still open).
func rawHandshake(t *testing.T, addr string, wait time.Duration) (net.Conn, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = c.Write(amqpHeader)
	require.NoError(t, err)
	return c, readFirst(c, wait)
}

// readFirst reads one byte within wait and checks that it starts a method
// frame.
func readFirst(c net.Conn, wait time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return err
	}
	if b[0] != 1 {
		return errors.New("not an AMQP method frame")
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// roundTrip times the fastest of n passive declarations of a built-in
// exchange: one request and its answer each.
func roundTrip(t *testing.T, ch *amqp.Channel, n int) time.Duration {
	t.Helper()
	best := time.Duration(1<<63 - 1)
	for i := 0; i < n; i++ {
		start := time.Now()
		require.NoError(t, ch.ExchangeDeclarePassive("amq.direct", "direct", true, false, false, false, nil))
		best = min(best, time.Since(start))
	}
	return best
}

func TestURLKeepsCredentialsAndVhost(t *testing.T) {
	p, err := Start("127.0.0.1:5672")
	require.NoError(t, err)
	defer p.Close()
	addr := p.Addr()
	assert.True(t, strings.HasPrefix(addr, "127.0.0.1:"), addr)
	assert.Equal(t, "amqp://u:p%40ss@"+addr+"/vh?heartbeat=5", p.URL("amqp://u:p%40ss@broker.example:5672/vh?heartbeat=5"))
	assert.Equal(t, "amqps://guest:guest@"+addr+"/", p.URL("amqps://guest:guest@127.0.0.1/"))
	assert.Equal(t, "", p.URL("::not a url"), "an unusable URL must not bypass the proxy")
	assert.Equal(t, "", p.URL("127.0.0.1:5672"))
}

func TestStartRejectsBadUpstream(t *testing.T) {
	_, err := Start("127.0.0.1")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "host:port")
}

func TestClosedProxy(t *testing.T) {
	p, err := Start("127.0.0.1:5672")
	require.NoError(t, err)
	addr := p.Addr()
	require.NoError(t, p.Close())
	require.NoError(t, p.Close(), "Close twice")
	for name, f := range map[string]func() error{
		"ResetPeers": p.ResetPeers, "BlackHole": p.BlackHole, "Clear": p.Clear,
		"AddLatency":     func() error { return p.AddLatency(time.Millisecond, 0) },
		"LimitBandwidth": func() error { return p.LimitBandwidth(1) },
	} {
		assert.ErrorIs(t, f(), ErrClosed, name)
	}
	_, err = net.DialTimeout("tcp", addr, time.Second)
	assert.Error(t, err, "no longer listening")
}

func TestBadFaultValues(t *testing.T) {
	p := StartT(t, "127.0.0.1:5672")
	assert.Error(t, p.AddLatency(-time.Millisecond, 0))
	assert.Error(t, p.AddLatency(time.Millisecond, -time.Millisecond))
	assert.Error(t, p.LimitBandwidth(0))
}

// With no fault, the proxy is transparent: a message goes through and back.
func TestPassThrough(t *testing.T) {
	p, brokerURL := startProxy(t)
	conn := dialAMQP(t, p.URL(brokerURL), 0)
	ch, err := conn.Channel()
	require.NoError(t, err)
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	require.NoError(t, err)
	body := bytes.Repeat([]byte("x"), 100_000)
	require.NoError(t, ch.PublishWithContext(context.Background(), "", q.Name, true, false, amqp.Publishing{Body: body}))
	var d amqp.Delivery
	require.Eventually(t, func() bool {
		var ok bool
		d, ok, err = ch.Get(q.Name, true)
		require.NoError(t, err)
		return ok
	}, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, body, d.Body)
}

// ResetPeers cuts current connections with an RST on both sides; new ones
// work at once.
func TestResetPeers(t *testing.T) {
	p, brokerURL := startProxy(t)
	raw, err := rawHandshake(t, p.Addr(), 5*time.Second)
	require.NoError(t, err)
	conn := dialAMQP(t, p.URL(brokerURL), 0)
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))

	require.NoError(t, p.ResetPeers())

	// Read the rest of connection.start, then the reset.
	_ = raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.Copy(io.Discard, raw)
	assert.True(t, errors.Is(err, syscall.ECONNRESET), "want an RST, got %v", err)
	select {
	case e := <-closed:
		require.NotNil(t, e)
		assert.Contains(t, e.Error(), "connection reset by peer")
	case <-time.After(5 * time.Second):
		t.Fatal("the AMQP connection did not notice the reset")
	}

	conn2 := dialAMQP(t, p.URL(brokerURL), 0)
	ch, err := conn2.Channel()
	require.NoError(t, err)
	require.NoError(t, ch.Close())
}

// A black hole: nothing comes back, on old and new connections, and no
// FIN or RST either; after Clear new connections work and the old ones stay
// dead.
func TestBlackHole(t *testing.T) {
	p, brokerURL := startProxy(t)
	old, err := rawHandshake(t, p.Addr(), 5*time.Second)
	require.NoError(t, err)
	// Drain the rest of connection.start.
	_ = old.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	_, _ = old.Read(make([]byte, 4096))

	require.NoError(t, p.BlackHole())

	// A frame the broker would answer (a heartbeat is not answered, a bad
	// frame is: with connection.close and a FIN).
	_, err = old.Write([]byte("garbage that the broker would refuse with a close"))
	require.NoError(t, err)
	err = readFirst(old, 700*time.Millisecond)
	assert.True(t, isTimeout(err), "old connection: want silence, got %v", err)

	_, err = rawHandshake(t, p.Addr(), 700*time.Millisecond)
	assert.True(t, isTimeout(err), "new connection during the black hole: want silence, got %v", err)

	require.NoError(t, p.Clear())
	_, err = rawHandshake(t, p.Addr(), 5*time.Second)
	assert.NoError(t, err, "a new connection after Clear")
	err = readFirst(old, 300*time.Millisecond)
	assert.True(t, isTimeout(err), "the black-holed connection stays dead and silent, got %v", err)

	conn := dialAMQP(t, p.URL(brokerURL), 0)
	ch, err := conn.Channel()
	require.NoError(t, err)
	require.NoError(t, ch.Close())
}

// The broker closes its side of a black-holed connection when its heartbeats
// go unanswered; the client must not see that FIN. The client here never
// times out by itself (its read deadlines are ignored), so only a leaked FIN
// or RST could end its connection.
func TestBlackHoleHidesTheBrokerClosing(t *testing.T) {
	p, brokerURL := startProxy(t)
	const heartbeat = time.Second
	conn, err := amqp.DialConfig(p.URL(brokerURL), amqp.Config{
		Heartbeat: heartbeat,
		Dial: func(network, addr string) (net.Conn, error) {
			c, err := net.DialTimeout(network, addr, 5*time.Second)
			return noReadDeadline{c}, err
		},
	})
	require.NoError(t, err)
	defer conn.CloseDeadline(time.Now())
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))

	require.NoError(t, p.BlackHole())
	start := time.Now()
	for p.upstreamClosed() == 0 {
		select {
		case e := <-closed:
			t.Fatalf("the client's connection ended through the black hole: %v", e)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Since(start) > 10*heartbeat {
			t.Fatal("the broker did not close the black-holed connection")
		}
	}
	t.Logf("the broker closed its side %v after the black hole began", time.Since(start).Round(time.Millisecond))
	select {
	case e := <-closed:
		t.Fatalf("the client saw the broker's close through the black hole: %v", e)
	case <-time.After(500 * time.Millisecond):
	}
	assert.False(t, conn.IsClosed())
}

// noReadDeadline ignores read deadlines: amqp091-go's heartbeat timeout then
// never fires.
type noReadDeadline struct{ net.Conn }

func (noReadDeadline) SetReadDeadline(time.Time) error { return nil }
func (c noReadDeadline) SetDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(t) }

func TestLatency(t *testing.T) {
	p, brokerURL := startProxy(t)
	conn := dialAMQP(t, p.URL(brokerURL), 0)
	ch, err := conn.Channel()
	require.NoError(t, err)
	base := roundTrip(t, ch, 3)

	require.NoError(t, p.AddLatency(100*time.Millisecond, 0))
	rt := roundTrip(t, ch, 3)
	t.Logf("round trip: %v without latency, %v with 100 ms each way", base, rt)
	assert.GreaterOrEqual(t, rt, 195*time.Millisecond, "latency in both directions")
	assert.Less(t, rt, 600*time.Millisecond)

	require.NoError(t, p.AddLatency(30*time.Millisecond, 10*time.Millisecond), "replaces the latency")
	rt = roundTrip(t, ch, 3)
	assert.GreaterOrEqual(t, rt, 38*time.Millisecond)
	assert.Less(t, rt, 195*time.Millisecond)

	require.NoError(t, p.Clear())
	assert.Less(t, roundTrip(t, ch, 3), 30*time.Millisecond+base)
}

func TestLimitBandwidth(t *testing.T) {
	p, brokerURL := startProxy(t)
	conn := dialAMQP(t, p.URL(brokerURL), 0)
	ch, err := conn.Channel()
	require.NoError(t, err)
	require.NoError(t, ch.Confirm(false))
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	require.NoError(t, err)
	publish := func() time.Duration {
		start := time.Now()
		dc, err := ch.PublishWithDeferredConfirm("", q.Name, true, false, amqp.Publishing{Body: make([]byte, 64_000)})
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ok, err := dc.WaitContext(ctx)
		require.NoError(t, err)
		require.True(t, ok)
		return time.Since(start)
	}

	require.NoError(t, p.LimitBandwidth(64))
	limited := publish()
	require.NoError(t, p.Clear())
	free := publish()
	t.Logf("64 kB published in %v at 64 KB/s, in %v without a limit", limited, free)
	assert.GreaterOrEqual(t, limited, 800*time.Millisecond)
	assert.Less(t, limited, 3*time.Second)
	assert.Less(t, free, 500*time.Millisecond)
}

// Close ends every connection, live, slowed or parked, and leaves no
// goroutine behind.
func TestCloseEndsEverything(t *testing.T) {
	brokerURL := rabbittest.Require(t)
	p, err := Start(brokerAddr(t, brokerURL))
	require.NoError(t, err)
	conn, err := amqp.Dial(p.URL(brokerURL))
	require.NoError(t, err)
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	require.NoError(t, p.AddLatency(200*time.Millisecond, 0))
	require.NoError(t, p.LimitBandwidth(10))
	require.NoError(t, p.BlackHole())
	parked, err := net.DialTimeout("tcp", p.Addr(), time.Second)
	require.NoError(t, err)
	defer parked.Close()

	start := time.Now()
	require.NoError(t, p.Close())
	t.Logf("Close took %v", time.Since(start))
	assert.Less(t, time.Since(start), 2*time.Second)
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the AMQP connection was not closed")
	}
	_ = parked.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = parked.Read(make([]byte, 1))
	assert.False(t, isTimeout(err), "the parked connection is closed: %v", err)
	_ = conn.Close()
	goleak.VerifyNone(t)
}
