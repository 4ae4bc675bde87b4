package transport

import (
	"io"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestWatchedConnClosesAfterTwoSilentHeartbeats(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, server := net.Pipe()
		defer server.Close()
		w := newWatchedConn(client)
		const hb = 10 * time.Second
		go w.watch(hb)

		readErr := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, w)
			readErr <- err
		}()
		// The broker talks for a while: the connection stays up.
		for i := 0; i < 10; i++ {
			time.Sleep(hb / 2)
			if _, err := server.Write([]byte{8}); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		if w.stalled.Load() {
			t.Fatal("closed while the broker was sending heartbeats")
		}
		// Then silence: closed within two intervals of the last byte.
		last := time.Now()
		<-readErr
		if got := time.Since(last); got > 2*hb {
			t.Fatalf("noticed after %v, want at most %v", got, 2*hb)
		}
		if !w.stalled.Load() {
			t.Fatal("not marked stalled")
		}
	})
}

func TestWatchedConnStopsOnClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, server := net.Pipe()
		defer server.Close()
		w := newWatchedConn(client)
		go w.watch(time.Second)
		w.Close()
		synctest.Wait() // the watch goroutine has returned; synctest would report it otherwise
		if w.stalled.Load() {
			t.Fatal("a closed connection is not a stall")
		}
	})
}
