package amqptap

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/mlproducer/mlproducer/internal/rabbittest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Through the tap, against the real broker: every publish is recorded with
// its message-id, routing key and delivery tag, the broker's acks are matched
// to them, a mandatory publish to no queue is seen returned (and acked), and
// a publish on a channel the broker then closes is seen unanswered.
func TestTapRecordsPublishesAndConfirms(t *testing.T) {
	u := rabbittest.Require(t)
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	log := NewLog()
	tap, err := Start("broker", pu.Host, log)
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	tu, err := tap.URL(u)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := amqp.Dial(tu)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 200
	var dcs []*amqp.DeferredConfirmation
	for i := range n {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q.Name, false, false, amqp.Publishing{
			MessageId: fmt.Sprintf("m-%d", i), ContentType: "text/plain", Headers: amqp.Table{"x-n": int32(i)},
			Priority: 1, CorrelationId: "c", Body: []byte("x"),
		})
		if err != nil {
			t.Fatal(err)
		}
		dcs = append(dcs, dc)
	}
	for i, dc := range dcs {
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("publish %d: acked %v, %v", i, ok, err)
		}
	}
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", "amqptap-no-such-queue", true, false, amqp.Publishing{MessageId: "returned", Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	<-returns
	if ok, err := dc.WaitContext(ctx); !ok || err != nil {
		t.Fatalf("returned publish: acked %v, %v", ok, err)
	}
	// To an exchange that does not exist: the broker closes the channel.
	if err := ch.PublishWithContext(ctx, "amqptap-no-such-exchange", "k", false, false, amqp.Publishing{MessageId: "refused"}); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(fmt.Sprint(log.Publishes("refused")), "channel.close") {
		select {
		case <-ctx.Done():
			t.Fatalf("the channel's close was not seen: %v", log.Publishes("refused"))
		case <-time.After(10 * time.Millisecond):
		}
	}

	for i := range n {
		ps := log.Publishes(fmt.Sprintf("m-%d", i))
		if len(ps) != 1 {
			t.Fatalf("m-%d: %d publishes recorded", i, len(ps))
		}
		p := ps[0]
		if p.Tag != uint64(i+1) || !p.Confirm || p.RoutingKey != q.Name || !p.Outcome.IsAck() || p.Returned {
			t.Errorf("m-%d: %s", i, p.Format(p.At))
		}
	}
	if ps := log.Publishes("returned"); len(ps) != 1 || !ps[0].Returned || !ps[0].Outcome.IsAck() || ps[0].Tag != n+1 {
		t.Errorf("returned: %v", ps)
	}
	if ps := log.Publishes("refused"); len(ps) != 1 || ps[0].Outcome != Unanswered || !strings.Contains(ps[0].Closed, "404") {
		t.Errorf("refused: %v", ps)
	}
	if !log.Acked("m-0") || log.Acked("refused") || log.Acked("nothing") {
		t.Error("Acked")
	}
	if st := log.Stats(); st.Publishes != n+2 || st.Acked != n+1 || st.Conns != 1 {
		t.Errorf("stats %+v", st)
	}
	if a := log.Anomalies(); len(a) > 0 {
		t.Errorf("anomalies: %v", a)
	}
	var b strings.Builder
	if err := log.WriteTo(&b, time.Now()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "confirm.select") || !strings.Contains(b.String(), "tag 1 publish") {
		t.Errorf("log:\n%s", b.String())
	}
}

// A stream split at every byte parses as one written whole.
func TestParserByteByByte(t *testing.T) {
	log := NewLog()
	cs := &connState{tap: "t", n: 1, log: log, chans: make(map[uint16]*chanState)}
	client := &parser{cs: cs, fromClient: true, skip: 8}
	broker := &parser{cs: cs}
	var up []byte
	up = append(up, "AMQP\x00\x00\x09\x01"...)
	up = append(up, frame(1, 1, method(20, 10, []byte{0}))...)
	up = append(up, frame(1, 1, method(85, 10, []byte{0}))...)
	for i := range 3 {
		pub := method(60, 40, append(append([]byte{0, 0, 0}, short("ml.x")...), 3))
		up = append(up, frame(1, 1, pub)...)
		hdr := []byte{0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}
		hdr = append(hdr, 0x80|0x10, 0x80) // content-type, delivery-mode, message-id
		hdr = append(hdr, short("application/json")...)
		hdr = append(hdr, 2)
		hdr = append(hdr, short(fmt.Sprintf("id-%d", i))...)
		up = append(up, frame(2, 1, hdr)...)
		up = append(up, frame(3, 1, []byte("x"))...)
	}
	for _, b := range up {
		client.feed([]byte{b})
	}
	ack := method(60, 80, []byte{0, 0, 0, 0, 0, 0, 0, 2, 1}) // multiple up to 2
	nack := method(60, 120, []byte{0, 0, 0, 0, 0, 0, 0, 3, 0})
	for _, b := range append(frame(1, 1, ack), frame(1, 1, nack)...) {
		broker.feed([]byte{b})
	}
	want := []Outcome{AckedMultiple, AckedMultiple, Nacked}
	for i, w := range want {
		ps := log.Publishes(fmt.Sprintf("id-%d", i))
		if len(ps) != 1 || ps[0].Outcome != w || ps[0].Tag != uint64(i+1) || ps[0].RoutingKey != "ml.x" {
			t.Errorf("id-%d: %+v, want %s", i, ps, w)
		}
	}
	if a := log.Anomalies(); len(a) > 0 {
		t.Errorf("anomalies: %v", a)
	}
}

func frame(typ uint8, ch uint16, payload []byte) []byte {
	b := []byte{typ, byte(ch >> 8), byte(ch), byte(len(payload) >> 24), byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload))}
	b = append(b, payload...)
	return append(b, frameEnd)
}

func method(class, meth uint16, args []byte) []byte {
	return append([]byte{byte(class >> 8), byte(class), byte(meth >> 8), byte(meth)}, args...)
}

func short(s string) []byte { return append([]byte{byte(len(s))}, s...) }
