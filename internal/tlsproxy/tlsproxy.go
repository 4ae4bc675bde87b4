// Package tlsproxy is a TLS-terminating TCP proxy for tests: it accepts TLS on
// 127.0.0.1 with a certificate from a throw-away CA made at [Start], and
// forwards the plaintext to an upstream such as a RabbitMQ broker that only
// speaks plain AMQP. A client that trusts [Proxy.CAPool] connects; one that
// does not is refused by its own certificate check.
package tlsproxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"sync"
	"time"
)

const (
	// validity of the certificates made at Start.
	validity = time.Hour
	// handshakeTimeout bounds each TLS handshake with a client.
	handshakeTimeout = 5 * time.Second
	// dialTimeout bounds the dial to the upstream.
	dialTimeout = 5 * time.Second
)

// Proxy terminates TLS and forwards to an upstream. Its methods are safe for
// concurrent use. Create one with [Start] and stop it with [Proxy.Close].
type Proxy struct {
	ln       net.Listener // plain TCP; each connection is wrapped by tls.Server
	tlsCfg   *tls.Config
	ca       *x509.Certificate
	upstream string
	ctx      context.Context // cancelled by Close: ends handshakes and dials
	cancel   context.CancelFunc

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{} // raw sockets, both sides

	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Start generates an ECDSA P-256 CA and a server certificate it signs for
// 127.0.0.1, ::1 and localhost (both valid from a minute ago for an hour),
// listens for TLS on 127.0.0.1 on a free port, and forwards every connection
// in plaintext to upstream, a host:port such as "127.0.0.1:5672".
func Start(upstream string) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(upstream); err != nil {
		return nil, fmt.Errorf("tlsproxy: upstream %q: want host:port: %w", upstream, err)
	}
	ca, leaf, err := newCertificates(time.Now())
	if err != nil {
		return nil, fmt.Errorf("tlsproxy: certificates: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("tlsproxy: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		ln:       ln,
		tlsCfg:   &tls.Config{Certificates: []tls.Certificate{leaf}, MinVersion: tls.VersionTLS12},
		ca:       ca,
		upstream: upstream,
		ctx:      ctx,
		cancel:   cancel,
		conns:    make(map[net.Conn]struct{}),
	}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the address the proxy listens on, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// CAPool returns a new pool holding only the proxy's CA: pass it as
// tls.Config.RootCAs.
func (p *Proxy) CAPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	return pool
}

// URL returns brokerURL as an amqps URL to the proxy,
// "amqps://user:pass@127.0.0.1:port/vhost", keeping the user, password,
// virtual host and query. It returns "" when brokerURL cannot be parsed, so
// that a mistake fails loudly rather than bypassing the proxy.
func (p *Proxy) URL(brokerURL string) string {
	u, err := url.Parse(brokerURL)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return ""
	}
	u.Scheme = "amqps"
	u.Host = p.Addr()
	return u.String()
}

// Close stops listening, closes every connection (without a TLS
// close_notify) and returns once every goroutine of the proxy has finished.
// Calling it again returns the first result.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		conns := make([]net.Conn, 0, len(p.conns))
		for c := range p.conns {
			conns = append(conns, c)
		}
		p.mu.Unlock()
		p.cancel()
		if err := p.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			p.closeErr = fmt.Errorf("tlsproxy: close listener: %w", err)
		}
		for _, c := range conns {
			c.Close()
		}
		p.wg.Wait()
	})
	return p.closeErr
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.ctx.Err() != nil {
				return
			}
			select { // transient (out of file descriptors): try again soon
			case <-p.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		if !p.track(c) {
			c.Close()
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// track registers a raw socket so that Close can close it; false once closed.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

// serve handshakes with the client, dials the upstream and copies both ways
// until either side ends, then closes both.
func (p *Proxy) serve(raw net.Conn) {
	defer p.wg.Done()
	defer p.untrack(raw)
	client := tls.Server(raw, p.tlsCfg)
	ctx, cancel := context.WithTimeout(p.ctx, handshakeTimeout)
	err := client.HandshakeContext(ctx)
	cancel()
	if err != nil {
		return // the client refused our certificate, or went away
	}
	d := net.Dialer{Timeout: dialTimeout}
	up, err := d.DialContext(p.ctx, "tcp", p.upstream)
	if err != nil {
		return
	}
	if !p.track(up) {
		up.Close()
		return
	}
	defer p.untrack(up)

	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			// close_notify to the client, bounded by crypto/tls (5 s).
			client.Close()
			up.Close()
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(up, client)
		closeBoth()
	}()
	_, _ = io.Copy(client, up)
	closeBoth()
	<-done
}

// newCertificates makes a CA and a server certificate for 127.0.0.1, ::1 and
// localhost signed by it, valid from a minute before now for [validity].
func newCertificates(now time.Time) (*x509.Certificate, tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	caSerial, err := serial()
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          caSerial,
		Subject:               pkix.Name{CommonName: "mlproducer tlsproxy test CA", Organization: []string{"mlproducer tests"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, tls.Certificate{}, err
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	leafSerial, err := serial()
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: leafSerial,
		Subject:      pkix.Name{CommonName: "localhost", Organization: []string{"mlproducer tests"}},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(validity),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(leafDER)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	return ca, tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key, Leaf: leaf}, nil
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}
