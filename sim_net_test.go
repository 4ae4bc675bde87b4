package mlproducer_test

import (
	"context"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
	"github.com/mlproducer/mlproducer/transport"
)

// simNet sits between the Producer and the fake broker in the simulation.
// Every fault is the fake's own; simNet only observes what the fake does not
// report, per publish call rather than per message ID (callers may reuse
// IDs): each write of a call's message (when it began, whether and when it
// returned, its delivery tag and attempt header, what the broker answered
// for it: ack, nack, basic.return), the publishing channels that ended, and
// whether one was closed by the broker for a message-level reason (403, 404,
// 406). It also counts the stored copies a DeleteQueue fault removes.
//
// Each call writes the token "simk<N>x" into its body; tokenOf finds it
// again.
type simNet struct {
	b *mlproducertest.Broker

	seq atomic.Uint64 // orders starts of writes against dead-letter hook calls
	gen atomic.Int32  // the Producer writing now (spool schedules restart it)

	mu        sync.Mutex
	writes    map[int][]*simWrite // call -> every write begun, in order
	closures  int                 // publishing channels that ended (Closed event)
	removed   map[int]int         // stored copies removed by deleteQueue, per call
	unmatched int                 // written messages with no token (harness error)
	mismatch  []string            // harness errors: tags the fake did not give as predicted

	pubMu sync.RWMutex // writes hold it for reading; deleteQueue for writing
}

// simWriteHeader marks each write with its seq, so that a basic.return names
// the write it belongs to even when the Producer's envelope has no attempt
// header (the fake returns a copy of the headers as published). The
// Producer never sees it: it is added below the Producer's Publish and taken
// off the return before the Producer gets it.
const simWriteHeader = "x-sim-write"

// withoutSimMark returns h without simWriteHeader, or nil when nothing else
// is left, as a broker returns a publishing that had no headers.
func withoutSimMark(h transport.Table) transport.Table {
	if len(h) <= 1 {
		if _, ok := h[simWriteHeader]; ok || len(h) == 0 {
			return nil
		}
		return h
	}
	out := make(transport.Table, len(h)-1)
	for k, v := range h {
		if k != simWriteHeader {
			out[k] = v
		}
	}
	return out
}

// simWrite is one write of a call's message: one Channel.Publish.
type simWrite struct {
	k          int
	id         string // the publishing's message id
	n          int32  // attempt header (0 without EnvelopeAttempt)
	gen        int    // the Producer that wrote it
	seq        uint64
	began      time.Time
	ch         *simChannel
	tag        uint64
	returned   bool // Publish returned nil: the broker received it
	returnedAt time.Time
	acked      bool
	ackedAt    time.Time
	nacked     bool
	bounced    bool // basic.return
}

func newSimNet(b *mlproducertest.Broker) *simNet {
	return &simNet{b: b, writes: map[int][]*simWrite{}, removed: map[int]int{}}
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
	c, err := n.b.Dial(ctx, url, cfg)
	if err != nil {
		return nil, err
	}
	return &simConn{Conn: c, n: n}, nil
}

// sent returns the number of writes of call k that reached the broker.
// Call with n.mu held.
func (n *simNet) sent(k int) int {
	c := 0
	for _, w := range n.writes[k] {
		if w.returned {
			c++
		}
	}
	return c
}

// deleteQueue deletes a queue at the fake, first counting the stored copies
// it removes, with no write in between: they were stored and count as such.
// Do not call it while the fake holds writes (Block, StallWrites): they hold
// pubMu.
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
	n *simNet
}

func (c *simConn) Channel() (transport.Channel, error) {
	ch, err := c.Conn.Channel()
	if err != nil {
		return nil, err
	}
	return &simChannel{Channel: ch, n: c.n, byTag: map[uint64]*simWrite{}}, nil
}

// simChannel records the writes on one channel and the broker's answers.
// Its fields are guarded by n.mu.
type simChannel struct {
	transport.Channel
	n             *simNet
	lastTag       uint64
	byTag         map[uint64]*simWrite // written, not yet confirmed
	messageClosed bool                 // closed by the broker: 403, 404, 406
	closed        bool                 // its Closed event came
	closedAt      time.Time
}

func simMessageLevel(err error) bool {
	switch transport.ReplyCode(err) {
	case 403, 404, 406:
		return true
	}
	return false
}

func (ch *simChannel) Confirm(ev transport.ChannelEvents) error {
	n := ch.n
	return ch.Channel.Confirm(transport.ChannelEvents{
		Confirm: func(c transport.Confirmation) {
			n.mu.Lock()
			for tag, w := range ch.byTag {
				if tag == c.DeliveryTag || c.Multiple && tag < c.DeliveryTag {
					w.acked, w.nacked = c.Ack, !c.Ack
					if c.Ack {
						w.ackedAt = time.Now()
					}
					delete(ch.byTag, tag)
				}
			}
			n.mu.Unlock()
			ev.Confirm(c)
		},
		Return: func(r transport.Return) {
			// The write's own mark names it exactly, whatever the
			// envelope; the Producer gets the return without it.
			seq, _ := r.Headers[simWriteHeader].(uint64)
			r.Headers = withoutSimMark(r.Headers)
			n.mu.Lock()
			for _, w := range ch.byTag {
				if w.seq == seq {
					w.bounced = true
				}
			}
			n.mu.Unlock()
			ev.Return(r)
		},
		Closed: func(err error) {
			n.mu.Lock()
			n.closures++
			ch.closed, ch.closedAt = true, time.Now()
			if simMessageLevel(err) {
				ch.messageClosed = true
			}
			n.mu.Unlock()
			ev.Closed(err)
		},
	})
}

func (ch *simChannel) Publish(ctx context.Context, exchange, key string, mandatory bool, msg transport.Publishing) (uint64, error) {
	n := ch.n
	k := tokenOf(msg.Body)
	a, _ := msg.Headers[mlproducer.AttemptHeader].(int32)
	w := &simWrite{k: k, id: msg.MessageID, n: a, gen: int(n.gen.Load()), ch: ch, began: time.Now()}
	n.mu.Lock()
	if k < 0 {
		n.unmatched++
	}
	w.seq = n.seq.Add(1)
	n.writes[k] = append(n.writes[k], w)
	// Only the Producer's writer publishes on this channel, one write at a
	// time, so the tag is known before the write: recorded now, since its
	// confirm may be delivered before Publish returns.
	w.tag = ch.lastTag + 1
	ch.byTag[w.tag] = w
	n.mu.Unlock()

	marked := make(transport.Table, len(msg.Headers)+1)
	for k, v := range msg.Headers {
		marked[k] = v
	}
	marked[simWriteHeader] = w.seq
	msg.Headers = marked

	n.pubMu.RLock()
	tag, err := ch.Channel.Publish(ctx, exchange, key, mandatory, msg)
	n.pubMu.RUnlock()

	n.mu.Lock()
	defer n.mu.Unlock()
	if err != nil {
		delete(ch.byTag, w.tag)
		if simMessageLevel(err) {
			ch.messageClosed = true
		}
		return tag, err
	}
	ch.lastTag = tag
	if tag != w.tag {
		n.mismatch = append(n.mismatch, "tag "+strconv.FormatUint(tag, 10)+" from the fake, "+strconv.FormatUint(w.tag, 10)+" predicted")
	}
	w.returned, w.returnedAt = true, time.Now()
	return tag, err
}
