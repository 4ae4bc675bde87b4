package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	bolt "go.etcd.io/bbolt"
)

// store is the spool's hot path: put must be durable when it returns; del
// may be lost in a crash (the message is then sent again, a duplicate).
type store interface {
	put(k, v []byte) error
	del(k []byte) error
	// settle makes every del so far visible (not necessarily durable).
	settle() error
	// count returns the number of records left.
	count() (int, error)
	// syncs returns the fsyncs issued so far, as far as the store can tell.
	syncs() (int64, error)
	close() error
}

// storeCase names one way of using one store.
type storeCase struct {
	name string
	desc string
	open func(dir string, o options) (store, error)
}

func storeCases() []storeCase {
	return []storeCase{
		{
			name: "pebble",
			desc: "Set(k, v, pebble.Sync); Delete(k, pebble.NoSync)",
			open: openPebble,
		},
		{
			name: "bbolt-update",
			desc: "db.Update(Put); db.Update(Delete): each its own synced tx",
			open: func(dir string, o options) (store, error) { return openBolt(dir, o, false, false) },
		},
		{
			name: "bbolt-update-piggy",
			desc: "db.Update(Put + deletes queued since the last tx); Delete only queues",
			open: func(dir string, o options) (store, error) { return openBolt(dir, o, false, true) },
		},
		{
			name: "bbolt-batch",
			desc: "db.Batch(Put); db.Batch(Delete): deletes share the coalesced txs",
			open: func(dir string, o options) (store, error) { return openBolt(dir, o, true, false) },
		},
		{
			name: "bbolt-committer",
			desc: "one committer goroutine: every put waiting + deletes queued since, one db.Update (the spool's design)",
			open: openBoltCommitter,
		},
		{
			name: "bbolt-batch-piggy",
			desc: "db.Batch(Put + deletes queued since the last tx); Delete only queues",
			open: func(dir string, o options) (store, error) { return openBolt(dir, o, true, true) },
		},
	}
}

// ---- pebble ----

type pebbleStore struct {
	db *pebble.DB
	fs *countingFS
}

func openPebble(dir string, o options) (store, error) {
	cfs := &countingFS{FS: vfs.Default}
	db, err := pebble.Open(filepath.Join(dir, "pebble"), &pebble.Options{
		FS:           cfs,
		MemTableSize: uint64(o.memTable),
		Logger:       discardLogger{},
	})
	if err != nil {
		return nil, fmt.Errorf("open pebble in %s: %w", dir, err)
	}
	return &pebbleStore{db: db, fs: cfs}, nil
}

func (s *pebbleStore) put(k, v []byte) error { return s.db.Set(k, v, pebble.Sync) }
func (s *pebbleStore) del(k []byte) error    { return s.db.Delete(k, pebble.NoSync) }
func (s *pebbleStore) settle() error         { return nil }
func (s *pebbleStore) syncs() (int64, error) { return s.fs.n.Load(), nil }
func (s *pebbleStore) close() error          { return s.db.Close() }

func (s *pebbleStore) count() (int, error) {
	it, err := s.db.NewIter(nil)
	if err != nil {
		return 0, err
	}
	n := 0
	for it.First(); it.Valid(); it.Next() {
		n++
	}
	if err := it.Close(); err != nil {
		return 0, err
	}
	return n, nil
}

type discardLogger struct{}

func (discardLogger) Infof(string, ...interface{})  {}
func (discardLogger) Errorf(string, ...interface{}) {}
func (discardLogger) Fatalf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "storecmp: pebble fatal: "+format+"\n", args...)
	os.Exit(1)
}

// countingFS counts every Sync, SyncData and SyncTo that pebble asks of the
// files it writes (WAL, sstables, manifest, directories).
type countingFS struct {
	vfs.FS
	n atomic.Int64
}

func (fs *countingFS) wrap(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return f, err
	}
	return &countingFile{File: f, n: &fs.n}, nil
}

func (fs *countingFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return fs.wrap(fs.FS.Create(name, c))
}

func (fs *countingFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return fs.wrap(fs.FS.OpenReadWrite(name, c, opts...))
}

func (fs *countingFS) OpenDir(name string) (vfs.File, error) {
	return fs.wrap(fs.FS.OpenDir(name))
}

func (fs *countingFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return fs.wrap(fs.FS.ReuseForWrite(oldname, newname, c))
}

type countingFile struct {
	vfs.File
	n *atomic.Int64
}

func (f *countingFile) Sync() error     { f.n.Add(1); return f.File.Sync() }
func (f *countingFile) SyncData() error { f.n.Add(1); return f.File.SyncData() }
func (f *countingFile) SyncTo(length int64) (bool, error) {
	f.n.Add(1)
	return f.File.SyncTo(length)
}

// ---- bbolt ----

var bucket = []byte("spool")

// maxPending bounds the deletes queued for the next tx (piggy variants);
// beyond it a delete gets its own tx.
const maxPending = 4096

type boltStore struct {
	db      *bolt.DB
	batch   bool
	piggy   bool
	startTx int

	mu      sync.Mutex
	pending [][]byte
}

func openBolt(dir string, o options, batch, piggy bool) (store, error) {
	db, err := bolt.Open(filepath.Join(dir, "spool.bbolt"), 0o600, &bolt.Options{
		Timeout:        time.Second,
		NoFreelistSync: true,
	})
	if err != nil {
		return nil, fmt.Errorf("open bbolt in %s: %w", dir, err)
	}
	if o.batchDelay > 0 {
		db.MaxBatchDelay = o.batchDelay
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	}); err != nil {
		_ = db.Close()
		return nil, err
	}
	s := &boltStore{db: db, batch: batch, piggy: piggy}
	s.startTx = s.txid()
	return s, nil
}

func (s *boltStore) txid() int {
	id := 0
	_ = s.db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil })
	return id
}

func (s *boltStore) write(fn func(*bolt.Tx) error) error {
	if s.batch {
		return s.db.Batch(fn)
	}
	return s.db.Update(fn)
}

// drain applies the queued deletes inside tx.
func (s *boltStore) drain(b *bolt.Bucket) error {
	s.mu.Lock()
	ks := s.pending
	s.pending = nil
	s.mu.Unlock()
	for _, k := range ks {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

func (s *boltStore) put(k, v []byte) error {
	return s.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if s.piggy {
			if err := s.drain(b); err != nil {
				return err
			}
		}
		return b.Put(k, v)
	})
}

func (s *boltStore) del(k []byte) error {
	if s.piggy {
		s.mu.Lock()
		if len(s.pending) < maxPending {
			s.pending = append(s.pending, k)
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
	}
	return s.write(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete(k) })
}

func (s *boltStore) settle() error {
	return s.db.Update(func(tx *bolt.Tx) error { return s.drain(tx.Bucket(bucket)) })
}

func (s *boltStore) count() (int, error) {
	n := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucket).Stats().KeyN
		return nil
	})
	return n, err
}

// syncs: bbolt v1.5.0's tx.Commit calls fdatasync twice (pages, then meta,
// tx.go); file growth adds a few more that this does not see.
func (s *boltStore) syncs() (int64, error) {
	return 2 * int64(s.txid()-s.startTx), nil
}

func (s *boltStore) close() error { return s.db.Close() }

// key makes the n-th key: big-endian, so keys arrive in order as time-ordered
// message ids would.
func key(n uint64) []byte {
	k := make([]byte, 16)
	copy(k, "msg-")
	binary.BigEndian.PutUint64(k[8:], n)
	return k
}

// ---- bbolt with a committer (what spool.go does) ----

// commitReq is one put waiting for its group's commit.
type commitReq struct {
	k, v []byte
	done chan error
}

// committerStore gives bbolt group commit without a batch delay: one goroutine
// takes the first put waiting, then every other one already queued, and
// commits them with the deletes queued since in one transaction (two syncs).
// A lone caller waits for nobody; 64 callers share a transaction.
type committerStore struct {
	*boltStore
	reqs chan *commitReq
	quit chan struct{}
	wg   sync.WaitGroup
}

func openBoltCommitter(dir string, o options) (store, error) {
	st, err := openBolt(dir, o, false, true)
	if err != nil {
		return nil, err
	}
	s := &committerStore{boltStore: st.(*boltStore), reqs: make(chan *commitReq, 1024), quit: make(chan struct{})}
	s.wg.Add(1)
	go s.run()
	return s, nil
}

func (s *committerStore) run() {
	defer s.wg.Done()
	group := make([]*commitReq, 0, 1024)
	for {
		group = group[:0]
		select {
		case r := <-s.reqs:
			group = append(group, r)
		case <-s.quit:
			return
		}
	more:
		for len(group) < cap(group) {
			select {
			case r := <-s.reqs:
				group = append(group, r)
			default:
				break more
			}
		}
		err := s.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucket)
			if err := s.drain(b); err != nil {
				return err
			}
			for _, r := range group {
				if err := b.Put(r.k, r.v); err != nil {
					return err
				}
			}
			return nil
		})
		for _, r := range group {
			r.done <- err
		}
	}
}

func (s *committerStore) put(k, v []byte) error {
	r := &commitReq{k: k, v: v, done: make(chan error, 1)}
	s.reqs <- r
	return <-r.done
}

func (s *committerStore) close() error {
	close(s.quit)
	s.wg.Wait()
	return s.boltStore.close()
}
