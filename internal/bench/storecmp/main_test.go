package main

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Every way of using each store must leave no record behind once every
// message is deleted, and must be seen to sync (measure checks the former).
func TestCasesDeleteEverythingAndSync(t *testing.T) {
	o := options{duration: 50 * time.Millisecond, maxOps: 50, memTable: 1 << 20}
	for _, c := range storeCases() {
		for _, callers := range []int{1, 8} {
			r, err := measure(c, t.TempDir(), o, 1024, callers)
			if err != nil {
				t.Fatalf("%s, %d callers: %v", c.name, callers, err)
			}
			if r.rate <= 0 || r.syncs <= 0 {
				t.Errorf("%s, %d callers: %.0f msg/s, %.3f fsyncs/msg; want both above 0", c.name, callers, r.rate, r.syncs)
			}
			if r.p50 > r.p99 {
				t.Errorf("%s, %d callers: p50 %s above p99 %s", c.name, callers, r.p50, r.p99)
			}
		}
	}
}

func TestMedianOf(t *testing.T) {
	rs := []result{{rate: 3}, {rate: 1}, {rate: 2}}
	if got := medianOf(rs, func(r result) float64 { return r.rate }); got != 2 {
		t.Errorf("median of 3, 1, 2 = %v, want 2", got)
	}
	if got := medianOf(rs[:2], func(r result) float64 { return r.rate }); got != 2 {
		t.Errorf("median of 3, 1 = %v, want 2", got)
	}
}
