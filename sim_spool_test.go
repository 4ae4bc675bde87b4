package mlproducer_test

// The spool in the simulation (issue 10, item 7). A tenth of the schedules
// (their own generator decides which) run the Producer with WithSpool on a
// dir of their own, its capacity that of the retry queue plus the in-flight
// window (so that invariant 4 keeps its bound), and restart it up to three
// times at random moments before Close: two restarts in three are a crash
// (mlproducer.CrashForTest: the goroutines end as a kill would end them and
// the spool's unsynced writes, the removals of confirmed messages and the
// attempt counts of the last moments, are lost), the others a Close with a
// short deadline; each is followed at once by a New on the same dir, and the
// schedule goes on with it. The spool file is read (bbolt, read-only) after
// every Producer ends, the last one included.
//
// With a spool the invariants of simulation_test.go change so:
//
//   - 2 (none lost) becomes 11 at every end of a Producer, the last Close
//     included: every message accepted so far (its call returned nil) that
//     no write has had acked and no hook call has dead-lettered is in the
//     spool file; and every record there is the message of an accepted call,
//     with its id, once. No record is in the "corrupt" bucket.
//   - 12 (duplicates only across a restart, and only for a cause): a message
//     is written by a later Producer than the one it was accepted by only if
//     the Producer before that one left its record in the spool. A record
//     left by a crash must not be of a message whose confirm (a plain ack)
//     came more than the spool's flush interval (50 ms) before the crash,
//     nor of one whose dead-letter hook call began before the crash did (the
//     hook's removal is synced: only a crash while the hook runs may leave
//     it); a record left by a Close must not be of a message confirmed
//     before Close was called, nor of a dead-lettered one. So a confirmed
//     message is sent again only after a crash within 50 ms of its confirm
//     (or when its confirm came while Close tore the connection down), and
//     a dead-lettered one never. Accordingly, the hook may be called twice
//     for a message only when a crash came while its first call ran, and a
//     message may be both reported confirmed and dead-lettered only when a
//     restart came between the two (and its record was kept, which the rule
//     above limits).
//   - 13 (counters): per Producer, Accepted is the calls it accepted, and
//     Confirmed + DeadLettered is Accepted + the records it found at New −
//     the records it left; after a crash that count may be higher by the
//     records left of messages it had confirmed. After a Close, the retry
//     queue and the count in Close's error are the records left.
//   - 3 (writes bounded) allows, per restart, one more write of a message
//     after a Close (a write in flight is not charged) and, after a crash,
//     as many more as it had writes in the Producer that crashed (its
//     attempt counts of the last moments are lost).
//   - 4 (retry queue bound) allows the records of confirmed messages a new
//     Producer found; 7 (dial bursts) leaves out each new Producer's first
//     dial.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/mlproducer/mlproducer"
)

// simSpoolFlush is how soon the spool commits the removal of a confirmed
// message (spoolFlushEvery in spool.go).
const simSpoolFlush = 50 * time.Millisecond

// simSpoolDir returns an empty dir for the spool of a schedule: on a tmpfs
// (/dev/shm) when there is one, since a sync there costs nothing and a crash
// is the test hook's, not the machine's; else under t.TempDir.
func simSpoolDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "mlproducer-sim-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

// simRestart is one restart of a spool schedule.
type simRestart struct {
	at      time.Duration // since the schedule began
	crash   bool          // else a Close with closeIn
	closeIn time.Duration
}

func (r simRestart) String() string {
	if r.crash {
		return fmt.Sprintf("crash at %v", r.at)
	}
	return fmt.Sprintf("Close (deadline %v) at %v", r.closeIn, r.at)
}

// spoolTraits draws the spool traits of a schedule from rng, a generator of
// their own: the rest of the schedule is the one the seed gave before.
func spoolTraits(c *simConfig, rng *rand.Rand) {
	if rng.IntN(10) != 0 || simLeftOut("spool") {
		return
	}
	c.spool = true
	for range rng.IntN(4) {
		r := simRestart{
			at:      time.Duration(rng.Int64N(int64(c.runFor))),
			crash:   rng.IntN(3) > 0,
			closeIn: time.Duration(rng.Int64N(int64(c.confirmTimeout) + 1)),
		}
		if r.crash && simLeftOut("crash") || !r.crash && simLeftOut("restart") {
			continue
		}
		c.restarts = append(c.restarts, r)
	}
	slices.SortFunc(c.restarts, func(a, b simRestart) int { return int(a.at - b.at) })
}

// simGen is one Producer of a schedule; spool schedules have one per restart.
type simGen struct {
	n         int
	p         *mlproducer.Producer
	startAt   time.Time
	recovered int // records its New found in the spool

	// Set when it ended (crash or Close), by the goroutine that ended it.
	crashed  bool
	endAt    time.Time // when the crash or Close began
	crashSeq uint64    // simNet.seq when the crash began
	closeErr error
	st       mlproducer.Status
	left     map[int]simRecord // by call token: the records in the spool after it ended
	leftN    int               // how many
}

func (g *simGen) leftCount() int { return g.leftN }

// simRecord is a record of the spool file.
type simRecord struct {
	id       string
	attempts int
}

func (s *simState) prod() *mlproducer.Producer { return s.cur.Load().p }

// options returns the options of Producer g.
func (s *simState) options(g *simGen) []mlproducer.Option {
	cfg := s.cfg
	opts := []mlproducer.Option{
		mlproducer.WithDialer(s.net),
		mlproducer.WithTopology(mlproducer.Topology{NoDeclare: cfg.noDeclare}),
		mlproducer.WithReconnectBackoff(cfg.reconnectInitial, cfg.reconnectMax),
		mlproducer.WithRetryBackoff(cfg.retryInitial, cfg.retryMax),
		mlproducer.WithConfirmTimeout(cfg.confirmTimeout),
		mlproducer.WithConnectionTimeout(cfg.connectionTimeout),
		mlproducer.WithMaxRetries(cfg.maxRetries),
		mlproducer.WithRetryQueueCapacity(cfg.retryCap, 64<<20),
		mlproducer.WithMaxInFlight(cfg.maxInFlight),
		mlproducer.WithHealthCheckInterval(cfg.healthInterval),
		mlproducer.WithCircuitBreaker(cfg.breakerThreshold, cfg.breakerCooldown),
		mlproducer.WithHeartbeat(0),
		mlproducer.WithDeadLetter(func(dl mlproducer.DeadLetter) {
			// Kept cheap (the token is read later): Close calls the hook
			// for each message left, and a slow hook would narrow the
			// window the Close race hunts in.
			d := simDead{body: dl.Message.Body, id: dl.Message.ID, seq: s.net.seq.Add(1), at: time.Now(), attempts: dl.Attempts, err: dl.Err, gen: g.n}
			s.deadMu.Lock()
			s.dead = append(s.dead, d)
			s.deadMu.Unlock()
		}),
	}
	if cfg.attemptHeader {
		opts = append(opts, mlproducer.WithEnvelope(mlproducer.EnvelopeAttempt))
	}
	if cfg.spool {
		opts = append(opts, mlproducer.WithSpool(s.dir), mlproducer.WithSpoolCapacity(cfg.retryCap+cfg.maxInFlight, 64<<20))
	}
	return append(opts, s.tracing.options()...)
}

// restarter runs the restarts of the schedule; the channel is closed when
// they are done.
func (s *simState) restarter() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, r := range s.cfg.restarts {
			if d := time.Until(s.t0.Add(r.at)); d > 0 {
				time.Sleep(d)
			}
			if !s.restart(r) {
				return
			}
		}
	}()
	return done
}

// restart ends the current Producer as r says and starts the next one on the
// spool. It reports false when the new one could not be made.
func (s *simState) restart(r simRestart) bool {
	g := s.cur.Load()
	at := time.Now()
	var err error
	if r.crash {
		g.crashSeq = s.net.seq.Add(1)
		s.logf("crash of Producer %d", g.n)
		mlproducer.CrashForTest(g.p)
		s.res.stats.crashes++
	} else {
		s.logf("Close of Producer %d (deadline %v), then a New on the spool", g.n, r.closeIn)
		ctx, cancel := context.WithTimeout(context.Background(), r.closeIn)
		err = g.p.Close(ctx)
		cancel()
		if late := time.Since(at) - r.closeIn; late > simSlack {
			s.violate(6, "the Close of Producer %d for a restart returned %v after its ctx deadline", g.n, late)
		}
		s.res.stats.closes++
	}
	s.ended(g, r.crash, at, err, g.p.Status())
	ng := &simGen{n: g.n + 1, recovered: g.leftN, startAt: time.Now()}
	s.net.gen.Store(int32(ng.n))
	p, err := mlproducer.New(s.options(ng)...)
	if err != nil {
		s.violate(11, "New on the spool after Producer %d ended: %v", g.n, err)
		return false
	}
	ng.p = p
	s.gens = append(s.gens, ng)
	s.cur.Store(ng)
	s.res.stats.recovered += ng.recovered
	s.logf("Producer %d started on the spool, %d records in it", ng.n, ng.recovered)
	return true
}

// ended records how Producer g ended and, on a spool, what it left there.
func (s *simState) ended(g *simGen, crashed bool, at time.Time, closeErr error, st mlproducer.Status) {
	g.crashed, g.endAt, g.closeErr, g.st = crashed, at, closeErr, st
	if !s.cfg.spool {
		return
	}
	left, n, problems, err := readSimSpool(s.dir)
	if err != nil {
		s.violate(11, "reading the spool after Producer %d ended: %v", g.n, err)
	}
	for _, p := range problems {
		s.violate(11, "the spool after Producer %d ended: %s", g.n, p)
	}
	g.left, g.leftN = left, n
	s.logf("Producer %d ended (%s): %d records in the spool", g.n, map[bool]string{true: "crash", false: "Close"}[crashed], n)
}

var simCRC = crc32.MakeTable(crc32.Castagnoli)

// readSimSpool reads the records of the spool file under dir, by call token,
// with what is wrong with it.
func readSimSpool(dir string) (map[int]simRecord, int, []string, error) {
	db, err := bolt.Open(filepath.Join(dir, "mlproducer-spool.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return nil, 0, nil, err
	}
	defer db.Close()
	out := map[int]simRecord{}
	n := 0
	var problems []string
	err = db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte("corrupt")); b != nil && b.Stats().KeyN > 0 {
			problems = append(problems, fmt.Sprintf("%d records in the corrupt bucket", b.Stats().KeyN))
		}
		b := tx.Bucket([]byte("messages"))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			n++
			// version, CRC-32C, uvarint length of the JSON meta, meta, body
			if len(v) < 6 || v[0] != 1 || crc32.Checksum(v[5:], simCRC) != binary.BigEndian.Uint32(v[1:5]) {
				problems = append(problems, fmt.Sprintf("record %x does not decode", k))
				return nil
			}
			ml, w := binary.Uvarint(v[5:])
			if w <= 0 || ml > uint64(len(v)-5-w) {
				problems = append(problems, fmt.Sprintf("record %x: bad meta length", k))
				return nil
			}
			var meta struct {
				ID       string `json:"id"`
				Attempts int    `json:"attempts"`
			}
			if err := json.Unmarshal(v[5+w:5+w+int(ml)], &meta); err != nil {
				problems = append(problems, fmt.Sprintf("record %x: meta: %v", k, err))
				return nil
			}
			tok := tokenOf(v[5+w+int(ml):])
			if _, dup := out[tok]; dup || tok < 0 {
				problems = append(problems, fmt.Sprintf("record %x (id %s): token %d missing or twice in the spool", k, meta.ID, tok))
			}
			out[tok] = simRecord{id: meta.ID, attempts: meta.Attempts}
			return nil
		})
	})
	return out, n, problems, err
}

// plainAck returns the first write of k by Producer gen (any earlier one
// too with upTo) that the broker acked without a basic.return. Call with
// s.net.mu held.
func (s *simState) plainAck(k, gen int, upTo bool) *simWrite {
	for _, w := range s.net.writes[k] {
		if w.acked && !w.bounced && (w.gen == gen || upTo && w.gen < gen) {
			return w
		}
	}
	return nil
}

// seenAck returns the write of k by Producer gen whose plain ack the
// Producer surely took as the confirm: no write of k began after the ack,
// its channel did not end at the instant of the ack (an ack that comes as
// the channel closes may be dropped, and the message sent again), and no
// twin of it was returned and left unacked. A twin is another write of k on
// the same channel without the attempt header: the same publishing, so the
// Producer cannot tell which of the two a return was for. It counts the
// return against both and confirms the message once their acks outnumber
// the returns (returnGroup in confirms.go); when the returned twin's ack
// never comes, the message is sent again (a duplicate), never counted
// confirmed. Call with s.net.mu held.
func (s *simState) seenAck(k, gen int) *simWrite {
	ws := s.net.writes[k]
	for _, w := range ws {
		if !w.acked || w.bounced || w.gen != gen || w.ch.closed && !w.ch.closedAt.After(w.ackedAt) {
			continue
		}
		if w.n == 0 && slices.ContainsFunc(ws, func(x *simWrite) bool {
			return x != w && x.ch == w.ch && x.n == 0 && x.bounced && !(x.acked && (!x.ch.closed || x.ch.closedAt.After(x.ackedAt)))
		}) {
			continue
		}
		if !slices.ContainsFunc(ws, func(x *simWrite) bool { return x.began.After(w.ackedAt) || x != w && x.began.Equal(w.ackedAt) }) {
			return w
		}
	}
	return nil
}

// writesOf describes the writes of call k. Call with s.net.mu held.
func (s *simState) writesOf(k int) string {
	var ws []string
	for _, w := range s.net.writes[k] {
		ws = append(ws, fmt.Sprintf("%v(Producer %d, attempt %d, tag %d, returned %v, ack %v at %v, nack %v, return %v, channel refused it %v)",
			w.began.Sub(s.t0).Round(time.Microsecond), w.gen, w.n, w.tag, w.returned, w.acked, w.ackedAt.Sub(s.t0).Round(time.Microsecond), w.nacked, w.bounced, w.ch.messageClosed))
	}
	return strings.Join(ws, ", ")
}

// deadAgainAllowed reports whether the hook calls ds of one message may be
// more than one (invariant 12): each later call by a later Producer, the
// one before it begun while a crash was already under way.
func (s *simState) deadAgainAllowed(ds []simDead) bool {
	if !s.cfg.spool {
		return false
	}
	for i := 1; i < len(ds); i++ {
		g := s.gens[ds[i-1].gen]
		if !g.crashed || ds[i-1].seq < g.crashSeq || ds[i].gen <= ds[i-1].gen {
			return false
		}
	}
	return true
}

// confirmedThenDeadAllowed reports whether call c, reported confirmed, may
// also be dead-lettered as ds: by a later Producer, that found its record
// (whether it could keep it is invariant 12).
func (s *simState) confirmedThenDeadAllowed(c *simCall, ds []simDead) bool {
	if !s.cfg.spool {
		return false
	}
	for _, d := range ds {
		if d.gen <= c.gen {
			return false
		}
	}
	return true
}

// leftInSpool reports whether the message of c is in the spool after the
// last Close.
func (s *simState) leftInSpool(c *simCall) bool {
	_, ok := s.gens[len(s.gens)-1].left[c.k]
	return ok
}

// restartAllowance is how many more writes of call k the restarts allow
// (invariant 3). Call with s.net.mu held.
func (s *simState) restartAllowance(k int) int {
	a := 0
	for _, g := range s.gens[:len(s.gens)-1] {
		if !g.crashed {
			a++
			continue
		}
		for _, w := range s.net.writes[k] {
			if w.gen == g.n {
				a++
			}
		}
	}
	return a
}

// staleRecords is the most records of confirmed messages a new Producer
// found (invariant 4). Call with s.net.mu held.
func (s *simState) staleRecords() int {
	most := 0
	for _, g := range s.gens[:len(s.gens)-1] {
		n := 0
		for k := range g.left {
			if s.plainAck(k, g.n, true) != nil {
				n++
			}
		}
		most = max(most, n)
	}
	return most
}

// startDials leaves out of dials the first dial of every Producer after
// the first (invariant 7).
func (s *simState) startDials(dials []time.Time) []time.Time {
	for _, g := range s.gens[1:] {
		if i := slices.IndexFunc(dials, func(t time.Time) bool { return !t.Before(g.startAt) }); i >= 0 {
			dials = slices.Delete(dials, i, i+1)
		}
	}
	return dials
}

// checkSpool checks invariants 11, 12 and 13. Call with s.net.mu held.
func (s *simState) checkSpool(calls []*simCall, byK map[int]*simCall, dead map[int][]simDead) {
	n := s.net
	s.res.stats.spooled++
	s.res.stats.leftAtEnd += s.gens[len(s.gens)-1].leftN

	// 13. Counters, per Producer.
	accBy := map[int]int{}
	for _, c := range calls {
		if c.err == nil {
			accBy[c.gen]++
		}
	}
	ndead, sumDead := 0, 0
	for _, ds := range dead {
		ndead += len(ds)
	}
	for _, g := range s.gens {
		st := g.st
		sumDead += int(st.DeadLettered)
		if int(st.Accepted) != accBy[g.n] {
			s.violate(13, "Producer %d: Status says accepted %d, its calls accepted %d", g.n, st.Accepted, accBy[g.n])
		}
		lo := int(st.Accepted) + g.recovered - g.leftN
		hi := lo
		if g.crashed {
			for k := range g.left {
				if s.plainAck(k, g.n, false) != nil {
					hi++
				}
			}
		}
		if fin := int(st.Confirmed + st.DeadLettered); fin < lo || fin > hi {
			s.violate(13, "Producer %d (found %d records, left %d, crashed %v): confirmed %d + dead-lettered %d = %d, should be accepted %d + found − left = %d (up to %d after a crash)",
				g.n, g.recovered, g.leftN, g.crashed, st.Confirmed, st.DeadLettered, fin, st.Accepted, lo, hi)
		}
		if !g.crashed {
			if st.RetryQueueSize != g.leftN {
				s.violate(13, "Producer %d after Close: retry queue %d, records left in the spool %d", g.n, st.RetryQueueSize, g.leftN)
			}
			want := fmt.Sprintf("%d messages unconfirmed, left in the spool", g.leftN)
			if got := fmt.Sprint(g.closeErr); (g.leftN > 0) != strings.Contains(got, want) {
				s.violate(13, "Producer %d left %d records in the spool; its Close returned %v", g.n, g.leftN, g.closeErr)
			}
		}
	}
	if sumDead != ndead {
		s.violate(13, "the Producers count %d dead letters, the hook was called %d times", sumDead, ndead)
	}

	// 11 and 12. What each Producer left in the spool.
	for _, g := range s.gens {
		end := "Close"
		if g.crashed {
			end = "crash"
		}
		for k, r := range g.left {
			c := byK[k]
			switch {
			case c == nil:
				s.violate(11, "Producer %d left a record of no call in the spool (token %d, id %s)", g.n, k, r.id)
				continue
			case c.err != nil:
				s.violate(11, "Producer %d left in the spool the message of call %d, which was refused (%v)", g.n, k, c.err)
			case c.gen > g.n:
				s.violate(11, "Producer %d left in the spool the message of call %d, made later on Producer %d", g.n, k, c.gen)
			case r.id != c.rcpt.MessageID:
				s.violate(11, "Producer %d left the message of call %d in the spool with id %q, its receipt %q", g.n, k, r.id, c.rcpt.MessageID)
			}
			if w := s.seenAck(k, g.n); w != nil {
				if g.crashed && w.ackedAt.Add(simSpoolFlush).Before(g.endAt) {
					s.violate(12, "call %d (%s, receipt %v) was confirmed at %v, %v before the crash of Producer %d, and its record is still in the spool (its removal is committed within %v); writes %s",
						k, c.what, c.rcpt.State, w.ackedAt.Sub(s.t0).Round(time.Microsecond), g.endAt.Sub(w.ackedAt), g.n, simSpoolFlush, s.writesOf(k))
				}
				if !g.crashed && w.ackedAt.Before(g.endAt) {
					s.violate(12, "call %d (%s, receipt %v) was confirmed at %v, before Producer %d was closed at %v, and its record is still in the spool after Close; writes %s",
						k, c.what, c.rcpt.State, w.ackedAt.Sub(s.t0).Round(time.Microsecond), g.n, g.endAt.Sub(s.t0).Round(time.Microsecond), s.writesOf(k))
				}
			}
			for _, d := range dead[k] {
				if d.gen < g.n || d.gen == g.n && !(g.crashed && d.seq > g.crashSeq) {
					s.violate(12, "call %d was dead-lettered by Producer %d at %v, and its record is still in the spool after the %s of Producer %d",
						k, d.gen, d.at.Sub(s.t0).Round(time.Microsecond), end, g.n)
				}
			}
		}
		for _, c := range calls {
			if c.err != nil || c.gen > g.n {
				continue
			}
			if _, ok := g.left[c.k]; ok || s.plainAck(c.k, g.n, true) != nil || slices.ContainsFunc(dead[c.k], func(d simDead) bool { return d.gen <= g.n }) {
				continue
			}
			s.violate(11, "call %d (%s, id %s, receipt %v, started %v on Producer %d) was neither confirmed nor dead-lettered when Producer %d ended (%s at %v), and is not in the spool: lost",
				c.k, c.what, c.rcpt.MessageID, c.rcpt.State, c.start.Sub(s.t0).Round(time.Microsecond), c.gen, g.n, end, g.endAt.Sub(s.t0).Round(time.Microsecond))
		}
	}

	// 12. A later Producer writes only what the one before left.
	for k, ws := range n.writes {
		c := byK[k]
		if c == nil {
			continue
		}
		resent := false
		for _, w := range ws {
			if w.gen == c.gen {
				continue
			}
			if _, ok := s.gens[w.gen-1].left[k]; !ok || w.gen < c.gen {
				s.violate(12, "call %d (accepted by Producer %d) was written by Producer %d, but Producer %d did not leave it in the spool",
					k, c.gen, w.gen, w.gen-1)
				break
			}
			if s.plainAck(k, w.gen-1, true) != nil {
				resent = true
			}
		}
		if resent {
			s.res.stats.resent++
		}
	}
}
