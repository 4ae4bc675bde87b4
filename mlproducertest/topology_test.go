package mlproducertest_test

import (
	"context"
	"errors"
	"testing"

	"github.com/mlproducer/mlproducer/mlproducertest"
	"github.com/mlproducer/mlproducer/transport"
)

// openChannel dials b and opens a channel; the connection closes with the
// test.
func openChannel(t *testing.T, b *mlproducertest.Broker) (transport.Conn, transport.Channel) {
	t.Helper()
	conn, err := b.Dial(context.Background(), "fake", transport.Config{})
	requireNoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	requireNoError(t, err)
	return conn, ch
}

func replyOf(err error) (uint16, string) {
	var e *mlproducertest.Error
	if errors.As(err, &e) {
		return e.Code, e.Reason
	}
	return 0, ""
}

// A declaration that differs from the existing queue gets RabbitMQ's 406,
// whose reply text names the first argument in conflict, and loses its
// channel; an equivalent one (integers of another Go type, x-queue-type
// classic for a queue declared without it) passes.
func TestQueueDeclareInequivalentArgs(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	b.DeclareQueue("q", transport.Table{"x-queue-type": "classic", "x-max-length": int64(5), "x-dead-letter-exchange": "dlx"})
	b.DeclareQueue("plain", nil)
	conn, _ := openChannel(t, b)
	cases := []struct {
		name string
		args transport.Table
		want string
	}{
		{"q", transport.Table{"x-queue-type": "quorum", "x-max-length": int64(5), "x-dead-letter-exchange": "dlx"},
			"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received 'quorum' but current is 'classic'"},
		{"q", transport.Table{"x-max-length": int64(6), "x-dead-letter-exchange": "dlx"},
			"PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received '6' but current is '5'"},
		{"q", transport.Table{"x-max-length": int64(5)},
			"PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue 'q' in vhost '/': received none but current is the value 'dlx' of type 'longstr'"},
		{"plain", transport.Table{"x-message-ttl": int64(1000)},
			"PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'plain' in vhost '/': received the value '1000' of type 'long' but current is none"},
	}
	for _, tc := range cases {
		ch, err := conn.Channel()
		requireNoError(t, err)
		err = ch.QueueDeclare(tc.name, true, tc.args)
		code, reason := replyOf(err)
		assertEqual(t, uint16(406), code, "%v", tc.args)
		assertEqual(t, tc.want, reason)
		assertErrorIs(t, ch.QueueDeclare("other", true, nil), mlproducertest.ErrClosed, "the 406 closed the channel")
	}
	ch, err := conn.Channel()
	requireNoError(t, err)
	requireNoError(t, ch.QueueDeclare("q", true, transport.Table{"x-max-length": int32(5), "x-dead-letter-exchange": "dlx"}))
	requireNoError(t, ch.QueueDeclare("plain", true, transport.Table{"x-queue-type": "classic"}))
	err = ch.QueueDeclare("plain", false, nil)
	_, reason := replyOf(err)
	assertEqual(t, "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'plain' in vhost '/': received 'false' but current is 'true'", reason)
	args, ok := b.QueueArgs("q")
	assertTrue(t, ok)
	assertEqual(t, transport.Table{"x-queue-type": "classic", "x-max-length": int64(5), "x-dead-letter-exchange": "dlx"}, args, "kept as first declared")
}

// A passive declare finds an existing exchange, and a missing one gets
// RabbitMQ's 404, which closes the channel.
func TestExchangeDeclarePassive(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	_, ch := openChannel(t, b)
	pc, ok := ch.(transport.ExchangeChecker)
	if !ok {
		t.Fatal("the fake's channel is not a transport.ExchangeChecker")
	}
	requireNoError(t, pc.ExchangeDeclarePassive("amq.direct"))
	err := pc.ExchangeDeclarePassive("ml.tasks")
	code, reason := replyOf(err)
	assertEqual(t, uint16(404), code)
	assertEqual(t, "NOT_FOUND - no exchange 'ml.tasks' in vhost '/'", reason)
	assertEqual(t, uint16(404), transport.ReplyCode(err))
	assertErrorIs(t, pc.ExchangeDeclarePassive("amq.direct"), mlproducertest.ErrClosed, "the 404 closed the channel")
	_, kindOK := b.ExchangeKind("ml.tasks")
	assertTrue(t, !kindOK, "a passive declare declares nothing")

	_, ch = openChannel(t, b)
	requireNoError(t, ch.ExchangeDeclare("ml.tasks", "direct", true, nil))
	requireNoError(t, ch.(transport.ExchangeChecker).ExchangeDeclarePassive("ml.tasks"))
	err = ch.ExchangeDeclare("ml.tasks", "fanout", true, nil)
	_, reason = replyOf(err)
	assertEqual(t, "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'ml.tasks' in vhost '/': received 'fanout' but current is 'direct'", reason)
}

// A queue with x-max-length drops its oldest message when full (drop-head,
// the default) or, with x-overflow reject-publish, gets the publishing
// nacked and not stored, while a queue with room still stores it.
func TestMaxLengthOverflow(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	_, ch := openChannel(t, b)
	requireNoError(t, ch.ExchangeDeclare("x", "fanout", true, nil))
	requireNoError(t, ch.QueueDeclare("head", true, transport.Table{"x-max-length": int64(2)}))
	requireNoError(t, ch.QueueDeclare("reject", true, transport.Table{"x-max-length": int64(2), "x-overflow": "reject-publish"}))
	requireNoError(t, ch.QueueBind("head", "", "x"))
	requireNoError(t, ch.QueueBind("reject", "", "x"))
	confirms := make(chan transport.Confirmation, 10)
	requireNoError(t, ch.Confirm(transport.ChannelEvents{
		Confirm: func(c transport.Confirmation) { confirms <- c },
		Return:  func(transport.Return) {},
		Closed:  func(error) {},
	}))
	for _, id := range []string{"a", "b", "c", "d"} {
		_, err := ch.Publish(context.Background(), "x", "", false, transport.Publishing{MessageID: id})
		requireNoError(t, err)
	}
	var acks []bool
	for range 4 {
		acks = append(acks, (<-confirms).Ack)
	}
	assertEqual(t, []bool{true, true, false, false}, acks, "reject-publish nacks once full")
	assertEqual(t, []string{"c", "d"}, b.MessageIDs("head"), "drop-head keeps the newest")
	assertEqual(t, []string{"a", "b"}, b.MessageIDs("reject"), "reject-publish keeps the oldest")
}
