package mlproducer_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
)

// The TLS guards of the security review: with a local TLS listener (no
// broker needed) the Producer verifies the server's certificate and name,
// refuses old protocol versions, sends each URL's own server name without
// touching the caller's config, and refuses amqp URLs beside a TLS config.

// tlsPassword is the password of every URL here; no error may show it.
const tlsPassword = "TlsGuardPw1"

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mlproducer test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert, key, pool}
}

// leaf returns a server certificate for the names and addresses given.
func (ca *testCA) leaf(t *testing.T, dns []string, ips []net.IP) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: dns, IPAddresses: ips, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// handshakeServer listens on 127.0.0.1. With a TLS config it records the
// outcome and server name of each handshake; without one, the first 8 bytes
// each client sends. Then it hangs up.
type handshakeServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
	ok    int
	sni   []string
	errs  []string
	raw   [][]byte
}

func startHandshakeServer(t *testing.T, cfg *tls.Config) *handshakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &handshakeServer{ln: ln, conns: map[net.Conn]bool{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = true
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(c, cfg)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *handshakeServer) serve(c net.Conn, cfg *tls.Config) {
	defer func() {
		_ = c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if cfg == nil {
		b := make([]byte, 8)
		n, _ := io.ReadFull(c, b)
		s.mu.Lock()
		s.raw = append(s.raw, b[:n])
		s.mu.Unlock()
		return
	}
	tc := tls.Server(c, cfg)
	err := tc.Handshake()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.errs = append(s.errs, err.Error())
	} else {
		s.ok++
		s.sni = append(s.sni, tc.ConnectionState().ServerName)
	}
}

func (s *handshakeServer) port() string {
	_, p, _ := net.SplitHostPort(s.ln.Addr().String())
	return p
}

// seen returns how many handshakes succeeded and failed, and how many plain
// connections sent their first bytes.
func (s *handshakeServer) seen() (ok, failed, plain int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ok, len(s.errs), len(s.raw)
}

// tlsProducer starts a Producer on urls and returns it once done says so
// (polled; at most 10 s), with its logs so far.
func tlsProducer(t *testing.T, urls []string, done func(p *mlproducer.Producer) bool, opts ...mlproducer.Option) (mlproducer.Status, string) {
	t.Helper()
	var logs syncBuffer
	p, err := mlproducer.New(append([]mlproducer.Option{mlproducer.WithURLs(urls...),
		mlproducer.WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))),
		mlproducer.WithReconnectBackoff(20*time.Millisecond, 50*time.Millisecond),
		mlproducer.WithConnectionTimeout(time.Second)}, opts...)...)
	require.NoError(t, err)
	assert.Eventually(t, func() bool { return done(p) }, 10*time.Second, 10*time.Millisecond)
	st := p.Status()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, p.Close(ctx))
	for what, text := range map[string]string{"LastError": st.LastError, "URL": st.URL, "logs": logs.String()} {
		assert.NotContains(t, text, tlsPassword, what)
	}
	return st, logs.String()
}

func amqpsURL(host, port string) string {
	return "amqps://u:" + tlsPassword + "@" + host + ":" + port + "/"
}

// A certificate the Producer cannot verify (unknown CA, other name, TLS 1.1)
// fails the handshake, and the last error says why.
func TestTLSRefusesWhatItCannotVerify(t *testing.T) {
	ca := newTestCA(t)
	good := ca.leaf(t, []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")})
	cases := []struct {
		name   string
		server *tls.Config
		client []mlproducer.Option
		why    string
	}{
		{"unknown CA, default config", &tls.Config{Certificates: []tls.Certificate{good}}, nil, "x509: certificate signed by unknown authority"},
		{"unknown CA, nil config", &tls.Config{Certificates: []tls.Certificate{good}},
			[]mlproducer.Option{mlproducer.WithTLSConfig(nil)}, "x509: certificate signed by unknown authority"},
		{"wrong host name", &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, []string{"other.example"}, nil)}},
			[]mlproducer.Option{mlproducer.WithTLSConfig(&tls.Config{RootCAs: ca.pool})}, "x509:"},
		{"TLS 1.1 with a config that sets only the roots",
			&tls.Config{Certificates: []tls.Certificate{good}, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11},
			[]mlproducer.Option{mlproducer.WithTLSConfig(&tls.Config{RootCAs: ca.pool})}, "protocol version"},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			s := startHandshakeServer(t, c.server)
			st, _ := tlsProducer(t, []string{amqpsURL("127.0.0.1", s.port())}, func(p *mlproducer.Producer) bool {
				_, failed, _ := s.seen()
				return failed > 0 && strings.Contains(p.Status().LastError, c.why)
			}, c.client...)
			assert.Contains(t, st.LastError, c.why)
			ok, failed, _ := s.seen()
			assert.Zero(t, ok, "handshakes that succeeded")
			assert.NotZero(t, failed, "handshakes that failed")
		})
	}
}

// Two amqps URLs with one config: each handshake carries its own URL's
// server name (none for an IP address), and the caller's config is left as
// it was.
func TestTLSServerNamePerURL(t *testing.T) {
	ca := newTestCA(t)
	a := startHandshakeServer(t, &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, []string{"localhost"}, nil)}})
	b := startHandshakeServer(t, &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, nil, []net.IP{net.ParseIP("127.0.0.1")})}})
	cfg := &tls.Config{RootCAs: ca.pool}
	// The servers hang up after the handshake: the Producer fails over
	// from one to the other. The failed handshakes are read once both
	// servers have seen one succeed, before Close: Close may cut a dial
	// that is under way, and the server then sees the connection reset.
	var errsA, errsB []string
	tlsProducer(t, []string{amqpsURL("localhost", a.port()), amqpsURL("127.0.0.1", b.port())},
		func(*mlproducer.Producer) bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			b.mu.Lock()
			defer b.mu.Unlock()
			errsA, errsB = slices.Clone(a.errs), slices.Clone(b.errs)
			return a.ok > 0 && b.ok > 0
		}, mlproducer.WithTLSConfig(cfg))
	assert.Empty(t, cfg.ServerName, "the caller's config is not written")
	assert.Empty(t, errsA)
	assert.Empty(t, errsB)
	a.mu.Lock()
	defer a.mu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	require.NotEmpty(t, a.sni)
	require.NotEmpty(t, b.sni)
	for _, name := range a.sni {
		assert.Equal(t, "localhost", name)
	}
	for _, name := range b.sni {
		assert.Empty(t, name, "no server name for an IP address")
	}
}

// With WithTLSConfig an amqp URL, alone or after an amqps one in the list,
// is refused by New: it would send the password in clear. The error names
// the option, says to use amqps:// and shows no password. WithPlaintextAllowed
// makes plain text a choice: the amqp URL then speaks plain AMQP.
func TestTLSOnlyOnAMQPS(t *testing.T) {
	ca := newTestCA(t)
	cfg := &tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS13}
	cases := map[string]func(port string) []string{
		"amqp URL": func(port string) []string { return []string{"amqp://u:" + tlsPassword + "@127.0.0.1:" + port + "/"} },
		"amqps then amqp": func(port string) []string {
			return []string{amqpsURL("127.0.0.1", "1"), "amqp://u:" + tlsPassword + "@127.0.0.1:" + port + "/"}
		},
		"upper-case AMQP": func(port string) []string { return []string{"AMQP://u:" + tlsPassword + "@127.0.0.1:" + port + "/"} },
	}
	for name, urls := range cases {
		t.Run("refused/"+strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			for _, c := range []*tls.Config{cfg, nil} {
				_, err := mlproducer.New(mlproducer.WithURLs(urls("5672")...), mlproducer.WithTLSConfig(c))
				var oe *mlproducer.OptionError
				require.ErrorAs(t, err, &oe)
				assert.Equal(t, "WithURLs", oe.Name)
				assert.Contains(t, err.Error(), "WithTLSConfig")
				assert.Contains(t, err.Error(), "amqps://")
				assert.Contains(t, err.Error(), "WithPlaintextAllowed")
				assert.NotContains(t, err.Error(), tlsPassword)
			}
		})
		t.Run("allowed/"+strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			s := startHandshakeServer(t, nil)
			tlsProducer(t, urls(s.port()), func(*mlproducer.Producer) bool {
				_, _, plain := s.seen()
				return plain > 0
			}, mlproducer.WithTLSConfig(cfg), mlproducer.WithPlaintextAllowed())
			s.mu.Lock()
			defer s.mu.Unlock()
			require.NotEmpty(t, s.raw)
			assert.Equal(t, []byte("AMQP\x00\x00\x09\x01"), s.raw[0], "the AMQP protocol header, in plain text")
		})
	}
	// Without WithTLSConfig an amqp URL needs no opt-in.
	p, err := mlproducer.New(mlproducer.WithURLs("amqp://u:p@127.0.0.1:1/"))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, p.Close(ctx))
}
