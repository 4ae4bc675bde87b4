// Package spoolchild is the kill test of the crash-safe spool (issue 10): a
// child process publishes with [mlproducer.WithSpool] and reports every
// message ID whose publish returned nil; [Run], in the parent, kills it with
// SIGKILL at random moments (while it publishes, while the broker is
// unreachable, in the middle of its Close) and restarts it on the same dir.
// Whoever calls Run then opens a Producer on the dir to send what the last
// child left there and consumes the queue: every reported ID must arrive.
//
// The child is the calling program itself, started again with an environment
// variable that holds its settings: a program that uses Run calls [IsChild]
// first thing (in main, or in TestMain) and, when it is true, exits with
// [Main]'s code. The test of this package and examples/reliability (scenario
// "crash") both work that way.
//
// # The child's protocol
//
// The child writes one line per event to its stdout, each line in a single
// write so that a kill leaves at most a torn last line, which the parent
// drops:
//
//	ready            New returned; publishing starts
//	a <id>           a publish of <id> returned nil (the Producer owns it)
//	d <id>           the dead-letter hook got <id>
//	closed <result>  SIGTERM (or stdin closed): Close returned <result>
//
// Its logs (warnings and above) go to stderr. It stops by itself when its
// stdin closes, so that a parent that dies does not leave it running.
package spoolchild

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/mlproducer/mlproducer"
)

// envChild names the environment variable that makes a process the child;
// its value is the JSON of childConfig.
const envChild = "MLPRODUCER_SPOOLCHILD"

// maxLife bounds a child's life even if nobody stops it.
const maxLife = 10 * time.Minute

// childConfig is what the parent tells a child.
type childConfig struct {
	URL          string        `json:"url"`
	Dir          string        `json:"dir"`
	Exchange     string        `json:"exchange"`
	NoDeclare    bool          `json:"noDeclare"`
	Goroutines   int           `json:"goroutines"`
	Think        time.Duration `json:"think"`
	CloseTimeout time.Duration `json:"closeTimeout"`
	Seed         uint64        `json:"seed"`
}

// IsChild reports whether this process was started by [Run] as its child.
func IsChild() bool { return os.Getenv(envChild) != "" }

// Main runs the child: it publishes until SIGTERM, SIGINT or the end of its
// stdin, then closes the Producer (within the Close timeout the parent gave)
// and returns the exit code: 0 after a Close, whatever it returned; 2 when
// the child could not start.
func Main() int {
	var cfg childConfig
	if err := json.Unmarshal([]byte(os.Getenv(envChild)), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "spoolchild: bad %s: %v\n", envChild, err)
		return 2
	}
	out := newLineWriter(os.Stdout)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p, err := mlproducer.New(
		mlproducer.WithURLs(cfg.URL),
		mlproducer.WithSpool(cfg.Dir),
		mlproducer.WithTopology(mlproducer.Topology{Exchange: cfg.Exchange, NoDeclare: cfg.NoDeclare}),
		mlproducer.WithConnectionName("mlproducer spoolchild"),
		mlproducer.WithLogger(log),
		// Outages and kills must not run a message out of attempts: a dead
		// letter would hide a loss.
		mlproducer.WithMaxRetries(1000),
		mlproducer.WithReconnectBackoff(50*time.Millisecond, 500*time.Millisecond),
		mlproducer.WithConnectionTimeout(2*time.Second),
		mlproducer.WithHeartbeat(2*time.Second),
		mlproducer.WithCircuitBreaker(10, time.Second),
		mlproducer.WithDeadLetter(func(dl mlproducer.DeadLetter) { out.line("d " + dl.Message.ID) }),
	)
	if err != nil {
		fmt.Fprintf(os.Stderr, "spoolchild: New: %v\n", err)
		return 2
	}
	out.line("ready")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	var wg sync.WaitGroup
	for g := range cfg.Goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			publish(p, out, cfg, g)
		}()
	}
	select {
	case <-ctx.Done():
	case <-time.After(maxLife):
	}
	cctx, cancel := context.WithTimeout(context.Background(), cfg.CloseTimeout)
	err = p.Close(cctx)
	cancel()
	wg.Wait()
	result := "ok"
	if err != nil {
		result = err.Error()
	}
	out.line("closed " + result)
	return 0
}

// publish publishes embedding tasks until the Producer is closed, and reports
// each one accepted.
func publish(p *mlproducer.Producer, out *lineWriter, cfg childConfig, g int) {
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(g)))
	content := fmt.Sprintf("spool kill test, publisher %d", g)
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := p.PublishEmbedding(ctx, fmt.Sprintf("kill-%d-%d", g, i), content, mlproducer.EmbeddingOptions{})
		cancel()
		switch {
		case err == nil:
			out.line("a " + r.MessageID)
		case errors.Is(err, mlproducer.ErrClosed):
			return
		default:
			// Refused (breaker open, spool unavailable): not taken, not
			// reported. Pause so that a refusing Producer is not spun on.
			time.Sleep(10 * time.Millisecond)
		}
		if cfg.Think > 0 {
			time.Sleep(time.Duration(rng.Int64N(int64(2*cfg.Think) + 1)))
		}
	}
}

// lineWriter writes whole lines to w, one write each, from any goroutine.
type lineWriter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func newLineWriter(w io.Writer) *lineWriter { return &lineWriter{w: bufio.NewWriterSize(w, 256)} }

func (lw *lineWriter) line(s string) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	_, _ = lw.w.WriteString(s)
	_ = lw.w.WriteByte('\n')
	_ = lw.w.Flush()
}
