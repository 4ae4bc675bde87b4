package spoolchild

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mlproducer/mlproducer"
)

// Config configures [Run].
type Config struct {
	// Command is the program to start as the child and its arguments: the
	// calling program itself (os.Executable, or os.Args[0] for a test
	// binary), which must call [IsChild] and [Main] first thing.
	Command []string
	// URL is the broker the child publishes to, normally through a fault
	// proxy that Cut and Restore control.
	URL string
	// Dir is the spool dir of every child.
	Dir string
	// Exchange and NoDeclare are the children's topology (see
	// [mlproducer.Topology]); the tasks are embeddings (routing key
	// "ml.embedding").
	Exchange  string
	NoDeclare bool
	// Goroutines is the number of publisher goroutines of a child. Default 64.
	Goroutines int
	// Think is the mean pause of a publisher between two publishes. Default
	// 10 ms.
	Think time.Duration
	// Kills is the least number of SIGKILLs. Default 12. A third of them
	// (at least one each) come while the broker is cut off and in the
	// middle of a Close.
	Kills int
	// CloseTimeout is the ctx deadline of a child's Close after SIGTERM.
	// Default 2 s.
	CloseTimeout time.Duration
	// Seed seeds the schedule; 0 takes one from the clock. Result.Seed tells
	// which one was used.
	Seed uint64
	// Cut makes the broker unreachable for the child; Restore makes it
	// reachable again. Both are required.
	Cut, Restore func() error
	// Logf receives progress messages. Default: discarded.
	Logf func(format string, args ...any)
}

// Result is what the children did.
type Result struct {
	// Seed is the schedule's seed.
	Seed uint64
	// Starts is the number of children started.
	Starts int
	// Kills counts the children ended by SIGKILL; KillsMidOutage those
	// killed while the broker was cut off, KillsMidClose those killed after
	// SIGTERM, before their Close returned.
	Kills, KillsMidOutage, KillsMidClose int
	// Closed lists what the Closes that finished before their SIGKILL
	// returned ("ok" or the error).
	Closed []string
	// Accepted holds every ID a child reported accepted, in order.
	Accepted []string
	// DeadLettered holds every ID a child's dead-letter hook got.
	DeadLettered []string
	// Elapsed is how long the kill loop took.
	Elapsed time.Duration
}

// mode is how one child's life ends.
type mode int

const (
	modeKill   mode = iota // SIGKILL while publishing
	modeOutage             // cut, then SIGKILL while cut off
	modeClose              // SIGTERM, then SIGKILL before Close returns
)

func (m mode) String() string { return [...]string{"kill", "kill mid-outage", "kill mid-Close"}[m] }

// Run starts a child on cfg.Dir, kills it and starts it again until at least
// cfg.Kills SIGKILLs have hit a live child, then stops the last one the same
// way and returns, with the broker restored. It fails when a child cannot
// start or exits in a way the schedule did not cause; the result then holds
// what was seen so far. ctx bounds the whole loop.
func Run(ctx context.Context, cfg Config) (res Result, err error) {
	if len(cfg.Command) == 0 || cfg.Cut == nil || cfg.Restore == nil || cfg.Dir == "" || cfg.URL == "" {
		return res, errors.New("spoolchild: Command, URL, Dir, Cut and Restore are required")
	}
	if cfg.Goroutines <= 0 {
		cfg.Goroutines = 64
	}
	if cfg.Think <= 0 {
		cfg.Think = 10 * time.Millisecond
	}
	if cfg.Kills <= 0 {
		cfg.Kills = 12
	}
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = 2 * time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	res.Seed = cfg.Seed
	if res.Seed == 0 {
		res.Seed = uint64(time.Now().UnixNano())
	}
	rng := rand.New(rand.NewPCG(res.Seed, 0x6b696c6c))
	between := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(rng.Int64N(int64(hi-lo)+1)) }
	// The modes in a random order, each a third of the kills.
	modes := make([]mode, cfg.Kills)
	for i := range modes {
		modes[i] = mode(i % 3)
	}
	rng.Shuffle(len(modes), func(i, j int) { modes[i], modes[j] = modes[j], modes[i] })

	start := time.Now()
	defer func() { res.Elapsed = time.Since(start) }()
	cut := false
	restore := func() error {
		if !cut {
			return nil
		}
		cut = false
		return cfg.Restore()
	}
	defer func() {
		if rerr := restore(); rerr != nil && err == nil {
			err = fmt.Errorf("spoolchild: restoring the broker: %w", rerr)
		}
	}()

	for i := 0; res.Kills < cfg.Kills; i++ {
		if i >= 3*cfg.Kills {
			return res, fmt.Errorf("spoolchild: only %d of %d kills hit a live child in %d starts (their Closes kept finishing first)", res.Kills, cfg.Kills, i)
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
		m := modes[i%len(modes)]
		c, err := startChild(ctx, cfg, res.Seed+uint64(i))
		if err != nil {
			return res, err
		}
		res.Starts++
		if err := c.waitReady(ctx, 60*time.Second); err != nil {
			c.kill()
			c.wait()
			res.collect(c)
			return res, err
		}
		// An outage left by the previous kill lasts into this start half
		// of the time, so that a child also starts with the broker away.
		if cut {
			sleep(ctx, between(100*time.Millisecond, 800*time.Millisecond))
			if err := restore(); err != nil {
				c.kill()
				c.wait()
				return res, err
			}
		}
		sleep(ctx, between(200*time.Millisecond, 1200*time.Millisecond))
		var killed bool
		switch m {
		case modeKill:
			killed = c.kill()
		case modeOutage:
			if err := cfg.Cut(); err != nil {
				c.kill()
				c.wait()
				return res, fmt.Errorf("spoolchild: cutting the broker off: %w", err)
			}
			cut = true
			sleep(ctx, between(200*time.Millisecond, 1500*time.Millisecond))
			killed = c.kill()
		case modeClose:
			// Half the time (and until one kill has hit a Close) with the
			// broker away, so that Close has unconfirmed messages to wait
			// for until its deadline.
			if rng.IntN(2) == 0 || res.KillsMidClose == 0 {
				if err := cfg.Cut(); err != nil {
					c.kill()
					c.wait()
					return res, fmt.Errorf("spoolchild: cutting the broker off: %w", err)
				}
				cut = true
				sleep(ctx, between(100*time.Millisecond, 800*time.Millisecond))
			}
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
			sleep(ctx, between(0, cfg.CloseTimeout*3/4))
			killed = c.kill()
		}
		c.wait()
		res.collect(c)
		if c.byKill() {
			res.Kills++
			if cut {
				res.KillsMidOutage++
			}
			if m == modeClose {
				res.KillsMidClose++
			}
			cfg.Logf("spoolchild: start %d: %s after %s, %d accepted so far", i+1, m, fmtDur(c.life()), len(res.Accepted))
		} else if m == modeClose && c.closedWith() != "" {
			res.Closed = append(res.Closed, c.closedWith())
			cfg.Logf("spoolchild: start %d: Close returned before the kill: %s", i+1, c.closedWith())
		} else {
			return res, fmt.Errorf("spoolchild: child %d exited by itself (%v, killed %v); its stderr:\n%s", i+1, c.waitErr, killed, c.stderrTail())
		}
		// Half the outages go on into the next start.
		if cut && rng.IntN(2) == 0 {
			if err := restore(); err != nil {
				return res, err
			}
		}
	}
	return res, nil
}

func (r *Result) collect(c *child) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r.Accepted = append(r.Accepted, c.accepted...)
	r.DeadLettered = append(r.DeadLettered, c.dead...)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// child is one started child process.
type child struct {
	cmd     *exec.Cmd
	started time.Time
	stdin   interface{ Close() error }
	exited  chan struct{}
	waitErr error
	ended   time.Time

	mu       sync.Mutex
	partial  []byte
	ready    chan struct{}
	isReady  bool
	accepted []string
	dead     []string
	closed   string
	odd      []string
	stderr   tailBuffer
}

func startChild(ctx context.Context, cfg Config, seed uint64) (*child, error) {
	cc, _ := json.Marshal(childConfig{
		URL: cfg.URL, Dir: cfg.Dir, Exchange: cfg.Exchange, NoDeclare: cfg.NoDeclare,
		Goroutines: cfg.Goroutines, Think: cfg.Think, CloseTimeout: cfg.CloseTimeout, Seed: seed,
	})
	c := &child{ready: make(chan struct{}), exited: make(chan struct{})}
	// Not CommandContext: the schedule decides how a child ends.
	c.cmd = exec.Command(cfg.Command[0], cfg.Command[1:]...)
	c.cmd.Env = append(os.Environ(), envChild+"="+string(cc))
	c.cmd.Stdout = (*stdoutSink)(c)
	c.cmd.Stderr = &c.stderr
	stdin, err := c.cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("spoolchild: %w", err)
	}
	c.stdin = stdin
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("spoolchild: starting %s: %w", cfg.Command[0], err)
	}
	c.started = time.Now()
	go func() {
		c.waitErr = c.cmd.Wait()
		c.ended = time.Now()
		close(c.exited)
	}()
	return c, nil
}

// waitReady waits for the child's "ready" line.
func (c *child) waitReady(ctx context.Context, limit time.Duration) error {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-c.ready:
		return nil
	case <-c.exited:
		return fmt.Errorf("spoolchild: child exited before it was ready (%v); its stderr:\n%s", c.waitErr, c.stderrTail())
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("spoolchild: child not ready after %v; its stderr:\n%s", limit, c.stderrTail())
	}
}

// kill sends SIGKILL unless the child has exited; it reports whether it sent it.
func (c *child) kill() bool {
	select {
	case <-c.exited:
		return false
	default:
	}
	return c.cmd.Process.Signal(syscall.SIGKILL) == nil
}

// wait waits for the child to end (killing it after a minute) and for its
// output to be read.
func (c *child) wait() {
	select {
	case <-c.exited:
	case <-time.After(time.Minute):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	_ = c.stdin.Close()
}

// byKill reports whether the child was ended by SIGKILL.
func (c *child) byKill() bool {
	ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

func (c *child) life() time.Duration { return c.ended.Sub(c.started) }

func (c *child) closedWith() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func (c *child) stderrTail() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stderr.String()
	if len(c.odd) > 0 {
		s += "\nunexpected stdout lines: " + strings.Join(c.odd, " | ")
	}
	return s
}

// stdoutSink parses the child's stdout lines as they come. A torn last line
// (the child killed in the middle of a write) never gets its newline and is
// dropped.
type stdoutSink child

func (s *stdoutSink) Write(b []byte) (int, error) {
	c := (*child)(s)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.partial = append(c.partial, b...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			break
		}
		line := string(c.partial[:i])
		c.partial = c.partial[i+1:]
		kind, arg, _ := strings.Cut(line, " ")
		switch {
		case kind == "ready" && !c.isReady:
			c.isReady = true
			close(c.ready)
		case kind == "a" && arg != "":
			c.accepted = append(c.accepted, arg)
		case kind == "d" && arg != "":
			c.dead = append(c.dead, arg)
		case kind == "closed":
			c.closed = arg
		default:
			if len(c.odd) < 5 {
				c.odd = append(c.odd, line)
			}
		}
	}
	return len(b), nil
}

// tailBuffer keeps the last 16 KiB written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

const tailMax = 16 << 10

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > tailMax {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-tailMax:]...)
	}
	return len(b), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// Drain waits until p, opened on the dir after Run, has sent everything
// the children left in the spool and the broker confirmed it, then closes p.
// It fails when that has not happened when ctx ends, or when Close reports
// messages left.
func Drain(ctx context.Context, p *mlproducer.Producer) (mlproducer.Status, error) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	var werr error
	for {
		st := p.Status()
		if st.RetryQueueSize == 0 && st.PendingConfirms == 0 {
			break
		}
		select {
		case <-ctx.Done():
			werr = fmt.Errorf("spoolchild: spool not drained when ctx ended (status %+v)", st)
		case <-t.C:
			continue
		}
		break
	}
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cerr := p.Close(cctx)
	st := p.Status()
	if werr != nil {
		return st, werr
	}
	if cerr != nil {
		return st, fmt.Errorf("spoolchild: closing the draining Producer: %w", cerr)
	}
	return st, nil
}

func fmtDur(d time.Duration) string { return d.Round(time.Millisecond).String() }
