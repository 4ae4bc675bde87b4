package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/rabbittest"
)

type kind int

const (
	kindRaw           kind = iota // N callers share one channel, each waits for its own deferred confirm
	kindRawWindow                 // one goroutine, window confirms outstanding
	kindRawNoConfirm              // one goroutine, no confirms
	kindPublish                   // Producer.Publish, prebuilt body
	kindSummarization             // Producer.PublishSummarization, encoding included
	kindPublishSpool              // Producer.Publish with WithSpool, prebuilt body
	kindPublishAsync              // one goroutine calling Producer.PublishAsync, WithMaxInFlight(window)
	kindRawEnv                    // raw-N to the Producer's exchange with one envelope property (env)
)

// windowSize is the number of confirms raw-window keeps outstanding unless
// -raw-windows adds others; the upper bound, which the ratios use.
const windowSize = 256

// spec is one case: what publishes, how many callers, what body size.
type spec struct {
	kind    kind
	callers int
	size    int
	// channels spreads the callers of a raw-N case over this many channels
	// (-raw-channels); 0 or 1 is the one shared channel of the issue.
	channels int
	// window is the number of confirms a raw-window case keeps outstanding;
	// 0 means windowSize.
	window int
	// quorum runs the case on the local 3-node cluster (-cluster), on a
	// quorum queue: raw-N-quorum and producer-publish-N-quorum.
	quorum bool
	// env is the envelope of a kindRawEnv case: one of envCases; on a
	// kindPublish case, envAll is the Producer with WithEnvelope(EnvelopeAll)
	// (producer-publish-64-envall), its envelope before issue 13.
	env string
}

// windowLen returns the window of a raw-window case.
func (s spec) windowLen() int {
	if s.window > 0 {
		return s.window
	}
	return windowSize
}

func (s spec) name() string {
	if s.quorum {
		return s.plainName() + "-quorum"
	}
	return s.plainName()
}

func (s spec) plainName() string {
	switch s.kind {
	case kindRaw:
		if s.channels > 1 {
			return fmt.Sprintf("raw-%d-ch%d", s.callers, s.channels)
		}
		return fmt.Sprintf("raw-%d", s.callers)
	case kindRawWindow:
		return fmt.Sprintf("raw-window%d", s.windowLen())
	case kindRawNoConfirm:
		return "raw-noconfirm"
	case kindPublish:
		if s.env != "" {
			return fmt.Sprintf("producer-publish-%d-env%s", s.callers, s.env)
		}
		return fmt.Sprintf("producer-publish-%d", s.callers)
	case kindSummarization:
		return fmt.Sprintf("producer-summarization-%d", s.callers)
	case kindPublishSpool:
		return fmt.Sprintf("producer-spool-publish-%d", s.callers)
	case kindPublishAsync:
		return fmt.Sprintf("producer-async-w%d", s.windowLen())
	case kindRawEnv:
		return fmt.Sprintf("raw-%d-env-%s", s.callers, s.env)
	}
	return "?"
}

// key identifies a case across rounds.
func (s spec) key() string { return fmt.Sprintf("%s/%d", s.name(), s.size) }

// outcome is a measured run of a case and its delivery check.
type outcome struct {
	m     measurement
	check string // what the delivery check found
	bad   bool   // messages missing, nacked, dead-lettered or refused
}

// shareID and summarizationOpts are what the summarization cases publish.
const shareID = "share-123"

var summarizationOpts = mlproducer.SummarizationOptions{MaxLength: 200, Language: "en"}

// text is filler for bodies and contents: plain ASCII, like real text.
const text = "The quick brown fox jumps over the lazy dog. "

func filler(n int) string {
	return strings.Repeat(text, n/len(text)+1)[:n]
}

// taskBody returns a valid summarization task body (the shape the Producer's
// typed methods write) of exactly n bytes, for Publish and the raw cases.
func taskBody(n int) ([]byte, error) {
	const id = "0190b6a2-7f1e-7c3a-9d2b-4e5f60718293"
	head := `{"version":1,"type":"summarization","messageId":"` + id + `","shareId":"` + shareID + `","content":"`
	tail := `","options":{"maxLength":200,"language":"en"},"createdAt":"2026-01-01T00:00:00.000000000Z"}`
	pad := n - len(head) - len(tail)
	if pad < 0 {
		return nil, fmt.Errorf("body size %d is below the %d bytes of an empty task", n, len(head)+len(tail))
	}
	b := []byte(head + filler(pad) + tail)
	if !json.Valid(b) || len(b) != n {
		return nil, fmt.Errorf("internal error: bad %d-byte body", n)
	}
	return b, nil
}

// runCase runs one case once, holding the shared broker lock throughout.
func (e *env) runCase(s spec) (outcome, error) {
	url := e.url
	if s.quorum {
		// The cluster's own lock: its tests stop nodes.
		unlock, err := rabbittest.ClusterLock(false)
		if err != nil {
			return outcome{}, err
		}
		defer unlock()
		url = e.clusterURL
	} else {
		if err := e.lock.shared(); err != nil {
			return outcome{}, err
		}
		defer e.lock.unlock()
	}
	adm, err := newAdmin(url)
	if err != nil {
		return outcome{}, err
	}
	defer adm.close()
	switch s.kind {
	case kindPublish, kindSummarization, kindPublishSpool, kindPublishAsync:
		return e.runProducer(adm, url, s)
	default:
		return e.runRaw(adm, url, s)
	}
}

// runRaw measures raw amqp091-go. Every publishing carries what the
// Producer's default envelope does (persistent, mandatory, content type and
// a UUIDv7 message id) to a durable direct exchange bound to a durable
// classic queue, so both put the same bytes on the wire. The envelope cases (kindRawEnv) publish to the
// Producer's exchange instead, to a queue of their own like the Producer's,
// with the properties of their envelope only.
func (e *env) runRaw(adm *admin, url string, s spec) (outcome, error) {
	queueType := "classic"
	if s.quorum {
		queueType = "quorum"
	}
	exchange, queue := rawExchange, rawQueue+"."+queueType
	declare := func() error { return adm.declareRaw(queue, queueType) }
	if s.kind == kindRawEnv {
		exchange, queue = taskExchange, envQueue
		declare = adm.declareEnv
	}
	if err := declare(); err != nil {
		return outcome{}, fmt.Errorf("declare %s: %w", queue, err)
	}
	if err := adm.purge(queue); err != nil {
		return outcome{}, fmt.Errorf("purge %s: %w", queue, err)
	}
	defer func() { _ = adm.purge(queue) }()

	conn, err := dial(url, "mlproducer-bench raw")
	if err != nil {
		return outcome{}, fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	blocks := conn.NotifyBlocked(make(chan amqp.Blocking, 16))
	chans := make([]*amqp.Channel, max(s.channels, 1))
	confirm := s.kind != kindRawNoConfirm
	for i := range chans {
		if chans[i], err = conn.Channel(); err != nil {
			return outcome{}, err
		}
		if confirm {
			if err := chans[i].Confirm(false); err != nil {
				return outcome{}, err
			}
		}
	}
	ch := chans[0]
	body := e.bodies[s.size]
	ctx := context.Background()
	var published, acked atomic.Int64
	mandatory := true
	publishing := func() amqp.Publishing {
		id, _ := uuid.NewV7()
		return amqp.Publishing{
			ContentType:  "application/json",
			DeliveryMode: amqp.Persistent,
			MessageId:    id.String(),
			Body:         body,
		}
	}
	if s.kind == kindRawEnv {
		mandatory, publishing = envelope(s.env, body)
	}
	publishOn := func(ch *amqp.Channel) (*amqp.DeferredConfirmation, error) {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, queue, mandatory, false, publishing())
		if err == nil {
			published.Add(1)
		}
		return dc, err
	}
	publish := func() (*amqp.DeferredConfirmation, error) { return publishOn(ch) }
	errNack := errors.New("broker nacked a publishing (or the channel closed before its confirm)")

	var m measurement
	switch s.kind {
	case kindRaw, kindRawEnv:
		m, err = drive(e.probe, s.callers, e.cfg.warmup, e.cfg.duration, closedLoopW(func(w int) (bool, error) {
			dc, err := publishOn(chans[w%len(chans)])
			if err != nil {
				return false, err
			}
			if !dc.Wait() {
				return false, errNack
			}
			acked.Add(1)
			return true, nil
		}))
	case kindRawWindow:
		m, err = drive(e.probe, 1, e.cfg.warmup, e.cfg.duration, func(_ int, rec *recorder, stopped func() bool) error {
			type sent struct {
				dc *amqp.DeferredConfirmation
				t0 time.Duration
			}
			size := s.windowLen()
			ring := make([]sent, size)
			head, n := 0, 0
			for {
				t := rec.win.now()
				if n < size && t < rec.win.end && !stopped() {
					dc, err := publish()
					if err != nil {
						return err
					}
					ring[(head+n)%size] = sent{dc, t}
					n++
					continue
				}
				if n == 0 {
					return nil
				}
				s := ring[head]
				ring[head] = sent{}
				head, n = (head+1)%size, n-1
				if !s.dc.Wait() {
					return errNack
				}
				acked.Add(1)
				rec.done(s.t0, rec.win.now())
			}
		})
	case kindRawNoConfirm:
		m, err = drive(e.probe, 1, e.cfg.warmup, e.cfg.duration, closedLoop(func() (bool, error) {
			err := ch.PublishWithContext(ctx, exchange, queue, mandatory, false, publishing())
			if err != nil {
				return false, err
			}
			published.Add(1)
			return true, nil
		}))
	}
	if err != nil {
		return outcome{}, err
	}
	want := acked.Load()
	if !confirm {
		want = published.Load()
	}
	depth, err := adm.settledDepth(queue, int(want), 30*time.Second)
	if err != nil {
		return outcome{}, fmt.Errorf("count %s: %w", queue, err)
	}
	out := outcome{m: m, check: "ok"}
	switch {
	case int64(depth) != want:
		out.bad = true
		out.check = fmt.Sprintf("MISMATCH: %d in queue, %d %s", depth, want, map[bool]string{true: "confirmed", false: "sent"}[confirm])
	case confirm && published.Load() != want:
		out.bad = true
		out.check = fmt.Sprintf("MISMATCH: %d published, %d confirmed", published.Load(), want)
	}
	if blockedDuring(blocks) {
		out.bad = true
		out.check += "; broker blocked publishers (resource alarm) during the case"
	}
	return out, nil
}

// blockedDuring reports whether the connection saw connection.blocked.
func blockedDuring(c <-chan amqp.Blocking) bool {
	for {
		select {
		case b := <-c:
			if b.Active {
				return true
			}
		default:
			return false
		}
	}
}

// newProducer makes a Producer on url with the defaults.
func (e *env) newProducer(url string, extra ...mlproducer.Option) (*mlproducer.Producer, error) {
	opts := append([]mlproducer.Option{
		mlproducer.WithURLs(url),
		mlproducer.WithConnectionName("mlproducer-bench"),
	}, extra...)
	return mlproducer.New(opts...)
}

// runProducer measures the Producer through Publish or PublishSummarization,
// with its default options and topology (and a fresh spool dir for
// kindPublishSpool).
func (e *env) runProducer(adm *admin, url string, s spec) (outcome, error) {
	var opts []mlproducer.Option
	if s.quorum {
		opts = append(opts, mlproducer.WithTopology(mlproducer.Topology{QueueType: mlproducer.QueueQuorum}))
	}
	if s.kind == kindPublishAsync {
		opts = append(opts, mlproducer.WithMaxInFlight(s.windowLen()))
	}
	if s.env == envAll {
		opts = append(opts, mlproducer.WithEnvelope(mlproducer.EnvelopeAll))
	}
	if s.kind == kindPublishSpool {
		dir, err := e.newSpoolDir()
		if err != nil {
			return outcome{}, err
		}
		defer os.RemoveAll(dir)
		opts = append(opts, mlproducer.WithSpool(dir))
	}
	p, err := e.newProducer(url, opts...)
	if err != nil {
		return outcome{}, err
	}
	closed := false
	defer func() {
		if !closed {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_ = p.Close(ctx)
			cancel()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err = p.WaitConnected(ctx)
	cancel()
	if err != nil {
		return outcome{}, err
	}
	// The Producer has declared its topology: start from an empty queue.
	if err := adm.purge(taskQueue); err != nil {
		return outcome{}, fmt.Errorf("purge %s: %w", taskQueue, err)
	}
	defer func() { _ = adm.purge(taskQueue) }()
	st0 := p.Status()

	loop := closedLoop(e.producerCall(p, s))
	if s.kind == kindPublishAsync {
		loop = e.asyncLoop(p, s)
	}
	m, err := drive(e.probe, s.callers, e.cfg.warmup, e.cfg.duration, loop)
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	cerr := p.Close(ctx)
	cancel()
	closed = true
	if err != nil {
		return outcome{}, err
	}
	return e.checkProducer(adm, m, st0, p.Status(), cerr)
}

// asyncLoop is one goroutine publishing with PublishAsync as fast as the
// Producer takes the messages (it waits for room when it holds all it may),
// keeping the Deliveries in order. A confirm is recorded when the loop sees
// it, at the head of the line, so latency is from the call to that moment.
func (e *env) asyncLoop(p *mlproducer.Producer, s spec) func(int, *recorder, func() bool) error {
	msg := mlproducer.Message{Type: mlproducer.TaskSummarization, Body: e.bodies[s.size]}
	type sent struct {
		d  *mlproducer.Delivery
		t0 time.Duration
	}
	return func(_ int, rec *recorder, stopped func() bool) error {
		ctx := context.Background()
		var line []sent
		head := 0
		settle := func(wait bool) {
			for head < len(line) {
				x := line[head]
				if !wait && x.d.Receipt().State == mlproducer.Pending {
					return // not resolved (Receipt makes no channel, Done would)
				}
				r, _ := x.d.Wait(ctx)
				if r.State == mlproducer.Confirmed {
					rec.done(x.t0, rec.win.now())
				} else {
					rec.unconfirmed(rec.win.now())
				}
				line[head] = sent{}
				head++
			}
			if head > 4096 && head*2 > len(line) {
				line = append(line[:0], line[head:]...)
				head = 0
			}
		}
		for {
			t0 := rec.win.now()
			if t0 >= rec.win.end || stopped() {
				settle(true)
				return nil
			}
			d, err := p.PublishAsync(ctx, msg)
			if err != nil {
				return err
			}
			line = append(line, sent{d, t0})
			settle(false)
		}
	}
}

// producerCall returns one caller's publish for the case.
func (e *env) producerCall(p *mlproducer.Producer, s spec) func() (bool, error) {
	ctx := context.Background()
	if s.kind == kindSummarization {
		content := e.contents[s.size]
		return func() (bool, error) {
			r, err := p.PublishSummarization(ctx, shareID, content, summarizationOpts)
			return err == nil && r.State == mlproducer.Confirmed, err
		}
	}
	msg := mlproducer.Message{Type: mlproducer.TaskSummarization, Body: e.bodies[s.size]}
	return func() (bool, error) {
		r, err := p.Publish(ctx, msg)
		return err == nil && r.State == mlproducer.Confirmed, err
	}
}

// checkProducer checks that every message the closed Producer accepted was
// confirmed and that the queue holds at least as many (duplicates, after a
// retry, can only add).
func (e *env) checkProducer(adm *admin, m measurement, st0, st1 mlproducer.Status, closeErr error) (outcome, error) {
	accepted := int64(st1.Accepted - st0.Accepted)
	confirmed := int64(st1.Confirmed - st0.Confirmed)
	dead := int64(st1.DeadLettered - st0.DeadLettered)
	depth, err := adm.settledDepth(taskQueue, int(confirmed), 30*time.Second)
	if err != nil {
		return outcome{}, fmt.Errorf("count %s: %w", taskQueue, err)
	}
	out := outcome{m: m, check: "ok"}
	var bad []string
	if int64(depth) < confirmed {
		bad = append(bad, fmt.Sprintf("%d in queue < %d confirmed", depth, confirmed))
	}
	if confirmed != accepted {
		bad = append(bad, fmt.Sprintf("%d accepted, %d confirmed", accepted, confirmed))
	}
	if dead > 0 {
		bad = append(bad, fmt.Sprintf("%d dead-lettered", dead))
	}
	if closeErr != nil {
		bad = append(bad, "close: "+closeErr.Error())
	}
	if len(bad) > 0 {
		out.bad = true
		out.check = "MISMATCH: " + strings.Join(bad, "; ")
	} else if dup := int64(depth) - confirmed; dup > 0 {
		out.check = fmt.Sprintf("ok (+%d duplicates)", dup)
	}
	if m.other > 0 {
		out.check += fmt.Sprintf("; %d calls returned unconfirmed", m.other)
	}
	return out, nil
}
