package transport

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// A broker nacks a publish singly while an earlier one is still unconfirmed,
// then acks the rest with multiple (RabbitMQ does this when one quorum queue
// has no leader: its messages are nacked at once, the others' acks come
// later, coalesced). amqp091-go's NotifyPublish stream re-sequences the
// confirms and reports the whole range of the multiple ack as acks,
// overwriting the nack it held back; the channel must report the nack.
func TestNackBeforeMultipleAckStaysNack(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	srv := &fakeServer{t: t, c: server, r: bufio.NewReader(server), publishes: make(chan uint64, 16)}
	go srv.serve()

	conn, err := amqp.Open(client, amqp.Config{Locale: "en_US", SASL: []amqp.Authentication{&amqp.PlainAuth{Username: "guest", Password: "guest"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ach, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	ch := &amqpChannel{ch: ach, confirmBuffer: 16}
	got := make(chan Confirmation, 16)
	closed := make(chan error, 1)
	if err := ch.Confirm(ChannelEvents{
		Confirm: func(c Confirmation) { got <- c },
		Return:  func(Return) {},
		Closed:  func(err error) { closed <- err },
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 1; i <= 3; i++ {
		tag, err := ch.Publish(ctx, "", "q", false, Publishing{MessageID: fmt.Sprint(i), Body: []byte("x")})
		if err != nil || tag != uint64(i) {
			t.Fatalf("publish %d: tag %d, %v", i, tag, err)
		}
	}
	for range 3 {
		<-srv.publishes // the server has read the three publishes
	}
	srv.send(method(60, 120, u64(2), []byte{0}))        // basic.nack 2, single
	srv.send(method(60, 80, u64(3), []byte{1}))         // basic.ack 3, multiple: 1 and 3
	want := map[uint64]bool{1: true, 2: false, 3: true} // tag: acked
	for range 3 {
		select {
		case c := <-got:
			if w, ok := want[c.DeliveryTag]; !ok || c.Ack != w || c.Multiple {
				t.Errorf("confirmation %+v, want tag %d acked %v", c, c.DeliveryTag, w)
			}
			delete(want, c.DeliveryTag)
		case <-ctx.Done():
			t.Fatalf("confirms missing: %v", want)
		}
	}
	conn.Close()
	<-closed
}

// fakeServer speaks just enough AMQP 0-9-1 for a client to open a
// connection and a channel in confirm mode and publish.
type fakeServer struct {
	t         *testing.T
	c         net.Conn
	r         *bufio.Reader
	publishes chan uint64
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func method(class, meth uint16, args ...[]byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, class)
	b = binary.BigEndian.AppendUint16(b, meth)
	for _, a := range args {
		b = append(b, a...)
	}
	return b
}

func (s *fakeServer) send(payload []byte) {
	b := []byte{1, 0, 1}
	if binary.BigEndian.Uint16(payload) == 10 {
		b[2] = 0 // connection class: channel 0
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = append(b, payload...)
	b = append(b, 0xCE)
	_, _ = s.c.Write(b)
}

func (s *fakeServer) serve() {
	hdr := make([]byte, 8)
	if _, err := io.ReadFull(s.r, hdr); err != nil {
		return
	}
	// connection.start: version 0-9, no server properties, PLAIN, en_US.
	s.send(method(10, 10, []byte{0, 9}, []byte{0, 0, 0, 0}, []byte{0, 0, 0, 5}, []byte("PLAIN"), []byte{0, 0, 0, 5}, []byte("en_US")))
	var published uint64
	for {
		typ, payload, err := s.frame()
		if err != nil {
			return
		}
		if typ != 1 {
			continue
		}
		class, meth := binary.BigEndian.Uint16(payload), binary.BigEndian.Uint16(payload[2:])
		switch {
		case class == 10 && meth == 11: // start-ok: tune (channel-max, frame-max, heartbeat)
			s.send(method(10, 30, []byte{0, 16}, []byte{0, 2, 0, 0}, []byte{0, 0}))
		case class == 10 && meth == 40: // open: open-ok
			s.send(method(10, 41, []byte{0}))
		case class == 10 && meth == 50: // close: close-ok
			s.send(method(10, 51))
			return
		case class == 20 && meth == 10: // channel.open: open-ok
			s.send(method(20, 11, []byte{0, 0, 0, 0}))
		case class == 20 && meth == 40: // channel.close: close-ok
			s.send(method(20, 41))
		case class == 85 && meth == 10: // confirm.select: select-ok
			s.send(method(85, 11))
		case class == 60 && meth == 40: // basic.publish
			published++
			s.publishes <- published
		}
	}
}

func (s *fakeServer) frame() (uint8, []byte, error) {
	h := make([]byte, 7)
	if _, err := io.ReadFull(s.r, h); err != nil {
		return 0, nil, err
	}
	b := make([]byte, binary.BigEndian.Uint32(h[3:])+1)
	if _, err := io.ReadFull(s.r, b); err != nil {
		return 0, nil, err
	}
	return h[0], b[:len(b)-1], nil
}
