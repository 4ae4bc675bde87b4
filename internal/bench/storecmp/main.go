// Command storecmp measures the two embedded stores the spool (issue 10) may
// use, pebble v2 and bbolt, on the spool's hot path: a record is put and
// synced before Publish returns, and deleted without a sync once the broker
// confirms it. It reports put latency at one caller and messages per second at
// many concurrent callers (the store must share syncs among them), for each
// value size, as the median of several runs.
//
//	go run ./internal/bench/storecmp [-duration 3s] [-sizes 1024,16384] [-runs 3]
//
// Each case gets a fresh directory under -dir (default: a temporary directory
// inside the working directory, so that fsync reaches the real disk even where
// /tmp is a tmpfs), removed at the end. The output names the filesystem used.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type options struct {
	duration   time.Duration
	maxOps     int
	sizes      []int
	callers    int
	runs       int
	dir        string
	stores     map[string]bool
	memTable   int
	batchDelay time.Duration
}

// result is one case in one run.
type result struct {
	store   string
	size    int
	callers int
	p50     time.Duration // put+sync latency
	p99     time.Duration
	rate    float64 // messages (put+sync, then delete) per second
	syncs   float64 // fsyncs per message
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "storecmp:", err)
		os.Exit(1)
	}
}

func run() error {
	var o options
	var sizes, stores string
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "time per case")
	flag.IntVar(&o.maxOps, "n", 20000, "at most this many messages per case at 1 caller")
	flag.StringVar(&sizes, "sizes", "1024,16384", "record sizes in bytes, comma-separated")
	flag.IntVar(&o.callers, "callers", 64, "concurrent callers of the throughput case")
	flag.IntVar(&o.runs, "runs", 3, "runs; the table shows the median of each figure")
	flag.StringVar(&o.dir, "dir", "", "parent of the stores' temporary directories (default: inside the working directory)")
	flag.StringVar(&stores, "stores", "", "only these cases, comma-separated (default: all)")
	flag.IntVar(&o.memTable, "pebble-memtable", 4<<20, "pebble MemTableSize in bytes")
	flag.DurationVar(&o.batchDelay, "bbolt-batch-delay", 0, "bbolt MaxBatchDelay (0: bbolt's default, 10ms)")
	flag.Parse()

	for _, f := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return fmt.Errorf("-sizes: %q is not a positive byte count", f)
		}
		o.sizes = append(o.sizes, n)
	}
	cases := storeCases()
	if stores != "" {
		o.stores = map[string]bool{}
		for _, s := range strings.Split(stores, ",") {
			o.stores[strings.TrimSpace(s)] = true
		}
		cases = slices.DeleteFunc(cases, func(c storeCase) bool { return !o.stores[c.name] })
		if len(cases) == 0 {
			return fmt.Errorf("-stores %q matches no case; cases: pebble, bbolt-update, bbolt-update-piggy, bbolt-batch, bbolt-batch-piggy", stores)
		}
	}
	if o.callers < 1 || o.runs < 1 || o.duration <= 0 || o.maxOps < 1 {
		return errors.New("-callers, -runs, -n and -duration must be positive")
	}

	parent := o.dir
	if parent == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		parent = wd
	}
	root, err := os.MkdirTemp(parent, ".storecmp-tmp-")
	if err != nil {
		return fmt.Errorf("make the temporary directory (set -dir to a writable directory on the disk to measure): %w", err)
	}
	defer os.RemoveAll(root)

	fs := describeFS(root)
	fmt.Printf("dir %s\nfilesystem: %s\n", root, fs)
	if strings.Contains(fs, "tmpfs") {
		fmt.Println("WARNING: tmpfs: fsync costs nothing here; pass -dir on a real disk")
	}
	fmt.Printf("machine: %d CPUs (%s), %s/%s, %s\n", runtime.NumCPU(), cpuModel(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	fmt.Printf("settings: pebble MemTableSize=%d, logger discarded, other options default; "+
		"bbolt NoFreelistSync=true, MaxBatchDelay=%s, other options default\n", o.memTable, batchDelayName(o.batchDelay))
	for _, c := range cases {
		fmt.Printf("  %-20s %s\n", c.name, c.desc)
	}
	fmt.Println()

	var all []result
	seq := 0
	for r := 0; r < o.runs; r++ {
		// Rotate the order of the cases each run, so drift does not favour one.
		order := slices.Clone(cases)
		k := r % len(order)
		order = append(order[k:], order[:k]...)
		for _, size := range o.sizes {
			for _, callers := range []int{1, o.callers} {
				for _, c := range order {
					seq++
					dir := filepath.Join(root, fmt.Sprintf("%d-%s", seq, c.name))
					res, err := measure(c, dir, o, size, callers)
					if err != nil {
						return fmt.Errorf("run %d, %s, %d B, %d callers: %w", r+1, c.name, size, callers, err)
					}
					if err := os.RemoveAll(dir); err != nil {
						return err
					}
					fmt.Printf("run %d  %-20s %6d B %3d callers  p50 %8s  p99 %8s  %8.0f msg/s  %.3f fsync/msg\n",
						r+1, res.store, res.size, res.callers, round(res.p50), round(res.p99), res.rate, res.syncs)
					all = append(all, res)
				}
			}
		}
	}
	printTable(all, cases, o)
	return nil
}

func batchDelayName(d time.Duration) string {
	if d == 0 {
		return "10ms (default)"
	}
	return d.String()
}

// measure runs one case in a fresh store under dir.
func measure(c storeCase, dir string, o options, size, callers int) (result, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return result{}, err
	}
	st, err := c.open(dir, o)
	if err != nil {
		return result{}, err
	}
	defer st.close()

	val := make([]byte, size)
	rng := rand.New(rand.NewPCG(uint64(size), uint64(callers)))
	for i := range val {
		val[i] = byte(rng.Uint32()) // incompressible, so compression flatters no one
	}
	var next atomic.Uint64
	one := func() (time.Duration, error) {
		k := key(next.Add(1))
		t0 := time.Now()
		if err := st.put(k, val); err != nil {
			return 0, fmt.Errorf("put: %w", err)
		}
		d := time.Since(t0)
		// The broker confirmed it: drop the record, unsynced.
		if err := st.del(k); err != nil {
			return 0, fmt.Errorf("delete: %w", err)
		}
		return d, nil
	}
	for range 20 { // warm up: open files, first memtable, first pages
		if _, err := one(); err != nil {
			return result{}, err
		}
	}
	s0, err := st.syncs()
	if err != nil {
		return result{}, err
	}

	lats := make([][]time.Duration, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(o.duration)
	for g := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && (callers > 1 || len(lats[g]) < o.maxOps) {
				d, err := one()
				if err != nil {
					errs[g] = err
					return
				}
				lats[g] = append(lats[g], d)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return result{}, err
	}
	s1, err := st.syncs()
	if err != nil {
		return result{}, err
	}
	if err := st.settle(); err != nil {
		return result{}, fmt.Errorf("settle deletes: %w", err)
	}
	if left, err := st.count(); err != nil {
		return result{}, err
	} else if left != 0 {
		return result{}, fmt.Errorf("%d records left after deleting every one", left)
	}

	merged := slices.Concat(lats...)
	slices.Sort(merged)
	n := len(merged)
	if n == 0 {
		return result{}, errors.New("no message completed within -duration")
	}
	return result{
		store:   c.name,
		size:    size,
		callers: callers,
		p50:     merged[n/2],
		p99:     merged[min(n-1, n*99/100)],
		rate:    float64(n) / elapsed.Seconds(),
		syncs:   float64(s1-s0) / float64(n),
	}, nil
}

func printTable(all []result, cases []storeCase, o options) {
	fmt.Printf("\nMedians of %d runs, %s per case (1 caller: at most %d messages). "+
		"Latency is put+sync (what Publish waits for); msg/s counts put+sync then delete.\n\n", o.runs, o.duration, o.maxOps)
	fmt.Println("| store | record | callers | put+sync p50 | put+sync p99 | msg/s | fsyncs/msg |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|")
	for _, size := range o.sizes {
		for _, callers := range []int{1, o.callers} {
			for _, c := range cases {
				var rs []result
				for _, r := range all {
					if r.store == c.name && r.size == size && r.callers == callers {
						rs = append(rs, r)
					}
				}
				if len(rs) == 0 {
					continue
				}
				p50 := medianOf(rs, func(r result) float64 { return float64(r.p50) })
				p99 := medianOf(rs, func(r result) float64 { return float64(r.p99) })
				rate := medianOf(rs, func(r result) float64 { return r.rate })
				syncs := medianOf(rs, func(r result) float64 { return r.syncs })
				fmt.Printf("| %s | %s | %d | %s | %s | %.0f | %.3f |\n", c.name, sizeName(size), callers,
					round(time.Duration(p50)), round(time.Duration(p99)), rate, syncs)
			}
		}
	}
}

func medianOf(rs []result, f func(result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func sizeName(n int) string {
	if n%1024 == 0 {
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprintf("%d B", n)
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	default:
		return d.Round(time.Microsecond)
	}
}

// describeFS names the mount that holds dir, from /proc/self/mounts (Linux).
func describeFS(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "unknown"
	}
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return "unknown (no /proc/self/mounts)"
	}
	defer f.Close()
	best, desc := "", "unknown"
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		dev, mnt, typ := fields[0], fields[1], fields[2]
		if (abs == mnt || strings.HasPrefix(abs, strings.TrimSuffix(mnt, "/")+"/")) && len(mnt) >= len(best) {
			best, desc = mnt, fmt.Sprintf("%s on %s (%s)", typ, mnt, dev)
		}
	}
	return desc
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "model unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if name, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":"))
		}
	}
	return "model unknown"
}
