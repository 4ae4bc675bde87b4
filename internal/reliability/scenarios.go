package reliability

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/faults"
	"github.com/mlproducer/mlproducer/internal/rabbittest"
)

// steady is the publishing of most scenarios: the configured number of
// goroutines, each like a request handler with a 100 ms to 1 s deadline and
// about 10 ms between requests.
func (h *run) steady() publishing {
	return publishing{goroutines: h.r.cfg.Publishers, think: 10 * time.Millisecond,
		minDeadline: 100 * time.Millisecond, maxDeadline: time.Second}
}

// setup starts the proxy (if proxied), the Producer with opts, waits for it
// to connect and starts the publishers. It reports whether all went well;
// otherwise the failure is recorded.
func (h *run) setup(proxied bool, pub publishing, opts ...mlproducer.Option) bool {
	if h.failed() {
		return false
	}
	if proxied {
		if _, err := h.startProxy(); err != nil {
			h.res.failf("fault proxy: %v", err)
			return false
		}
	}
	if _, err := h.newProducer(opts...); err != nil {
		h.res.failf("New: %v", err)
		return false
	}
	if err := h.waitConnected(15 * time.Second); err != nil {
		h.res.failf("the Producer did not connect: %v", err)
		return false
	}
	h.startPublishers(pub)
	return h.sleep(time.Second)
}

// checkNoDeadLetters fails the scenario if messages were dead-lettered in a
// scenario where no message should run out of attempts: time spent
// disconnected costs none.
func (h *run) checkNoDeadLetters() {
	if h.res.DeadLettered > 0 {
		reasons := map[string]int{}
		for _, d := range h.dead.ids() {
			reasons[fmt.Sprintf("%d attempts: %v", d.attempts, d.err)]++
		}
		var list []string
		for k, n := range reasons {
			list = append(list, fmt.Sprintf("%d× (%s)", n, k))
		}
		h.res.failf("%d messages dead-lettered: %s", h.res.DeadLettered, strings.Join(list, "; "))
	}
}

// connectionResilience: connection resets (through the proxy) and
// rabbitmqctl close_all_connections, alternately, while publishers run.
func connectionResilience(h *run) {
	if !h.setup(true, h.steady()) {
		return
	}
	px := h.proxy
	closeAllName := "close_all_connections"
	if !h.exclusive {
		closeAllName = "reset (lock busy)"
	}
	closeAll := func() error {
		// Only this Runner's virtual host is hit, so when other processes
		// keep the broker lock for long a reset stands in.
		if !h.exclusive {
			return px.ResetPeers() // see the note of Run
		}
		return h.closeAllConnections(lockWaitHeld)
	}
	faultList := []struct {
		name string
		do   func() error
	}{
		{"reset", px.ResetPeers},
		{closeAllName, closeAll},
		{"reset", px.ResetPeers},
		{closeAllName, closeAll},
		{"reset", px.ResetPeers},
	}
	var worst time.Duration
	var took []string
	for _, f := range faultList {
		r0 := h.prod.Status().ReconnectAttempts
		if err := f.do(); err != nil {
			h.res.failf("%s: %v", f.name, err)
			break
		}
		d, ok := h.waitFor(15*time.Second, reconnectedSince(r0))
		if !ok {
			h.res.failf("not reconnected %s after %s (status %+v)", fmtDur(d), f.name, h.prod.Status())
			break
		}
		worst = max(worst, d)
		took = append(took, fmt.Sprintf("%s %s", f.name, fmtDur(d)))
		if !h.sleep(700 * time.Millisecond) {
			break
		}
	}
	h.res.TimeToRecover = worst
	h.res.notef("reconnected after each fault: %s", strings.Join(took, ", "))
	h.stopPublishers()
	h.waitSettled(30 * time.Second)
	h.finish()
	h.checkNoDeadLetters()
}

// retryExchange is the exchange of the message-retry scenario, declared in
// the Runner's virtual host only.
const retryExchange = "mlproducer.reliability.retry"

// messageRetry: the Producer publishes to an exchange on which the
// transcription queue is not bound, so transcription tasks come back
// unroutable (basic.return, 312 NO_ROUTE) and are retried with backoff; the
// early ones run out of attempts and are dead-lettered. Then the binding is
// added: the ones still retrying are delivered, with their attempt number.
func messageRetry(h *run) {
	if h.failed() {
		return
	}
	const maxRetries = 3
	conn, err := amqp.DialConfig(h.r.url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		h.res.failf("dial: %v", err)
		return
	}
	// Closed by finish, before it counts goroutines.
	h.onFinish(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err == nil {
		err = ch.ExchangeDeclare(retryExchange, "direct", false, false, false, false, nil)
	}
	for _, q := range taskQueues() {
		if err != nil {
			break
		}
		if _, err = ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": string(mlproducer.QueueClassic)}); err != nil {
			break
		}
		if q != "ml.transcription" {
			err = ch.QueueBind(q, q, retryExchange, false, nil)
		}
	}
	if err != nil {
		h.res.failf("declaring the retry topology: %v", err)
		return
	}
	// The exchange goes with the Runner's virtual host; deleting it earlier
	// would make an unfinished Producer's publishes fail at Close.
	pub := h.steady()
	pub.goroutines = min(pub.goroutines, 8)
	pub.think = 20 * time.Millisecond
	if !h.setup(false, pub,
		mlproducer.WithTopology(mlproducer.Topology{Exchange: retryExchange, NoDeclare: true}),
		mlproducer.WithMaxRetries(maxRetries),
		mlproducer.WithRetryBackoff(100*time.Millisecond, 400*time.Millisecond),
		// The consumer tells a retried delivery by its attempt header,
		// which is not in the default envelope.
		mlproducer.WithEnvelope(mlproducer.EnvelopeAttempt),
		// Returns are failures for the breaker; it is tested on its own.
		mlproducer.WithCircuitBreaker(1_000_000, time.Second),
	) {
		return
	}
	if !h.sleep(1500 * time.Millisecond) {
		return
	}
	bindAt := h.since()
	if err := ch.QueueBind("ml.transcription", "ml.transcription", retryExchange, false, nil); err != nil {
		h.res.failf("binding ml.transcription: %v", err)
		return
	}
	if !h.sleep(1500 * time.Millisecond) {
		return
	}
	h.stopPublishers()
	if !h.waitSettled(30 * time.Second) {
		h.res.failf("retries still going 30 s after the publishers stopped: %+v", h.prod.Status())
	}
	h.finish()

	// Every dead letter is a transcription task returned on each of its
	// 1+maxRetries attempts.
	dead := h.dead.ids()
	var wrong []string
	var deadAttempts, deadRetries int64
	for id, d := range dead {
		deadAttempts += int64(d.attempts)
		deadRetries += int64(d.attempts - 1)
		var ret *mlproducer.ReturnedError
		switch {
		case d.typ != mlproducer.TaskTranscription:
			wrong = append(wrong, fmt.Sprintf("a %s task", d.typ))
		case d.attempts != maxRetries+1:
			wrong = append(wrong, fmt.Sprintf("%d attempts, want %d", d.attempts, maxRetries+1))
		case !errors.As(d.err, &ret) || ret.Code != 312:
			wrong = append(wrong, fmt.Sprintf("error %v, want a 312 NO_ROUTE return", d.err))
		}
		if n, _ := h.cons.count(id); n > 0 {
			wrong = append(wrong, "dead-lettered and also delivered")
		}
		if len(wrong) >= 3 {
			break
		}
	}
	if len(wrong) > 0 {
		h.res.failf("wrong dead letters: %s", strings.Join(wrong, "; "))
	}
	// The transcription tasks delivered after some returns carry their
	// attempt number; the other types were never retried.
	var retriedDelivered, deliveredRetries, othersRetried int64
	for _, a := range h.all {
		n, attempt := h.cons.count(a.id)
		if n == 0 || attempt <= 1 {
			continue
		}
		if taskQueues()[a.typ] != "ml.transcription" {
			othersRetried++
			continue
		}
		retriedDelivered++
		deliveredRetries += int64(attempt - 1)
	}
	bindAccepted := len(h.acceptedBetween(0, bindAt))
	h.res.notef("ml.transcription bound %s in, after %d messages: %d transcription tasks dead-lettered after %d attempts, %d delivered on a later attempt (%d retries)",
		fmtDur(bindAt), bindAccepted, len(dead), maxRetries+1, retriedDelivered, deliveredRetries)
	if len(dead) == 0 {
		h.res.failf("no message was dead-lettered: the retry limit was not exercised")
	}
	if retriedDelivered == 0 {
		h.res.failf("no retried message was delivered after the binding appeared")
	}
	if othersRetried > 0 {
		h.res.failf("%d routable messages arrived with an attempt number above 1", othersRetried)
	}
	// The Producer's counters agree: one return per failed attempt, one
	// retry per send after the first.
	if returns, err := h.metric("ml_producer_attempt_failures_total", "reason", "return"); err != nil {
		h.res.failf("metrics: %v", err)
	} else if want := deadAttempts + deliveredRetries; int64(returns) != want {
		h.res.failf("ml_producer_attempt_failures_total{reason=\"return\"} = %.0f, want %d (dead letters' attempts + delivered messages' earlier attempts)", returns, want)
	}
	if retries, err := h.metric("ml_producer_retries_total"); err != nil {
		h.res.failf("metrics: %v", err)
	} else if want := deadRetries + deliveredRetries; int64(retries) != want {
		h.res.failf("ml_producer_retries_total = %.0f, want %d", retries, want)
	}
	if fails, err := h.metric("ml_producer_attempt_failures_total"); err == nil {
		if returns, _ := h.metric("ml_producer_attempt_failures_total", "reason", "return"); fails != returns {
			h.res.failf("%.0f failed attempts other than returns", fails-returns)
		}
	}
}

// circuitBreaker: the broker becomes unreachable (black hole, and every
// connection attempt reset: as if refused) until the breaker opens, stays so
// a second, and comes back. The buffer has room throughout, so nothing is
// refused; once the broker is back, the first dial that gets through closes
// the breaker, well before its cooldown, and sending resumes.
func circuitBreaker(h *run) {
	const (
		threshold    = 5
		cooldown     = 30 * time.Second
		reconnectMax = 200 * time.Millisecond
		connTimeout  = time.Second
	)
	if !h.setup(true, h.steady(),
		mlproducer.WithCircuitBreaker(threshold, cooldown),
		mlproducer.WithReconnectBackoff(20*time.Millisecond, reconnectMax),
		mlproducer.WithConnectionTimeout(connTimeout),
		mlproducer.WithHeartbeat(time.Second),
	) {
		return
	}
	px := h.proxy
	if err := px.BlackHole(); err != nil {
		h.res.failf("black hole: %v", err)
		return
	}
	stopRefusing := refuse(px)
	defer stopRefusing()
	openIn, ok := h.waitFor(20*time.Second, func(st mlproducer.Status) bool { return st.CircuitBreakerOpen })
	if !ok {
		stopRefusing()
		h.res.failf("the breaker did not open %s after the broker became unreachable (status %+v)", fmtDur(openIn), h.prod.Status())
		return
	}
	h.res.notef("breaker (threshold %d, cooldown %s) opened %s after the broker became unreachable", threshold, cooldown, fmtDur(openIn))
	if !h.sleep(time.Second) {
		return
	}
	if err := h.prod.Ready(); err != nil {
		h.res.failf("not ready during the outage with room in the buffer: %v", err)
	}
	stopRefusing()
	if err := px.Clear(); err != nil {
		h.res.failf("clear: %v", err)
		return
	}
	// The next dial comes within the reconnect backoff's cap; it may wait for
	// one that was already under way to time out.
	bound := reconnectMax + connTimeout + 3*time.Second
	back, ok := h.waitFor(cooldown, func(st mlproducer.Status) bool {
		return !st.CircuitBreakerOpen && st.ConnectionState == mlproducer.Connected
	})
	if !ok {
		h.res.failf("breaker still open or not connected %s after the broker came back (status %+v)", fmtDur(back), h.prod.Status())
		return
	}
	h.res.TimeToRecover = back
	h.res.notef("broker back: breaker closed and connected %s later (cooldown %s)", fmtDur(back), cooldown)
	if back > bound {
		h.res.failf("sending resumed %s after the broker came back, over %s (reconnect cap %s + connection timeout + slack)", fmtDur(back), fmtDur(bound), reconnectMax)
	}
	resumeAt := h.since()
	if !h.sleep(time.Second) {
		return
	}
	h.stopPublishers()
	h.waitSettled(30 * time.Second)
	h.finish()

	for k, what := range map[int]string{refCircuit: "ErrCircuitOpen", refQueueFull: "ErrRetryQueueFull"} {
		if n := h.refused[k].Load(); n > 0 {
			h.res.failf("%d publishes refused with %s although the buffer had room", n, what)
		}
	}
	confirmed := 0
	for _, a := range h.acceptedBetween(resumeAt, h.since()) {
		if a.state == mlproducer.Confirmed {
			confirmed++
		}
	}
	if confirmed == 0 {
		h.res.failf("no publish was confirmed in the second after the breaker closed")
	}
	h.checkNoDeadLetters()
}

// refuse resets every connection through px every 50 ms, so that during a
// black hole a connection attempt fails at once, as against a closed port.
// The returned stop waits for it to end; calling it again does nothing.
func refuse(px *faults.Proxy) (stop func()) {
	done := make(chan struct{})
	quit := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				_ = px.ResetPeers()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(quit)
			<-done
		})
	}
}

// flowControl: a memory alarm blocks the broker's publishers for 3 s.
func flowControl(h *run) {
	if !h.setup(false, h.steady()) {
		return
	}
	alarmAt := h.since()
	alarmStart := time.Now()
	restore, err := rabbittest.SetMemoryAlarm()
	if err != nil {
		h.res.failf("memory alarm: %v", err)
		return
	}
	h.onFinish(func() { _ = restore() })
	raisedIn := time.Since(alarmStart)
	blockedIn, ok := h.waitFor(20*time.Second, func(st mlproducer.Status) bool { return st.ConnectionState == mlproducer.Blocked })
	if !ok {
		h.res.failf("state not Blocked %s into the memory alarm (status %+v)", fmtDur(blockedIn), h.prod.Status())
	} else {
		h.res.notef("memory alarm raised in %s; state Blocked %s after", fmtDur(raisedIn), fmtDur(blockedIn))
	}
	breakerOpened := false
	maxQueue := 0
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end) && h.ctx.Err() == nil; {
		st := h.prod.Status()
		breakerOpened = breakerOpened || st.CircuitBreakerOpen
		maxQueue = max(maxQueue, st.RetryQueueSize)
		h.sleep(20 * time.Millisecond)
	}
	clearAt := h.since()
	restoreStart := time.Now()
	// Watch for Connected while rabbitmqctl restores the watermark and
	// waits for the alarm to clear.
	unblocked := make(chan time.Duration, 1)
	go func() {
		d, ok := h.waitFor(60*time.Second, func(st mlproducer.Status) bool { return st.ConnectionState == mlproducer.Connected })
		if !ok {
			d = -1
		}
		unblocked <- d
	}()
	rerr := restore()
	restoreTook := time.Since(restoreStart)
	back := <-unblocked
	if rerr != nil {
		h.res.failf("clearing the memory alarm: %v", rerr)
		return
	}
	if back < 0 {
		h.res.failf("state not back to Connected after the alarm cleared (status %+v)", h.prod.Status())
		return
	}
	h.res.TimeToRecover = back
	_, ok = h.waitFor(30*time.Second, func(st mlproducer.Status) bool { return st.RetryQueueSize == 0 })
	drained := time.Since(restoreStart)
	if !ok {
		h.res.failf("retry queue not drained 30 s after the alarm (status %+v)", h.prod.Status())
	}
	h.sleep(time.Second)
	h.stopPublishers()
	h.waitSettled(30 * time.Second)
	h.finish()

	queued, pending := 0, 0
	for _, a := range h.acceptedBetween(alarmAt, clearAt) {
		switch a.state {
		case mlproducer.Queued:
			queued++
		case mlproducer.Pending:
			pending++
		}
	}
	h.res.notef("during the alarm: %d publishes returned Queued, %d Pending; retry queue peaked at %d and drained %s after the restore began; Connected again %s after it began (rabbitmqctl took %s to restore the watermark and see the alarm gone)",
		queued, pending, maxQueue, fmtDur(drained), fmtDur(h.res.TimeToRecover), fmtDur(restoreTook))
	if queued == 0 {
		h.res.failf("no publish was queued during the alarm")
	}
	if breakerOpened {
		h.res.failf("the circuit breaker opened during flow control")
	}
	h.checkNoDeadLetters()
}

// brokerRestart: rabbitmqctl stop_app, 2 s down, start_app, while publishers
// run; publishing resumes by itself.
func brokerRestart(h *run) {
	const cooldown = 2 * time.Second
	if !h.setup(false, h.steady(),
		// Failed dials while the broker is down count for the breaker; a
		// short cooldown keeps the scenario short.
		mlproducer.WithCircuitBreaker(10, cooldown),
	) {
		return
	}
	r0 := h.prod.Status().ReconnectAttempts
	stopStart := time.Now()
	start, err := h.stopApp()
	if err != nil {
		h.res.failf("stop_app: %v", err)
		return
	}
	h.onFinish(func() { _ = start() })
	stopTook := time.Since(stopStart)
	_, sawDown := h.waitFor(5*time.Second, func(st mlproducer.Status) bool { return st.ConnectionState != mlproducer.Connected })
	h.sleep(2 * time.Second)
	// Watch for the reconnection while start_app runs: the Producer may be
	// back before rabbitmqctl returns.
	wctx, cancelWatch := context.WithCancel(h.ctx)
	defer cancelWatch()
	reconnected := make(chan time.Time, 1)
	go func() {
		var at time.Time
		if _, ok := h.waitForCtx(wctx, 120*time.Second, reconnectedSince(r0)); ok {
			at = time.Now()
		}
		reconnected <- at
	}()
	startStart := time.Now()
	startErr := start()
	startTook := time.Since(startStart)
	upAt := h.since()
	if startErr != nil {
		cancelWatch()
		<-reconnected
		h.res.failf("start_app: %v", startErr)
		return
	}
	at := <-reconnected
	if at.IsZero() {
		h.res.failf("not reconnected after start_app (status %+v)", h.prod.Status())
		return
	}
	back := at.Sub(startStart)
	h.res.TimeToRecover = back
	_, ok := h.waitFor(cooldown+30*time.Second, func(st mlproducer.Status) bool {
		return st.ConnectionState == mlproducer.Connected && !st.CircuitBreakerOpen && st.RetryQueueSize == 0
	})
	resumed := time.Since(startStart)
	if !ok {
		h.res.failf("publishing did not resume after start_app (status %+v)", h.prod.Status())
	}
	h.res.notef("stop_app took %s, start_app %s (broker accepting connections again); the Producer reconnected %s after start_app began, its retry queue drained and breaker closed %s after",
		fmtDur(stopTook), fmtDur(startTook), fmtDur(back), fmtDur(resumed))
	if !sawDown {
		h.res.failf("the Producer never saw the broker down")
	}
	h.sleep(time.Second)
	h.stopPublishers()
	h.waitSettled(30 * time.Second)
	h.finish()

	confirmed := 0
	for _, a := range h.acceptedBetween(upAt, h.since()) {
		if a.state == mlproducer.Confirmed {
			confirmed++
		}
	}
	h.res.notef("%d publishes confirmed after start_app", confirmed)
	if confirmed == 0 {
		h.res.failf("no publish confirmed after start_app")
	}
	h.checkNoDeadLetters()
}

// partition: the path goes silent for 4 s (black hole), the heartbeat must
// notice, and the messages sent into the hole are delivered afterwards.
func partition(h *run) {
	const (
		heartbeat = time.Second
		connTO    = 2 * time.Second
		hole      = 4 * time.Second
	)
	if !h.setup(true, h.steady(),
		mlproducer.WithHeartbeat(heartbeat),
		mlproducer.WithConnectionTimeout(connTO),
		mlproducer.WithReconnectBackoff(50*time.Millisecond, 500*time.Millisecond),
	) {
		return
	}
	px := h.proxy
	r0 := h.prod.Status().ReconnectAttempts
	holeAt := h.since()
	holeStart := time.Now()
	if err := px.BlackHole(); err != nil {
		h.res.failf("black hole: %v", err)
		return
	}
	detected, ok := h.waitFor(10*time.Second, func(st mlproducer.Status) bool { return st.ConnectionState != mlproducer.Connected })
	if !ok {
		h.res.failf("the black hole was not noticed in %s (status %+v)", fmtDur(detected), h.prod.Status())
		return
	}
	noticedAt := h.since()
	if limit := 2*heartbeat + 300*time.Millisecond; detected > limit {
		h.res.failf("the black hole was noticed after %s, more than two heartbeat intervals (%s)", fmtDur(detected), heartbeat)
	}
	if !h.sleep(hole - time.Since(holeStart)) {
		return
	}
	if err := px.Clear(); err != nil {
		h.res.failf("clear: %v", err)
		return
	}
	back, ok := h.waitFor(20*time.Second, reconnectedSince(r0))
	if !ok {
		h.res.failf("not reconnected %s after the path came back (status %+v)", fmtDur(back), h.prod.Status())
		return
	}
	h.res.TimeToRecover = back
	if limit := connTO + 2*time.Second; back > limit {
		h.res.failf("reconnected %s after the path came back, more than %s", fmtDur(back), limit)
	}
	h.sleep(1500 * time.Millisecond)
	h.stopPublishers()
	h.waitSettled(30 * time.Second)
	h.finish()

	intoHole, delivered := 0, 0
	for _, a := range h.acceptedBetween(holeAt, noticedAt) {
		if a.state != mlproducer.Pending {
			continue
		}
		intoHole++
		if n, _ := h.cons.count(a.id); n > 0 {
			delivered++
		}
	}
	h.res.notef("heartbeat %s: black hole noticed after %s; %s hole; reconnected %s after it ended; %d messages sent into the hole (Pending), %d delivered after",
		heartbeat, fmtDur(detected), hole, fmtDur(back), intoHole, delivered)
	if intoHole == 0 {
		h.res.failf("no message was sent into the hole")
	}
	if delivered != intoHole {
		h.res.failf("%d of the %d messages sent into the hole were not delivered", intoHole-delivered, intoHole)
	}
	h.checkNoDeadLetters()
}

// chaos: many publishers while a random fault hits every 2 to 5 s.
func chaos(h *run) {
	cfg := h.r.cfg
	seed := cfg.Seed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	pub := publishing{goroutines: cfg.ChaosPublishers, think: 20 * time.Millisecond,
		minDeadline: 100 * time.Millisecond, maxDeadline: time.Second}
	if !h.setup(true, pub,
		mlproducer.WithHeartbeat(time.Second),
		mlproducer.WithConnectionTimeout(2*time.Second),
		mlproducer.WithCircuitBreaker(10, 2*time.Second),
	) {
		return
	}
	px := h.proxy
	rng := rand.New(rand.NewPCG(seed, 0x6368616f73))
	between := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(rng.Int64N(int64(hi-lo)+1)) }
	counts := map[string]int{}
	// The publishers started a second ago, in setup.
	end := time.Now().Add(cfg.ChaosDuration - time.Second)
	// A fault starts 2 to 5 s after the previous one started (or right
	// after it ended, if it lasted longer).
	next := time.Now()
	for h.ctx.Err() == nil && len(h.res.Failures) == 0 {
		next = next.Add(between(2*time.Second, 5*time.Second))
		if next.After(end) {
			h.sleep(time.Until(end))
			break
		}
		h.sleep(time.Until(next))
		var err error
		switch kind := rng.IntN(4); kind {
		case 0:
			counts["reset"]++
			err = px.ResetPeers()
		case 1:
			counts["black hole"]++
			if err = px.BlackHole(); err == nil {
				h.sleep(between(time.Second, 3*time.Second))
				err = px.Clear()
			}
		case 2:
			counts["latency"]++
			if err = px.AddLatency(between(50*time.Millisecond, 250*time.Millisecond), 25*time.Millisecond); err == nil {
				h.sleep(between(2*time.Second, 4*time.Second))
				err = px.Clear()
			}
		default:
			if err = h.closeAllConnections(2 * time.Second); errors.Is(err, errLockBusy) {
				counts["reset (close_all_connections: lock busy)"]++
				err = px.ResetPeers()
			} else {
				counts["close_all_connections"]++
			}
		}
		if err != nil {
			h.res.failf("fault: %v", err)
		}
	}
	_ = px.Clear()
	c0 := h.prod.Status().Confirmed
	back, ok := h.waitFor(30*time.Second, func(st mlproducer.Status) bool {
		return st.ConnectionState == mlproducer.Connected && st.Confirmed > c0
	})
	if !ok {
		h.res.failf("no progress %s after the last fault (status %+v)", fmtDur(back), h.prod.Status())
	}
	h.res.TimeToRecover = back
	h.sleep(time.Second)
	h.stopPublishers()
	h.waitSettled(30 * time.Second)
	h.finish()

	var list []string
	total := 0
	for _, k := range []string{"reset", "black hole", "latency", "close_all_connections", "reset (close_all_connections: lock busy)"} {
		if counts[k] > 0 || !strings.HasPrefix(k, "reset (") {
			list = append(list, fmt.Sprintf("%s %d", k, counts[k]))
		}
		total += counts[k]
	}
	h.res.notef("%d publishers for %s, seed %d: %d faults (%s); %.0f accepted/s",
		cfg.ChaosPublishers, cfg.ChaosDuration, seed, total, strings.Join(list, ", "),
		float64(h.res.Accepted)/cfg.ChaosDuration.Seconds())
	if minFaults := int(cfg.ChaosDuration / (6 * time.Second)); total < minFaults {
		h.res.failf("only %d faults in %s", total, cfg.ChaosDuration)
	}
}
