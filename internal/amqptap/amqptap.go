// Package amqptap is a test-only TCP tap for AMQP 0-9-1: it forwards the
// bytes between a client and a broker unchanged and, on the side, parses the
// frames of both directions to record what the broker was asked to publish
// with publisher confirms and what it answered. It is a witness that does not
// rely on the client's bookkeeping: which message (by message-id) went out
// under which delivery tag of which channel, and whether the broker acked or
// nacked that tag (singly or by a multiple ack), returned it, or closed the
// channel or connection before answering.
//
// It parses what it needs and no more: channel.open, channel.close,
// connection.close, confirm.select, basic.publish and its content header
// (routing key, message-id) from the client; basic.ack, basic.nack,
// basic.return (with its content header), channel.close and
// connection.close from the broker. A frame it cannot parse is recorded as
// an anomaly and forwarding goes on. Standard library only; never used by
// the library itself.
package amqptap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"
)

// Outcome is what the broker answered for one publish.
type Outcome uint8

const (
	Unanswered     Outcome = iota // no ack or nack seen (yet)
	Acked                         // basic.ack with its tag
	AckedMultiple                 // covered by a basic.ack with multiple
	Nacked                        // basic.nack with its tag
	NackedMultiple                // covered by a basic.nack with multiple
)

func (o Outcome) String() string {
	switch o {
	case Acked:
		return "ack"
	case AckedMultiple:
		return "ack(multiple)"
	case Nacked:
		return "nack"
	case NackedMultiple:
		return "nack(multiple)"
	}
	return "unanswered"
}

// IsAck reports whether the broker confirmed the publish.
func (o Outcome) IsAck() bool { return o == Acked || o == AckedMultiple }

// IsNack reports whether the broker refused the publish.
func (o Outcome) IsNack() bool { return o == Nacked || o == NackedMultiple }

// Publish is one basic.publish seen from the client, with what the broker
// answered for it.
type Publish struct {
	Tap        string // the tap's name (which broker)
	Conn       int    // connection number, per Log, from 1
	Channel    uint16
	Confirm    bool   // the channel was in confirm mode
	Tag        uint64 // delivery tag (publish number on the channel since confirm.select); 0 without confirm mode
	MessageID  string
	RoutingKey string
	At         time.Time // when the publish frame passed the tap
	Outcome    Outcome
	AnsweredAt time.Time
	Returned   bool   // a basic.return with its message-id came on the channel before its answer
	Closed     string // "" or how the channel ended before an answer (e.g. "channel.close 404 ... by broker")
}

// Event is a line of the log: a channel or connection event, not a publish.
type Event struct {
	At   time.Time
	Tap  string
	Conn int
	What string
}

// Log collects the records of every connection of every tap sharing it.
// Safe for concurrent use.
type Log struct {
	mu       sync.Mutex
	conns    int
	pubs     []*Publish
	byID     map[string][]*Publish
	events   []Event
	anomaly  []string
	maxEvent int
}

// NewLog returns an empty log.
func NewLog() *Log { return &Log{byID: make(map[string][]*Publish), maxEvent: 100000} }

func (l *Log) event(tap string, conn int, format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.events) < l.maxEvent {
		l.events = append(l.events, Event{At: time.Now(), Tap: tap, Conn: conn, What: fmt.Sprintf(format, args...)})
	}
}

func (l *Log) anomalyf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.anomaly) < 100 {
		l.anomaly = append(l.anomaly, fmt.Sprintf(format, args...))
	}
}

// Publishes returns a copy of every publish of message id, in wire order per
// connection.
func (l *Log) Publishes(id string) []Publish {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Publish, 0, len(l.byID[id]))
	for _, p := range l.byID[id] {
		out = append(out, *p)
	}
	return out
}

// Acked reports whether the broker acked at least one publish of id.
func (l *Log) Acked(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.byID[id] {
		if p.Outcome.IsAck() {
			return true
		}
	}
	return false
}

// Stats are the log's totals.
type Stats struct {
	Conns, Publishes, Acked, Nacked, Returned, Unanswered int
	IDs                                                   int
}

// Stats returns the log's totals.
func (l *Log) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := Stats{Conns: l.conns, Publishes: len(l.pubs), IDs: len(l.byID)}
	for _, p := range l.pubs {
		switch {
		case p.Outcome.IsAck():
			s.Acked++
		case p.Outcome.IsNack():
			s.Nacked++
		default:
			s.Unanswered++
		}
		if p.Returned {
			s.Returned++
		}
	}
	return s
}

// Anomalies returns what the parser could not make sense of (at most 100).
func (l *Log) Anomalies() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.anomaly...)
}

// Events returns the connection and channel events.
func (l *Log) Events() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.events...)
}

// WriteTo writes the whole log as text: events, then one line per publish,
// in time order, times relative to base.
func (l *Log) WriteTo(w io.Writer, base time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	type line struct {
		at time.Time
		s  string
	}
	lines := make([]line, 0, len(l.events)+len(l.pubs))
	for _, e := range l.events {
		lines = append(lines, line{e.At, fmt.Sprintf("%10.3f %s c%d %s", e.At.Sub(base).Seconds(), e.Tap, e.Conn, e.What)})
	}
	for _, p := range l.pubs {
		lines = append(lines, line{p.At, fmt.Sprintf("%10.3f %s", p.At.Sub(base).Seconds(), p.Format(base))})
	}
	sort.SliceStable(lines, func(i, j int) bool { return lines[i].at.Before(lines[j].at) })
	for _, a := range l.anomaly {
		if _, err := fmt.Fprintf(w, "anomaly: %s\n", a); err != nil {
			return err
		}
	}
	for _, ln := range lines {
		if _, err := io.WriteString(w, ln.s+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// Format describes the publish, times relative to base.
func (p Publish) Format(base time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s c%d ch%d tag %d publish %s %s at %.3fs -> %s", p.Tap, p.Conn, p.Channel, p.Tag, p.RoutingKey, p.MessageID, p.At.Sub(base).Seconds(), p.Outcome)
	if p.Outcome != Unanswered {
		fmt.Fprintf(&b, " at %.3fs", p.AnsweredAt.Sub(base).Seconds())
	}
	if p.Returned {
		b.WriteString(", returned")
	}
	if p.Closed != "" {
		b.WriteString(", " + p.Closed)
	}
	if !p.Confirm {
		b.WriteString(", channel not in confirm mode")
	}
	return b.String()
}

// Tap listens on a local port and forwards every connection to the broker's
// address, recording into its Log.
type Tap struct {
	name     string
	upstream string
	log      *Log
	ln       net.Listener

	mu     sync.Mutex
	closed bool
	open   map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// Start listens on 127.0.0.1 (a free port) and forwards to upstream
// (host:port). name labels its records.
func Start(name, upstream string, log *Log) (*Tap, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	t := &Tap{name: name, upstream: upstream, log: log, ln: ln, open: make(map[net.Conn]struct{})}
	t.wg.Add(1)
	go t.accept()
	return t, nil
}

// Addr is the tap's host:port.
func (t *Tap) Addr() string { return t.ln.Addr().String() }

// URL returns u (an amqp URL) with its host:port replaced by the tap's.
func (t *Tap) URL(u string) (string, error) {
	pu, err := url.Parse(u)
	if err != nil {
		return "", err
	}
	pu.Host = t.Addr()
	return pu.String(), nil
}

// Close stops listening, cuts every forwarded connection and waits for the
// tap's goroutines.
func (t *Tap) Close() error {
	t.mu.Lock()
	t.closed = true
	for c := range t.open {
		_ = c.Close()
	}
	t.mu.Unlock()
	err := t.ln.Close()
	t.wg.Wait()
	return err
}

func (t *Tap) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.open[c] = struct{}{}
	return true
}

func (t *Tap) untrack(c net.Conn) {
	t.mu.Lock()
	delete(t.open, c)
	t.mu.Unlock()
}

func (t *Tap) accept() {
	defer t.wg.Done()
	for {
		c, err := t.ln.Accept()
		if err != nil {
			return
		}
		if !t.track(c) {
			_ = c.Close()
			return
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer t.untrack(c)
			t.serve(c)
		}()
	}
}

func (t *Tap) serve(client net.Conn) {
	defer client.Close()
	up, err := net.DialTimeout("tcp", t.upstream, 5*time.Second)
	if err != nil {
		return // as the broker being down: the client sees the connection end
	}
	if !t.track(up) {
		_ = up.Close()
		return
	}
	defer t.untrack(up)
	defer up.Close()

	t.log.mu.Lock()
	t.log.conns++
	n := t.log.conns
	t.log.mu.Unlock()
	cs := &connState{tap: t.name, n: n, log: t.log, chans: make(map[uint16]*chanState)}
	t.log.event(t.name, n, "connection opened from %s", client.RemoteAddr())

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		pipe(up, client, &parser{cs: cs, fromClient: true, skip: 8})
		_ = up.Close()
		_ = client.Close()
	}()
	go func() {
		defer wg.Done()
		pipe(client, up, &parser{cs: cs})
		_ = up.Close()
		_ = client.Close()
	}()
	wg.Wait()
	cs.end("TCP connection ended")
}

// pipe copies src to dst, feeding every chunk to p before writing it, so
// that a publish is recorded before the broker can answer it.
func pipe(dst, src net.Conn, p *parser) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.feed(buf[:n])
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// connState is what both directions of one connection share.
type connState struct {
	tap   string
	n     int
	log   *Log
	mu    sync.Mutex
	chans map[uint16]*chanState
	ended bool
	// closing is set by connection.close: later frames of the connection
	// (the other side's, already on their way) are not recorded.
	closing bool
}

type chanState struct {
	confirm bool
	next    uint64              // last tag assigned
	floor   uint64              // every tag up to it is answered or gone
	pending map[uint64]*Publish // unanswered, by tag
	// content expected next on this channel, per direction: the publish
	// whose header is awaited (client), or the return (broker).
	pubHdr *Publish
	retHdr bool
}

func (c *connState) ch(n uint16) *chanState {
	s := c.chans[n]
	if s == nil {
		s = &chanState{pending: make(map[uint64]*Publish)}
		c.chans[n] = s
	}
	return s
}

// closeChannel settles the unanswered publishes of a channel that ended.
func (c *connState) closeChannel(n uint16, why string) {
	s := c.chans[n]
	if s == nil {
		return
	}
	c.log.mu.Lock()
	for _, p := range s.pending {
		if p.Closed == "" {
			p.Closed = why
		}
	}
	c.log.mu.Unlock()
	delete(c.chans, n)
}

func (c *connState) end(why string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return
	}
	c.ended = true
	for n := range c.chans {
		c.closeChannel(n, why)
	}
	c.log.event(c.tap, c.n, "%s", why)
}

// parser splits one direction's byte stream into frames.
type parser struct {
	cs         *connState
	fromClient bool
	skip       int // the protocol header still to skip
	buf        []byte
	broken     bool
}

const frameEnd = 0xCE

func (p *parser) feed(b []byte) {
	if p.broken {
		return
	}
	if p.skip > 0 {
		k := min(p.skip, len(b))
		p.skip -= k
		b = b[k:]
	}
	p.buf = append(p.buf, b...)
	for {
		if len(p.buf) < 7 {
			break
		}
		typ := p.buf[0]
		chn := binary.BigEndian.Uint16(p.buf[1:3])
		size := int(binary.BigEndian.Uint32(p.buf[3:7]))
		if size > 16<<20 {
			p.fail(fmt.Errorf("frame of %d bytes", size))
			return
		}
		if len(p.buf) < 7+size+1 {
			break
		}
		if p.buf[7+size] != frameEnd {
			p.fail(fmt.Errorf("frame end 0x%02x", p.buf[7+size]))
			return
		}
		payload := p.buf[7 : 7+size]
		if err := p.frame(typ, chn, payload); err != nil {
			p.cs.log.anomalyf("%s c%d ch%d (client %v): %v", p.cs.tap, p.cs.n, chn, p.fromClient, err)
		}
		p.buf = p.buf[7+size+1:]
	}
	if len(p.buf) == 0 {
		p.buf = p.buf[:0:0] // let a large buffer go
	}
}

func (p *parser) fail(err error) {
	p.broken = true
	p.buf = nil
	p.cs.log.anomalyf("%s c%d (client %v): stream unparsable, parsing stopped: %v", p.cs.tap, p.cs.n, p.fromClient, err)
}

var errShort = errors.New("short payload")

// rd reads AMQP fields from a payload.
type rd struct {
	b   []byte
	err error
}

func (r *rd) n(k int) []byte {
	if r.err != nil || len(r.b) < k {
		r.err = errShort
		return nil
	}
	v := r.b[:k]
	r.b = r.b[k:]
	return v
}

func (r *rd) u8() uint8 {
	if v := r.n(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *rd) u16() uint16 {
	if v := r.n(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *rd) u32() uint32 {
	if v := r.n(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *rd) u64() uint64 {
	if v := r.n(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (r *rd) short() string { return string(r.n(int(r.u8()))) }

func (p *parser) frame(typ uint8, chn uint16, payload []byte) error {
	switch typ {
	case 1:
		return p.method(chn, payload)
	case 2:
		return p.header(chn, payload)
	}
	return nil // body, heartbeat
}

func (p *parser) method(chn uint16, payload []byte) error {
	r := &rd{b: payload}
	class, meth := r.u16(), r.u16()
	if r.err != nil {
		return r.err
	}
	c := p.cs
	log := c.log
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return nil
	}
	switch {
	case class == 10 && meth == 50: // connection.close
		c.closing = true
		why := closeReason("connection.close", r, p.fromClient)
		for n := range c.chans {
			c.closeChannel(n, why)
		}
		log.event(c.tap, c.n, "%s", why)
	case class == 20 && meth == 10 && p.fromClient: // channel.open
		c.closeChannel(chn, "channel reopened")
		c.ch(chn)
		log.event(c.tap, c.n, "ch%d channel.open", chn)
	case class == 20 && meth == 40: // channel.close
		why := closeReason("channel.close", r, p.fromClient)
		c.closeChannel(chn, why)
		log.event(c.tap, c.n, "ch%d %s", chn, why)
	case class == 85 && meth == 10 && p.fromClient: // confirm.select
		s := c.ch(chn)
		if !s.confirm {
			s.confirm = true
			s.next, s.floor = 0, 0
		}
		log.event(c.tap, c.n, "ch%d confirm.select", chn)
	case class == 60 && meth == 40 && p.fromClient: // basic.publish
		r.u16() // reserved
		_ = r.short()
		key := r.short()
		if r.err != nil {
			return r.err
		}
		s := c.ch(chn)
		pub := &Publish{Tap: c.tap, Conn: c.n, Channel: chn, Confirm: s.confirm, RoutingKey: key, At: now}
		if s.confirm {
			s.next++
			pub.Tag = s.next
			s.pending[pub.Tag] = pub
		}
		s.pubHdr = pub
		log.mu.Lock()
		log.pubs = append(log.pubs, pub)
		log.mu.Unlock()
	case class == 60 && (meth == 80 || meth == 120) && !p.fromClient: // basic.ack, basic.nack
		tag := r.u64()
		bits := r.u8()
		if r.err != nil {
			return r.err
		}
		multiple := bits&1 != 0
		s := c.chans[chn]
		if s == nil || !s.confirm {
			return fmt.Errorf("basic.%s %d on a channel not in confirm mode", ackName(meth), tag)
		}
		if tag > s.next || (!multiple && tag == 0) {
			return fmt.Errorf("basic.%s %d (multiple %v) beyond the last publish %d", ackName(meth), tag, multiple, s.next)
		}
		single, multi := Acked, AckedMultiple
		if meth == 120 {
			single, multi = Nacked, NackedMultiple
		}
		settle := func(t uint64, o Outcome) {
			pub := s.pending[t]
			if pub == nil {
				return
			}
			delete(s.pending, t)
			log.mu.Lock()
			pub.Outcome, pub.AnsweredAt = o, now
			log.mu.Unlock()
		}
		if multiple || meth == 120 {
			// Multiple answers and nacks are few: each is an event.
			log.event(c.tap, c.n, "ch%d basic.%s %d multiple=%v (last publish %d)", chn, ackName(meth), tag, multiple, s.next)
		}
		if multiple {
			upTo := tag
			if tag == 0 {
				upTo = s.next
			}
			for t := s.floor + 1; t <= upTo; t++ {
				settle(t, multi)
			}
			if upTo > s.floor {
				s.floor = upTo
			}
		} else {
			if s.pending[tag] == nil {
				return fmt.Errorf("basic.%s %d: tag already answered or unknown", ackName(meth), tag)
			}
			settle(tag, single)
			for s.floor < s.next && s.pending[s.floor+1] == nil {
				s.floor++
			}
		}
	case class == 60 && meth == 50 && !p.fromClient: // basic.return
		code := r.u16()
		text := r.short()
		_ = r.short()
		key := r.short()
		s := c.ch(chn)
		s.retHdr = true
		log.event(c.tap, c.n, "ch%d basic.return %d %s %s", chn, code, text, key)
	}
	return r.err
}

func ackName(meth uint16) string {
	if meth == 80 {
		return "ack"
	}
	return "nack"
}

// header parses a content header: the message-id of the publish or return
// it belongs to.
func (p *parser) header(chn uint16, payload []byte) error {
	c := p.cs
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.chans[chn]
	if s == nil {
		return nil
	}
	var pub *Publish
	ret := false
	if p.fromClient {
		pub, s.pubHdr = s.pubHdr, nil
		if pub == nil {
			return nil
		}
	} else {
		if !s.retHdr {
			return nil // a delivery: not ours
		}
		s.retHdr = false
		ret = true
	}
	id, err := messageID(payload)
	if err != nil {
		return err
	}
	log := c.log
	if !ret {
		log.mu.Lock()
		pub.MessageID = id
		log.byID[id] = append(log.byID[id], pub)
		log.mu.Unlock()
		return nil
	}
	// A return comes before the answer of its publish: the oldest
	// unanswered publish of that id on the channel.
	var best *Publish
	for _, q := range s.pending {
		if q.MessageID == id && !q.Returned && (best == nil || q.Tag < best.Tag) {
			best = q
		}
	}
	if best == nil {
		return fmt.Errorf("basic.return of %s matches no unanswered publish", id)
	}
	log.mu.Lock()
	best.Returned = true
	log.mu.Unlock()
	return nil
}

// messageID reads the message-id property of a content header payload.
func messageID(payload []byte) (string, error) {
	r := &rd{b: payload}
	r.u16() // class
	r.u16() // weight
	r.u64() // body size
	flags := r.u16()
	if r.err != nil {
		return "", r.err
	}
	if flags&1 != 0 {
		return "", errors.New("continued property flags are not supported")
	}
	// Bits 15 down: content-type, content-encoding, headers, delivery-mode,
	// priority, correlation-id, reply-to, expiration, message-id.
	has := func(bit uint) bool { return flags&(1<<bit) != 0 }
	if has(15) {
		r.short()
	}
	if has(14) {
		r.short()
	}
	if has(13) {
		r.n(int(r.u32()))
	}
	if has(12) {
		r.u8()
	}
	if has(11) {
		r.u8()
	}
	if has(10) {
		r.short()
	}
	if has(9) {
		r.short()
	}
	if has(8) {
		r.short()
	}
	if !has(7) {
		return "", r.err
	}
	id := r.short()
	return id, r.err
}

// closeReason reads the reply code and text of a connection.close or
// channel.close (what) and says who sent it.
func closeReason(what string, r *rd, fromClient bool) string {
	code := r.u16()
	text := r.short()
	who := "broker"
	if fromClient {
		who = "client"
	}
	return fmt.Sprintf("%s %d %s by %s", what, code, text, who)
}
