package spoolchild

import (
	"sync"
	"time"

	"github.com/mlproducer/mlproducer/internal/faults"
)

// refuseEvery is how often a refusing cut resets every connection.
const refuseEvery = 50 * time.Millisecond

// ProxyCut cuts a fault proxy's path to the broker, for [Config]'s Cut and
// Restore: a black hole, with every connection (the current ones and each
// new attempt) reset every 50 ms as well, as a broker whose port refuses
// connections. With alternate, every other cut is a silent black hole only,
// as a network partition, where the Producer learns of the loss from its
// heartbeat. Cut and Restore are called from one goroutine.
type ProxyCut struct {
	px        *faults.Proxy
	alternate bool
	n         int
	quit      chan struct{}
	wg        sync.WaitGroup
}

// NewProxyCut returns the cut of px; see [ProxyCut].
func NewProxyCut(px *faults.Proxy, alternate bool) *ProxyCut {
	return &ProxyCut{px: px, alternate: alternate}
}

// Cut makes the broker unreachable through the proxy.
func (c *ProxyCut) Cut() error {
	if err := c.px.BlackHole(); err != nil {
		return err
	}
	c.n++
	if c.quit != nil || (c.alternate && c.n%2 == 0) {
		return nil
	}
	c.quit = make(chan struct{})
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		t := time.NewTicker(refuseEvery)
		defer t.Stop()
		for {
			_ = c.px.ResetPeers()
			select {
			case <-c.quit:
				return
			case <-t.C:
			}
		}
	}()
	return nil
}

// Restore makes the broker reachable again and resets the connections the
// black hole killed, so that the Producer does not wait for its heartbeat to
// notice them. Calling it when nothing is cut is harmless.
func (c *ProxyCut) Restore() error {
	if c.quit != nil {
		close(c.quit)
		c.wg.Wait()
		c.quit = nil
	}
	if err := c.px.Clear(); err != nil {
		return err
	}
	return c.px.ResetPeers()
}
