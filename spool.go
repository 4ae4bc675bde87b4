package mlproducer

import (
	"container/heap"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/mlproducer/mlproducer/transport"
)

// spoolFile is the store's file inside the spool dir.
const spoolFile = "mlproducer-spool.db"

// The store's buckets: records by key, records that failed their checksum at
// a start (kept for inspection, never sent), and the format version.
var (
	bucketRecords = []byte("messages")
	bucketCorrupt = []byte("corrupt")
	bucketMeta    = []byte("meta")
	keyFormat     = []byte("format")
	keyProbe      = []byte("probe") // written while the disk fails, to see it back
)

// spoolFormat is the version of the store's layout; recordVersion that of one
// record's encoding. A later version reads the older ones.
const (
	spoolFormat   = 1
	recordVersion = 1
)

// spoolMaxGroup bounds how many puts share one transaction and sync.
const spoolMaxGroup = 1024

// spoolFlushEvery is how long a delete or an attempt count may wait for a
// put to share its transaction before it is committed on its own. Losing
// them in a crash only repeats a send.
const spoolFlushEvery = 50 * time.Millisecond

// recordMeta is what a record keeps besides the body. Fields are only ever
// added, so every version reads the older records.
type recordMeta struct {
	ID            string         `json:"id"`
	Type          TaskType       `json:"type"`
	Created       int64          `json:"created"`
	Attempts      int            `json:"attempts,omitempty"`
	Headers       []recordHeader `json:"headers,omitempty"`
	Priority      uint8          `json:"priority,omitempty"`
	Expiration    string         `json:"expiration,omitempty"`
	CorrelationID string         `json:"correlationId,omitempty"`
}

// recordHeader is one header of WithHeaders, with its Go type, so that a
// message sent again after a restart carries the same AMQP field types.
type recordHeader struct {
	K string          `json:"k"`
	T string          `json:"t"`
	V json.RawMessage `json:"v"`
}

// headerType names the Go type of a header value WithHeaders accepts, as the
// spool records it; ok is false for any other type.
func headerType(v any) (name string, ok bool) {
	switch v.(type) {
	case bool:
		return "bool", true
	case string:
		return "string", true
	case []byte:
		return "bytes", true
	case int:
		return "int", true
	case int8:
		return "int8", true
	case int16:
		return "int16", true
	case int32:
		return "int32", true
	case int64:
		return "int64", true
	case uint8:
		return "uint8", true
	case uint16:
		return "uint16", true
	case uint32:
		return "uint32", true
	case float32:
		return "float32", true
	case float64:
		return "float64", true
	case time.Time:
		return "time", true
	}
	return "", false
}

// encodeHeaders writes the headers of WithHeaders with their types.
// checkHeaders let in only the types headerType names, and no NaN or
// infinite float, which JSON cannot hold.
func encodeHeaders(t transport.Table) []recordHeader {
	out := make([]recordHeader, 0, len(t))
	for k, v := range t {
		typ, ok := headerType(v)
		raw, err := json.Marshal(v)
		if !ok || err != nil {
			continue
		}
		out = append(out, recordHeader{K: k, T: typ, V: raw})
	}
	return out
}

// decodeHeaders reads headers written by encodeHeaders.
func decodeHeaders(hs []recordHeader) (transport.Table, error) {
	t := make(transport.Table, len(hs))
	for _, h := range hs {
		var err error
		var v any
		switch h.T {
		case "bool":
			var x bool
			err = json.Unmarshal(h.V, &x)
			v = x
		case "string":
			var x string
			err = json.Unmarshal(h.V, &x)
			v = x
		case "bytes":
			var x []byte
			err = json.Unmarshal(h.V, &x)
			v = x
		case "time":
			var x time.Time
			err = json.Unmarshal(h.V, &x)
			v = x
		case "float32", "float64":
			var x float64
			err = json.Unmarshal(h.V, &x)
			if h.T == "float32" {
				v = float32(x)
			} else {
				v = x
			}
		default:
			var x int64
			if err = json.Unmarshal(h.V, &x); err == nil {
				switch h.T {
				case "int":
					v = int(x)
				case "int8":
					v = int8(x)
				case "int16":
					v = int16(x)
				case "int32":
					v = int32(x)
				case "int64":
					v = x
				case "uint8":
					v = uint8(x)
				case "uint16":
					v = uint16(x)
				case "uint32":
					v = uint32(x)
				default:
					err = fmt.Errorf("header %q has unknown type %q", h.K, h.T)
				}
			}
		}
		if err != nil {
			return nil, fmt.Errorf("header %q: %w", h.K, err)
		}
		t[h.K] = v
	}
	return t, nil
}

// A record is: version (1 byte), CRC-32C of the rest (4 bytes, big endian),
// the length of the JSON meta (uvarint), the meta, then the body as given.
var crcTable = crc32.MakeTable(crc32.Castagnoli)

func encodeRecord(m *message, attempts int) []byte {
	rm := recordMeta{ID: m.id, Type: m.typ, Created: m.created, Attempts: attempts}
	if md := m.meta; md != nil {
		rm.Priority, rm.Expiration, rm.CorrelationID = md.priority, md.expiration, md.correlationID
		if len(md.headers) > 0 {
			rm.Headers = encodeHeaders(md.headers)
		}
	}
	meta, _ := json.Marshal(rm)
	buf := make([]byte, 5, 5+binary.MaxVarintLen64+len(meta)+len(m.body))
	buf[0] = recordVersion
	buf = binary.AppendUvarint(buf, uint64(len(meta)))
	buf = append(buf, meta...)
	buf = append(buf, m.body...)
	binary.BigEndian.PutUint32(buf[1:5], crc32.Checksum(buf[5:], crcTable))
	return buf
}

// decodeRecord returns the record's meta and body; the body aliases v.
func decodeRecord(v []byte) (recordMeta, []byte, error) {
	var rm recordMeta
	if len(v) < 6 {
		return rm, nil, errors.New("record too short")
	}
	if v[0] != recordVersion {
		return rm, nil, fmt.Errorf("record version %d, this build reads %d", v[0], recordVersion)
	}
	if crc32.Checksum(v[5:], crcTable) != binary.BigEndian.Uint32(v[1:5]) {
		return rm, nil, errors.New("checksum mismatch")
	}
	n, w := binary.Uvarint(v[5:])
	if w <= 0 || n > uint64(len(v)-5-w) {
		return rm, nil, errors.New("bad meta length")
	}
	meta := v[5+w : 5+w+int(n)]
	if err := json.Unmarshal(meta, &rm); err != nil {
		return rm, nil, fmt.Errorf("meta: %w", err)
	}
	if rm.ID == "" {
		return rm, nil, errors.New("meta without a message id")
	}
	return rm, v[5+w+int(n):], nil
}

func spoolKey(k uint64) []byte { return binary.BigEndian.AppendUint64(nil, k) }

// putReq is one put waiting for its group's sync.
type putReq struct {
	key  uint64
	val  []byte
	done chan error // buffered 1
}

// spool is the on-disk store of accepted messages: go.etcd.io/bbolt, one
// file under the dir, which bbolt also locks for the Producer's lifetime. One
// committer goroutine writes: it takes every put waiting and commits them in
// one transaction and one sync (group commit), with the deletes and attempt
// counts queued since, which need no sync of their own.
type spool struct {
	dir  string
	db   *bolt.DB
	log  *slog.Logger
	puts chan *putReq

	mu      sync.Mutex
	ops     map[uint64][]byte // pending: nil deletes, else the new value
	nextKey uint64
	closed  bool

	quit   chan struct{}
	exited chan struct{} // closed when the committer returns

	// failing holds the error of the last commit while commits fail.
	failing atomic.Pointer[string]

	// crashed makes the committer stop without committing what is pending,
	// as a killed process would (tests only).
	crashed atomic.Bool
}

// spillEntry is a message whose body is only on disk: 24 bytes of heap each,
// so that a spool of a million messages costs the heap about 24 MB.
type spillEntry struct {
	due      int64
	key      uint64
	size     int32
	sends    int16
	attempts int16
}

// openSpool opens (or creates) the store under dir and returns the messages
// left there by an earlier Producer, in the order they were accepted.
func openSpool(dir string, log *slog.Logger) (sp *spool, left []spillEntry, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("mlproducer: spool dir %s: %w (WithSpool needs a writable dir)", dir, err)
	}
	path := filepath.Join(dir, spoolFile)
	// A damaged file can make bbolt panic or touch memory past the end of
	// the file; both are turned into an error here.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if sp != nil {
				_ = sp.db.Close()
			}
			sp, left = nil, nil
			err = fmt.Errorf("mlproducer: spool file %s is damaged (%v): move it aside to start with an empty spool; its intact records can then be read with go.etcd.io/bbolt", path, r)
		}
	}()
	damagedMeta := checkMetaPages(path)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 50 * time.Millisecond, FreelistType: bolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, nil, fmt.Errorf("mlproducer: spool dir %s is in use by another Producer (in this process or another): give each Producer its own dir, or Close the other first", dir)
		}
		return nil, nil, fmt.Errorf("mlproducer: cannot open the spool %s: %w (a file that is not a spool, or a damaged one: move it aside)", path, err)
	}
	if damagedMeta >= 0 {
		log.Error("mlproducer: one of the spool file's two meta pages is damaged; bbolt opened the commit before it. "+
			"After a crash during a commit this is expected and nothing is lost; otherwise the messages of the last commit may be missing",
			slog.String("file", path), slog.Int("metaPage", damagedMeta))
	}
	sp = &spool{dir: dir, db: db, log: log, puts: make(chan *putReq, spoolMaxGroup), ops: make(map[uint64][]byte), quit: make(chan struct{}), exited: make(chan struct{})}
	if left, err = sp.recover(path); err != nil {
		_ = db.Close()
		return nil, nil, err
	}
	go sp.run()
	return sp, left, nil
}

// checkMetaPages returns which of the two meta pages of the bbolt file at
// path (0 or 1) fails its checksum while the other passes, or -1. bbolt then
// opens the older commit without a word; the spool says so. The layout read
// here is bbolt's file format: a 16-byte page header, then magic, version,
// page size, flags, root bucket (16 bytes), freelist, high page, txid, and an
// FNV-64a checksum of the 56 bytes before it, in the machine's byte order.
func checkMetaPages(path string) int {
	f, err := os.Open(path)
	if err != nil {
		return -1
	}
	defer f.Close()
	hdr := make([]byte, 128)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return -1
	}
	valid := func(b []byte) (bool, uint32) {
		m := b[16:]
		if binary.NativeEndian.Uint32(m[0:4]) != 0xED0CDAED {
			return false, 0
		}
		h := fnv.New64a()
		h.Write(m[:56])
		return h.Sum64() == binary.NativeEndian.Uint64(m[56:64]), binary.NativeEndian.Uint32(m[8:12])
	}
	ok0, psz := valid(hdr)
	if !ok0 {
		psz = uint32(os.Getpagesize())
	}
	if psz < 1024 || psz > 1<<20 {
		return -1
	}
	page1 := make([]byte, 128)
	if _, err := f.ReadAt(page1, int64(psz)); err != nil {
		return -1
	}
	ok1, _ := valid(page1)
	switch {
	case ok0 && !ok1:
		return 1
	case ok1 && !ok0:
		return 0
	}
	return -1
}

// recover checks the file and reads the index of what it holds. A record
// whose checksum fails is moved to the "corrupt" bucket and logged: kept, but
// never sent.
func (sp *spool) recover(path string) ([]spillEntry, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("mlproducer: spool %s: %w", path, err)
	}
	var left []spillEntry
	var corrupt [][2][]byte
	now := time.Now().UnixNano()
	err = sp.db.Update(func(tx *bolt.Tx) error {
		if tx.Size() > fi.Size() {
			return fmt.Errorf("mlproducer: spool file %s is truncated (%d bytes, its pages need %d): move it aside to start with an empty spool", path, fi.Size(), tx.Size())
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keyFormat); v != nil {
			if len(v) != 1 || v[0] > spoolFormat {
				return fmt.Errorf("mlproducer: spool %s has format %v; this build reads up to %d (a newer mlproducer wrote it)", path, v, spoolFormat)
			}
		} else if err := meta.Put(keyFormat, []byte{spoolFormat}); err != nil {
			return err
		}
		b, err := tx.CreateBucketIfNotExists(bucketRecords)
		if err != nil {
			return err
		}
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(k) != 8 {
				corrupt = append(corrupt, [2][]byte{append([]byte(nil), k...), append([]byte(nil), v...)})
				continue
			}
			rm, body, derr := decodeRecord(v)
			if derr != nil {
				sp.log.Error("mlproducer: spool record is corrupt; kept in the \"corrupt\" bucket, not sent",
					slog.String("dir", sp.dir), slog.Uint64("key", binary.BigEndian.Uint64(k)), slog.Any("error", derr))
				corrupt = append(corrupt, [2][]byte{append([]byte(nil), k...), append([]byte(nil), v...)})
				continue
			}
			key := binary.BigEndian.Uint64(k)
			sp.nextKey = max(sp.nextKey, key)
			att := int16(min(rm.Attempts, 1<<15-1))
			left = append(left, spillEntry{due: now, key: key, size: int32(len(body)), sends: att, attempts: att})
		}
		if len(corrupt) > 0 {
			cb, err := tx.CreateBucketIfNotExists(bucketCorrupt)
			if err != nil {
				return err
			}
			for _, kv := range corrupt {
				if err := cb.Put(kv[0], kv[1]); err != nil {
					return err
				}
				if err := b.Delete(kv[0]); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("mlproducer: cannot read the spool %s: %w", path, err)
	}
	return left, nil
}

// unavailable returns why the spool cannot store messages now, or "".
func (sp *spool) unavailable() string {
	if msg := sp.failing.Load(); msg != nil {
		return "spool cannot write (" + *msg + ")"
	}
	return ""
}

// newKey returns a key after every key in the store.
func (sp *spool) newKey() uint64 {
	sp.mu.Lock()
	sp.nextKey++
	k := sp.nextKey
	sp.mu.Unlock()
	return k
}

// peekKey returns the key newKey gives next.
func (sp *spool) peekKey() uint64 {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.nextKey + 1
}

// put stores m durably: it returns once the transaction holding it is synced.
// It waits for the disk, not for a ctx: a caller told "not taken" must not
// find the message sent later.
func (sp *spool) put(m *message) error {
	m.key = sp.newKey()
	r := &putReq{key: m.key, val: encodeRecord(m, 0), done: make(chan error, 1)}
	err := sp.await(r)
	if errors.Is(err, ErrClosed) {
		return err
	}
	if err != nil {
		return fmt.Errorf("%w: %v (free disk space under %s; publishes are accepted again once a write succeeds)", ErrSpoolUnavailable, err, sp.dir)
	}
	return nil
}

// remove deletes the record of a message that is final. It is committed with
// the next group, or within spoolFlushEvery.
func (sp *spool) remove(key uint64) {
	if key == 0 {
		return
	}
	sp.mu.Lock()
	sp.ops[key] = nil
	sp.mu.Unlock()
}

// removeNow deletes the record of key and waits for the sync: a message
// handed to the dead-letter hook must not come back after a crash.
func (sp *spool) removeNow(key uint64) error {
	if key == 0 {
		return nil
	}
	sp.remove(key)
	return sp.sync()
}

// sync waits until everything queued so far is committed and synced.
func (sp *spool) sync() error {
	return sp.await(&putReq{done: make(chan error, 1)}) // no value: a flush
}

// await hands r to the committer and waits for its commit. A request the
// committer did not take before it stopped fails with ErrClosed.
func (sp *spool) await(r *putReq) error {
	select {
	case sp.puts <- r:
	case <-sp.quit:
		return ErrClosed
	}
	select {
	case err := <-r.done:
		return err
	case <-sp.exited:
		select {
		case err := <-r.done:
			return err
		default:
			return ErrClosed
		}
	}
}

// setAttempts rewrites the record of m with its attempt count, without a
// sync of its own. Call with the Producer's rmu held (m.attempts).
func (sp *spool) setAttempts(m *message) {
	if m.key == 0 || m.body == nil {
		return
	}
	v := encodeRecord(m, m.attempts)
	sp.mu.Lock()
	if old, ok := sp.ops[m.key]; !ok || old != nil {
		sp.ops[m.key] = v
	}
	sp.mu.Unlock()
}

// get reads the record of key, or reports found false when it is gone.
func (sp *spool) get(key uint64) (rm recordMeta, body []byte, found bool, err error) {
	sp.mu.Lock()
	v, pending := sp.ops[key]
	sp.mu.Unlock()
	if pending && v == nil {
		return rm, nil, false, nil
	}
	if !pending {
		err = sp.safely(func() error {
			return sp.db.View(func(tx *bolt.Tx) error {
				if b := tx.Bucket(bucketRecords); b != nil {
					if got := b.Get(spoolKey(key)); got != nil {
						v = append([]byte(nil), got...)
					}
				}
				return nil
			})
		})
		if err != nil {
			return rm, nil, false, err
		}
		if v == nil {
			return rm, nil, false, nil
		}
	}
	rm, body, err = decodeRecord(v)
	if err != nil {
		return rm, nil, false, fmt.Errorf("mlproducer: spool record %d in %s is corrupt: %w", key, sp.dir, err)
	}
	return rm, body, true, nil
}

// safely runs f, turning a panic of the store (a page damaged after the
// start) into an error.
func (sp *spool) safely(f func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("mlproducer: spool %s is damaged: %v", sp.dir, r)
		}
	}()
	return f()
}

// run is the committer: the only goroutine that writes to the store.
func (sp *spool) run() {
	defer close(sp.exited)
	tick := time.NewTicker(spoolFlushEvery)
	defer tick.Stop()
	batch := make([]*putReq, 0, spoolMaxGroup)
	for {
		batch = batch[:0]
		stopping := false
		select {
		case r := <-sp.puts:
			batch = append(batch, r)
		case <-tick.C:
		case <-sp.quit:
			stopping = true
			if sp.crashed.Load() {
				return
			}
		}
	more:
		for len(batch) < spoolMaxGroup {
			select {
			case r := <-sp.puts:
				batch = append(batch, r)
			default:
				break more
			}
		}
		err := sp.commit(batch)
		for _, r := range batch {
			r.done <- err
		}
		clear(batch)
		if stopping && len(sp.puts) == 0 {
			return
		}
	}
}

// commit writes batch and the pending operations in one synced transaction.
// On failure the operations stay pending for the next one.
func (sp *spool) commit(batch []*putReq) error {
	sp.mu.Lock()
	ops := sp.ops
	if len(ops) > 0 {
		sp.ops = make(map[uint64][]byte, len(ops))
	} else {
		ops = nil // not the live map: it is read below without the lock
	}
	sp.mu.Unlock()
	probe := false
	if len(batch) == 0 && len(ops) == 0 {
		if sp.failing.Load() == nil {
			return nil
		}
		// The last write failed and nothing is waiting: try a write of
		// our own, so that readiness comes back when the disk does.
		probe = true
	}
	err := sp.safely(func() error {
		return sp.db.Update(func(tx *bolt.Tx) error {
			if probe {
				meta := tx.Bucket(bucketMeta)
				if meta == nil {
					return errors.New("the meta bucket is missing")
				}
				return meta.Put(keyProbe, binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano())))
			}
			b := tx.Bucket(bucketRecords)
			if b == nil {
				return errors.New("the messages bucket is missing")
			}
			b.FillPercent = 0.9 // keys only grow: pack the pages
			for _, r := range batch {
				if r.val == nil {
					continue // a flush: the commit itself is what it waits for
				}
				if err := b.Put(spoolKey(r.key), r.val); err != nil {
					return err
				}
			}
			for k, v := range ops {
				var err error
				if v == nil {
					err = b.Delete(spoolKey(k))
				} else if b.Get(spoolKey(k)) != nil {
					err = b.Put(spoolKey(k), v)
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
	})
	if err != nil {
		msg := err.Error()
		sp.failing.Store(&msg)
	} else {
		sp.failing.Store(nil)
	}
	if err != nil && len(ops) > 0 {
		sp.mu.Lock()
		for k, v := range ops {
			if _, newer := sp.ops[k]; !newer {
				sp.ops[k] = v
			}
		}
		sp.mu.Unlock()
		sp.log.Warn("mlproducer: spool write failed", slog.String("dir", sp.dir), slog.Any("error", err))
	}
	return err
}

// close commits what is pending and closes the store, releasing the dir.
func (sp *spool) close() error {
	sp.mu.Lock()
	if sp.closed {
		sp.mu.Unlock()
		return nil
	}
	sp.closed = true
	sp.mu.Unlock()
	close(sp.quit)
	<-sp.exited
	err := sp.commit(nil)
	if cerr := sp.db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("mlproducer: closing the spool %s: %w", sp.dir, err)
	}
	return nil
}

// spoolRetryStore is the retry store of a Producer with a spool. Messages that
// may still hear from an attempt (a late confirm after a timeout) stay in
// memory as they are; every other one is spilled: only a spillEntry is kept,
// and the message is read back from disk when its turn comes.
type spoolRetryStore struct {
	mem   memRetryStore
	spill spillHeap
	sb    int // bytes of the spilled messages
	sp    *spool
	// dlv keeps the Delivery of a spilled message of PublishAsync, by key,
	// for the *message read back from disk (nil until one is spilled).
	dlv map[uint64]*Delivery
}

func (s *spoolRetryStore) push(m *message, spill bool) {
	if !spill || m.key == 0 {
		s.mem.push(m, false)
		return
	}
	heap.Push(&s.spill, spillEntry{
		due: m.due, key: m.key, size: int32(len(m.body)),
		sends: int16(min(m.sends.Load(), 1<<15-1)), attempts: int16(min(m.attempts, 1<<15-1)),
	})
	s.sb += len(m.body)
	m.heapIndex = spilledIndex
	if m.dlv != nil {
		if s.dlv == nil {
			s.dlv = make(map[uint64]*Delivery)
		}
		s.dlv[m.key] = m.dlv
	}
	// This *message is dropped: its later attempts are not traced, but
	// they carry the same trace context.
	m.endSpan("spooled", nil)
}

func (s *spoolRetryStore) peekDue() (int64, bool) {
	md, mok := s.mem.peekDue()
	if len(s.spill) == 0 {
		return md, mok
	}
	if mok && md <= s.spill[0].due {
		return md, true
	}
	return s.spill[0].due, true
}

func (s *spoolRetryStore) pop() (*message, error) {
	for {
		if len(s.spill) == 0 || s.mem.len() > 0 && s.mem.h[0].due <= s.spill[0].due {
			return s.mem.pop()
		}
		e := s.spill[0]
		rm, body, found, err := s.sp.get(e.key)
		if err != nil {
			return nil, err
		}
		heap.Pop(&s.spill)
		s.sb -= int(e.size)
		d := s.dlv[e.key]
		if d != nil {
			delete(s.dlv, e.key)
		}
		if !found {
			// Final meanwhile (confirmed by an earlier attempt): nothing
			// to send.
			continue
		}
		m := &message{
			id: rm.ID, typ: rm.Type, body: body, created: rm.Created,
			key: e.key, acc: e.key, dlv: d, heapIndex: -1, attempts: int(e.attempts),
		}
		if rm.Headers != nil || rm.Priority != 0 || rm.Expiration != "" || rm.CorrelationID != "" {
			m.meta = &msgMeta{priority: rm.Priority, expiration: rm.Expiration, correlationID: rm.CorrelationID}
			if rm.Headers != nil {
				if m.meta.headers, err = decodeHeaders(rm.Headers); err != nil {
					return nil, fmt.Errorf("mlproducer: spool record %d in %s: %w", e.key, s.sp.dir, err)
				}
			}
		}
		m.sends.Store(int32(e.sends))
		return m, nil
	}
}

func (s *spoolRetryStore) remove(m *message) bool { return s.mem.remove(m) }
func (s *spoolRetryStore) len() int               { return s.mem.len() + len(s.spill) }
func (s *spoolRetryStore) bytes() int             { return s.mem.bytes() + s.sb }

// spilledIndex marks a message whose entry was spilled: it is in the store,
// but no longer as this *message.
const spilledIndex = -2

type spillHeap []spillEntry

func (h spillHeap) Len() int { return len(h) }
func (h spillHeap) Less(i, j int) bool {
	if h[i].due == h[j].due {
		return h[i].key < h[j].key
	}
	return h[i].due < h[j].due
}
func (h spillHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *spillHeap) Push(x any)   { *h = append(*h, x.(spillEntry)) }
func (h *spillHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
