package mlproducer_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// spoolRecords counts the records left in a closed spool dir, read with the
// store itself.
func spoolRecords(t *testing.T, dir string) int {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "mlproducer-spool.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	require.NoError(t, err)
	defer db.Close()
	n := 0
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte("messages")); b != nil {
			n = b.Stats().KeyN
		}
		return nil
	}))
	return n
}

// A Close that runs out of time with the broker down leaves every message in
// the spool, not in the dead-letter hook; the next Producer on the dir sends
// them all, with their ids, once the broker is back.
func TestSpoolKeepsWhatCloseLeftForTheNextStart(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("broker down"))
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithSpool(dir), mlproducer.WithDeadLetter(dl.hook))
		ids := map[string]bool{}
		for i := range 50 {
			r, err := p.PublishEmbedding(context.Background(), fmt.Sprint("s", i), "text", mlproducer.EmbeddingOptions{})
			require.NoError(t, err)
			require.Equal(t, mlproducer.Queued, r.State)
			ids[r.MessageID] = true
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := p.Close(ctx)
		cancel()
		require.Error(t, err)
		assert.Contains(t, err.Error(), "50 messages unconfirmed, left in the spool")
		assert.Empty(t, dl.all(), "a spooled message left at Close is not dead-lettered")
		require.Equal(t, 50, spoolRecords(t, dir))

		b.RefuseDials(nil)
		p2 := newFake(t, b, mlproducer.WithSpool(dir), mlproducer.WithDeadLetter(dl.hook))
		waitConnected(t, p2)
		for len(b.StoredIDs()) < 50 {
			time.Sleep(10 * time.Millisecond)
		}
		require.NoError(t, closeProducer(t, p2))
		got := b.StoredIDs()
		for id := range ids {
			assert.Equal(t, 1, got[id], "message %s arrived once", id)
		}
		assert.Len(t, got, 50)
		assert.Empty(t, dl.all())
		assert.Zero(t, spoolRecords(t, dir), "confirmed messages leave the spool")
	})
}

// Confirmed and dead-lettered messages leave the spool; the hook runs
// before the record goes.
func TestSpoolRemovesConfirmedAndDeadLettered(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithSpool(dir), mlproducer.WithDeadLetter(dl.hook),
			mlproducer.WithMaxRetries(1), mlproducer.WithConfirmTimeout(time.Second))
		waitConnected(t, p)
		r, err := p.PublishSummarization(context.Background(), "s", "text", mlproducer.SummarizationOptions{})
		require.NoError(t, err)
		require.Equal(t, mlproducer.Confirmed, r.State)

		b.DeleteQueue("ml.embedding") // unroutable: returned until dead-lettered
		_, err = p.PublishEmbedding(context.Background(), "s", "text", mlproducer.EmbeddingOptions{})
		require.NoError(t, err)
		for len(dl.all()) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		require.NoError(t, closeProducer(t, p))
		assert.Equal(t, 2, dl.all()[0].Attempts)
		assert.Zero(t, spoolRecords(t, dir))
	})
}

// One Producer per dir: a second New fails at once and names the dir; Close
// releases it.
func TestSpoolDirHeldByOneProducer(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b, mlproducer.WithSpool(dir))
		_, err := mlproducer.New(mlproducer.WithDialer(b), mlproducer.WithSpool(dir))
		require.Error(t, err)
		assert.Contains(t, err.Error(), dir)
		assert.Contains(t, err.Error(), "in use")
		require.NoError(t, closeProducer(t, p))
		p2 := newFake(t, b, mlproducer.WithSpool(dir))
		require.NoError(t, closeProducer(t, p2))
	})
}

// The spool's capacity bounds what is held; full is ErrRetryQueueFull, and
// nothing refused is kept.
func TestSpoolCapacity(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("broker down"))
		p := newFake(t, b, mlproducer.WithSpool(dir), mlproducer.WithSpoolCapacity(5, 1<<20))
		for range 5 {
			_, err := p.PublishEmbedding(context.Background(), "s", "text", mlproducer.EmbeddingOptions{})
			require.NoError(t, err)
		}
		_, err := p.PublishEmbedding(context.Background(), "s", "text", mlproducer.EmbeddingOptions{})
		require.ErrorIs(t, err, mlproducer.ErrRetryQueueFull)
		assert.Equal(t, 5, p.Status().RetryQueueSize)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		require.Error(t, p.Close(ctx))
		assert.Equal(t, 5, spoolRecords(t, dir))
	})
}

// A message that failed attempts keeps its count across a restart.
func TestSpoolKeepsAttemptsAcrossARestart(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var dl deadLetters
		p := newFake(t, b, mlproducer.WithSpool(dir), mlproducer.WithDeadLetter(dl.hook),
			mlproducer.WithMaxRetries(3), mlproducer.WithConfirmTimeout(time.Second),
			mlproducer.WithRetryBackoff(time.Hour, time.Hour))
		waitConnected(t, p)
		b.SetFaults(mlproducertest.Faults{NackRate: 1})
		_, err := p.PublishEmbedding(context.Background(), "s", "text", mlproducer.EmbeddingOptions{})
		require.NoError(t, err)
		time.Sleep(time.Second) // nacked once; its retry waits an hour
		synctest.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		require.Error(t, p.Close(ctx))
		cancel()

		p2 := newFake(t, b, mlproducer.WithSpool(dir), mlproducer.WithDeadLetter(dl.hook),
			mlproducer.WithMaxRetries(3), mlproducer.WithConfirmTimeout(time.Second))
		for len(dl.all()) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		require.NoError(t, closeProducer(t, p2))
		assert.Equal(t, 4, dl.all()[0].Attempts, "1 attempt before the restart, 3 after")
	})
}

// Another process holding the dir (here flock(1) on the spool's file, the
// lock bbolt takes) makes New fail at once, naming the dir.
func TestSpoolDirHeldByAnotherProcess(t *testing.T) {
	flock, err := exec.LookPath("flock")
	require.NoError(t, err, "flock(1) from util-linux is needed")
	dir := t.TempDir()
	b := mlproducertest.NewBroker()
	defer b.Close()
	p := newFake(t, b, mlproducer.WithSpool(dir))
	require.NoError(t, closeProducer(t, p))

	holder := exec.Command(flock, "--exclusive", "--close", filepath.Join(dir, "mlproducer-spool.db"), "sh", "-c", "echo locked; exec sleep 60")
	out, err := holder.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, holder.Start())
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	line := make([]byte, 7)
	_, err = io.ReadFull(out, line)
	require.NoError(t, err)
	require.Equal(t, "locked\n", string(line))

	_, err = mlproducer.New(mlproducer.WithDialer(b), mlproducer.WithSpool(dir))
	require.Error(t, err)
	assert.Contains(t, err.Error(), dir)
	assert.Contains(t, err.Error(), "in use")

	require.NoError(t, holder.Process.Kill())
	_ = holder.Wait()
	p = newFake(t, b, mlproducer.WithSpool(dir))
	require.NoError(t, closeProducer(t, p))
}
