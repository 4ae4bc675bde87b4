package reliability

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/mlproducer/mlproducer/internal/amqptap"
)

// ClusterTapEnv names the environment variable that, set to a directory,
// turns on the cluster scenario's wire taps and has their records written
// there ([Config.ClusterTapDir]).
const ClusterTapEnv = "MLP_CLUSTER_TAP"

// clusterWire is the cluster scenario's witness: a tap in front of each node
// that the Producer connects through, recording every publish and the
// broker's answer, independent of the Producer's bookkeeping.
type clusterWire struct {
	log  *amqptap.Log
	taps []*amqptap.Tap
	urls []string // the Producer's URLs, node n at index n-1
	dir  string
}

func startClusterWire(urls []string, dir string) (*clusterWire, error) {
	w := &clusterWire{log: amqptap.NewLog(), dir: dir}
	for i, u := range urls {
		host, err := hostOf(u)
		if err != nil {
			w.close()
			return nil, err
		}
		t, err := amqptap.Start(fmt.Sprintf("node%d", i+1), host, w.log)
		if err != nil {
			w.close()
			return nil, err
		}
		w.taps = append(w.taps, t)
		tu, err := t.URL(u)
		if err != nil {
			w.close()
			return nil, err
		}
		w.urls = append(w.urls, tu)
	}
	return w, nil
}

func hostOf(u string) (string, error) {
	i := strings.Index(u, "@")
	rest := u[i+1:]
	if j := strings.Index(rest, "/"); j >= 0 {
		rest = rest[:j]
	}
	if !strings.Contains(rest, ":") {
		return "", fmt.Errorf("cluster URL %q has no port", u)
	}
	return rest, nil
}

func (w *clusterWire) close() {
	for _, t := range w.taps {
		_ = t.Close()
	}
	w.taps = nil
}

func (w *clusterWire) acked(id [16]byte) bool { return w.log.Acked(uuid.UUID(id).String()) }

// phaseAt names the fault under way at d.
func (c *clusterRun) phaseAt(d time.Duration) string {
	name := "before the first fault"
	for _, p := range c.phases {
		if d >= p.at {
			name = p.name
		}
	}
	return name
}

// judge checks the Producer against the wire once the run is finished:
// every accepted message that was not dead-lettered (the Producer counted
// it confirmed) must have a basic.ack from the broker for one of its
// publishes. It describes the messages missing from the queues with their
// wire history, and writes the records to the directory, if any.
func (c *clusterRun) judge() {
	h, w := c.h, c.wire
	res := h.res
	st := w.log.Stats()
	res.notef("wire: %d connections, %d publishes of %d message ids: %d acked, %d nacked, %d unanswered, %d returned",
		st.Conns, st.Publishes, st.IDs, st.Acked, st.Nacked, st.Unanswered, st.Returned)
	anomalies := w.log.Anomalies()
	for i, a := range anomalies {
		if i == 5 {
			res.notef("wire: %d more anomalies", len(anomalies)-5)
			break
		}
		res.notef("wire anomaly: %s", a)
		if strings.Contains(a, "unparsable") {
			res.failf("the wire tap could not parse a stream, so it cannot judge: %s", a)
		}
	}
	dead := h.dead.ids()
	var (
		unacked  []accepted // counted confirmed by the Producer, never acked on the wire
		lost     []accepted // acked on the wire, never consumed
		unseen   []accepted // not consumed and never acked (a Producer loss)
		byPhase  = map[string]int{}
		phaseSeq []string
	)
	for _, a := range h.all {
		if _, ok := dead[a.id]; ok {
			continue
		}
		acked := w.acked(a.id)
		n, _ := h.cons.count(a.id)
		if !acked {
			unacked = append(unacked, a)
			if n == 0 {
				unseen = append(unseen, a)
			}
			continue
		}
		if n == 0 {
			lost = append(lost, a)
			k := fmt.Sprintf("%s, %s as %s", c.phaseAt(a.at), taskQueues()[a.typ], a.state)
			if byPhase[k] == 0 {
				phaseSeq = append(phaseSeq, k)
			}
			byPhase[k]++
		}
	}
	if len(unacked) > 0 {
		res.failf("the Producer counted %d messages confirmed (%d of them missing from the queues) that the broker never acked on the wire; e.g. %s",
			len(unacked), len(unseen), c.history(unacked[0]))
	}
	if len(lost) > 0 {
		var parts []string
		for _, k := range phaseSeq {
			parts = append(parts, fmt.Sprintf("%d (%s)", byPhase[k], k))
		}
		res.notef("the broker acked on the wire %d messages that the queues never held (the broker's loss, not the Producer's): %s",
			len(lost), strings.Join(parts, "; "))
		for i, a := range lost {
			if i == 20 {
				break
			}
			res.notef("broker-lost %s", c.history(a))
		}
		if len(unacked) == 0 {
			res.notef("every message the Producer counted confirmed has a broker ack on the wire")
		}
	}
	if w.dir == "" {
		return
	}
	if err := c.writeWire(append(append([]accepted(nil), lost...), unacked...)); err != nil {
		res.notef("writing the wire records: %v", err)
	} else {
		res.notef("wire records in %s", w.dir)
	}
}

// history describes an accepted message and every publish of it on the
// wire, times since the run began, with the fault under way.
func (c *clusterRun) history(a accepted) string {
	var b strings.Builder
	id := uuid.UUID(a.id).String()
	n, _ := c.h.cons.count(a.id)
	fmt.Fprintf(&b, "%s %s accepted at %s (%s) as %s, consumed %d×; %d publishes on the wire:",
		taskQueues()[a.typ], id, fmtDur(a.at), c.phaseAt(a.at), a.state, n, len(c.wire.log.Publishes(id)))
	for _, p := range c.wire.log.Publishes(id) {
		at := p.At.Sub(c.h.start)
		fmt.Fprintf(&b, " [%s (%s)]", p.Format(c.h.start), c.phaseAt(at))
	}
	return b.String()
}

func (c *clusterRun) writeWire(bad []accepted) error {
	dir := c.wire.dir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "cluster-tap.log"))
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "# run began %s; phases:", c.h.start.Format(time.RFC3339Nano))
	for _, p := range c.phases {
		fmt.Fprintf(f, " %.3fs %s;", p.at.Seconds(), p.name)
	}
	fmt.Fprintln(f)
	err = c.wire.log.WriteTo(f, c.h.start)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	sort.Slice(bad, func(i, j int) bool { return bad[i].at < bad[j].at })
	var b strings.Builder
	for _, a := range bad {
		b.WriteString(c.history(a))
		b.WriteByte('\n')
	}
	return os.WriteFile(filepath.Join(dir, "cluster-missing.log"), []byte(b.String()), 0o644)
}
