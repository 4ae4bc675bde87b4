package reliability

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// logRingSize is how many of the Producer's last log records a run keeps.
const logRingSize = 40

// logRing is a slog.Handler that keeps the last logRingSize records at Info
// or above, so that a failed scenario's report shows what the Producer said
// before it failed (breaker transitions, reconnects) without a logger
// configured. Its lines carry the time since the run began. The handlers
// WithAttrs derives share one ring.
type logRing struct {
	start time.Time
	attrs []slog.Attr // from WithAttrs; groups are flattened away
	ring  *ring
}

// ring is the records a logRing and the handlers derived from it keep.
type ring struct {
	mu   sync.Mutex
	recs [logRingSize]string
	n    int // records written in all; the next goes to recs[n%logRingSize]
}

func newLogRing(start time.Time) *logRing { return &logRing{start: start, ring: new(ring)} }

func (l *logRing) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelInfo }

func (l *logRing) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", fmtDur(r.Time.Sub(l.start)), r.Level, r.Message)
	add := func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range l.attrs {
		add(a)
	}
	r.Attrs(add)
	g := l.ring
	g.mu.Lock()
	g.recs[g.n%logRingSize] = b.String()
	g.n++
	g.mu.Unlock()
	return nil
}

func (l *logRing) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *l
	c.attrs = append(append([]slog.Attr(nil), l.attrs...), attrs...)
	return &c
}

func (l *logRing) WithGroup(string) slog.Handler { return l }

// last returns the kept records, oldest first, and how many were written
// in all.
func (l *logRing) last() ([]string, int) {
	g := l.ring
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for i := range logRingSize {
		if s := g.recs[(g.n+i)%logRingSize]; s != "" {
			out = append(out, s)
		}
	}
	return out, g.n
}
