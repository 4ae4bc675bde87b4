package reliability

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// The ring keeps the last logRingSize records at Info or above, oldest
// first, with the logger's attributes, and counts all it was given.
func TestLogRingKeepsTheLastRecords(t *testing.T) {
	ring := newLogRing(time.Now())
	log := slog.New(ring).With("scenario", "s")
	log.Debug("not kept")
	for i := range logRingSize + 5 {
		log.Warn("record", "i", i)
	}
	recs, n := ring.last()
	if n != logRingSize+5 || len(recs) != logRingSize {
		t.Fatalf("got %d records of %d written, want %d of %d", len(recs), n, logRingSize, logRingSize+5)
	}
	for j, r := range recs {
		want := fmt.Sprintf("WARN record scenario=s i=%d", j+5)
		if !strings.HasSuffix(r, want) {
			t.Errorf("record %d = %q, want it to end with %q", j, r, want)
		}
	}
}
