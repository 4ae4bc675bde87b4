// Package faults is an in-process TCP proxy that injects network faults
// between a client (a Producer) and a real broker: connection resets, a black
// hole, added latency and a bandwidth limit. It serves tests (see [StartT]) and
// commands such as examples/reliability alike; nothing in its core API needs a
// testing.TB.
//
//	p, err := faults.Start("127.0.0.1:5672")
//	...
//	defer p.Close()
//	prod, err := mlproducer.New(mlproducer.WithURLs(p.URL("amqp://guest:guest@127.0.0.1:5672/")))
//	...
//	p.BlackHole() // the path goes silent: no byte, no FIN, no RST
//	p.Clear()     // new connections work again
//
// # Built on toxiproxy
//
// Latency and the bandwidth limit are toxiproxy's own toxics
// (github.com/Shopify/toxiproxy/v2), run in-process: every proxied connection
// is a pair of toxiproxy links (ToxicCollection.StartLink), and
// AddLatency/LimitBandwidth/Clear add and remove toxics on the proxy's
// ToxicCollection, which applies them to live connections and new ones alike.
//
// The connections themselves are accepted, dialled and closed here, not by
// toxiproxy's Proxy.Start, because toxiproxy v2.5.0 cannot give the faults
// this package promises:
//   - its reset_peer toxic sets SO_LINGER=0 only on connections opened after
//     the toxic was added, so existing connections get a FIN, not an RST, and
//     only once they next carry data;
//   - its timeout toxic (its black hole) closes the connection with a FIN when
//     it is removed, and the broker's FIN after its own heartbeat timeout
//     crosses it;
//   - its links stop reading their toxic chain when a write fails, which
//     leaves goroutines blocked forever, and Proxy.Stop does not wait for
//     them.
//
// So here ResetPeers closes both sockets with SO_LINGER=0, the black hole is a
// per-connection switch that discards bytes at the end of each link (and
// parks new connections without dialling the broker), and the sockets toxiproxy
// writes to never fail: after an error they discard, so a toxic chain always
// drains and its goroutines end once both sockets are closed.
//
// Toxiproxy's bandwidth toxic logs through zerolog's global logger; Start
// raises zerolog's global level from Trace (its default) to Debug so that it
// stays quiet. That is the package's one process-wide effect.
package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/Shopify/toxiproxy/v2/stream"
	"github.com/rs/zerolog"
)

// ErrClosed is returned by the methods of a Proxy after [Proxy.Close].
var ErrClosed = errors.New("faults: proxy closed")

// dialTimeout bounds the dial to the upstream for each accepted connection.
const dialTimeout = 5 * time.Second

// Proxy forwards TCP connections from a local port to an upstream address and
// injects faults into them. Its methods are safe for concurrent use. Create
// one with [Start] and stop it with [Proxy.Close].
type Proxy struct {
	ln       net.Listener
	upstream string
	server   *toxiproxy.ApiServer
	tp       *toxiproxy.Proxy
	ctx      context.Context // cancelled by Close: ends upstream dials
	cancel   context.CancelFunc

	toxMu sync.Mutex // serialises changes to the toxics

	mu        sync.Mutex
	closed    bool
	blackHole bool
	pairs     map[*pair]struct{}
	parked    map[*net.TCPConn]struct{}
	nextID    uint64

	wg        sync.WaitGroup // accept loop, upstream dials, parked connections
	closeOnce sync.Once
	closeErr  error
}

// Start listens on 127.0.0.1 on a free port and forwards every connection to
// upstream, a host:port such as "127.0.0.1:5672". The upstream is dialled
// (within 5 s) when a connection arrives; if that fails the client's
// connection is reset. Start does not contact the upstream itself.
func Start(upstream string) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(upstream); err != nil {
		return nil, fmt.Errorf("faults: upstream %q: want host:port: %w", upstream, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faults: listen: %w", err)
	}
	addr := ln.Addr().String()
	quietToxiproxy()
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		ln:       ln,
		upstream: upstream,
		server:   server,
		// Never started: only its ToxicCollection is used (see the package
		// documentation).
		tp:     toxiproxy.NewProxy(server, "faults-"+addr, addr, upstream),
		ctx:    ctx,
		cancel: cancel,
		pairs:  make(map[*pair]struct{}),
		parked: make(map[*net.TCPConn]struct{}),
	}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the address the proxy listens on, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL returns brokerURL with its host and port replaced by [Proxy.Addr],
// keeping the scheme, user, password, virtual host and query. It returns ""
// when brokerURL cannot be parsed, so that a mistake fails loudly (an empty
// URL is refused) rather than bypassing the proxy.
func (p *Proxy) URL(brokerURL string) string {
	u, err := url.Parse(brokerURL)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return ""
	}
	u.Host = p.Addr()
	return u.String()
}

// ResetPeers cuts every current connection with a TCP RST, on the client's
// side and on the upstream's, as a crashed middlebox or a rebooted peer
// would. Black-holed connections are reset too. New connections are accepted
// as usual afterwards (or parked, during a black hole). It does not wait.
func (p *Proxy) ResetPeers() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	pairs, parked := p.snapshotLocked()
	p.mu.Unlock()
	for _, pr := range pairs {
		pr.reset()
	}
	for _, c := range parked {
		resetConn(c)
	}
	return nil
}

// BlackHole makes the path silent, as a network partition or a dead firewall
// state would: from now on no byte flows on the current connections, in
// either direction, and no FIN or RST is sent to the client, whatever the
// upstream does (the broker closing its side after its own heartbeat timeout
// stays invisible). A write already under way when BlackHole is called
// finishes. New connections are accepted at the TCP level and then hang: the
// upstream is not dialled and nothing is answered.
//
// The connections black-holed here stay dead after [Proxy.Clear]: bytes were
// lost on them. They end when the client closes them, at [Proxy.ResetPeers],
// or at [Proxy.Close].
func (p *Proxy) BlackHole() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	p.blackHole = true
	for pr := range p.pairs {
		pr.dead.Store(true)
	}
	return nil
}

// AddLatency delays the bytes of every connection, current and new, by
// latency ± jitter (uniformly distributed) in each direction, so a round trip
// takes about 2×latency more. Order is kept. Both durations are counted in
// whole milliseconds (toxiproxy's unit). Calling it again replaces the
// previous latency.
//
// Like every change of toxics, it waits for data already in the toxic chains
// to move on: while a peer does not read (a broker blocking publishers), it
// waits too.
func (p *Proxy) AddLatency(latency, jitter time.Duration) error {
	if latency < 0 || jitter < 0 {
		return fmt.Errorf("faults: latency %v and jitter %v must be >= 0", latency, jitter)
	}
	return p.setToxic("latency", map[string]int64{
		"latency": latency.Milliseconds(),
		"jitter":  jitter.Milliseconds(),
	})
}

// LimitBandwidth limits every connection, current and new, to kbPerSecond
// kilobytes (1000 bytes) per second in each direction. Calling it again
// replaces the previous limit. See [Proxy.AddLatency] about waiting.
func (p *Proxy) LimitBandwidth(kbPerSecond int64) error {
	if kbPerSecond <= 0 {
		return fmt.Errorf("faults: bandwidth %d KB/s must be > 0", kbPerSecond)
	}
	return p.setToxic("bandwidth", map[string]int64{"rate": kbPerSecond})
}

// Clear removes every fault: latency and bandwidth limits are lifted on
// current and new connections, and new connections reach the upstream again
// after a black hole. Connections that were black-holed stay dead (see
// [Proxy.BlackHole]). See [Proxy.AddLatency] about waiting.
func (p *Proxy) Clear() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	p.blackHole = false
	p.mu.Unlock()
	p.toxMu.Lock()
	defer p.toxMu.Unlock()
	p.tp.Toxics.ResetToxics(context.Background())
	return nil
}

// Close stops listening, closes every connection on both sides, and returns
// once every goroutine of the proxy has finished or is returning: toxiproxy's
// link goroutines unregister themselves from its collection (a map delete)
// right after the last socket is closed. Calling Close again returns the
// first result.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		pairs, parked := p.snapshotLocked()
		p.mu.Unlock()

		p.cancel()
		if err := p.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			p.closeErr = fmt.Errorf("faults: close listener: %w", err)
		}
		for _, pr := range pairs {
			pr.close()
		}
		for _, c := range parked {
			c.Close()
		}
		// Lift latency and bandwidth so that the chains flush at once
		// instead of sleeping out their delays.
		p.toxMu.Lock()
		p.tp.Toxics.ResetToxics(context.Background())
		p.toxMu.Unlock()

		p.wg.Wait()
		for _, pr := range pairs {
			<-pr.done
		}
	})
	return p.closeErr
}

func (p *Proxy) snapshotLocked() ([]*pair, []*net.TCPConn) {
	pairs := make([]*pair, 0, len(p.pairs))
	for pr := range p.pairs {
		pairs = append(pairs, pr)
	}
	parked := make([]*net.TCPConn, 0, len(p.parked))
	for c := range p.parked {
		parked = append(parked, c)
	}
	return pairs, parked
}

// setToxic puts a toxic of the given type with attrs on both directions,
// replacing one of the same type. A toxic is removed and added rather than
// updated: toxiproxy updates attributes in place while the toxic runs.
func (p *Proxy) setToxic(typ string, attrs map[string]int64) error {
	p.toxMu.Lock()
	defer p.toxMu.Unlock()
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return ErrClosed
	}
	for _, dir := range [...]string{"upstream", "downstream"} {
		name := typ + "_" + dir
		if p.tp.Toxics.GetToxic(name) != nil {
			if err := p.tp.Toxics.RemoveToxic(context.Background(), name); err != nil {
				return fmt.Errorf("faults: remove %s: %w", name, err)
			}
		}
		body, err := json.Marshal(map[string]any{
			"name": name, "type": typ, "stream": dir, "toxicity": 1.0, "attributes": attrs,
		})
		if err != nil {
			return fmt.Errorf("faults: %s: %w", name, err)
		}
		if _, err := p.tp.Toxics.AddToxicJson(bytes.NewReader(body)); err != nil {
			return fmt.Errorf("faults: add %s: %w", name, err)
		}
	}
	return nil
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.ctx.Err() != nil {
				return
			}
			// A transient failure (out of file descriptors): try again soon.
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		tc := c.(*net.TCPConn)
		p.mu.Lock()
		switch {
		case p.closed:
			tc.Close()
		case p.blackHole:
			p.parkLocked(tc)
		default:
			p.wg.Add(1)
			go p.connect(tc)
		}
		p.mu.Unlock()
	}
}

// parkLocked holds a connection accepted during a black hole: what the client
// sends is read and dropped, nothing is answered, and the connection ends only
// when the client closes it, or at ResetPeers or Close.
func (p *Proxy) parkLocked(c *net.TCPConn) {
	p.parked[c] = struct{}{}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		_, _ = io.Copy(io.Discard, c)
		c.Close()
		p.mu.Lock()
		delete(p.parked, c)
		p.mu.Unlock()
	}()
}

// connect dials the upstream for an accepted client and starts the two
// toxiproxy links of the pair.
func (p *Proxy) connect(client *net.TCPConn) {
	defer p.wg.Done()
	d := net.Dialer{Timeout: dialTimeout}
	c, err := d.DialContext(p.ctx, "tcp", p.upstream)
	if err != nil {
		// As a host with nothing listening would answer.
		resetConn(client)
		return
	}
	server := c.(*net.TCPConn)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		client.Close()
		server.Close()
		return
	}
	p.nextID++
	pr := &pair{p: p, id: p.nextID, client: client, server: server, done: make(chan struct{})}
	// A black hole that began while the upstream was being dialled covers
	// this connection too.
	pr.dead.Store(p.blackHole)
	p.pairs[pr] = struct{}{}
	p.mu.Unlock()

	// If Close ran since the pair was registered, its sockets are closed
	// already: the links start, read an error, and end at once.
	name := "conn-" + strconv.FormatUint(pr.id, 10)
	p.tp.Toxics.StartLink(p.server, name+"-upstream", client, &sink{pr: pr, conn: server}, stream.Upstream)
	p.tp.Toxics.StartLink(p.server, name+"-downstream", server, &sink{pr: pr, conn: client, toClient: true}, stream.Downstream)
}

// upstreamClosed counts the live connections whose upstream side has closed
// while the client's side is still open; tests use it to see a broker's FIN
// that a black hole hides.
func (p *Proxy) upstreamClosed() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for pr := range p.pairs {
		pr.mu.Lock()
		if pr.upstreamGone {
			n++
		}
		pr.mu.Unlock()
	}
	return n
}

func (p *Proxy) forget(pr *pair) {
	p.mu.Lock()
	delete(p.pairs, pr)
	p.mu.Unlock()
}

// pair is one proxied connection: the client's socket and the upstream's,
// joined by two toxiproxy links (client→upstream and upstream→client).
type pair struct {
	p      *Proxy
	id     uint64 // names the pair's links in the toxic collection
	client *net.TCPConn
	server *net.TCPConn
	// dead is set by BlackHole: the links' sinks discard everything and the
	// client's socket is not closed until both links have ended.
	dead atomic.Bool

	mu    sync.Mutex
	ended int // links whose writer has finished, 0 to 2
	// upstreamGone: the upstream→client link ended first, so the upstream
	// closed or reset its side (the proxy closes the upstream's socket
	// itself only after the other link has ended).
	upstreamGone bool
	done         chan struct{} // closed when both links have finished
}

func (pr *pair) reset() {
	resetConn(pr.client)
	resetConn(pr.server)
}

func (pr *pair) close() {
	pr.client.Close()
	pr.server.Close()
}

// linkEnded is called when a link's writer has sent its last byte: its source
// ended (closed, reset, or closed here) and its toxic chain has drained.
func (pr *pair) linkEnded(s *sink) {
	pr.mu.Lock()
	pr.ended++
	last := pr.ended == 2
	if s.toClient && !last {
		pr.upstreamGone = true
	}
	pr.mu.Unlock()
	if last {
		pr.close()
		close(pr.done)
		pr.p.forget(pr)
		return
	}
	// Pass the close on, as toxiproxy does, except to a black-holed client:
	// it must not learn that the upstream went away.
	if !s.toClient || !pr.dead.Load() {
		s.conn.Close()
	}
}

// sink is the destination of a toxiproxy link. It never fails: after a write
// error, or once the pair is black-holed, it discards what it is given, so
// that the link keeps draining its toxic chain until its source ends (a link
// that stops reading leaves its toxics' goroutines blocked forever).
type sink struct {
	pr       *pair
	conn     *net.TCPConn
	toClient bool
	broken   bool // only touched by the link's writer goroutine
}

func (s *sink) Write(b []byte) (int, error) {
	if !s.broken && !s.pr.dead.Load() {
		if _, err := s.conn.Write(b); err != nil {
			s.broken = true
		}
	}
	return len(b), nil
}

func (s *sink) Close() error {
	s.pr.linkEnded(s)
	return nil
}

// quietToxiproxy keeps toxiproxy's bandwidth toxic from printing a trace
// line to stderr each time it is interrupted (whenever toxics change): it
// logs through zerolog's global logger, and zerolog's init sets the global
// level to Trace. The level is raised to Debug only if nobody changed it from
// that default. This is the one process-wide effect of the package.
func quietToxiproxy() {
	if zerolog.GlobalLevel() == zerolog.TraceLevel {
		zerolog.SetGlobalLevel(zerolog.DebugLevel)
	}
}

// resetConn closes c with SO_LINGER=0, which makes the kernel send an RST.
func resetConn(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}
