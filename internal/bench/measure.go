package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// window is the measured part of a case: completions between start and end
// (offsets from base) count; what comes before is warm-up, what comes after
// is the wind-down in which every outstanding call finishes uncounted.
type window struct {
	base       time.Time
	start, end time.Duration
}

func newWindow(warm, dur time.Duration) *window {
	return &window{base: time.Now(), start: warm, end: warm + dur}
}

// now is the time since base (monotonic).
func (w *window) now() time.Duration { return time.Since(w.base) }

// recorder collects the calls of one worker goroutine.
type recorder struct {
	win *window
	lat []int64 // ns, calls completed inside the window
	// other counts calls completed inside the window that returned without a
	// confirm (a Producer receipt other than Confirmed).
	other int64
}

// done records a call that started at t0 and got its confirm at t1.
func (r *recorder) done(t0, t1 time.Duration) {
	if t1 >= r.win.start && t1 < r.win.end {
		r.lat = append(r.lat, int64(t1-t0))
	}
}

// unconfirmed records a call that returned at t1 without a confirm.
func (r *recorder) unconfirmed(t1 time.Duration) {
	if t1 >= r.win.start && t1 < r.win.end {
		r.other++
	}
}

// usage is what had been spent at one instant.
type usage struct {
	at      time.Time
	cpu     time.Duration // this process: user + system, every thread
	mallocs uint64        // this process: heap objects allocated since the start
	broker  time.Duration // the local broker's process (0 if unknown)
	busy    time.Duration // the whole machine, every CPU (0 if unknown)
}

// probe reads the CPU time of this process, of the local broker (the
// beam.smp process, when the broker runs on this machine) and of the whole
// machine, so that a case shows where the CPU went and how much other
// processes took meanwhile.
type probe struct {
	brokerPID int // 0: not local, or not found
}

// newProbe looks for the broker's process when host is a loopback address:
// the beam.smp that listens on port, when several run (the nodes of the
// local cluster beside the broker), else the only one.
func newProbe(host, port string) *probe {
	p := &probe{}
	if host != "127.0.0.1" && host != "localhost" && host != "::1" {
		return p
	}
	var beams []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if comm, err := os.ReadFile("/proc/" + d.Name() + "/comm"); err == nil && strings.TrimSpace(string(comm)) == "beam.smp" {
			beams = append(beams, pid)
		}
	}
	switch {
	case len(beams) == 1:
		p.brokerPID = beams[0]
	case len(beams) > 1:
		p.brokerPID = listener(beams, port)
		if p.brokerPID == 0 {
			logf("broker CPU: %d beam.smp processes and none found listening on port %s: not measured", len(beams), port)
		}
	}
	return p
}

// listener returns the pid among pids that holds the listening TCP socket of
// port (from /proc/net/tcp and tcp6 and the processes' fds), or 0.
func listener(pids []int, port string) int {
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return 0
	}
	hexPort := fmt.Sprintf(":%04X", n)
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			// sl local_address rem_address st ... inode
			fs := strings.Fields(line)
			if len(fs) > 9 && strings.HasSuffix(fs[1], hexPort) && fs[3] == "0A" {
				inodes["socket:["+fs[9]+"]"] = true
			}
		}
	}
	for _, pid := range pids {
		fdDir := "/proc/" + strconv.Itoa(pid) + "/fd"
		fds, _ := os.ReadDir(fdDir)
		for _, fd := range fds {
			if l, err := os.Readlink(fdDir + "/" + fd.Name()); err == nil && inodes[l] {
				return pid
			}
		}
	}
	return 0
}

// clockTick is the unit of /proc times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

func (p *probe) read() usage {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	u := usage{at: time.Now(), cpu: processCPU(), mallocs: ms.Mallocs}
	if p != nil && p.brokerPID > 0 {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.brokerPID)); err == nil {
			// Fields after the ")" ending the command name: state is
			// field 3, utime 14, stime 15.
			if i := bytes.LastIndexByte(b, ')'); i >= 0 {
				f := strings.Fields(string(b[i+1:]))
				if len(f) > 12 {
					ut, _ := strconv.ParseInt(f[11], 10, 64)
					st, _ := strconv.ParseInt(f[12], 10, 64)
					u.broker = time.Duration(ut+st) * clockTick
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
		if len(f) > 5 && f[0] == "cpu" {
			// user + nice + system: what processes are charged with, so
			// that busy minus this process and the broker is everybody
			// else (interrupt time is charged to no process).
			var busy int64
			for _, v := range f[1:4] {
				n, _ := strconv.ParseInt(v, 10, 64)
				busy += n
			}
			u.busy = time.Duration(busy) * clockTick
		}
	}
	return u
}

// processCPU is the CPU time of the whole process (getrusage RUSAGE_SELF),
// Go runtime and garbage collector included.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measurement is one run of one case.
type measurement struct {
	msgs     int64         // confirmed (or, without confirms, sent) in the window
	other    int64         // calls that returned without a confirm
	dur      time.Duration // window length
	p50, p99 time.Duration
	cpu      time.Duration // process CPU over the window
	mallocs  uint64        // heap allocations over the window
	broker   time.Duration // broker CPU over the window (0 if unknown)
	others   time.Duration // CPU of every other process over the window
}

func (m measurement) rate() float64 {
	if m.dur <= 0 {
		return 0
	}
	return float64(m.msgs) / m.dur.Seconds()
}

func (m measurement) cpuPerMsg() time.Duration {
	if m.msgs == 0 {
		return 0
	}
	return m.cpu / time.Duration(m.msgs)
}

func (m measurement) brokerPerMsg() time.Duration {
	if m.msgs == 0 {
		return 0
	}
	return m.broker / time.Duration(m.msgs)
}

// othersShare is the CPU other processes took during the window, in cores.
func (m measurement) othersShare() float64 {
	if m.dur <= 0 {
		return 0
	}
	return m.others.Seconds() / m.dur.Seconds()
}

func (m measurement) allocsPerMsg() float64 {
	if m.msgs == 0 {
		return 0
	}
	return float64(m.mallocs) / float64(m.msgs)
}

// errStop ends a worker without being an error.
var errStop = errors.New("stop")

// drive runs workers goroutines, each running fn until the window has ended
// and its calls have finished, and measures the window. An error from one
// worker stops the others (they see stopped() true) and is returned.
func drive(pr *probe, workers int, warm, dur time.Duration, fn func(w int, rec *recorder, stopped func() bool) error) (measurement, error) {
	win := newWindow(warm, dur)
	recs := make([]recorder, workers)
	var (
		wg      sync.WaitGroup
		stop    atomic.Bool
		errOnce sync.Once
		first   error
	)
	stopped := func() bool { return stop.Load() }
	for w := range workers {
		recs[w].win = win
		wg.Go(func() {
			if err := fn(w, &recs[w], stopped); err != nil && !errors.Is(err, errStop) {
				errOnce.Do(func() { first = err })
				stop.Store(true)
			}
		})
	}
	sleepUntil(win, win.start, &stop)
	u0 := pr.read()
	sleepUntil(win, win.end, &stop)
	u1 := pr.read()
	wg.Wait()
	if first != nil {
		return measurement{}, first
	}
	m := measurement{dur: win.end - win.start, cpu: u1.cpu - u0.cpu, mallocs: u1.mallocs - u0.mallocs}
	if u0.broker > 0 {
		m.broker = u1.broker - u0.broker
	}
	if u0.busy > 0 {
		m.others = max(u1.busy-u0.busy-m.cpu-m.broker, 0)
	}
	var lat []int64
	for i := range recs {
		lat = append(lat, recs[i].lat...)
		m.other += recs[i].other
	}
	m.msgs = int64(len(lat))
	m.p50, m.p99 = percentile(lat, 50), percentile(lat, 99)
	return m, nil
}

// sleepUntil sleeps until the window offset at, or until a worker failed.
func sleepUntil(win *window, at time.Duration, stop *atomic.Bool) {
	for {
		d := at - win.now()
		if d <= 0 || stop.Load() {
			return
		}
		time.Sleep(min(d, 50*time.Millisecond))
	}
}

// closedLoop is the worker of a closed-loop case: call, wait, repeat while
// the window lasts. call returns whether the call ended with a confirm.
func closedLoop(call func() (confirmed bool, err error)) func(int, *recorder, func() bool) error {
	return closedLoopW(func(int) (bool, error) { return call() })
}

// closedLoopW is closedLoop for a call that needs its worker's number.
func closedLoopW(call func(w int) (confirmed bool, err error)) func(int, *recorder, func() bool) error {
	return func(w int, rec *recorder, stopped func() bool) error {
		for {
			t0 := rec.win.now()
			if t0 >= rec.win.end || stopped() {
				return nil
			}
			ok, err := call(w)
			t1 := rec.win.now()
			if err != nil {
				return err
			}
			if ok {
				rec.done(t0, t1)
			} else {
				rec.unconfirmed(t1)
			}
		}
	}
}

// percentile returns the p-th percentile (nearest rank) of ns; it sorts ns.
func percentile(ns []int64, p int) time.Duration {
	if len(ns) == 0 {
		return 0
	}
	if !slices.IsSorted(ns) {
		slices.Sort(ns)
	}
	rank := (len(ns)*p + 99) / 100 // ceil(n·p/100), 1-based
	rank = max(rank, 1)
	return time.Duration(ns[rank-1])
}

// median returns the median of xs (the mean of the middle two for an even
// count), or 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// heapInUse returns the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
