package mlproducer

import (
	"slices"
	"testing"
)

// orderURLs gives a permutation of the URLs; the first one takes turns over
// all of them, and the rest are not always in the same order.
func TestOrderURLs(t *testing.T) {
	urls := []string{"a", "b", "c", "d"}
	first := map[string]int{}
	rests := map[string]bool{}
	for range 400 {
		got := orderURLs(urls, false)
		sorted := slices.Sorted(slices.Values(got))
		if !slices.Equal(sorted, urls) {
			t.Fatalf("orderURLs(%v) = %v: not a permutation", urls, got)
		}
		first[got[0]]++
		rests[got[0]+" "+got[1]+got[2]+got[3]] = true
	}
	for _, u := range urls {
		// 100 each when nothing else makes a Producer meanwhile.
		if first[u] < 50 {
			t.Errorf("%s came first %d times of 400: %v", u, first[u], first)
		}
	}
	if len(rests) < 8 {
		t.Errorf("only %d different orders of the failover URLs in 400", len(rests))
	}
	if got := orderURLs(urls, true); !slices.Equal(got, urls) {
		t.Errorf("in order: %v", got)
	}
	if got := orderURLs(urls[:1], false); !slices.Equal(got, urls[:1]) {
		t.Errorf("one URL: %v", got)
	}
	if orderURLs(urls, false)[0] == "" || urls[0] != "a" {
		t.Error("the caller's slice was changed")
	}
}
