package mlproducertest_test

import (
	"context"
	"fmt"

	"github.com/mlproducer/mlproducer/mlproducertest"
	"github.com/mlproducer/mlproducer/transport"
)

// Example dials the fake broker, declares a topology and publishes one
// message in confirm mode through the transport interfaces, as a Producer does.
func Example() {
	b := mlproducertest.NewBroker()
	defer b.Close()
	var dialer transport.Dialer = b

	ctx := context.Background()
	conn, err := dialer.Dial(ctx, "amqp://guest:guest@fake:5672/", transport.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	ch, _ := conn.Channel()
	_ = ch.ExchangeDeclare("ml.tasks", "direct", true, nil)
	_ = ch.QueueDeclare("ml.summarization", true, transport.Table{"x-queue-type": "quorum"})
	_ = ch.QueueBind("ml.summarization", "ml.summarization", "ml.tasks")

	confirms := make(chan transport.Confirmation, 1)
	_ = ch.Confirm(transport.ChannelEvents{
		Confirm: func(c transport.Confirmation) { confirms <- c },
		Return:  func(transport.Return) {},
		Closed:  func(error) {},
	})
	tag, err := ch.Publish(ctx, "ml.tasks", "ml.summarization", true, transport.Publishing{
		ContentType: "application/json",
		MessageID:   "m-1",
		Persistent:  true,
		Body:        []byte(`{"taskType":"summarization"}`),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	c := <-confirms
	fmt.Println("tag", tag, "confirmed", c.DeliveryTag, "ack", c.Ack)
	fmt.Println(b.MessageIDs("ml.summarization"))
	_ = conn.Close()
	// Output:
	// tag 1 confirmed 1 ack true
	// [m-1]
}

// ExampleBroker_NackNext injects a nack: the broker refuses the next
// publishing, which is then not stored.
func ExampleBroker_NackNext() {
	b := mlproducertest.NewBroker()
	defer b.Close()
	ctx := context.Background()
	conn, _ := b.Dial(ctx, "amqp://fake/", transport.Config{})
	ch, _ := conn.Channel()
	_ = ch.QueueDeclare("q", true, nil)
	confirms := make(chan transport.Confirmation, 2)
	_ = ch.Confirm(transport.ChannelEvents{
		Confirm: func(c transport.Confirmation) { confirms <- c },
		Return:  func(transport.Return) {},
		Closed:  func(error) {},
	})

	b.NackNext(1)
	_, _ = ch.Publish(ctx, "", "q", false, transport.Publishing{MessageID: "a"})
	_, _ = ch.Publish(ctx, "", "q", false, transport.Publishing{MessageID: "b"})
	for range 2 {
		c := <-confirms
		fmt.Println(c.DeliveryTag, c.Ack)
	}
	fmt.Println(b.MessageIDs("q"))
	// Output:
	// 1 false
	// 2 true
	// [b]
}
