package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"
)

// console serializes what goes to stderr: the loop's reports, the
// Producer's log lines and the reporter's progress. With a bar, a message
// first clears the bar, which the next tick draws again below it.
type console struct {
	mu  sync.Mutex
	w   io.Writer
	bar *progressbar.ProgressBar
}

func newConsole(w io.Writer) *console { return &console{w: w} }

func (c *console) printf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bar != nil {
		_ = c.bar.Clear()
	}
	fmt.Fprintf(c.w, format, args...)
}

// Write makes the console the Producer's log output.
func (c *console) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bar != nil {
		_ = c.bar.Clear()
	}
	return c.w.Write(b)
}

const barTick = 200 * time.Millisecond

// reporter shows progress on one goroutine of its own, until stop.
type reporter struct {
	quit chan struct{}
	done chan struct{}
}

// startReporter starts the progress display -progress asks for: a bar when
// stderr is a terminal (or -progress bar), summary lines otherwise.
func startReporter(cfg *config, con *console, c *counts, stderr io.Writer) *reporter {
	r := &reporter{quit: make(chan struct{}), done: make(chan struct{})}
	mode := cfg.progress
	if mode == "auto" {
		mode = "lines"
		if f, ok := stderr.(*os.File); ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())) {
			mode = "bar"
		}
	}
	switch mode {
	case "off":
		close(r.done)
	case "bar":
		con.mu.Lock()
		con.bar = progressbar.NewOptions64(c.total,
			progressbar.OptionSetWriter(con.w),
			progressbar.OptionSetDescription("backfill"),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("msg"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetElapsedTime(true),
			// The reporter draws it on its tick: no goroutine of the
			// library's own for an unknown total.
			progressbar.OptionSetSpinnerChangeInterval(0),
		)
		con.mu.Unlock()
		go r.bar(con, c)
	default:
		go r.lines(con, c, cfg.interval)
	}
	return r
}

// stop ends the display after a last update.
func (r *reporter) stop() {
	close(r.quit)
	<-r.done
}

func (r *reporter) bar(con *console, c *counts) {
	defer close(r.done)
	t := time.NewTicker(barTick)
	defer t.Stop()
	draw := func() {
		con.mu.Lock()
		defer con.mu.Unlock()
		done, confirmed, dead := c.progress()
		con.bar.Describe(fmt.Sprintf("confirmed %d, dead-lettered %d, refused %d",
			confirmed, dead, c.refused.Load()))
		_ = con.bar.Set64(done)
	}
	for {
		select {
		case <-t.C:
			draw()
		case <-r.quit:
			draw()
			con.mu.Lock()
			fmt.Fprintln(con.w)
			con.bar = nil
			con.mu.Unlock()
			return
		}
	}
}

func (r *reporter) lines(con *console, c *counts, interval time.Duration) {
	defer close(r.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	start := time.Now()
	lastT, lastN := start, int64(0)
	show := func() {
		now := time.Now()
		n, confirmed, dead := c.progress()
		rate := 0.0
		if d := now.Sub(lastT).Seconds(); d > 0 {
			rate = float64(n-lastN) / d
		}
		lastT, lastN = now, n
		con.printf("backfill: %s, %.0f msg/s, ETA %s, confirmed %d, dead-lettered %d, refused %d\n",
			doneOf(n, c.total), rate, eta(n, c.total, now.Sub(start)),
			confirmed, dead, c.refused.Load())
	}
	for {
		select {
		case <-t.C:
			show()
		case <-r.quit:
			show()
			return
		}
	}
}

// progress returns the lines done (read, and refused, skipped or final),
// and the messages confirmed and dead-lettered so far.
func (c *counts) progress() (done, confirmed, dead int64) {
	confirmed, dead = c.live()
	// The published count is read after the Producer's: in flight is
	// never negative.
	inFlight := max(c.published.Load()-confirmed-dead, 0)
	return max(c.lines.Load()-inFlight, 0), confirmed, dead
}

// doneOf is "done/total lines (percent)", or "done/? lines" for stdin.
func doneOf(n, total int64) string {
	if total < 0 {
		return fmt.Sprintf("%d/? lines", n)
	}
	pct := 100.0
	if total > 0 {
		pct = 100 * float64(n) / float64(total)
	}
	return fmt.Sprintf("%d/%d lines (%.1f%%)", n, total, pct)
}

// eta extrapolates the average rate since the start to the lines left.
func eta(n, total int64, elapsed time.Duration) string {
	if total < 0 || n == 0 {
		return "unknown"
	}
	if n >= total {
		return "0s"
	}
	left := time.Duration(float64(elapsed) * float64(total-n) / float64(n))
	return left.Round(time.Second).String()
}
