package faults

import "testing"

// StartT starts a [Proxy] in front of upstream for the test t and closes it
// when the test ends (t.Cleanup). It fails the test if the proxy cannot start
// or does not close cleanly.
func StartT(t testing.TB, upstream string) *Proxy {
	t.Helper()
	p, err := Start(upstream)
	if err != nil {
		t.Fatalf("faults: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("faults: close proxy %s: %v", p.Addr(), err)
		}
	})
	return p
}
