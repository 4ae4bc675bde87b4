package mlproducer_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// mountTmpfs mounts a tmpfs of size bytes on a new dir and returns it; the
// mount is undone in t.Cleanup, even when the test fails. Mounting needs
// root (the tests run as root): under CI=true a mount that fails fails the
// test; elsewhere the test is skipped with the reason.
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tmpfs")
	require.NoError(t, os.Mkdir(dir, 0o700))
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "tmpfs", dir).CombinedOutput()
	if err != nil {
		why := fmt.Sprintf("cannot mount a tmpfs on %s (needs root and CAP_SYS_ADMIN; running as uid %d): %v: %s", dir, os.Getuid(), err, out)
		if os.Getenv("CI") == "true" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fillDisk writes a ballast file in dir until the file system is full and
// returns its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "ballast")
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			require.ErrorIs(t, err, syscall.ENOSPC, "the ballast stopped for another reason")
			return path
		}
	}
}

// A spool on a full disk (a 2 MiB tmpfs filled by a ballast file, broker
// down so that every message stays in the spool): publishes are refused
// with ErrSpoolUnavailable and an error that says to free disk space;
// nothing accepted before is lost; once the ballast is gone publishes are
// accepted again; and after a Close the next Producer on the dir sends every
// accepted message.
func TestSpoolDiskFull(t *testing.T) {
	dir := filepath.Join(mountTmpfs(t, 2<<20), "spool")
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("broker down"))
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithSpool(dir), mlproducer.WithDeadLetter(dl.hook))
		accepted := map[string]bool{}
		publish := func(i int) (mlproducer.Receipt, error) {
			r, err := p.PublishEmbedding(context.Background(), fmt.Sprint("s", i), fmt.Sprintf("text %d %0400d", i, i), mlproducer.EmbeddingOptions{})
			if err == nil {
				require.Equal(t, mlproducer.Queued, r.State)
				accepted[r.MessageID] = true
			}
			return r, err
		}
		for i := range 20 {
			_, err := publish(i)
			require.NoError(t, err)
		}

		ballast := fillDisk(t, filepath.Dir(dir))
		// The store may still have free pages in its file: publish until
		// a write needs a page the disk cannot give.
		var err error
		n := 20
		for ; n < 20_000; n++ {
			if _, err = publish(n); err != nil {
				break
			}
		}
		require.Error(t, err, "20,000 publishes accepted on a full disk")
		require.ErrorIs(t, err, mlproducer.ErrSpoolUnavailable)
		assert.Contains(t, err.Error(), "free disk space")
		assert.Contains(t, err.Error(), dir)
		t.Logf("disk full after %d accepted publishes: %v", len(accepted), err)
		// Refused again, and refused messages are not counted as held.
		for range 3 {
			n++
			_, err := publish(n)
			require.ErrorIs(t, err, mlproducer.ErrSpoolUnavailable)
		}
		assert.Equal(t, len(accepted), p.Status().RetryQueueSize)
		// A Producer that refuses every publish is not ready.
		rerr := p.Ready()
		require.ErrorIs(t, rerr, mlproducer.ErrNotReady)
		assert.Contains(t, rerr.Error(), "spool cannot write")

		// Space back: ready again by itself (the spool tries a write of
		// its own), and accepted again.
		require.NoError(t, os.Remove(ballast))
		for p.Ready() != nil {
			time.Sleep(10 * time.Millisecond)
		}
		for range 5 {
			n++
			_, err := publish(n)
			require.NoError(t, err, "a publish after the disk has room again")
		}

		// Full again, then Close with the broker down: everything
		// accepted stays in the spool.
		ballast = fillDisk(t, filepath.Dir(dir))
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		err = p.Close(ctx)
		cancel()
		require.Error(t, err)
		assert.Contains(t, err.Error(), fmt.Sprintf("%d messages unconfirmed, left in the spool", len(accepted)))
		assert.Empty(t, dl.all())

		// The next start, once there is room, sends every one of them.
		require.NoError(t, os.Remove(ballast))
		assert.Equal(t, len(accepted), spoolRecords(t, dir))
		b.RefuseDials(nil)
		p2 := newFake(t, b, mlproducer.WithSpool(dir), mlproducer.WithDeadLetter(dl.hook))
		waitConnected(t, p2)
		for len(b.StoredIDs()) < len(accepted) {
			time.Sleep(10 * time.Millisecond)
		}
		require.NoError(t, closeProducer(t, p2))
		got := b.StoredIDs()
		missing := 0
		for id := range accepted {
			if got[id] == 0 {
				missing++
			}
		}
		assert.Zero(t, missing, "accepted messages lost on a full disk")
		assert.Len(t, got, len(accepted), "only accepted messages were sent")
		assert.Empty(t, dl.all())
		assert.Zero(t, spoolRecords(t, dir))
	})
}

// A Producer started on a full disk opens its spool (or fails New with a
// clear error); the messages left there by the previous one are not lost.
func TestSpoolStartOnFullDisk(t *testing.T) {
	dir := filepath.Join(mountTmpfs(t, 2<<20), "spool")
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("broker down"))
		p := newFake(t, b, mlproducer.WithSpool(dir))
		accepted := map[string]bool{}
		for i := range 50 {
			r, err := p.PublishEmbedding(context.Background(), fmt.Sprint("s", i), "text", mlproducer.EmbeddingOptions{})
			require.NoError(t, err)
			accepted[r.MessageID] = true
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		require.Error(t, p.Close(ctx))
		cancel()

		ballast := fillDisk(t, filepath.Dir(dir))
		b.RefuseDials(nil)
		p2, err := mlproducer.New(mlproducer.WithDialer(b), mlproducer.WithSpool(dir),
			mlproducer.WithReconnectBackoff(time.Millisecond, 20*time.Millisecond))
		if err != nil {
			t.Logf("New on a full disk: %v", err)
			assert.Contains(t, err.Error(), dir)
		} else {
			waitConnected(t, p2)
			for len(b.StoredIDs()) < len(accepted) {
				time.Sleep(10 * time.Millisecond)
			}
			_, perr := p2.PublishEmbedding(context.Background(), "s", "text", mlproducer.EmbeddingOptions{})
			t.Logf("New on a full disk: ok; a publish: %v", perr)
			require.NoError(t, closeProducer(t, p2))
		}
		require.NoError(t, os.Remove(ballast))
		if err != nil {
			p3 := newFake(t, b, mlproducer.WithSpool(dir))
			waitConnected(t, p3)
			for len(b.StoredIDs()) < len(accepted) {
				time.Sleep(10 * time.Millisecond)
			}
			require.NoError(t, closeProducer(t, p3))
		}
		got := b.StoredIDs()
		for id := range accepted {
			assert.Positive(t, got[id], "message %s lost", id)
		}
	})
}
