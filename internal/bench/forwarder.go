package main

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// forwarder is a local TCP proxy to the broker that can be switched between
// refusing (every connection is accepted and closed at once, so an AMQP
// handshake fails) and forwarding. It stands for a broker that is down and
// then comes back, without touching the shared broker.
type forwarder struct {
	ln      net.Listener
	target  string
	forward atomic.Bool

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// newForwarder listens on a free loopback port, refusing until SetForward.
func newForwarder(target string) (*forwarder, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &forwarder{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	f.wg.Go(f.accept)
	return f, nil
}

// addr is the address to dial instead of the broker's.
func (f *forwarder) addr() string { return f.ln.Addr().String() }

// setForward switches between forwarding (true) and refusing (false). It
// affects new connections only.
func (f *forwarder) setForward(on bool) { f.forward.Store(on) }

func (f *forwarder) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		if !f.forward.Load() {
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		if !f.track(c, up) {
			c.Close()
			up.Close()
			return
		}
		f.wg.Go(func() { f.pipe(c, up) })
	}
}

func (f *forwarder) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

// pipe copies both ways (splice(2) between TCP sockets on Linux) until
// either side ends, then closes both.
func (f *forwarder) pipe(a, b net.Conn) {
	var once sync.Once
	end := func() {
		once.Do(func() {
			a.Close()
			b.Close()
		})
	}
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = io.Copy(a, b); end() })
	wg.Go(func() { _, _ = io.Copy(b, a); end() })
	wg.Wait()
	f.mu.Lock()
	delete(f.conns, a)
	delete(f.conns, b)
	f.mu.Unlock()
}

// close stops listening, cuts every forwarded connection and waits for the
// forwarder's goroutines.
func (f *forwarder) close() {
	f.ln.Close()
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
