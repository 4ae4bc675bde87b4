package mlproducer_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// A service creates one Producer at start-up, publishes from its handlers
// with each request's context, and closes it on shutdown. Here the fake
// broker stands in for RabbitMQ.
func Example() {
	broker := mlproducertest.NewBroker()
	defer broker.Close()

	p, err := mlproducer.New(mlproducer.WithDialer(broker))
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.WaitConnected(ctx); err != nil {
		log.Fatal(err)
	}

	r, err := p.PublishSummarization(ctx, "share-42", "A long meeting transcript…", mlproducer.SummarizationOptions{MaxLength: 120})
	if err != nil {
		log.Fatal(err) // not taken: invalid, closed, or the retry queue is full
	}
	fmt.Println("state:", r.State)

	if err := p.Close(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("in queue:", len(broker.MessageIDs("ml.summarization")))
	// Output:
	// state: confirmed
	// in queue: 1
}

// What the broker refuses is never lost: it is retried, then handed to the
// dead-letter hook with the last error.
func ExampleWithDeadLetter() {
	broker := mlproducertest.NewBroker()
	defer broker.Close()

	p, err := mlproducer.New(
		mlproducer.WithDialer(broker),
		mlproducer.WithMaxRetries(1),
		mlproducer.WithRetryBackoff(time.Millisecond, time.Millisecond),
		mlproducer.WithDeadLetter(func(d mlproducer.DeadLetter) {
			fmt.Printf("dead letter after %d attempts: %v\n", d.Attempts, d.Err)
		}),
	)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if err := p.WaitConnected(ctx); err != nil {
		log.Fatal(err)
	}
	broker.NackNext(2)
	if _, err := p.PublishEmbedding(ctx, "share-7", "text", mlproducer.EmbeddingOptions{}); err != nil {
		log.Fatal(err)
	}
	if err := p.Close(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("dead-lettered:", p.Status().DeadLettered)
	// Output:
	// dead letter after 2 attempts: mlproducer: broker nacked the message
	// dead-lettered: 1
}

// OptionsFromEnv reads the environment variables of the service mlproducer
// replaces; a bad value is an error naming the variable.
func ExampleOptionsFromEnv() {
	opts, err := mlproducer.OptionsFromEnv()
	if err != nil {
		log.Fatal(err) // e.g. mlproducer: invalid option ML_MAX_MESSAGE_RETRIES="many": …
	}
	p, err := mlproducer.New(opts...)
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close(context.Background())
}
