package mlproducer_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// TestSpoolDamagedDisk is the corruption table of issue 10: what New gives
// for a spool dir that a disk or a person damaged. Never a panic, and never
// a silent drop of an intact record: either New fails with an error that
// names the file and says what to do, or the Producer sends every intact
// record (and keeps a damaged one aside).
//
//	damage                                   outcome
//	file truncated to half                   New fails: "spool file … is damaged (…)" or "… is truncated (…)": move it aside …
//	file truncated to a few bytes            New fails: "cannot open the spool …: invalid database (a file that is not a spool, or a damaged one: move it aside)"
//	bytes flipped in a data page's header    New fails: "spool file … is damaged (…)" (today), or opens and sends every record still readable, the unreadable ones moved to the "corrupt" bucket
//	bytes flipped in the newest meta page    New opens on the other meta page and logs an error saying the last commit may be missing; every older record is sent
//	a record whose checksum fails            New opens; the record moves to the "corrupt" bucket and is logged (error level), never sent; every other record is sent
//	a foreign file named mlproducer-spool.db New fails: "cannot open the spool …: invalid database (… move it aside)"
//	an unrelated file beside the spool file  ignored
//	dir not writable (read-only mount)       New fails: "cannot open the spool …" naming the file
//	dir on a full disk                       TestSpoolDiskFull, TestSpoolStartOnFullDisk (spool_enospc_test.go)
func TestSpoolDamagedDisk(t *testing.T) {
	const n = 20
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string)
		check  func(t *testing.T, ids []string, o outcome)
	}{
		{"truncated to half", func(t *testing.T, dir string) {
			fi, err := os.Stat(spoolPath(dir))
			require.NoError(t, err)
			require.NoError(t, os.Truncate(spoolPath(dir), fi.Size()/2))
		}, func(t *testing.T, ids []string, o outcome) {
			// Which check sees it first depends on where the pages the meta
			// needs fall: bbolt's own (a fault past the end, reported as
			// "damaged") or the spool's size check ("truncated").
			require.Error(t, o.err)
			msg := strings.ReplaceAll(o.err.Error(), o.dir, "<dir>")
			assert.Contains(t, msg, "spool file <dir>/mlproducer-spool.db is")
			assert.True(t, strings.Contains(msg, "is damaged") || strings.Contains(msg, "is truncated"), msg)
			assert.Contains(t, msg, "move it aside")
		}},
		{"truncated to a few bytes", func(t *testing.T, dir string) {
			require.NoError(t, os.Truncate(spoolPath(dir), 7))
		}, wantOpenError("cannot open the spool <dir>/mlproducer-spool.db: invalid database", "move it aside")},
		{"bytes flipped in a data page's header", func(t *testing.T, dir string) {
			page, psz := recordPage(t, dir)
			flip(t, spoolPath(dir), page*psz, 16) // page id, flags, count, overflow
		}, func(t *testing.T, ids []string, o outcome) {
			if o.err != nil {
				msg := strings.ReplaceAll(o.err.Error(), o.dir, "<dir>")
				assert.Contains(t, msg, "<dir>/mlproducer-spool.db")
				assert.Contains(t, msg, "move it aside")
				return
			}
			// Opened: what it could read is sent, and nothing readable is dropped.
			assert.Equal(t, len(ids), countSent(ids, o.sent)+o.corrupt, "every record is sent or kept aside")
		}},
		{"bytes flipped in the newest meta page", func(t *testing.T, dir string) {
			psz, newest := newestMeta(t, dir)
			flip(t, spoolPath(dir), int64(newest)*psz+32, 8) // within the meta's fields, not its magic
		}, func(t *testing.T, ids []string, o outcome) {
			require.NoError(t, o.err)
			// bbolt falls back to the other meta page, one commit older:
			// the record of the last commit (one put here) is gone. The
			// spool checks the meta pages itself and says so; this also
			// bounds the loss to that one commit.
			assert.Contains(t, o.logs, "meta pages is damaged")
			got := countSent(ids, o.sent)
			t.Logf("%d of %d records sent after the newest meta page was damaged", got, len(ids))
			assert.GreaterOrEqual(t, got, len(ids)-1, "more than the last commit lost")
			assert.Equal(t, len(ids[:len(ids)-1]), countSent(ids[:len(ids)-1], o.sent), "a record of an older commit lost")
		}},
		{"a record whose checksum fails", func(t *testing.T, dir string) {
			db, err := bolt.Open(spoolPath(dir), 0o600, &bolt.Options{Timeout: time.Second})
			require.NoError(t, err)
			defer db.Close()
			require.NoError(t, db.Update(func(tx *bolt.Tx) error {
				b := tx.Bucket([]byte("messages"))
				k, v := b.Cursor().First()
				v = bytes.Clone(v)
				v[len(v)-2] ^= 0xff // the body's end: the checksum no longer matches
				return b.Put(bytes.Clone(k), v)
			}))
		}, func(t *testing.T, ids []string, o outcome) {
			require.NoError(t, o.err)
			assert.Equal(t, 1, o.corrupt, "the damaged record is kept aside")
			assert.Zero(t, o.sent[ids[0]], "the damaged record is not sent")
			assert.Equal(t, len(ids)-1, countSent(ids[1:], o.sent), "every intact record is sent")
			assert.Contains(t, o.logs, "spool record is corrupt")
			assert.Contains(t, o.logs, "checksum mismatch")
		}},
		{"a foreign file named mlproducer-spool.db", func(t *testing.T, dir string) {
			require.NoError(t, os.WriteFile(spoolPath(dir), bytes.Repeat([]byte("not a bbolt file\n"), 1000), 0o600))
		}, wantOpenError("cannot open the spool <dir>/mlproducer-spool.db: invalid database", "move it aside")},
		{"an unrelated file beside the spool file", func(t *testing.T, dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("hello"), 0o600))
			require.NoError(t, os.Mkdir(filepath.Join(dir, "sub"), 0o700))
		}, func(t *testing.T, ids []string, o outcome) {
			require.NoError(t, o.err)
			assert.Equal(t, len(ids), countSent(ids, o.sent))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ids := makeSpool(t, dir, n)
			tc.damage(t, dir)
			o := outcome{dir: dir}
			o.err, o.sent, o.logs = drainSpool(t, dir, n)
			if o.err == nil {
				_, o.corrupt = spoolBuckets(t, dir)
			} else {
				t.Logf("New: %v", o.err)
				assert.Contains(t, o.err.Error(), dir, "the error names the spool")
			}
			tc.check(t, ids, o)
		})
	}
}

// A dir on a read-only mount: New fails at once with an error naming the
// file, whether the spool file is there or not; nothing in it is touched.
func TestSpoolDirNotWritable(t *testing.T) {
	for _, withFile := range []bool{false, true} {
		t.Run(fmt.Sprintf("spool file there %v", withFile), func(t *testing.T) {
			mnt := mountTmpfs(t, 4<<20)
			dir := filepath.Join(mnt, "spool")
			require.NoError(t, os.Mkdir(dir, 0o700))
			if withFile {
				makeSpool(t, dir, 5)
			}
			if out, err := exec.Command("mount", "-o", "remount,ro", mnt).CombinedOutput(); err != nil {
				t.Fatalf("remount %s read-only: %v: %s", mnt, err, out)
			}
			b := mlproducertest.NewBroker()
			defer b.Close()
			p, err := mlproducer.New(mlproducer.WithDialer(b), mlproducer.WithSpool(dir))
			if err == nil {
				_ = p.Close(context.Background())
				t.Fatal("New on a read-only dir succeeded")
			}
			t.Logf("New: %v", err)
			assert.Contains(t, err.Error(), filepath.Join(dir, "mlproducer-spool.db"))
			assert.Contains(t, err.Error(), "read-only file system")
		})
	}
}

func spoolPath(dir string) string { return filepath.Join(dir, "mlproducer-spool.db") }

// makeSpool leaves n messages in a spool under dir, as a Producer that could
// not reach the broker leaves them at Close, and returns their ids in the
// order they were accepted.
func makeSpool(t *testing.T, dir string, n int) []string {
	t.Helper()
	var ids []string
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		b.RefuseDials(errors.New("broker down"))
		p := newFake(t, b, mlproducer.WithSpool(dir))
		for i := range n {
			r, err := p.PublishEmbedding(context.Background(), fmt.Sprint("share-", i), fmt.Sprintf("record number %d", i), mlproducer.EmbeddingOptions{})
			require.NoError(t, err)
			ids = append(ids, r.MessageID)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		require.Error(t, p.Close(ctx))
	})
	require.Equal(t, n, spoolRecords(t, dir))
	return ids
}

// drainSpool starts a Producer on dir with the broker up and lets it send
// what it finds (up to want messages); it returns New's error, the ids the
// broker stored, and the Producer's logs.
func drainSpool(t *testing.T, dir string, want int) (err error, sent map[string]int, logs string) {
	t.Helper()
	var buf syncBuffer
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		var p *mlproducer.Producer
		p, err = mlproducer.New(mlproducer.WithDialer(b), mlproducer.WithSpool(dir),
			mlproducer.WithLogger(slog.New(slog.NewTextHandler(&buf, nil))),
			mlproducer.WithReconnectBackoff(time.Millisecond, 20*time.Millisecond))
		if err != nil {
			return
		}
		waitConnected(t, p)
		// Fake time: a minute is plenty for what is there to be sent.
		for start := time.Now(); len(b.StoredIDs()) < want && time.Since(start) < time.Minute; {
			time.Sleep(10 * time.Millisecond)
		}
		require.NoError(t, closeProducer(t, p))
		sent = b.StoredIDs()
	})
	return err, sent, buf.String()
}

// outcome is what a damaged spool gave.
type outcome struct {
	err     error
	dir     string         // the spool dir, which the error names
	sent    map[string]int // by message id
	corrupt int            // records in the "corrupt" bucket after New
	logs    string
}

func wantOpenError(parts ...string) func(t *testing.T, ids []string, o outcome) {
	return func(t *testing.T, ids []string, o outcome) {
		require.Error(t, o.err)
		msg := strings.ReplaceAll(o.err.Error(), o.dir, "<dir>") // the test's name is in the dir
		for _, p := range parts {
			assert.Contains(t, msg, p)
		}
	}
}

func countSent(ids []string, sent map[string]int) int {
	c := 0
	for _, id := range ids {
		if sent[id] > 0 {
			c++
		}
	}
	return c
}

// spoolBuckets returns the records in the "messages" and "corrupt" buckets.
func spoolBuckets(t *testing.T, dir string) (records, corrupt int) {
	t.Helper()
	db, err := bolt.Open(spoolPath(dir), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte("messages")); b != nil {
			records = b.Stats().KeyN
		}
		if b := tx.Bucket([]byte("corrupt")); b != nil {
			corrupt = b.Stats().KeyN
		}
		return nil
	}))
	return records, corrupt
}

// recordPage returns the page that holds the first record of the spool
// under dir (found by its body), and the page size.
func recordPage(t *testing.T, dir string) (page, psz int64) {
	t.Helper()
	data, err := os.ReadFile(spoolPath(dir))
	require.NoError(t, err)
	i := bytes.Index(data, []byte("record number 0"))
	require.GreaterOrEqual(t, i, 0, "no page holds the first record")
	psz = int64(os.Getpagesize())
	return int64(i) / psz, psz
}

// newestMeta returns the page size and which of the two meta pages (0 or 1)
// bbolt wrote last.
func newestMeta(t *testing.T, dir string) (int64, int) {
	t.Helper()
	db, err := bolt.Open(spoolPath(dir), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	require.NoError(t, err)
	var txid int
	require.NoError(t, db.View(func(tx *bolt.Tx) error { txid = int(tx.ID()); return nil }))
	require.NoError(t, db.Close())
	return int64(os.Getpagesize()), txid % 2
}

// flip inverts n bytes of the file at off.
func flip(t *testing.T, path string, off int64, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	buf := make([]byte, n)
	_, err = f.ReadAt(buf, off)
	require.NoError(t, err)
	for i := range buf {
		buf[i] ^= 0xff
	}
	_, err = f.WriteAt(buf, off)
	require.NoError(t, err)
}
