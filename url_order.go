package mlproducer

import (
	"math/rand/v2"
	"sync/atomic"
)

// The URL a Producer tries first. Pods of a service each run their own
// process, so a random start spreads them over a cluster's nodes. Producers
// of one process take the URLs in turn from a random one, so that, say, 20 of
// them on three nodes are 7, 7 and 6 rather than whatever chance gives.
// This is the package's only state; it decides nothing but the order.
var (
	urlTurnSeed = rand.Uint64()
	urlTurn     atomic.Uint64
)

// orderURLs returns the order in which a new Producer tries urls: as given
// with [WithURLsInOrder], else a start taken in turn from a random rotation
// and the others shuffled, so that a failover spreads too.
func orderURLs(urls []string, inOrder bool) []string {
	out := append([]string(nil), urls...)
	if inOrder || len(out) < 2 {
		return out
	}
	first := int((urlTurnSeed + urlTurn.Add(1)) % uint64(len(out)))
	out[0], out[first] = out[first], out[0]
	rest := out[1:]
	rand.Shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
	return out
}
