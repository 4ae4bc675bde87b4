package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mlproducer/mlproducer"
)

// Exit statuses.
const (
	exitOK          = 0
	exitIncomplete  = 1 // refused, dead-lettered or unconfirmed
	exitUsage       = 2
	exitInterrupted = 130
)

// config is what the flags say.
type config struct {
	task           mlproducer.TaskType
	idField        string
	contentField   string
	embedding      mlproducer.EmbeddingOptions
	summarization  mlproducer.SummarizationOptions
	stopOnError    bool
	progress       string
	interval       time.Duration
	connectTimeout time.Duration
	flushTimeout   time.Duration
	maxLineBytes   int
	input          string // "-" for stdin
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("backfill", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: backfill [flags] [file]

Reads documents as JSON Lines from file (stdin when "-" or absent) and
publishes one task per line with PublishAsync. The broker is configured by
RABBITMQ_URL and the other variables of mlproducer.OptionsFromEnv.
A refused line (bad JSON, missing field, invalid content) is reported with
its line number on stderr and skipped (see -stop-on-error).
Exit status: 0 all confirmed; 1 something refused, dead-lettered or
unconfirmed; 2 usage or setup error; 130 interrupted (SIGINT/SIGTERM).

Flags:
`)
		fs.PrintDefaults()
	}
	task := fs.String("task", "embedding", "task type: embedding or summarization")
	fs.StringVar(&c.idField, "id-field", "id", "input field holding the document id (string or number): the share id, and the message id")
	fs.StringVar(&c.contentField, "content-field", "text", "input field holding the content (string)")
	fs.IntVar(&c.embedding.Dimensions, "dimensions", 0, "embedding: vector length wanted, 1 to 8192; 0 for the model's default")
	fs.StringVar(&c.embedding.Model, "model", "", "embedding: model name; empty for the consumer's default")
	fs.IntVar(&c.summarization.MaxLength, "max-length", 0, "summarization: longest summary in words, 1 to 10000; 0 for the model's default")
	fs.StringVar(&c.summarization.Language, "language", "", "summarization: BCP 47 language of the summary; empty lets the model choose")
	fs.StringVar(&c.summarization.Style, "style", "", "summarization: paragraph, bullets or headline; empty for the model's default")
	fs.BoolVar(&c.stopOnError, "stop-on-error", false, "stop reading at the first refused line (default: report it and go on)")
	fs.StringVar(&c.progress, "progress", "auto", "progress on stderr: auto (bar on a terminal, else lines), bar, lines or off")
	fs.DurationVar(&c.interval, "interval", 5*time.Second, "time between summary lines when progress is lines")
	fs.DurationVar(&c.connectTimeout, "connect-timeout", 30*time.Second, "give up (exit 2) when the broker is not reachable within this")
	fs.DurationVar(&c.flushTimeout, "flush-timeout", 60*time.Second, "at the end or on interrupt, wait at most this for outstanding confirms, and as long again for Close")
	fs.IntVar(&c.maxLineBytes, "max-line-bytes", 16<<20, "refuse input lines longer than this many bytes")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch *task {
	case "embedding":
		c.task = mlproducer.TaskEmbedding
	case "summarization":
		c.task = mlproducer.TaskSummarization
	default:
		return nil, fmt.Errorf("-task %q: want embedding or summarization", *task)
	}
	switch c.progress {
	case "auto", "bar", "lines", "off":
	default:
		return nil, fmt.Errorf("-progress %q: want auto, bar, lines or off", c.progress)
	}
	if c.idField == "" || c.contentField == "" {
		return nil, errors.New("-id-field and -content-field must not be empty")
	}
	if c.interval <= 0 || c.connectTimeout <= 0 || c.flushTimeout <= 0 || c.maxLineBytes <= 0 {
		return nil, errors.New("-interval, -connect-timeout, -flush-timeout and -max-line-bytes must be > 0")
	}
	switch fs.NArg() {
	case 0:
		c.input = "-"
	case 1:
		c.input = fs.Arg(0)
	default:
		return nil, fmt.Errorf("one input file at most, got %d arguments", fs.NArg())
	}
	return c, nil
}

// run is the command: main calls it with the process's arguments (without
// the program name), streams and environment, and exits with its result.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	return runWith(ctx, args, stdin, stdout, stderr, getenv)
}

// runWith is run with extra Producer options after those of the
// environment (tests give a fake broker's dialer).
func runWith(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string, extra ...mlproducer.Option) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "backfill:", err)
		return exitUsage
	}

	// The input, and its line count when it is a file.
	in, total := stdin, int64(-1)
	if cfg.input != "-" {
		f, err := os.Open(cfg.input)
		if err != nil {
			fmt.Fprintln(stderr, "backfill:", err)
			return exitUsage
		}
		defer f.Close()
		if total, err = countLines(f); err == nil {
			_, err = f.Seek(0, io.SeekStart)
		}
		if err != nil {
			fmt.Fprintf(stderr, "backfill: %s: %v\n", cfg.input, err)
			return exitUsage
		}
		in = f
	}

	// From here on stderr is shared with the Producer's log: through con.
	con := newConsole(stderr)
	lookup := func(name string) (string, bool) {
		v := getenv(name)
		return v, v != ""
	}
	envOpts, err := mlproducer.OptionsFromLookup(lookup)
	if err != nil {
		con.printf("backfill: %v\n", err)
		return exitUsage
	}
	logger := slog.New(slog.NewTextHandler(con, &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts := append([]mlproducer.Option{
		mlproducer.WithConnectionName("mlproducer backfill"),
		mlproducer.WithLogger(logger),
	}, envOpts...)
	p, err := mlproducer.New(append(opts, extra...)...)
	if err != nil {
		con.printf("backfill: %v\n", err)
		return exitUsage
	}
	closed := false
	closeP := func() error {
		if closed {
			return nil
		}
		closed = true
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.flushTimeout)
		defer cancel()
		return p.Close(cctx)
	}
	defer closeP()

	wctx, cancel := context.WithTimeout(ctx, cfg.connectTimeout)
	err = p.WaitConnected(wctx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			con.printf("backfill: interrupted before the broker was reachable\n")
			return exitInterrupted
		}
		con.printf("backfill: no broker at %s within %v: %v\n", p.Status().URL, cfg.connectTimeout, err)
		return exitUsage
	}

	j := &job{cfg: cfg, p: p, con: con, trk: newTracker(con)}
	j.c.total = total
	j.c.live = func() (int64, int64) {
		st := p.Status()
		return int64(st.Confirmed), int64(st.DeadLettered)
	}
	rep := startReporter(cfg, con, &j.c, stderr)
	start := time.Now()
	interrupted := j.publishAll(ctx, in)

	// Everything taken is final after a Flush; on interrupt or at its
	// deadline, Close hands what is left to the dead-letter hook.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.flushTimeout)
	flushErr := p.Flush(fctx)
	cancel()
	closeErr := closeP()
	elapsed := time.Since(start)
	unconfirmed := j.trk.finish(&j.c) + j.c.spooled.Load()
	rep.stop()

	if flushErr != nil {
		con.printf("backfill: flush: %v\n", flushErr)
	}
	if closeErr != nil {
		con.printf("backfill: close: %v\n", closeErr)
	}
	c := &j.c
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(c.published.Load()) / s
	}
	fmt.Fprintf(stdout, "backfill: %d lines: %d published, %d confirmed, %d dead-lettered, %d refused, %d unconfirmed in %v (%.0f msg/s)\n",
		c.lines.Load(), c.published.Load(), c.confirmed.Load(), c.deadLettered.Load(), c.refused.Load(), unconfirmed,
		elapsed.Round(time.Millisecond), rate)
	switch {
	case interrupted:
		return exitInterrupted
	case c.refused.Load() > 0 || c.deadLettered.Load() > 0 || unconfirmed > 0:
		return exitIncomplete
	}
	return exitOK
}

// counts are the job's counters, read by the reporter while the loop runs.
type counts struct {
	total        int64 // lines of the input, -1 when unknown
	lines        atomic.Int64
	published    atomic.Int64
	refused      atomic.Int64
	confirmed    atomic.Int64
	deadLettered atomic.Int64
	spooled      atomic.Int64 // left in the spool by Close: not confirmed

	// live reads the Producer's own counts, for the display: they are
	// current even while the loop waits (the tracker counts a Delivery
	// only when it looks at it, and not during Flush).
	live func() (confirmed, deadLettered int64)
}

type job struct {
	cfg *config
	p   *mlproducer.Producer
	con *console
	trk *tracker
	c   counts
}

// publishAll publishes every line of in until its end, ctx's end (it then
// returns true) or, with -stop-on-error, the first refused line.
func (j *job) publishAll(ctx context.Context, in io.Reader) (interrupted bool) {
	lines, quit, done := readLines(in, j.cfg.maxLineBytes)
	defer func() {
		close(quit)
		if !interrupted {
			<-done
		}
		// Interrupted, a read of stdin may be blocked until the next
		// line or the end of the input: the reader then returns when it
		// does (with the process, for the command).
	}()
	for {
		var l line
		var ok bool
		select {
		case <-ctx.Done():
			return true
		case l, ok = <-lines:
		}
		if !ok {
			return false
		}
		if l.err != nil {
			if errors.Is(l.err, errLineTooLong) {
				j.c.lines.Add(1)
				if j.refuse(l.n, l.err) {
					return false
				}
				continue
			}
			j.con.printf("backfill: reading line %d: %v\n", l.n, l.err)
			j.c.refused.Add(1)
			return false
		}
		msg, err := j.message(l.data)
		if errors.Is(err, errBlank) {
			j.c.lines.Add(1)
			continue
		}
		if err != nil {
			j.c.lines.Add(1)
			if j.refuse(l.n, err) {
				return false
			}
			continue
		}
		d, err := j.p.PublishAsync(ctx, msg)
		if err != nil {
			if ctx.Err() != nil {
				return true // not taken; the line is not done
			}
			j.c.lines.Add(1)
			if j.refuse(l.n, err) {
				return false
			}
			continue
		}
		j.c.lines.Add(1)
		j.c.published.Add(1)
		j.trk.add(d, l.n, &j.c)
	}
}

// refuse reports a refused line and says whether to stop.
func (j *job) refuse(n int64, err error) (stop bool) {
	j.c.refused.Add(1)
	j.con.printf("backfill: line %d: refused: %v\n", n, err)
	return j.cfg.stopOnError
}

var errBlank = errors.New("blank line")

// message builds the task of one input line.
func (j *job) message(data []byte) (mlproducer.Message, error) {
	if strings.TrimSpace(string(data)) == "" {
		return mlproducer.Message{}, errBlank
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return mlproducer.Message{}, fmt.Errorf("not a JSON object: %w", err)
	}
	docID, err := idField(fields, j.cfg.idField)
	if err != nil {
		return mlproducer.Message{}, err
	}
	raw, ok := fields[j.cfg.contentField]
	if !ok {
		return mlproducer.Message{}, fmt.Errorf("no field %q (set -content-field)", j.cfg.contentField)
	}
	var content string
	if err := json.Unmarshal(raw, &content); err != nil {
		return mlproducer.Message{}, fmt.Errorf("field %q is not a string", j.cfg.contentField)
	}
	id := messageID(docID)
	if j.cfg.task == mlproducer.TaskSummarization {
		return j.p.SummarizationMessage(id, docID, content, j.cfg.summarization)
	}
	return j.p.EmbeddingMessage(id, docID, content, j.cfg.embedding)
}

// idField reads the document id: a JSON string, or a number kept as
// written.
func idField(fields map[string]json.RawMessage, name string) (string, error) {
	raw, ok := fields[name]
	if !ok {
		return "", fmt.Errorf("no field %q (set -id-field)", name)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		if s == "" {
			return "", fmt.Errorf("field %q is empty", name)
		}
		return s, nil
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err == nil {
		return n.String(), nil
	}
	return "", fmt.Errorf("field %q is not a string or a number", name)
}

// messageID derives the message id from the document id: the id itself
// when it is a valid message id (1 to 128 visible ASCII characters),
// else "sha256-" and its hex SHA-256. Either way the same document always
// gets the same id.
func messageID(docID string) string {
	ok := len(docID) > 0 && len(docID) <= 128
	for i := 0; ok && i < len(docID); i++ {
		ok = docID[i] >= 0x21 && docID[i] <= 0x7e
	}
	if ok {
		return docID
	}
	sum := sha256.Sum256([]byte(docID))
	return "sha256-" + hex.EncodeToString(sum[:])
}
