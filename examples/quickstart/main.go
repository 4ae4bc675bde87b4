// Command quickstart publishes one task of each type with mlproducer, then
// reads them back from RabbitMQ to show what a consumer receives.
//
// It uses the broker in RABBITMQ_URL (default amqp://guest:guest@127.0.0.1:5672/).
// Run it with `make demo`, which starts a local RabbitMQ first if needed.
//
// The reading half is a bare amqp091-go consumer that takes (and acknowledges)
// every message on the three task queues, including ones left by earlier runs.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mlproducer/mlproducer"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx := context.Background()
	// --- Publishing: what a service does. ---
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// RABBITMQ_URL, RABBITMQ_HEARTBEAT, ...; a URL whose password is not
	// percent-encoded is refused here, before anything shows it.
	opts, err := mlproducer.OptionsFromEnv()
	if err != nil {
		return err
	}
	brokerURL := firstURL()
	p, err := mlproducer.New(append(opts, mlproducer.WithLogger(logger))...)
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := p.Close(closeCtx); err != nil {
			fmt.Fprintln(os.Stderr, "demo: close:", err)
		}
	}()

	waitCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	err = p.WaitConnected(waitCtx)
	// The Producer's status shows the URL with its password hidden.
	if err != nil {
		return fmt.Errorf("no connection to %s: %w", p.Status().URL, err)
	}
	fmt.Println("demo: broker", p.Status().URL)

	var receipts []mlproducer.Receipt
	r, err := p.PublishSummarization(ctx, "share-42",
		"RabbitMQ is a message broker: it accepts and forwards messages.",
		mlproducer.SummarizationOptions{MaxLength: 120, Language: "en"})
	if err != nil {
		return err
	}
	receipts = append(receipts, r)
	r, err = p.PublishTranscription(ctx, "share-42", "https://example.com/media/talk.mp3",
		mlproducer.TranscriptionOptions{Language: "en", Diarization: true})
	if err != nil {
		return err
	}
	receipts = append(receipts, r)
	r, err = p.PublishEmbedding(ctx, "share-42", "Vector embeddings place similar texts close together.",
		mlproducer.EmbeddingOptions{Dimensions: 768})
	if err != nil {
		return err
	}
	receipts = append(receipts, r)

	pending := make(map[string]bool)
	for _, r := range receipts {
		fmt.Printf("published %s  state=%s\n", r.MessageID, r.State)
		pending[r.MessageID] = true
	}

	// --- Consuming: what an ML worker does, in any language. ---
	return consume(brokerURL, pending)
}

type arrival struct {
	queue string
	amqp.Delivery
}

// consume reads the task queues until every id in pending has arrived, for
// at most 15 s, and prints each of them.
func consume(brokerURL string, pending map[string]bool) error {
	conn, err := amqp.Dial(brokerURL)
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	done := make(chan struct{})
	defer close(done)
	arrivals := make(chan arrival)
	for _, q := range []string{"ml.summarization", "ml.transcription", "ml.embedding"} {
		msgs, err := ch.Consume(q, "", true, false, false, false, nil) // auto-ack
		if err != nil {
			return fmt.Errorf("consume %s: %w", q, err)
		}
		go func() {
			for d := range msgs {
				select {
				case arrivals <- arrival{q, d}:
				case <-done:
					return
				}
			}
		}()
	}

	total := len(pending)
	timeout := time.After(15 * time.Second)
	for len(pending) > 0 {
		select {
		case a := <-arrivals:
			if !pending[a.MessageId] {
				continue // not ours: left over from an earlier run
			}
			delete(pending, a.MessageId)
			printTask(a)
		case <-timeout:
			fmt.Printf("demo: %d of %d tasks arrived\n", total-len(pending), total)
			return fmt.Errorf("%d task(s) did not arrive within 15 s", len(pending))
		}
	}
	fmt.Printf("demo: %d of %d tasks arrived\n", total, total)
	return nil
}

func printTask(a arrival) {
	task, err := mlproducer.DecodeTask(a.Body)
	if err != nil {
		fmt.Printf("arrived on %s: %s: undecodable body: %v\n", a.queue, a.MessageId, err)
		return
	}
	payload := "content=" + shorten(task.Content)
	if task.MediaURL != "" {
		payload = "mediaUrl=" + task.MediaURL
	}
	attempt := "-"
	if n, ok := a.Headers["x-mlproducer-attempt"]; ok {
		attempt = fmt.Sprint(n)
	}
	fmt.Printf("arrived on %s: id=%s type=%s shareId=%s %s options=%s attempt=%s\n",
		a.queue, task.MessageID, task.Type, task.ShareID, payload, task.Options, attempt)
}

func shorten(s string) string {
	if r := []rune(s); len(r) > 40 {
		return fmt.Sprintf("%q…", string(r[:40]))
	}
	return fmt.Sprintf("%q", s)
}

// firstURL is the broker the Producer tries first (RABBITMQ_URL is a
// comma-separated list for failover).
func firstURL() string {
	first, _, _ := strings.Cut(os.Getenv("RABBITMQ_URL"), ",")
	if first = strings.TrimSpace(first); first == "" {
		return "amqp://guest:guest@127.0.0.1:5672/"
	}
	return first
}
