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
	mu  sync.Mutex
	log []string
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

func TestUnknownExchangeClosesChannel(t *testing.T) {
	bubble(t, func(t *testing.T, b *mlproducertest.Broker) {
		conn, ch, r := open(t, b)
		declare(t, ch)
		publish(t, ch, "ml.tasks", "ml.embedding", true, "1")
		_, err := ch.Publish(t.Context(), "missing", "k", true, msg("2"))
		var amqpErr *mlproducertest.Error
		requireErrorAs(t, err, &amqpErr)
		assertEqual(t, uint16(404), amqpErr.Code)
		_, err = ch.Publish(t.Context(), "ml.tasks", "ml.embedding", true, msg("3"))
		assertErrorIs(t, err, mlproducertest.ErrClosed)
		requireErrorAs(t, err, &amqpErr)
		assertEqual(t, uint16(404), amqpErr.Code)
		synctest.Wait()
		assertEqual(t, []string{"ack 1", "closed " + amqpErr.Error()}, r.get(), "earlier acks come first")

		// The connection survives a channel error; an operator deleting the
		// exchange has the same effect.
		ch2, err := conn.Channel()
		requireNoError(t, err)
		b.DeleteExchange("ml.tasks")
		_, err = ch2.Publish(t.Context(), "ml.tasks", "ml.embedding", true, msg("4"))
		requireErrorAs(t, err, &amqpErr)
		assertEqual(t, uint16(404), amqpErr.Code)
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
		requireError(t, err)
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
		_, err := ch.Publish(t.Context(), "missing", "k", false, msg("1"))
		requireError(t, err)
		b.DropConnections(errors.New("boom"))
		synctest.Wait()
		assertEqual(t, []string{"closed " + err.Error(), "conn-closed boom"}, r.get())
	})
}
