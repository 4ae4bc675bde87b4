package mlproducer_test

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mlproducer/mlproducer/mlproducertest"
	"github.com/mlproducer/mlproducer/transport"
)

// simNet sits between the Producer and the fake broker in the simulation. It
// observes what the fake cannot report (when each dial happened, how many
// times each call's message was really written, how many publishing
// channels ended) and adds three faults a real RabbitMQ shows and the fake
// does not model:
//   - holdEvents: returns and acks of every channel delayed together, in
//     channel order, and then released in that order;
//   - stallWrites: a write that blocks with no connection.blocked (TCP
//     back-pressure, RabbitMQ's credit flow), until released or the
//     connection closes;
//   - hangChannels: channel.open and confirm.select that never answer, on a
//     connection that is otherwise alive.
//
// Messages are told apart by the call that published them, not by message
// id (callers may reuse ids): each call writes the token "simk<N>x" into its
// share id or body, and tokenOf finds it again in a body.
type simNet struct {
	b *mlproducertest.Broker

	seq atomic.Uint64 // orders starts of writes against dead-letter hook calls

	mu        sync.Mutex
	dialTimes []time.Time
	started   map[int][]uint64 // call -> seq of each write handed to the fake
	startedAt map[int][]time.Time
	sent      map[int]int   // call -> writes the fake accepted
	closures  int           // publishing channels that ended (Closed event)
	stall     chan struct{} // non-nil while writes stall; closed to release
	hang      chan struct{} // non-nil while channel opens hang
	removed   map[int]int   // stored copies removed by deleteQueue, per call
	unmatched int           // written messages with no token (harness error)

	pubMu sync.RWMutex // writes hold it for reading; deleteQueue for writing

	evMu sync.Mutex // serialises held and live channel events
	hold bool
	held []func()
}

func newSimNet(b *mlproducertest.Broker) *simNet {
	return &simNet{b: b, started: map[int][]uint64{}, startedAt: map[int][]time.Time{}, sent: map[int]int{}, removed: map[int]int{}}
}

var tokenRE = regexp.MustCompile(`simk([0-9]+)x`)

// tokenOf returns the call index written in body, or -1.
func tokenOf(body []byte) int {
	m := tokenRE.FindSubmatch(body)
	if m == nil {
		return -1
	}
	n, err := strconv.Atoi(string(m[1]))
	if err != nil {
		return -1
	}
	return n
}

func (n *simNet) Dial(ctx context.Context, url string, cfg transport.Config) (transport.Conn, error) {
	n.mu.Lock()
	n.dialTimes = append(n.dialTimes, time.Now())
	n.mu.Unlock()
	sc := &simConn{n: n, closed: make(chan struct{})}
	onClosed := cfg.OnClosed
	cfg.OnClosed = func(err error) {
		sc.markClosed()
		if onClosed != nil {
			onClosed(err)
		}
	}
	c, err := n.b.Dial(ctx, url, cfg)
	if err != nil {
		return nil, err
	}
	sc.Conn = c
	return sc, nil
}

// setHold starts holding channel events, or releases every held one in
// order and stops holding.
func (n *simNet) setHold(on bool) {
	n.evMu.Lock()
	defer n.evMu.Unlock()
	n.hold = on
	if on {
		return
	}
	for _, f := range n.held {
		f()
	}
	n.held = nil
}

func (n *simNet) event(f func()) {
	n.evMu.Lock()
	defer n.evMu.Unlock()
	if n.hold {
		n.held = append(n.held, f)
		return
	}
	f()
}

// setStall makes writes stall (true) or releases them (false).
func (n *simNet) setStall(on bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if on && n.stall == nil {
		n.stall = make(chan struct{})
	} else if !on && n.stall != nil {
		close(n.stall)
		n.stall = nil
	}
}

// setHang makes channel opens and confirm.select hang (true) or answers them
// (false).
func (n *simNet) setHang(on bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if on && n.hang == nil {
		n.hang = make(chan struct{})
	} else if !on && n.hang != nil {
		close(n.hang)
		n.hang = nil
	}
}

// waitHang blocks while channel opens hang, until released or the
// connection closes.
func (n *simNet) waitHang(c *simConn) error {
	for {
		n.mu.Lock()
		h := n.hang
		n.mu.Unlock()
		if h == nil {
			return nil
		}
		select {
		case <-h:
		case <-c.closed:
			return errors.New("simnet: connection closed while channel.open had no answer")
		}
	}
}

// deleteQueue deletes a queue at the fake, first counting the stored copies
// it removes, with no write in between: they were stored and count as such.
// Do not call it while the fake is blocked (writes hold pubMu then).
func (n *simNet) deleteQueue(q string) {
	n.pubMu.Lock()
	defer n.pubMu.Unlock()
	msgs := n.b.Messages(q)
	n.mu.Lock()
	for _, d := range msgs {
		n.removed[tokenOf(d.Body)]++
	}
	n.mu.Unlock()
	n.b.DeleteQueue(q)
}

type simConn struct {
	transport.Conn
	n      *simNet
	once   sync.Once
	closed chan struct{}
}

func (c *simConn) markClosed() { c.once.Do(func() { close(c.closed) }) }

func (c *simConn) Channel() (transport.Channel, error) {
	if err := c.n.waitHang(c); err != nil {
		return nil, err
	}
	ch, err := c.Conn.Channel()
	if err != nil {
		return nil, err
	}
	return &simChannel{Channel: ch, c: c}, nil
}

func (c *simConn) Close() error {
	c.markClosed()
	return c.Conn.Close()
}

type simChannel struct {
	transport.Channel
	c *simConn
}

func (ch *simChannel) Confirm(ev transport.ChannelEvents) error {
	n := ch.c.n
	if err := n.waitHang(ch.c); err != nil {
		return err
	}
	return ch.Channel.Confirm(transport.ChannelEvents{
		Confirm: func(c transport.Confirmation) { n.event(func() { ev.Confirm(c) }) },
		Return:  func(r transport.Return) { n.event(func() { ev.Return(r) }) },
		Closed: func(err error) {
			n.mu.Lock()
			n.closures++
			n.mu.Unlock()
			ev.Closed(err)
		},
	})
}

func (ch *simChannel) Publish(ctx context.Context, exchange, key string, mandatory bool, msg transport.Publishing) (uint64, error) {
	n := ch.c.n
	for {
		n.mu.Lock()
		st := n.stall
		n.mu.Unlock()
		if st == nil {
			break
		}
		select { // like amqp091's write: ctx is not looked at
		case <-st:
		case <-ch.c.closed:
			return 0, errors.New("simnet: connection closed while the write was stalled")
		}
	}
	k := tokenOf(msg.Body)
	n.mu.Lock()
	if k < 0 {
		n.unmatched++
	}
	n.started[k] = append(n.started[k], n.seq.Add(1))
	n.startedAt[k] = append(n.startedAt[k], time.Now())
	n.mu.Unlock()
	n.pubMu.RLock()
	tag, err := ch.Channel.Publish(ctx, exchange, key, mandatory, msg)
	n.pubMu.RUnlock()
	if err == nil {
		n.mu.Lock()
		n.sent[k]++
		n.mu.Unlock()
	}
	return tag, err
}
