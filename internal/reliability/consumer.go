package reliability

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mlproducer/mlproducer"
)

// taskQueues returns the queues the Producer's default topology declares,
// in the order of the publishers' type index.
func taskQueues() [3]string {
	return [3]string{"ml.summarization", "ml.transcription", "ml.embedding"}
}

const (
	consumerPrefetch = 1000
	consumerAckEvery = 200
	consumerIdleAck  = 20 * time.Millisecond
	consumerBackoff  = 250 * time.Millisecond
)

// consumer reads the three task queues of the Runner's virtual host for the
// whole scenario, so that queues stay short, and records the message ID of
// every delivery. It reconnects by itself when the broker closes its
// connection (close_all_connections, stop_app). Messages are acknowledged
// after they are recorded; one redelivered by the broker because its ack was
// lost is recognised by its redelivered flag and not counted as a duplicate.
type consumer struct {
	urls      []string             // tried in turn, from the one after the last that failed
	queueType mlproducer.QueueType // of the queues it declares, as the Producer does
	next      int                  // index in urls of the next dial; the loop's own

	mu        sync.Mutex
	seen      map[[16]byte]uint32 // deliveries per ID, broker redeliveries not counted
	attempts  map[[16]byte]int32  // highest attempt header seen, when above 1
	foreign   int                 // deliveries whose ID is not a UUID
	redeliv   int
	total     int
	last      time.Time // last delivery
	conns     int
	lastErr   string
	connected chan struct{} // closed at the first successful consume
	connOnce  sync.Once

	stop context.CancelFunc
	ctx  context.Context
	done chan struct{}
}

// startConsumer starts consuming from url's task queues, declaring them as
// the Producer does. It returns at once; [consumer.waitStarted] waits for the
// first connection.
func startConsumer(url string) *consumer {
	return startConsumerOn([]string{url}, mlproducer.QueueClassic)
}

// startConsumerOn is startConsumer on the nodes of a cluster (urls, tried in
// turn) whose queues are of type qt.
func startConsumerOn(urls []string, qt mlproducer.QueueType) *consumer {
	ctx, cancel := context.WithCancel(context.Background())
	c := &consumer{
		urls:      urls,
		queueType: qt,
		seen:      make(map[[16]byte]uint32),
		attempts:  make(map[[16]byte]int32),
		connected: make(chan struct{}),
		ctx:       ctx,
		stop:      cancel,
		done:      make(chan struct{}),
	}
	go c.loop()
	return c
}

// waitStarted waits until the consumer has consumed once, ctx ends, or limit
// passes.
func (c *consumer) waitStarted(ctx context.Context, limit time.Duration) bool {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-c.connected:
		return true
	case <-ctx.Done():
	case <-t.C:
	}
	return false
}

// close stops the consumer and waits for its goroutines.
func (c *consumer) close() {
	c.stop()
	<-c.done
}

func (c *consumer) loop() {
	defer close(c.done)
	for c.ctx.Err() == nil {
		if err := c.session(); err != nil {
			c.next++ // the next node, on a cluster
			c.mu.Lock()
			c.lastErr = err.Error()
			c.mu.Unlock()
		}
		t := time.NewTimer(consumerBackoff)
		select {
		case <-c.ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// session runs one connection until it closes or the consumer stops.
func (c *consumer) session() error {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName("mlproducer reliability consumer")
	url := c.urls[c.next%len(c.urls)]
	conn, err := amqp.DialConfig(url, amqp.Config{
		Heartbeat:  5 * time.Second,
		Properties: props,
		Dial:       amqp.DefaultDial(5 * time.Second),
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))

	var wg sync.WaitGroup
	defer wg.Wait()
	defer conn.Close() // ends the delivery loops before wg.Wait
	queues := taskQueues()
	ended := make(chan struct{}, len(queues))
	for _, q := range queues {
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": string(c.queueType)}); err != nil {
			return err
		}
		if err := ch.Qos(consumerPrefetch, 0, false); err != nil {
			return err
		}
		deliveries, err := ch.Consume(q, "", false, false, false, false, nil)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.deliver(ch, deliveries)
			ended <- struct{}{}
		}()
	}
	c.mu.Lock()
	c.conns++
	c.mu.Unlock()
	c.connOnce.Do(func() { close(c.connected) })
	select {
	case <-c.ctx.Done():
		return nil
	case <-ended:
		return errors.New("a consumer channel closed")
	case err := <-closed:
		if err != nil {
			return err
		}
		return nil
	}
}

// deliver records and acknowledges the deliveries of one channel until it
// closes. Acks are batched (multiple) every consumerAckEvery deliveries or
// after consumerIdleAck without one.
func (c *consumer) deliver(ch *amqp.Channel, deliveries <-chan amqp.Delivery) {
	var (
		lastTag uint64
		unacked int
	)
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	ack := func() {
		if unacked > 0 {
			_ = ch.Ack(lastTag, true) // a lost ack means a redelivery, which is recognised
			unacked = 0
		}
	}
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return
			}
			c.record(&d)
			lastTag = d.DeliveryTag
			unacked++
			if unacked >= consumerAckEvery {
				ack()
			} else {
				idle.Reset(consumerIdleAck)
			}
		case <-idle.C:
			ack()
		}
	}
}

func (c *consumer) record(d *amqp.Delivery) {
	id, err := uuid.Parse(d.MessageId)
	var attempt int32
	if v, ok := d.Headers[mlproducer.AttemptHeader].(int32); ok {
		attempt = v
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total++
	c.last = time.Now()
	if err != nil {
		c.foreign++
		return
	}
	key := [16]byte(id)
	if d.Redelivered && c.seen[key] > 0 {
		c.redeliv++
		return
	}
	c.seen[key]++
	if attempt > 1 && attempt > c.attempts[key] {
		c.attempts[key] = attempt
	}
}

// missing returns the IDs of ids that have not been consumed yet, reusing
// the array of ids.
func (c *consumer) missing(ids [][16]byte) [][16]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := ids[:0]
	for _, id := range ids {
		if c.seen[id] == 0 {
			out = append(out, id)
		}
	}
	return out
}

// lastDelivery returns the time of the last delivery and the number of
// deliveries so far.
func (c *consumer) lastDelivery() (time.Time, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last, c.total
}

// count returns how many times id was delivered (broker redeliveries aside)
// and the highest attempt header seen for it (0 when never above 1).
func (c *consumer) count(id [16]byte) (n uint32, attempt int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[id], c.attempts[id]
}

// stats returns the consumer's own figures for the notes.
func (c *consumer) stats() (total, redelivered, foreign, conns int, lastErr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total, c.redeliv, c.foreign, c.conns, c.lastErr
}
