package tlsproxy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/url"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mlproducer/mlproducer/internal/rabbittest"
	"github.com/mlproducer/mlproducer/internal/tlsproxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func brokerAddr(t *testing.T, brokerURL string) string {
	t.Helper()
	u, err := url.Parse(brokerURL)
	require.NoError(t, err)
	if u.Port() != "" {
		return u.Host
	}
	return net.JoinHostPort(u.Hostname(), "5672")
}

func start(t *testing.T, upstream string) *tlsproxy.Proxy {
	t.Helper()
	p, err := tlsproxy.Start(upstream)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, p.Close()) })
	return p
}

// The certificate: ECDSA, signed by the proxy's CA, for 127.0.0.1, ::1 and
// localhost, short-lived. No broker needed: the handshake comes first.
func TestCertificate(t *testing.T) {
	p := start(t, "127.0.0.1:1")
	for _, name := range []string{"127.0.0.1", "localhost"} {
		c, err := tls.Dial("tcp", p.Addr(), &tls.Config{RootCAs: p.CAPool(), ServerName: name})
		require.NoError(t, err, name)
		leaf := c.ConnectionState().PeerCertificates[0]
		c.Close()
		assert.IsType(t, &ecdsa.PublicKey{}, leaf.PublicKey)
		assert.Contains(t, leaf.DNSNames, "localhost")
		assert.True(t, leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)))
		assert.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, leaf.ExtKeyUsage)
		assert.WithinDuration(t, time.Now().Add(time.Hour), leaf.NotAfter, 2*time.Minute)
		assert.True(t, leaf.NotBefore.Before(time.Now()))
	}
	_, err := tls.Dial("tcp", p.Addr(), &tls.Config{RootCAs: p.CAPool(), ServerName: "example.com"})
	assert.ErrorContains(t, err, "x509", "a name the certificate does not cover")
}

func TestURL(t *testing.T) {
	p := start(t, "127.0.0.1:5672")
	assert.Equal(t, "amqps://guest:s%40cret@"+p.Addr()+"/vh", p.URL("amqp://guest:s%40cret@broker.example:5672/vh"))
	assert.Equal(t, "amqps://guest:guest@"+p.Addr()+"/", p.URL("amqp://guest:guest@127.0.0.1:5672/"))
	assert.Equal(t, "", p.URL("::bad"))
}

func TestStartRejectsBadUpstream(t *testing.T) {
	_, err := tlsproxy.Start("nohostport")
	assert.ErrorContains(t, err, "host:port")
}

// Two proxies have unrelated CAs: one's pool does not trust the other.
func TestCAsAreUnrelated(t *testing.T) {
	a, b := start(t, "127.0.0.1:1"), start(t, "127.0.0.1:1")
	_, err := tls.Dial("tcp", a.Addr(), &tls.Config{RootCAs: b.CAPool()})
	assert.ErrorContains(t, err, "x509")
	_, err = tls.Dial("tcp", a.Addr(), &tls.Config{}) // system roots
	assert.ErrorContains(t, err, "x509")
}

// Through the proxy, AMQP over TLS reaches the real broker.
func TestForwardsToBroker(t *testing.T) {
	brokerURL := rabbittest.Require(t)
	p := start(t, brokerAddr(t, brokerURL))
	conn, err := amqp.DialTLS(p.URL(brokerURL), &tls.Config{RootCAs: p.CAPool()})
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	require.NoError(t, err)
	require.NoError(t, ch.PublishWithContext(context.Background(), "", q.Name, true, false, amqp.Publishing{Body: []byte("over tls")}))
	require.Eventually(t, func() bool {
		d, ok, err := ch.Get(q.Name, true)
		require.NoError(t, err)
		return ok && string(d.Body) == "over tls"
	}, 5*time.Second, 10*time.Millisecond)

	_, err = amqp.DialTLS(p.URL(brokerURL), &tls.Config{})
	assert.ErrorContains(t, err, "x509", "system roots do not trust the test CA")
}

// Close ends live connections and leaves no goroutine behind.
func TestCloseEndsConnections(t *testing.T) {
	brokerURL := rabbittest.Require(t)
	p, err := tlsproxy.Start(brokerAddr(t, brokerURL))
	require.NoError(t, err)
	conn, err := amqp.DialTLS(p.URL(brokerURL), &tls.Config{RootCAs: p.CAPool()})
	require.NoError(t, err)
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	// A client stuck in its handshake.
	stuck, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer stuck.Close()

	require.NoError(t, p.Close())
	require.NoError(t, p.Close())
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the AMQP connection was not closed")
	}
	_, err = net.DialTimeout("tcp", p.Addr(), time.Second)
	assert.Error(t, err)
	_ = conn.Close()
	goleak.VerifyNone(t)
}
