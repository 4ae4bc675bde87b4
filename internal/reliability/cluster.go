package reliability

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/rabbittest"
)

// Cluster runs 64 callers on quorum queues of the local 3-node cluster
// (scripts/rabbitmq-cluster.sh, started if needed) while, in turn, the node
// the Producer is connected to is stopped and started, then the leader of a
// queue, then every node in a rolling restart (or only their rabbit
// applications: [Config.ClusterRollingApps]), then two of the three nodes
// for 20 s (Config.ClusterOutage), leaving the third without a majority. It
// checks that confirms resume after each fault, that nothing is reported
// confirmed while the cluster has no majority, and, like every scenario,
// that nothing accepted is missing, that no call overran its deadline and
// that no goroutine is left. It leaves every node running, also when it
// fails. It is not in the set "all" runs ([Extra]): it needs the cluster.
//
// With [Config.ClusterTap] the Producer connects through a tap per node
// (internal/amqptap) and the wire is the judge as well: every message the
// Producer counts confirmed must have a basic.ack from the broker for one
// of its publishes (this caught amqp091-go's confirm stream turning a nack
// into an ack, see transport/amqp.go), and a message acked on the wire but
// never consumed is the broker's loss, reported as [Result.BrokerLost]
// with its wire history rather than counted missing.
const Cluster = "cluster"

const (
	// clusterGrace is how long after the second node of the outage is down
	// a confirm may still come (one sent before, on its way).
	clusterGrace = 500 * time.Millisecond
	// clusterResume bounds the wait for confirms to resume after a fault.
	clusterResume = 60 * time.Second
)

// clusterNodeOf returns the cluster node (1..3) a URL names, or 0.
func clusterNodeOf(urls []string, shown string) int {
	u, err := url.Parse(shown)
	if err != nil {
		return 0
	}
	for i, c := range urls {
		if cu, err := url.Parse(c); err == nil && cu.Host == u.Host {
			return i + 1
		}
	}
	return 0
}

// clusterRun is the cluster scenario's state beside the harness's run.
type clusterRun struct {
	h    *run
	urls []string
	// prodURLs are the URLs the Producer is given: urls, or the wire
	// taps' in front of them (Config.ClusterTap), node n at index n-1.
	prodURLs []string
	wire     *clusterWire                      // nil without the taps
	down     [rabbittest.ClusterNodes + 1]bool // nodes this scenario stopped
	// phases are the faults' names and start times (since the run began),
	// to say when the messages missing, if any, were accepted.
	phases []phase
}

type phase struct {
	name string
	at   time.Duration
}

func (c *clusterRun) mark(name string) { c.phases = append(c.phases, phase{name, c.h.since()}) }

// phaseOf returns the fault under way at at: 0 before the first, i for
// c.phases[i-1].
func (c *clusterRun) phaseOf(at time.Duration) int {
	i := 0
	for j, p := range c.phases {
		if at >= p.at {
			i = j + 1
		}
	}
	return i
}

// phaseTable returns, per fault, what became of the messages accepted
// while it was under way: accepted, confirmed (consumed), duplicates,
// dead-lettered, missing, and the p99 of their calls. After finish.
func (c *clusterRun) phaseTable() string {
	type row struct {
		accepted, confirmed, dups, dead, missing int
		lat                                      hist
	}
	names := []string{"before the first fault"}
	for _, p := range c.phases {
		names = append(names, p.name)
	}
	rows := make([]row, len(names))
	dead := c.h.dead.ids()
	for _, a := range c.h.all {
		r := &rows[c.phaseOf(a.at)]
		r.accepted++
		r.lat.add(a.lat)
		n, _ := c.h.cons.count(a.id)
		_, isDead := dead[a.id]
		switch {
		case n > 0:
			r.confirmed++
			r.dups += int(n) - 1
		case isDead:
			r.dead++
		default:
			r.missing++
		}
	}
	var b strings.Builder
	b.WriteString("| accepted while | accepted | confirmed | duplicates | dead-lettered | missing | p99 call |\n|---|---:|---:|---:|---:|---:|---:|\n")
	for i := range rows {
		r := &rows[i]
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %s |\n", names[i], r.accepted, r.confirmed, r.dups, r.dead, r.missing, fmtDur(r.lat.quantile(0.99)))
	}
	return b.String()
}

// missingByPhase names, per fault and queue, how many accepted messages
// were neither consumed nor dead-lettered; "" when none. After finish.
func (c *clusterRun) missingByPhase() string {
	dead := c.h.dead.ids()
	counts := map[string]int{}
	var order []string
	for _, a := range c.h.all {
		if n, _ := c.h.cons.count(a.id); n > 0 {
			continue
		}
		if _, ok := dead[a.id]; ok {
			continue
		}
		name := "before the first fault"
		if i := c.phaseOf(a.at); i > 0 {
			name = c.phases[i-1].name
		}
		key := fmt.Sprintf("%s, %s as %s", name, taskQueues()[a.typ], a.state)
		if counts[key] == 0 {
			order = append(order, key)
		}
		counts[key]++
	}
	var out []string
	for _, k := range order {
		out = append(out, fmt.Sprintf("%d (%s)", counts[k], k))
	}
	return strings.Join(out, "; ")
}

// stop stops nodes (their Erlang VMs); c.start starts them again.
func (c *clusterRun) stop(nodes ...int) error {
	return c.takeDown(rabbittest.StopClusterNodes, "stop node(s)", nodes)
}

// stopApp stops the rabbit application of nodes, leaving their Erlang VMs
// (Config.ClusterRollingApps); c.start brings it back.
func (c *clusterRun) stopApp(nodes ...int) error {
	return c.takeDown(rabbittest.StopClusterApps, "stop the rabbit application of node(s)", nodes)
}

// takeDown marks nodes down, for restore, before stop runs: a stop that
// fails half-way is undone too.
func (c *clusterRun) takeDown(stop func(...int) error, what string, nodes []int) error {
	for _, n := range nodes {
		c.down[n] = true
	}
	if err := stop(nodes...); err != nil {
		return fmt.Errorf("%s %v: %w", what, nodes, err)
	}
	return nil
}

func (c *clusterRun) start(nodes ...int) error {
	if err := rabbittest.StartClusterNodes(nodes...); err != nil {
		return fmt.Errorf("start node(s) %v: %w", nodes, err)
	}
	for _, n := range nodes {
		c.down[n] = false
	}
	return nil
}

// restore starts every node the scenario stopped and has not started again.
func (c *clusterRun) restore() {
	var down []int
	for n := 1; n <= rabbittest.ClusterNodes; n++ {
		if c.down[n] {
			down = append(down, n)
		}
	}
	if len(down) > 0 {
		if err := c.start(down...); err != nil {
			c.h.res.failf("restoring the cluster: %v", err)
		}
	}
}

// running returns a node the scenario has not stopped.
func (c *clusterRun) running() int {
	for n := 1; n <= rabbittest.ClusterNodes; n++ {
		if !c.down[n] {
			return n
		}
	}
	return 0
}

// leader returns the node leading queue, and checks that the task queues
// are quorum queues (`rabbitmqctl list_queues name type leader`).
func (c *clusterRun) leader(queue string) (int, error) {
	n := c.running()
	out, err := rabbittest.ClusterRabbitmqctl(n, "-q", "--no-table-headers", "list_queues", "name", "type", "leader")
	if err != nil {
		return 0, err
	}
	lead := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		for _, q := range taskQueues() {
			if f[0] == q && f[1] != string(mlproducer.QueueQuorum) {
				return 0, fmt.Errorf("queue %s is of type %s, not quorum", q, f[1])
			}
		}
		if f[0] == queue {
			for m := 1; m <= rabbittest.ClusterNodes; m++ {
				if f[2] == rabbittest.ClusterNodeName(m) {
					lead = m
				}
			}
		}
	}
	if lead == 0 {
		return 0, fmt.Errorf("no leader for queue %s in list_queues:\n%s", queue, out)
	}
	return lead, nil
}

// noteQueueStatus adds to the report the leader, members and online
// members of every queue as a running node sees them, or why it cannot:
// what a failure to resume needs to tell the broker's part (a queue without
// a majority of its members) from the Producer's.
func (c *clusterRun) noteQueueStatus() {
	out, err := rabbittest.ClusterRabbitmqctl(c.running(), "-q", "list_queues", "name", "leader", "members", "online")
	if err != nil {
		out = fmt.Sprintf("(rabbitmqctl failed: %v)", err)
	}
	c.h.res.notef("the task queues then (rabbitmqctl list_queues name leader members online):\n%s", strings.TrimSpace(out))
}

// confirmsResume waits until the Producer is connected and has counted a
// confirm after the call, for at most limit; it returns how long that took.
func (c *clusterRun) confirmsResume(limit time.Duration) (time.Duration, bool) {
	c0 := c.h.prod.Status().Confirmed
	return c.h.waitFor(limit, func(st mlproducer.Status) bool {
		return st.ConnectionState == mlproducer.Connected && st.Confirmed > c0
	})
}

// purgeClusterQueues empties the task queues on the cluster, so that the
// scenario starts from empty queues; they are kept (quorum, a member on
// every node), as in a deployment.
func purgeClusterQueues(u string) error {
	conn, err := amqp.DialConfig(u, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return err
	}
	defer conn.Close()
	for _, q := range taskQueues() {
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		_, err = ch.QueuePurge(q, false)
		var aerr *amqp.Error
		if err != nil && !(errors.As(err, &aerr) && aerr.Code == amqp.NotFound) {
			return fmt.Errorf("purge queue %s: %w", q, err)
		}
		_ = ch.Close()
	}
	return nil
}

// cluster: the scenario of [Cluster].
func cluster(h *run) {
	if h.failed() {
		return
	}
	unlock, err := rabbittest.ClusterLock(true)
	if err != nil {
		h.res.failf("%v", err)
		return
	}
	h.onFinish(unlock)
	h.logf("reliability: %s: starting the local cluster (scripts/rabbitmq-cluster.sh up)", h.name)
	urls, err := rabbittest.ClusterUp()
	if err != nil {
		h.res.failf("no local RabbitMQ cluster: %v", err)
		return
	}
	c := &clusterRun{h: h, urls: urls, prodURLs: urls}
	if h.r.cfg.ClusterTap {
		w, err := startClusterWire(urls, h.r.cfg.ClusterTapDir)
		if err != nil {
			h.res.failf("starting the wire taps: %v", err)
			return
		}
		c.wire, c.prodURLs = w, w.urls
		h.closers = append(h.closers, w.close) // once the Producer is closed
		h.wireAcked = w.acked
		defer func() {
			h.finish()
			c.judge()
		}()
	}
	// The checking consumer reads the cluster's quorum queues instead of
	// the Runner's virtual host, and only once the faults are over, when
	// every node runs, so that the check does not lean on consumer acks
	// across a queue leader's restart (on RabbitMQ 3.10 such an ack can
	// settle a message the consumer was never given: a queue's message ids
	// repeat across leader terms, see rabbitmq-server pull request 4305).
	// Messages wait in the queues meanwhile.
	h.cons.close()
	consuming := false
	consume := func() {
		if !consuming {
			consuming = true
			h.cons = startConsumerOn(urls, mlproducer.QueueQuorum)
			if !h.cons.waitStarted(h.ctx, 30*time.Second) {
				_, _, _, _, lastErr := h.cons.stats()
				h.res.failf("the checking consumer could not start on the cluster: %s", lastErr)
			}
		}
	}
	h.onFinish(consume)   // after restore: undo runs last registered first
	h.onFinish(c.restore) // then unlock
	if err := purgeClusterQueues(urls[0]); err != nil {
		h.res.failf("purging the task queues on the cluster: %v", err)
		return
	}

	const cooldown = 2 * time.Second
	pub := publishing{goroutines: h.r.cfg.ClusterPublishers, think: 10 * time.Millisecond,
		minDeadline: 100 * time.Millisecond, maxDeadline: time.Second}
	if !h.setup(false, pub,
		mlproducer.WithURLs(c.prodURLs...),
		mlproducer.WithTopology(mlproducer.Topology{QueueType: mlproducer.QueueQuorum}),
		mlproducer.WithConnectionTimeout(2*time.Second),
		mlproducer.WithHeartbeat(2*time.Second),
		mlproducer.WithCircuitBreaker(10, cooldown),
	) {
		return
	}

	var (
		worst time.Duration
		steps []string
	)
	// fault stops the nodes, waits for confirms to resume while they are
	// down (unless noMajority), starts them again and waits for confirms
	// after that; it reports whether all went well.
	fault := func(what string, stop func(...int) error, nodes ...int) bool {
		c.mark(what)
		began := time.Now()
		if err := stop(nodes...); err != nil {
			h.res.failf("%s: %v", what, err)
			return false
		}
		stopped := time.Since(began)
		d, ok := c.confirmsResume(clusterResume)
		if !ok {
			h.res.failf("%s: confirms did not resume within %s with node(s) %v down (status %+v)", what, clusterResume, nodes, h.prod.Status())
			c.noteQueueStatus()
			return false
		}
		worst = max(worst, stopped+d)
		at := clusterNodeOf(c.prodURLs, h.prod.Status().URL)
		if err := c.start(nodes...); err != nil {
			h.res.failf("%s: %v", what, err)
			return false
		}
		steps = append(steps, fmt.Sprintf("%s: stop took %s, confirms resumed %s later (on node %d)",
			what, fmtDur(stopped), fmtDur(d), at))
		return h.sleep(time.Second)
	}

	// 1. The node the Producer is connected to.
	at := clusterNodeOf(c.prodURLs, h.prod.Status().URL)
	if at == 0 {
		h.res.failf("Status().URL %q names no cluster node", h.prod.Status().URL)
		return
	}
	if !fault(fmt.Sprintf("the Producer's node %d", at), c.stop, at) {
		return
	}
	// 2. The leader of a queue.
	lead, err := c.leader(taskQueues()[0])
	if err != nil {
		h.res.failf("%v", err)
		return
	}
	if !fault(fmt.Sprintf("node %d, leader of %s", lead, taskQueues()[0]), c.stop, lead) {
		return
	}
	// 3. A rolling restart: of the nodes, or of their rabbit applications.
	roll, rolled := c.stop, "node"
	if h.r.cfg.ClusterRollingApps {
		roll, rolled = c.stopApp, "rabbit application of node"
	}
	for n := 1; n <= rabbittest.ClusterNodes; n++ {
		if !fault(fmt.Sprintf("rolling restart, %s %d", rolled, n), roll, n) {
			return
		}
	}

	// 4. Two of three down: the node left has no majority. The Producer
	// stays on it when it can: stop the two others.
	at = clusterNodeOf(c.prodURLs, h.prod.Status().URL)
	var two []int
	for n := 1; n <= rabbittest.ClusterNodes; n++ {
		if n != at && len(two) < 2 {
			two = append(two, n)
		}
	}
	outage := h.r.cfg.ClusterOutage
	refused0 := h.refusedTotal()
	c.mark("no majority")
	downBegan := time.Now()
	if err := c.stop(two...); err != nil {
		h.res.failf("no majority: %v", err)
		return
	}
	noMajority := h.since()
	stopTook := time.Since(downBegan)
	h.sleep(clusterGrace)
	confirmed0 := h.prod.Status().Confirmed
	if !h.sleep(outage - clusterGrace) {
		return
	}
	confirmedDuring := h.prod.Status().Confirmed - confirmed0
	restartAt := h.since()
	refusedDuring := h.refusedTotal() - refused0
	restartBegan := time.Now()
	if err := c.start(two...); err != nil {
		h.res.failf("after the outage: %v", err)
		return
	}
	startTook := time.Since(restartBegan)
	c.mark("after the majority's return")
	d, ok := c.confirmsResume(clusterResume)
	if !ok {
		h.res.failf("confirms did not resume within %s of the majority's return (status %+v)", clusterResume, h.prod.Status())
		c.noteQueueStatus()
		return
	}
	back := startTook + d
	worst = max(worst, back)
	h.res.TimeToRecover = worst
	steps = append(steps, fmt.Sprintf("no majority (nodes %v down, the Producer on node %d): %s without a majority, %d refusals, %d confirms counted; nodes started in %s, confirms resumed %s later",
		two, at, fmtDur(outage), refusedDuring, confirmedDuring, fmtDur(startTook), fmtDur(d)))
	if confirmedDuring > 0 {
		h.res.failf("the Producer counted %d confirms while the cluster had no majority", confirmedDuring)
	}
	h.res.notef("%s", strings.Join(steps, "; "))
	h.res.notef("stopping two nodes took %s", fmtDur(stopTook))

	consume()
	h.sleep(2 * time.Second)
	h.stopPublishers()
	h.waitSettled(60 * time.Second)
	h.finish()

	// Nothing reported confirmed that the cluster did not confirm: no call
	// returned Confirmed while there was no majority, and every one that
	// did was consumed.
	var early, lost int
	for _, a := range h.acceptedBetween(noMajority+clusterGrace, restartAt) {
		if a.state == mlproducer.Confirmed {
			early++
		}
	}
	for _, a := range h.all {
		if a.state == mlproducer.Confirmed {
			if n, _ := h.cons.count(a.id); n == 0 && (h.wireAcked == nil || !h.wireAcked(a.id)) {
				lost++
			}
		}
	}
	if early > 0 {
		h.res.failf("%d publishes returned Confirmed while the cluster had no majority", early)
	}
	if lost > 0 {
		h.res.failf("%d publishes returned Confirmed and never arrived (and the broker acked none of their publishes on the wire, where watched)", lost)
	}
	h.res.notef("by fault:\n%s", c.phaseTable())
	if m := c.missingByPhase(); m != "" {
		h.res.notef("missing, by the fault under way when they were accepted: %s", m)
		if out, err := rabbittest.ClusterRabbitmqctl(c.running(), "-q", "list_queues", "name", "messages", "consumers"); err == nil {
			h.res.notef("the cluster's queues after the run:\n%s", out)
		}
	}
	confirmedAfter := 0
	for _, a := range h.acceptedBetween(restartAt, h.since()) {
		if a.state == mlproducer.Confirmed {
			confirmedAfter++
		}
	}
	h.res.notef("%d publishes returned Confirmed after the majority came back", confirmedAfter)
}
