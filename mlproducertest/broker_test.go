package mlproducertest_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/mlproducer/mlproducer/mlproducertest"
	"github.com/mlproducer/mlproducer/transport"
)

// recorder logs every callback it receives as a short string.
type recorder struct {
	mu   sync.Mutex
	log  []string
	rets []transport.Return
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, fmt.Sprintf(format, args...))
}

func (r *recorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.log)
}

func (r *recorder) events() transport.ChannelEvents {
	return transport.ChannelEvents{
		Confirm: func(c transport.Confirmation) {
			s := "ack"
			if !c.Ack {
				s = "nack"
			}
			if c.Multiple {
				s += "*"
			}
			r.add("%s %d", s, c.DeliveryTag)
		},
		Return: func(rt transport.Return) {
			r.mu.Lock()
			r.rets = append(r.rets, rt)
			r.mu.Unlock()
			r.add("return %d %s %s %s %s", rt.ReplyCode, rt.ReplyText, rt.Exchange, rt.RoutingKey, rt.MessageID)
		},
		Closed: func(err error) { r.add("closed %v", err) },
	}
}

func (r *recorder) config() transport.Config {
	return transport.Config{
		OnBlocked: func(blocked bool, reason string) { r.add("blocked %v %s", blocked, reason) },
		OnClosed:  func(err error) { r.add("conn-closed %v", err) },
	}
}

// bubble runs f in a synctest bubble with a fresh broker, closed at the end.
func bubble(t *testing.T, f func(t *testing.T, b *mlproducertest.Broker)) {
	t.Helper()
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		f(t, b)
	})
}

// open dials and returns a connection with one channel in confirm mode. The
// recorder gets both channel and connection events.
func open(t *testing.T, b *mlproducertest.Broker) (transport.Conn, transport.Channel, *recorder) {
	t.Helper()
	r := &recorder{}
	conn, err := b.Dial(t.Context(), "amqp://fake", r.config())
	requireNoError(t, err)
	ch, err := conn.Channel()
	requireNoError(t, err)
	requireNoError(t, ch.Confirm(r.events()))
	return conn, ch, r
}

func msg(id string) transport.Publishing {
	return transport.Publishing{MessageID: id, Body: []byte("body-" + id), Headers: transport.Table{"x-attempt": 1}}
}

func publish(t *testing.T, ch transport.Channel, exchange, key string, mandatory bool, id string) uint64 {
	t.Helper()
	tag, err := ch.Publish(t.Context(), exchange, key, mandatory, msg(id))
	requireNoError(t, err)
	return tag
}

func declare(t *testing.T, ch transport.Channel) {
	t.Helper()
	requireNoError(t, ch.ExchangeDeclare("ml.tasks", "direct", true, nil))
	for _, q := range []string{"ml.summarization", "ml.embedding"} {
		requireNoError(t, ch.QueueDeclare(q, true, transport.Table{"x-queue-type": "quorum"}))
		requireNoError(t, ch.QueueBind(q, q, "ml.tasks"))
	}
}

func TestDeliveryTags(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		conn, ch1, r1 := open(t, b)
		declare(t, ch1)
		for i := range 3 {
			assertEqual(t, uint64(i+1), publish(t, ch1, "ml.tasks", "ml.summarization", true, fmt.Sprint(i)))
		}
		ch2, err := conn.Channel()
		requireNoError(t, err)
		assertEqual(t, uint64(0), publish(t, ch2, "ml.tasks", "ml.summarization", true, "plain"), "no confirm mode: tag 0")
		r2 := &recorder{}
		requireNoError(t, ch2.Confirm(r2.events()))
		requireError(t, ch2.Confirm(r2.events()), "second Confirm")
		assertEqual(t, uint64(1), publish(t, ch2, "ml.tasks", "ml.summarization", true, "c2"), "tags start at 1 after Confirm")
		requireError(t, ch2.Confirm(transport.ChannelEvents{}))

		synctest.Wait()
		assertEqual(t, []string{"ack 1", "ack 2", "ack 3"}, r1.get())
		assertEqual(t, []string{"ack 1"}, r2.get())
		assertEqual(t, []string{"0", "1", "2", "plain", "c2"}, b.MessageIDs("ml.summarization"))
		assertEqual(t, 5, b.Published())

		got := b.Messages("ml.summarization")[0]
		assertEqual(t, "ml.tasks", got.Exchange)
		assertEqual(t, "ml.summarization", got.RoutingKey)
		assertEqual(t, msg("0"), got.Publishing)
		got.Body[0] = 'X' // a copy
		assertEqual(t, msg("0").Body, b.Messages("ml.summarization")[0].Body)
	})
}

func TestRouting(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		for _, q := range []string{"q1", "q2"} {
			requireNoError(t, ch.QueueDeclare(q, true, nil))
		}
		requireNoError(t, ch.ExchangeDeclare("d", "direct", true, nil))
		requireNoError(t, ch.ExchangeDeclare("f", "fanout", true, nil))
		requireNoError(t, ch.ExchangeDeclare("t", "topic", true, nil))
		for _, bd := range [][3]string{
			{"q1", "k1", "d"}, {"q1", "k1", "d"}, {"q2", "k2", "d"}, {"q1", "", "f"}, {"q2", "", "f"},
			{"q1", "a.*", "t"}, {"q2", "a.#", "t"},
		} {
			requireNoError(t, ch.QueueBind(bd[0], bd[1], bd[2]))
		}
		cases := []struct {
			exchange, key string
			q1, q2        bool
		}{
			{"", "q1", true, false}, // default exchange: queue named by key
			{"", "nope", false, false},
			{"d", "k1", true, false}, // duplicate binding stores once
			{"d", "k2", false, true},
			{"d", "k3", false, false},
			{"f", "any", true, true},
			{"t", "a.b", true, true},
			{"t", "a.b.c", false, true},
			{"t", "a", false, true},
			{"t", "b.a", false, false},
		}
		var want1, want2 []string
		for i, c := range cases {
			id := fmt.Sprintf("%d-%s-%s", i, c.exchange, c.key)
			publish(t, ch, c.exchange, c.key, false, id)
			if c.q1 {
				want1 = append(want1, id)
			}
			if c.q2 {
				want2 = append(want2, id)
			}
		}
		assertEqual(t, want1, b.MessageIDs("q1"))
		assertEqual(t, want2, b.MessageIDs("q2"))
		synctest.Wait()
		assertLen(t, r.get(), len(cases), "unroutable non-mandatory publishings are acked too")
		for _, e := range r.get() {
			assertTrue(t, strings.HasPrefix(e, "ack "), e)
		}
		b.Purge()
		assertEmpty(t, b.Messages("q1"))
		assertTrue(t, b.Messages("missing") == nil)
	})
}

func TestMandatoryReturnBeforeAck(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		declare(t, ch)
		publish(t, ch, "ml.tasks", "nokey", true, "m1")
		publish(t, ch, "ml.tasks", "ml.embedding", true, "m2")
		publish(t, ch, "ml.tasks", "nokey", false, "m3") // not mandatory: just acked
		synctest.Wait()
		assertEqual(t, []string{"return 312 NO_ROUTE ml.tasks nokey m1", "ack 1", "ack 2", "ack 3"}, r.get())
		assertEqual(t, []string{"m2"}, b.MessageIDs("ml.embedding"))
	})
}

func TestReturnRateWithDelay(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		declare(t, ch)
		b.SetFaults(mlproducertest.Faults{ReturnRate: 0.5, ConfirmDelay: time.Second, Seed: 7})
		const n = 50
		for i := range n {
			publish(t, ch, "ml.tasks", "ml.summarization", true, fmt.Sprint(i+1))
		}
		time.Sleep(time.Second)
		synctest.Wait()
		log := r.get()
		returned := 0
		for i, e := range log {
			if !strings.HasPrefix(e, "return") {
				continue
			}
			returned++
			id := e[strings.LastIndexByte(e, ' ')+1:]
			ack := slices.Index(log, "ack "+id)
			assertTrue(t, ack > i, "return of %s precedes its ack", id)
		}
		assertLen(t, log, n+returned)
		assertLen(t, b.MessageIDs("ml.summarization"), n-returned, "returned publishings are not stored")
		assertTrue(t, returned > 5 && returned < n-5, "returned %d of %d", returned, n)
	})
}

func TestNackNextAndNackRate(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		declare(t, ch)
		b.NackNext(2)
		for i := range 3 {
			publish(t, ch, "ml.tasks", "ml.summarization", true, fmt.Sprint(i+1))
		}
		b.SetFaults(mlproducertest.Faults{NackRate: 1})
		publish(t, ch, "ml.tasks", "ml.summarization", true, "4")
		synctest.Wait()
		assertEqual(t, []string{"nack 1", "nack 2", "ack 3", "nack 4"}, r.get())
		assertEqual(t, []string{"3"}, b.MessageIDs("ml.summarization"), "nacked publishings are not stored")
		assertEqual(t, 4, b.Published())
	})
}

func TestLoseConfirm(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		declare(t, ch)
		b.SetFaults(mlproducertest.Faults{LoseConfirmRate: 1})
		publish(t, ch, "ml.tasks", "ml.summarization", true, "1")
		b.SetFaults(mlproducertest.Faults{})
		publish(t, ch, "ml.tasks", "ml.summarization", true, "2")
		time.Sleep(time.Hour)
		synctest.Wait()
		assertEqual(t, []string{"ack 2"}, r.get())
		assertEqual(t, []string{"1", "2"}, b.MessageIDs("ml.summarization"), "a lost confirm's message is stored")
	})
}

func TestConfirmDelay(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		var (
			mu    sync.Mutex
			times = map[uint64]time.Duration{}
		)
		start := time.Now()
		conn, err := b.Dial(t.Context(), "amqp://fake", transport.Config{})
		requireNoError(t, err)
		defer conn.Close()
		ch, err := conn.Channel()
		requireNoError(t, err)
		requireNoError(t, ch.Confirm(transport.ChannelEvents{
			Confirm: func(c transport.Confirmation) {
				mu.Lock()
				defer mu.Unlock()
				times[c.DeliveryTag] = time.Since(start)
			},
			Return: func(transport.Return) {},
			Closed: func(error) {},
		}))
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		const delay = 10 * time.Second
		b.SetFaults(mlproducertest.Faults{ConfirmDelay: delay, Seed: 1})
		for i := range 20 {
			publish(t, ch, "", "q", false, fmt.Sprint(i))
		}
		synctest.Wait()
		mu.Lock()
		early := len(times)
		mu.Unlock()
		assertTrue(t, early < 20, "some confirms are delayed")
		time.Sleep(delay)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		assertLen(t, times, 20)
		var distinct []time.Duration
		for _, d := range times {
			assertTrue(t, d <= delay, "delay %v", d)
			if !slices.Contains(distinct, d) {
				distinct = append(distinct, d)
			}
		}
		assertTrue(t, len(distinct) > 5, "delays are random")
	})
}

func TestFaultsReproducible(t *testing.T) {
	run := func(seed int64) []string {
		var log []string
		synctest.Test(t, func(t *testing.T) {
			b := mlproducertest.NewBroker()
			defer b.Close()
			_, ch, r := open(t, b)
			requireNoError(t, ch.QueueDeclare("q", true, nil))
			b.SetFaults(mlproducertest.Faults{NackRate: 0.3, LoseConfirmRate: 0.2, ConfirmDelay: time.Second, Seed: seed})
			for i := range 40 {
				publish(t, ch, "", "q", false, fmt.Sprint(i))
			}
			time.Sleep(time.Second)
			synctest.Wait()
			log = r.get()
		})
		return log
	}
	a := run(42)
	assertEqual(t, a, run(42))
	assertNotEqual(t, a, run(43))
	assertTrue(t, slices.ContainsFunc(a, func(e string) bool { return strings.HasPrefix(e, "nack") }), "%v", a)
}

func TestMultipleAcks(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		b.SetFaults(mlproducertest.Faults{MultipleAcks: true})
		b.HoldConfirms(true)
		publish(t, ch, "", "q", false, "1")
		publish(t, ch, "", "q", false, "2")
		b.NackNext(1)
		publish(t, ch, "", "q", false, "3")
		publish(t, ch, "", "q", false, "4")
		publish(t, ch, "", "q", true, "5")
		publish(t, ch, "", "nope", true, "6")
		publish(t, ch, "", "q", false, "7")
		synctest.Wait()
		assertEqual(t, []string{"return 312 NO_ROUTE  nope 6"}, r.get(), "returns are not held")
		b.HoldConfirms(false)
		synctest.Wait()
		assertEqual(t, []string{"return 312 NO_ROUTE  nope 6", "ack* 2", "nack 3", "ack* 7"}, r.get())
	})
}

func TestMultipleAcksNeverCoverLostConfirm(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		b.HoldConfirms(true)
		b.SetFaults(mlproducertest.Faults{MultipleAcks: true, LoseConfirmRate: 1})
		publish(t, ch, "", "q", false, "1")
		b.SetFaults(mlproducertest.Faults{MultipleAcks: true})
		for i := 2; i <= 4; i++ {
			publish(t, ch, "", "q", false, fmt.Sprint(i))
		}
		b.HoldConfirms(false)
		synctest.Wait()
		assertEqual(t, []string{"ack 2", "ack 3", "ack 4"}, r.get())
	})
}

func TestHoldConfirmsLateAck(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		b.HoldConfirms(true)
		publish(t, ch, "", "q", false, "1")
		publish(t, ch, "", "q", false, "2")
		time.Sleep(time.Minute)
		synctest.Wait()
		assertEmpty(t, r.get())
		assertEqual(t, []string{"1", "2"}, b.MessageIDs("q"), "stored while unconfirmed")
		b.HoldConfirms(false)
		synctest.Wait()
		assertEqual(t, []string{"ack 1", "ack 2"}, r.get(), "without MultipleAcks, one confirm per tag")
	})
}

func TestDropConnections(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		conn, ch, r := open(t, b)
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		_, ch2, r2 := open(t, b)
		assertEqual(t, 2, b.Conns())
		publish(t, ch, "", "q", false, "1")
		synctest.Wait()
		b.HoldConfirms(true)
		publish(t, ch, "", "q", false, "2")
		publish(t, ch, "", "q", false, "3")
		boom := errors.New("boom")
		b.DropConnections(boom)
		assertEqual(t, 0, b.Conns())
		_, err := ch.Publish(t.Context(), "", "q", false, msg("4"))
		assertErrorIs(t, err, mlproducertest.ErrClosed)
		assertErrorIs(t, err, boom)
		_, err = conn.Channel()
		assertErrorIs(t, err, boom)
		requireNoError(t, conn.Close())
		b.HoldConfirms(false)
		synctest.Wait()
		assertEqual(t, []string{"ack 1", "closed boom", "conn-closed boom"}, r.get())
		assertEqual(t, []string{"closed boom", "conn-closed boom"}, r2.get())
		assertEqual(t, []string{"1", "2", "3"}, b.MessageIDs("q"), "routed publishings stay stored")
		_, err = ch2.Publish(t.Context(), "", "q", false, msg("5"))
		assertErrorIs(t, err, boom)

		// A new connection works; nil means CONNECTION_FORCED.
		_, ch3, r3 := open(t, b)
		b.DropConnections(nil)
		synctest.Wait()
		var amqpErr *mlproducertest.Error
		if len(r3.get()) != 2 {
			t.Fatal(r3.get())
		}
		assertContains(t, r3.get()[1], "(320) CONNECTION_FORCED")
		_, err = ch3.Publish(t.Context(), "", "q", false, msg("6"))
		requireErrorAs(t, err, &amqpErr)
	})
}

func TestDropDiscardsUndeliveredConfirms(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		b.SetFaults(mlproducertest.Faults{ConfirmDelay: time.Minute, Seed: 3})
		for i := range 10 {
			publish(t, ch, "", "q", false, fmt.Sprint(i))
		}
		synctest.Wait()
		before := len(r.get())
		b.DropConnections(errors.New("net"))
		time.Sleep(time.Hour)
		synctest.Wait()
		log := r.get()
		assertLen(t, log, before+2, "no confirm after the drop")
		assertEqual(t, []string{"closed net", "conn-closed net"}, log[before:])
	})
}

func TestBlock(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		b.Block("low on memory")
		_, _, r2 := open(t, b) // dialed while blocked
		synctest.Wait()
		assertEqual(t, []string{"blocked true low on memory"}, r.get())
		assertEqual(t, []string{"blocked true low on memory"}, r2.get())

		ctx, cancel := context.WithCancel(t.Context())
		type result struct {
			tag uint64
			err error
		}
		done := make(chan result, 1)
		go func() {
			tag, err := ch.Publish(ctx, "", "q", false, msg("1"))
			done <- result{tag, err}
		}()
		synctest.Wait()
		cancel() // ignored once blocked, like amqp091's socket write
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("Publish returned while blocked")
		default:
		}
		assertEqual(t, 0, b.Published())
		_, err := ch.Publish(ctx, "", "q", false, msg("x"))
		assertErrorIs(t, err, context.Canceled, "a done ctx fails before blocking")

		b.Unblock()
		res := <-done
		requireNoError(t, res.err)
		assertEqual(t, uint64(1), res.tag)
		synctest.Wait()
		assertEqual(t, []string{"blocked true low on memory", "blocked false ", "ack 1"}, r.get())
		assertEqual(t, []string{"blocked true low on memory", "blocked false "}, r2.get())
	})
}

func TestBlockedPublishEndsWithConnection(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		conn, ch, _ := open(t, b)
		_, ch2, _ := open(t, b)
		b.Block("disk")
		errs := make(chan error, 2)
		go func() { _, err := ch.Publish(context.Background(), "", "q", false, msg("1")); errs <- err }()
		go func() { _, err := ch2.Publish(context.Background(), "", "q", false, msg("2")); errs <- err }()
		synctest.Wait()
		requireNoError(t, conn.Close())
		assertErrorIs(t, <-errs, mlproducertest.ErrClosed)
		boom := errors.New("boom")
		b.DropConnections(boom)
		assertErrorIs(t, <-errs, boom)
		assertEqual(t, 0, b.Published())
	})
}

func TestRefuseDials(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		down := errors.New("connection refused")
		b.RefuseDials(down)
		_, err := b.Dial(t.Context(), "amqp://a", transport.Config{})
		assertErrorIs(t, err, down)

		nodeA := errors.New("node a down")
		b.RefuseURL("amqp://a", nodeA)
		b.RefuseDials(nil)
		_, err = b.Dial(t.Context(), "amqp://a", transport.Config{})
		assertErrorIs(t, err, nodeA)
		conn, err := b.Dial(t.Context(), "amqp://b", transport.Config{})
		requireNoError(t, err)
		requireNoError(t, conn.Close())
		b.RefuseURL("amqp://a", nil)
		conn, err = b.Dial(t.Context(), "amqp://a", transport.Config{})
		requireNoError(t, err)
		defer conn.Close()

		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err = b.Dial(ctx, "amqp://a", transport.Config{})
		assertErrorIs(t, err, context.Canceled)
		assertEqual(t, 5, b.Dials())
		assertEqual(t, 1, b.Conns())
	})
}

// TestUnknownExchangeClosesChannel: like RabbitMQ, a publishing to a missing
// exchange gets no answer of its own (Publish succeeds); the broker closes
// the channel with a 404, reported by Closed after the earlier acks, and
// every later call on the channel fails.
func TestUnknownExchangeClosesChannel(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		conn, ch, r := open(t, b)
		declare(t, ch)
		publish(t, ch, "ml.tasks", "ml.embedding", true, "1")
		assertEqual(t, uint64(2), publish(t, ch, "missing", "k", true, "2"), "the refused publishing has its tag")
		_, err := ch.Publish(t.Context(), "ml.tasks", "ml.embedding", true, msg("3"))
		assertErrorIs(t, err, mlproducertest.ErrClosed)
		var amqpErr *mlproducertest.Error
		requireErrorAs(t, err, &amqpErr)
		assertEqual(t, uint16(404), amqpErr.Code)
		assertEqual(t, uint16(404), transport.ReplyCode(err))
		synctest.Wait()
		assertEqual(t, []string{"ack 1", "closed " + amqpErr.Error()}, r.get(), "earlier acks come first")
		assertEqual(t, []string{"1"}, b.MessageIDs("ml.embedding"))
		assertEqual(t, map[string]int{"1": 1, "2": 1}, b.SendCounts(), "the refused publishing reached the broker")

		// The connection survives a channel error; an operator deleting the
		// exchange has the same effect.
		ch2, err := conn.Channel()
		requireNoError(t, err)
		r2 := &recorder{}
		requireNoError(t, ch2.Confirm(r2.events()))
		b.DeleteExchange("ml.tasks")
		publish(t, ch2, "ml.tasks", "ml.embedding", true, "4")
		_, err = ch2.Publish(t.Context(), "ml.tasks", "ml.embedding", true, msg("5"))
		requireErrorAs(t, err, &amqpErr)
		assertEqual(t, uint16(404), amqpErr.Code)
		synctest.Wait()
		assertEqual(t, []string{"closed " + amqpErr.Error()}, r2.get())
		assertEqual(t, 1, b.Published())
		assertEqual(t, 1, b.Conns())
	})
}

func TestTopology(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		conn, ch, r := open(t, b)
		declare(t, ch)
		declare(t, ch) // same properties: fine
		kind, ok := b.ExchangeKind("ml.tasks")
		assertTrue(t, ok)
		assertEqual(t, "direct", kind)
		args, ok := b.QueueArgs("ml.embedding")
		assertTrue(t, ok)
		assertEqual(t, transport.Table{"x-queue-type": "quorum"}, args)
		_, ok = b.QueueArgs("nope")
		assertTrue(t, !ok)

		code := func(err error) uint16 {
			var e *mlproducertest.Error
			if errors.As(err, &e) {
				return e.Code
			}
			return 0
		}
		fresh := func() transport.Channel {
			c, err := conn.Channel()
			requireNoError(t, err)
			return c
		}
		assertEqual(t, uint16(406), code(ch.QueueDeclare("ml.embedding", true, nil)), "classic vs quorum")
		assertErrorIs(t, ch.QueueDeclare("other", true, nil), mlproducertest.ErrClosed, "channel closed by 406")
		assertEqual(t, uint16(406), code(fresh().ExchangeDeclare("ml.tasks", "fanout", true, nil)))
		assertEqual(t, uint16(503), code(fresh().ExchangeDeclare("h", "headers", true, nil)))
		assertEqual(t, uint16(403), code(fresh().ExchangeDeclare("", "direct", true, nil)))
		assertEqual(t, uint16(403), code(fresh().QueueDeclare("", true, nil)))
		assertEqual(t, uint16(404), code(fresh().QueueBind("missing", "k", "ml.tasks")))
		assertEqual(t, uint16(404), code(fresh().QueueBind("ml.embedding", "k", "missing")))
		assertEqual(t, uint16(403), code(fresh().QueueBind("ml.embedding", "k", "")))
		requireNoError(t, fresh().ExchangeDeclare("amq.direct", "direct", true, nil))

		b.DeleteQueue("ml.embedding")
		c := fresh()
		publish(t, c, "ml.tasks", "ml.embedding", false, "x")
		assertTrue(t, b.MessageIDs("ml.embedding") == nil)
		synctest.Wait()
		assertLen(t, r.get(), 1)
		assertContains(t, r.get()[0], "closed mlproducertest: exception (406) PRECONDITION_FAILED")
	})
}

func TestGracefulClose(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		conn, ch, r := open(t, b)
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		ch2, err := conn.Channel()
		requireNoError(t, err)
		r2 := &recorder{}
		requireNoError(t, ch2.Confirm(r2.events()))

		publish(t, ch, "", "q", false, "1")
		requireNoError(t, ch.Close())
		requireNoError(t, ch.Close())
		_, err = ch.Publish(t.Context(), "", "q", false, msg("2"))
		assertErrorIs(t, err, mlproducertest.ErrClosed)
		synctest.Wait()
		assertEqual(t, []string{"ack 1", "closed <nil>"}, r.get())

		requireNoError(t, conn.Close())
		requireNoError(t, conn.Close())
		synctest.Wait()
		assertEqual(t, []string{"ack 1", "closed <nil>", "conn-closed <nil>"}, r.get(), "Closed and OnClosed once")
		assertEqual(t, []string{"closed <nil>"}, r2.get())
		assertEqual(t, 0, b.Conns())
		_, err = conn.Channel()
		assertErrorIs(t, err, mlproducertest.ErrClosed)
	})
}

// TestCallbacksOnOwnGoroutine holds the recorder's lock across calls: a
// callback made inside one of them would deadlock, which synctest reports.
func TestCallbacksOnOwnGoroutine(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		conn, ch, r := open(t, b)
		r.mu.Lock()
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		publish(t, ch, "", "q", true, "1")
		publish(t, ch, "", "nope", true, "2")
		_, err := ch.Publish(t.Context(), "nope", "k", false, msg("3"))
		requireNoError(t, err) // the 404 closes the channel asynchronously
		b.Block("x")
		b.Unblock()
		requireNoError(t, conn.Close())
		r.mu.Unlock()
		synctest.Wait()
		assertLen(t, r.get(), 7)
	})
}

func TestBrokerCloseWaitsForGoroutines(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := mlproducertest.NewBroker()
	for range 3 {
		_, ch, _ := open(t, b)
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		b.SetFaults(mlproducertest.Faults{ConfirmDelay: time.Hour})
		publish(t, ch, "", "q", false, "1")
	}
	b.Block("x")
	b.Close()
	assertEqual(t, 0, b.Conns())
	_, err := b.Dial(t.Context(), "amqp://fake", transport.Config{})
	assertErrorIs(t, err, mlproducertest.ErrClosed)
	b.Close()
}

func TestConnCloseEndsGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := mlproducertest.NewBroker()
	conn, ch, r := open(t, b)
	requireNoError(t, ch.QueueDeclare("q", true, nil))
	publish(t, ch, "", "q", false, "1")
	requireNoError(t, conn.Close())
	requireEventually(t, func() bool { return slices.Contains(r.get(), "conn-closed <nil>") })
}

// TestConcurrentPublish runs many publishers with faults, under -race, and
// checks that every tag of every channel is confirmed exactly once.
func TestConcurrentPublish(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	b.SetFaults(mlproducertest.Faults{NackRate: 0.1, ReturnRate: 0.1, ConfirmDelay: time.Millisecond, MultipleAcks: true})
	const conns, chans, publishers, each = 3, 2, 4, 50
	type state struct {
		mu        sync.Mutex
		confirmed map[uint64]bool
		dup       int
	}
	var states []*state
	var wg sync.WaitGroup
	for range conns {
		conn, err := b.Dial(t.Context(), "amqp://fake", transport.Config{})
		requireNoError(t, err)
		defer conn.Close()
		for range chans {
			ch, err := conn.Channel()
			requireNoError(t, err)
			requireNoError(t, ch.QueueDeclare("q", true, nil))
			s := &state{confirmed: map[uint64]bool{}}
			states = append(states, s)
			requireNoError(t, ch.Confirm(transport.ChannelEvents{
				Confirm: func(c transport.Confirmation) {
					s.mu.Lock()
					defer s.mu.Unlock()
					if !c.Multiple {
						if s.confirmed[c.DeliveryTag] {
							s.dup++
						}
						s.confirmed[c.DeliveryTag] = true
						return
					}
					for tag := uint64(1); tag <= c.DeliveryTag; tag++ {
						s.confirmed[tag] = true
					}
				},
				Return: func(transport.Return) {},
				Closed: func(error) {},
			}))
			for p := range publishers {
				wg.Go(func() {
					for i := range each {
						_, err := ch.Publish(context.Background(), "", "q", true, msg(fmt.Sprintf("%d-%d", p, i)))
						requireNoError(t, err)
					}
				})
			}
		}
	}
	wg.Wait()
	assertEqual(t, conns*chans*publishers*each, b.Published())
	for _, s := range states {
		requireEventually(t, func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return len(s.confirmed) == publishers*each
		})
		assertEqual(t, 0, s.dup)
	}
}

func TestHangDials(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		b.HangDials(true)
		start := time.Now()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		_, err := b.Dial(ctx, "amqp://blackhole", transport.Config{})
		assertErrorIs(t, err, context.DeadlineExceeded)
		assertEqual(t, 10*time.Second, time.Since(start))

		done := make(chan error, 1)
		go func() {
			conn, err := b.Dial(t.Context(), "amqp://a", transport.Config{})
			if err == nil {
				err = conn.Close()
			}
			done <- err
		}()
		synctest.Wait()
		assertEqual(t, 0, len(done), "still dialing")
		b.HangDials(false)
		requireNoError(t, <-done)

		b.HangDials(true)
		go func() { _, err := b.Dial(t.Context(), "amqp://a", transport.Config{}); done <- err }()
		synctest.Wait()
		b.Close()
		assertErrorIs(t, <-done, mlproducertest.ErrClosed)
		assertEqual(t, 3, b.Dials())
	})
}

func TestDropAfterChannelErrorStillReportsClosedOnce(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		publish(t, ch, "missing", "k", false, "1")
		_, err := ch.Publish(t.Context(), "", "k", false, msg("2"))
		var amqpErr *mlproducertest.Error
		requireErrorAs(t, err, &amqpErr)
		b.DropConnections(errors.New("boom"))
		synctest.Wait()
		assertEqual(t, []string{"closed " + amqpErr.Error(), "conn-closed boom"}, r.get())
	})
}

// returned reports whether a call made in a goroutine has finished.
func returned[T any](c chan T) bool { return len(c) > 0 }

func TestHoldEventsKeepsChannelOrder(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		declare(t, ch)
		_, ch2, r2 := open(t, b)
		b.HoldEvents(true)
		publish(t, ch, "ml.tasks", "nokey", true, "m1") // returned, then acked
		publish(t, ch, "ml.tasks", "ml.embedding", true, "m2")
		publish(t, ch2, "ml.tasks", "ml.embedding", true, "o1") // another channel
		publish(t, ch, "ml.tasks", "nokey", true, "m3")
		b.Block("x") // OnBlocked is not held
		b.Unblock()
		time.Sleep(time.Hour)
		synctest.Wait()
		assertEqual(t, []string{"blocked true x", "blocked false "}, r.get(), "returns and acks are held")
		assertEqual(t, []string{"blocked true x", "blocked false "}, r2.get())
		assertEqual(t, []string{"m2", "o1"}, b.MessageIDs("ml.embedding"), "stored while held")

		b.HoldEvents(false)
		synctest.Wait()
		assertEqual(t, []string{"blocked true x", "blocked false ",
			"return 312 NO_ROUTE ml.tasks nokey m1", "ack 1", "ack 2", "return 312 NO_ROUTE ml.tasks nokey m3", "ack 3"},
			r.get(), "released in channel order, each return before its ack")
		assertEqual(t, []string{"blocked true x", "blocked false ", "ack 1"}, r2.get())
	})
}

func TestHoldEventsWithMultipleAcks(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		b.SetFaults(mlproducertest.Faults{MultipleAcks: true})
		b.HoldEvents(true)
		publish(t, ch, "", "q", true, "1")
		publish(t, ch, "", "q", true, "2")
		publish(t, ch, "", "nope", true, "3")
		publish(t, ch, "", "q", true, "4")
		publish(t, ch, "", "q", true, "5")
		b.HoldEvents(false)
		synctest.Wait()
		assertEqual(t, []string{"ack* 2", "return 312 NO_ROUTE  nope 3", "ack* 5"}, r.get(),
			"a return ends a batch of acks; its own ack may open the next")
	})
}

// TestHoldEventsAndHoldConfirms: HoldConfirms keeps confirms held after
// HoldEvents(false), which then releases the returns only.
func TestHoldEventsAndHoldConfirms(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		b.HoldEvents(true)
		b.HoldConfirms(true)
		publish(t, ch, "", "nope", true, "1")
		b.HoldEvents(false)
		synctest.Wait()
		assertEqual(t, []string{"return 312 NO_ROUTE  nope 1"}, r.get())
		b.HoldConfirms(false)
		synctest.Wait()
		assertEqual(t, []string{"return 312 NO_ROUTE  nope 1", "ack 1"}, r.get())
	})
}

func TestHoldEventsDiscardedOnClose(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		conn, ch, r := open(t, b)
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		ch2, err := conn.Channel()
		requireNoError(t, err)
		r2 := &recorder{}
		requireNoError(t, ch2.Confirm(r2.events()))
		publish(t, ch, "", "q", true, "1")
		synctest.Wait()
		b.HoldEvents(true)
		publish(t, ch, "", "q", true, "2")
		publish(t, ch, "", "nope", true, "3")
		publish(t, ch2, "", "q", true, "4")
		requireNoError(t, ch.Close())
		synctest.Wait()
		assertEqual(t, []string{"ack 1", "closed <nil>"}, r.get(), "Closed is not held; held events are discarded")
		b.HoldEvents(false)
		synctest.Wait()
		assertEqual(t, []string{"ack 1", "closed <nil>"}, r.get())
		assertEqual(t, []string{"ack 1"}, r2.get(), "the other channel's events are kept")
		assertEqual(t, []string{"1", "2", "4"}, b.MessageIDs("q"))
	})
}

// TestStoredButConfirmLostWithConnection: held events and a dropped
// connection give messages that the broker stored and never confirmed (and
// a return never delivered): the client cannot tell them from lost ones.
func TestStoredButConfirmLostWithConnection(t *testing.T) {
	for _, hold := range []string{"HoldEvents", "HoldConfirms"} {
		t.Run(hold, func(t *testing.T) {
			bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
				_, ch, r := open(t, b)
				requireNoError(t, ch.QueueDeclare("q", true, nil))
				setHold := b.HoldEvents
				if hold == "HoldConfirms" {
					setHold = b.HoldConfirms
				}
				setHold(true)
				publish(t, ch, "", "q", true, "1")
				publish(t, ch, "", "q", true, "2")
				b.DropConnections(errors.New("net"))
				setHold(false)
				time.Sleep(time.Hour)
				synctest.Wait()
				assertEqual(t, []string{"closed net", "conn-closed net"}, r.get(), "never confirmed")
				assertEqual(t, map[string]int{"1": 1, "2": 1}, b.StoredIDs(), "but stored")
			})
		})
	}
}

func TestMultipleNacks(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		b.SetFaults(mlproducertest.Faults{MultipleNacks: true})
		b.HoldConfirms(true)
		b.NackNext(3)
		for i := 1; i <= 5; i++ {
			publish(t, ch, "", "q", false, fmt.Sprint(i))
		}
		b.HoldConfirms(false)
		synctest.Wait()
		assertEqual(t, []string{"nack* 3", "ack 4", "ack 5"}, r.get(), "acks are not coalesced without MultipleAcks")

		b.SetFaults(mlproducertest.Faults{MultipleNacks: true, MultipleAcks: true})
		b.HoldConfirms(true)
		publish(t, ch, "", "q", false, "6")
		publish(t, ch, "", "q", false, "7")
		b.NackNext(2)
		publish(t, ch, "", "q", false, "8")
		publish(t, ch, "", "q", false, "9")
		publish(t, ch, "", "nope", true, "10") // returned, then acked
		b.NackNext(1)
		publish(t, ch, "", "q", false, "11")
		synctest.Wait() // the return is not held
		b.HoldConfirms(false)
		synctest.Wait()
		assertEqual(t, []string{"nack* 3", "ack 4", "ack 5", "return 312 NO_ROUTE  nope 10", "ack* 7", "nack* 9", "ack 10", "nack 11"}, r.get(),
			"an ack ends a batch of nacks and a nack one of acks")
		assertEqual(t, []string{"4", "5", "6", "7"}, b.MessageIDs("q"))
	})
}

func TestMultipleNacksNeverCoverUnconfirmedTag(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		b.HoldConfirms(true)
		b.SetFaults(mlproducertest.Faults{MultipleNacks: true, LoseConfirmRate: 1})
		publish(t, ch, "", "q", false, "1") // stored, confirm lost
		b.SetFaults(mlproducertest.Faults{MultipleNacks: true})
		b.NackNext(3)
		for i := 2; i <= 4; i++ {
			publish(t, ch, "", "q", false, fmt.Sprint(i))
		}
		b.HoldConfirms(false)
		synctest.Wait()
		assertEqual(t, []string{"nack 2", "nack 3", "nack 4"}, r.get())
	})
}

func TestHangChannels(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		conn, ch, r := open(t, b)
		declare(t, ch)
		fresh, err := conn.Channel()
		requireNoError(t, err)
		b.HangChannels(true)

		calls := map[string]func() error{
			"channel":  func() error { _, err := conn.Channel(); return err },
			"exchange": func() error { return fresh.ExchangeDeclare("ml.tasks", "direct", true, nil) },
			"queue": func() error {
				return fresh.QueueDeclare("ml.embedding", true, transport.Table{"x-queue-type": "quorum"})
			},
			"bind":    func() error { return fresh.QueueBind("ml.embedding", "ml.embedding", "ml.tasks") },
			"confirm": func() error { return fresh.Confirm((&recorder{}).events()) },
		}
		done := make(chan error, len(calls))
		for _, f := range calls {
			go func() { done <- f() }()
		}
		publish(t, ch, "ml.tasks", "ml.embedding", true, "1") // a live channel works
		time.Sleep(time.Hour)
		synctest.Wait()
		assertTrue(t, !returned(done), "no channel RPC answers")
		assertEqual(t, []string{"ack 1"}, r.get(), "events of live channels flow")

		b.HangChannels(false)
		for range calls {
			requireNoError(t, <-done)
		}
		assertEqual(t, uint64(1), publish(t, fresh, "ml.tasks", "ml.embedding", true, "2"), "confirm.select went through")
	})
}

func TestHangChannelsEndsWithConnection(t *testing.T) {
	boom := errors.New("boom")
	for _, end := range []string{"conn.Close", "channel.Close", "DropConnections", "Broker.Close"} {
		t.Run(end, func(t *testing.T) {
			bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
				conn, err := b.Dial(t.Context(), "amqp://fake", transport.Config{})
				requireNoError(t, err)
				ch, err := conn.Channel()
				requireNoError(t, err)
				b.HangChannels(true)
				defer b.HangChannels(false)
				done := make(chan error, 2)
				go func() { done <- ch.QueueDeclare("q", true, nil) }()
				if end != "channel.Close" {
					go func() { _, err := conn.Channel(); done <- err }()
				}
				synctest.Wait()
				assertTrue(t, !returned(done), "hung")
				switch end {
				case "conn.Close":
					requireNoError(t, conn.Close())
				case "channel.Close":
					requireNoError(t, ch.Close())
				case "DropConnections":
					b.DropConnections(boom)
				case "Broker.Close":
					b.Close()
				}
				n := 2
				if end == "channel.Close" {
					n = 1
				}
				for range n {
					err := <-done
					assertErrorIs(t, err, mlproducertest.ErrClosed, end)
					if end == "DropConnections" {
						assertErrorIs(t, err, boom)
					}
				}
				requireNoError(t, conn.Close())
			})
		})
	}
}

func TestStallWrites(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		b.StallWrites(true)
		ctx, cancel := context.WithCancel(t.Context())
		type result struct {
			tag uint64
			err error
		}
		done := make(chan result, 1)
		go func() {
			tag, err := ch.Publish(ctx, "", "q", false, msg("1"))
			done <- result{tag, err}
		}()
		synctest.Wait()
		cancel() // ignored once writing
		time.Sleep(time.Hour)
		synctest.Wait()
		assertTrue(t, !returned(done), "Publish stalls")
		assertEmpty(t, r.get(), "no connection.blocked")
		assertEqual(t, 0, b.Published())
		assertEmpty(t, b.SendCounts())

		b.StallWrites(false)
		res := <-done
		requireNoError(t, res.err)
		assertEqual(t, uint64(1), res.tag)
		synctest.Wait()
		assertEqual(t, []string{"ack 1"}, r.get())
		assertEqual(t, map[string]int{"1": 1}, b.SendCounts())

		// Independent of Block: the Publish proceeds once neither holds it.
		b.StallWrites(true)
		b.Block("mem")
		go func() {
			tag, err := ch.Publish(t.Context(), "", "q", false, msg("2"))
			done <- result{tag, err}
		}()
		synctest.Wait()
		b.Unblock()
		synctest.Wait()
		assertTrue(t, !returned(done), "still stalled after Unblock")
		b.Block("mem")
		b.StallWrites(false)
		synctest.Wait()
		assertTrue(t, !returned(done), "still blocked")
		b.Unblock()
		res = <-done
		requireNoError(t, res.err)
		assertEqual(t, uint64(2), res.tag)
		synctest.Wait()
		assertEqual(t, []string{"ack 1", "blocked true mem", "blocked false ", "blocked true mem", "blocked false ", "ack 2"}, r.get())
	})
}

func TestStalledWriteFailsWithConnection(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, _ := open(t, b)
		conn2, ch2, _ := open(t, b)
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		b.StallWrites(true)
		errs := make(chan error, 2)
		go func() { _, err := ch.Publish(t.Context(), "", "q", false, msg("1")); errs <- err }()
		go func() { _, err := ch2.Publish(t.Context(), "", "q", false, msg("2")); errs <- err }()
		synctest.Wait()
		requireNoError(t, conn2.Close())
		assertErrorIs(t, <-errs, mlproducertest.ErrClosed)
		boom := errors.New("boom")
		b.DropConnections(boom)
		err := <-errs
		assertErrorIs(t, err, mlproducertest.ErrClosed)
		assertErrorIs(t, err, boom)
		b.StallWrites(false)
		assertEqual(t, 0, b.Published())
		assertEmpty(t, b.SendCounts(), "a failed write did not reach the broker")
		assertEmpty(t, b.StoredIDs())
	})
}

func TestReturnCarriesHeadersAndBody(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, r := open(t, b)
		m := msg("1")
		_, err := ch.Publish(t.Context(), "", "nope", true, m)
		requireNoError(t, err)
		m.Body[0] = 'X' // the caller reuses its buffers
		m.Headers["x-attempt"] = 9
		synctest.Wait()
		r.mu.Lock()
		defer r.mu.Unlock()
		assertEqual(t, []transport.Return{{
			ReplyCode: 312, ReplyText: "NO_ROUTE", RoutingKey: "nope", MessageID: "1",
			Headers: msg("1").Headers, Body: msg("1").Body,
		}}, r.rets, "the publishing's headers and body, as sent")
	})
}

func TestReplyCode(t *testing.T) {
	e := &mlproducertest.Error{Code: 406, Reason: "PRECONDITION_FAILED - x"}
	assertEqual(t, uint16(406), e.ReplyCode())
	var rc transport.ReplyCoder = e
	assertEqual(t, uint16(406), transport.ReplyCode(fmt.Errorf("wrapped: %w", rc)))
}

func TestDialTimes(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		start := time.Now()
		conn, err := b.Dial(t.Context(), "amqp://a", transport.Config{})
		requireNoError(t, err)
		requireNoError(t, conn.Close())
		time.Sleep(time.Second)
		b.RefuseDials(errors.New("down"))
		_, err = b.Dial(t.Context(), "amqp://a", transport.Config{})
		requireError(t, err)
		time.Sleep(2 * time.Second)
		b.HangDials(true)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		_, err = b.Dial(ctx, "amqp://a", transport.Config{})
		assertErrorIs(t, err, context.DeadlineExceeded)
		times := b.DialTimes()
		assertEqual(t, []time.Time{start, start.Add(time.Second), start.Add(3 * time.Second)}, times, "when each call was made")
		assertEqual(t, 3, b.Dials())
		times[0] = time.Time{}
		assertEqual(t, start, b.DialTimes()[0], "a copy")
	})
}

func TestSendCountsAndStoredIDs(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		_, ch, _ := open(t, b)
		requireNoError(t, ch.ExchangeDeclare("f", "fanout", true, nil))
		for _, q := range []string{"q1", "q2"} {
			requireNoError(t, ch.QueueDeclare(q, true, nil))
			requireNoError(t, ch.QueueBind(q, "", "f"))
		}
		publish(t, ch, "f", "", true, "both")    // two copies
		publish(t, ch, "", "q1", true, "twice")  // sent twice, stored twice
		publish(t, ch, "", "q1", true, "twice")  //
		publish(t, ch, "", "nope", true, "ret")  // returned
		b.NackNext(1)                            //
		publish(t, ch, "", "q1", true, "nacked") // nacked
		b.SetFaults(mlproducertest.Faults{LoseConfirmRate: 1})
		publish(t, ch, "", "q2", true, "lost") // stored, confirm lost
		synctest.Wait()
		assertEqual(t, map[string]int{"both": 1, "twice": 2, "ret": 1, "nacked": 1, "lost": 1}, b.SendCounts())
		assertEqual(t, map[string]int{"both": 2, "twice": 2, "lost": 1}, b.StoredIDs())
		b.Purge()
		assertEmpty(t, b.StoredIDs())
		assertLen(t, b.SendCounts(), 5, "counters are kept by Purge")
	})
}

func TestMaxMessageSizeClosesChannel(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		conn, ch, r := open(t, b)
		requireNoError(t, ch.QueueDeclare("q", true, nil))
		b.SetMaxMessageSize(10)
		publish(t, ch, "", "q", true, "1") // "body-1": 6 bytes
		big := transport.Publishing{MessageID: "big", Body: make([]byte, 11)}
		tag, err := ch.Publish(t.Context(), "", "q", true, big)
		requireNoError(t, err, "basic.publish has no answer")
		assertEqual(t, uint64(2), tag)
		_, err = ch.Publish(t.Context(), "", "q", true, msg("3"))
		assertErrorIs(t, err, mlproducertest.ErrClosed)
		assertEqual(t, uint16(406), transport.ReplyCode(err))
		synctest.Wait()
		const text = "mlproducertest: exception (406) PRECONDITION_FAILED - message size 11 is larger than configured max size 10"
		assertEqual(t, []string{"ack 1", "closed " + text}, r.get(), "Closed after the events already due")
		assertEqual(t, []string{"1"}, b.MessageIDs("q"))
		assertEqual(t, map[string]int{"1": 1, "big": 1}, b.SendCounts(), "the refused publishing reached the broker")
		assertEqual(t, 1, b.Published())
		assertEqual(t, 1, b.Conns(), "a channel error, not a connection error")

		// Held confirms of the channel are lost with it: stored, never confirmed.
		ch2, err := conn.Channel()
		requireNoError(t, err)
		r2 := &recorder{}
		requireNoError(t, ch2.Confirm(r2.events()))
		b.HoldEvents(true)
		publish(t, ch2, "", "q", true, "4")
		publish(t, ch2, "", "nope", true, "5")
		_, err = ch2.Publish(t.Context(), "", "q", true, big)
		requireNoError(t, err)
		b.HoldEvents(false)
		synctest.Wait()
		assertLen(t, r2.get(), 1)
		assertContains(t, r2.get()[0], "closed mlproducertest: exception (406) PRECONDITION_FAILED")
		assertEqual(t, []string{"1", "4"}, b.MessageIDs("q"))

		// Outside confirm mode the tag is 0; no limit again with 0.
		ch3, err := conn.Channel()
		requireNoError(t, err)
		assertEqual(t, uint64(0), publish(t, ch3, "", "q", false, "6"))
		_, err = ch3.Publish(t.Context(), "", "q", false, big)
		requireNoError(t, err)
		_, err = ch3.Publish(t.Context(), "", "q", false, msg("7"))
		assertErrorIs(t, err, mlproducertest.ErrClosed)
		b.SetMaxMessageSize(0)
		_, ch4, _ := open(t, b)
		publish(t, ch4, "", "q", false, "big")
		assertEqual(t, []string{"1", "4", "6", "big"}, b.MessageIDs("q"))
	})
}
