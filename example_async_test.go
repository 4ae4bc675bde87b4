package mlproducer_test

import (
	"context"
	"fmt"
	"log"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// A batch job publishes from one loop with PublishAsync, which waits only
// for room, keeps the Deliveries, and Flushes at the end: every message is
// then confirmed or dead-lettered.
func ExampleProducer_PublishAsync() {
	broker := mlproducertest.NewBroker()
	defer broker.Close()
	p, err := mlproducer.New(mlproducer.WithDialer(broker))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()

	var deliveries []*mlproducer.Delivery
	for i := range 1000 {
		body := fmt.Appendf(nil, `{"version":1,"type":"embedding","doc":%d}`, i)
		d, err := p.PublishAsync(ctx, mlproducer.Message{Type: mlproducer.TaskEmbedding, Body: body},
			mlproducer.WithMessageID(fmt.Sprintf("doc-%d", i))) // a rerun republishes the same ids
		if err != nil {
			log.Fatal(err) // not taken: invalid, closed, or ctx ended while waiting for room
		}
		deliveries = append(deliveries, d)
	}
	if err := p.Flush(ctx); err != nil {
		log.Fatal(err)
	}
	confirmed := 0
	for _, d := range deliveries {
		if d.Receipt().State == mlproducer.Confirmed {
			confirmed++
		}
	}
	fmt.Println("confirmed:", confirmed)
	if err := p.Close(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// confirmed: 1000
}
