package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.uber.org/goleak"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/internal/rabbittest"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

func TestMain(m *testing.M) {
	if os.Getenv("BACKFILL_TEST_MAIN") == "1" {
		// TestSignal's child: the command itself, on a fake broker.
		b := mlproducertest.NewBroker()
		code := mainWith(mlproducer.WithDialer(b))
		b.Close()
		os.Exit(code)
	}
	goleak.VerifyTestMain(m)
}

// env is a getenv over a map.
func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// result is what one run gave.
type result struct {
	code           int
	stdout, stderr string
}

// runFake runs the command on the fake broker b.
func runFake(t *testing.T, ctx context.Context, b *mlproducertest.Broker, vars map[string]string, stdin io.Reader, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := runWith(ctx, args, stdin, &out, &errb, env(vars), mlproducer.WithDialer(b))
	t.Logf("exit %d\nstdout: %s\nstderr: %s", code, out.String(), errb.String())
	return result{code, out.String(), errb.String()}
}

func doc(id, text string) string {
	b, _ := json.Marshal(map[string]string{"id": id, "text": text})
	return string(b)
}

// The documents' ids become the message ids, each line is published once,
// the body is the embedding task of the line, and the run exits 0.
func TestFakeAllConfirmed(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	var in strings.Builder
	for i := range 500 {
		fmt.Fprintln(&in, doc(fmt.Sprintf("doc-%d", i), fmt.Sprintf("text %d", i)))
	}
	r := runFake(t, context.Background(), b, nil, strings.NewReader(in.String()), "-dimensions", "256", "-progress", "off")
	if r.code != exitOK {
		t.Fatalf("exit %d, want 0", r.code)
	}
	if !strings.Contains(r.stdout, "500 lines: 500 published, 500 confirmed, 0 dead-lettered, 0 refused, 0 unconfirmed") {
		t.Errorf("summary %q", r.stdout)
	}
	msgs := b.Messages("ml.embedding")
	if len(msgs) != 500 {
		t.Fatalf("%d messages stored, want 500", len(msgs))
	}
	seen := map[string]bool{}
	for _, m := range msgs {
		var body struct {
			Type, MessageID, ShareID, Content string
			Options                           struct{ Dimensions int }
		}
		if err := json.Unmarshal(m.Body, &body); err != nil {
			t.Fatal(err)
		}
		if body.Type != "embedding" || body.MessageID != m.MessageID || body.ShareID != m.MessageID ||
			body.Content != "text "+strings.TrimPrefix(m.MessageID, "doc-") || body.Options.Dimensions != 256 {
			t.Fatalf("message %s: body %s", m.MessageID, m.Body)
		}
		seen[m.MessageID] = true
	}
	if len(seen) != 500 {
		t.Fatalf("%d distinct ids, want 500", len(seen))
	}
}

// Summarization tasks, a numeric id field and a content field of another
// name.
func TestFakeSummarizationFields(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	in := `{"n": 17, "body": "a long article"}` + "\r\n" + `{"n": "x-2", "body": "another"}`
	r := runFake(t, context.Background(), b, nil, strings.NewReader(in),
		"-task", "summarization", "-id-field", "n", "-content-field", "body", "-max-length", "50", "-progress", "off", "-")
	if r.code != exitOK {
		t.Fatalf("exit %d, want 0", r.code)
	}
	msgs := b.Messages("ml.summarization")
	if len(msgs) != 2 || msgs[0].MessageID != "17" || msgs[1].MessageID != "x-2" {
		t.Fatalf("stored %+v", msgs)
	}
	var body struct {
		Type, Content string
		Options       struct{ MaxLength int }
	}
	if err := json.Unmarshal(msgs[0].Body, &body); err != nil {
		t.Fatal(err)
	}
	if body.Type != "summarization" || body.Content != "a long article" || body.Options.MaxLength != 50 {
		t.Fatalf("body %s", msgs[0].Body)
	}
}

// A bad line is refused with its line number, the others are published,
// and the exit status is 1; with -stop-on-error reading stops there.
func TestFakeBadLines(t *testing.T) {
	lines := []string{
		doc("a", "fine"),            // 1
		`{"id": "b", "text": `,      // 2: not JSON
		"",                          // 3: blank, skipped
		`{"text": "no id"}`,         // 4
		doc("c", ""),                // 5: empty content
		`{"id": "d", "text": 42}`,   // 6
		`["not", "an", "object"]`,   // 7
		doc("e", "fine too"),        // 8
		`{"id": "", "text": "x"}`,   // 9
		`{"id": true, "text": "x"}`, // 10
	}
	in := strings.Join(lines, "\n") + "\n"
	refusedLines := []int{2, 4, 5, 6, 7, 9, 10}

	t.Run("go on", func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		r := runFake(t, context.Background(), b, nil, strings.NewReader(in), "-progress", "off")
		if r.code != exitIncomplete {
			t.Fatalf("exit %d, want %d", r.code, exitIncomplete)
		}
		for _, n := range refusedLines {
			if !strings.Contains(r.stderr, fmt.Sprintf("line %d: refused: ", n)) {
				t.Errorf("stderr does not report line %d", n)
			}
		}
		if got := strings.Count(r.stderr, "refused: "); got != len(refusedLines) {
			t.Errorf("%d refusals reported, want %d", got, len(refusedLines))
		}
		if !strings.Contains(r.stdout, "10 lines: 2 published, 2 confirmed, 0 dead-lettered, 7 refused, 0 unconfirmed") {
			t.Errorf("summary %q", r.stdout)
		}
		if ids := b.StoredIDs(); len(ids) != 2 || ids["a"] != 1 || ids["e"] != 1 {
			t.Errorf("stored %v, want a and e once", ids)
		}
	})
	t.Run("stop", func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		r := runFake(t, context.Background(), b, nil, strings.NewReader(in), "-progress", "off", "-stop-on-error")
		if r.code != exitIncomplete {
			t.Fatalf("exit %d, want %d", r.code, exitIncomplete)
		}
		if !strings.Contains(r.stderr, "line 2: refused: ") || strings.Contains(r.stderr, "line 4") {
			t.Errorf("stderr %q: want line 2 refused and nothing after", r.stderr)
		}
		if ids := b.StoredIDs(); len(ids) != 1 || ids["a"] != 1 {
			t.Errorf("stored %v, want a only", ids)
		}
	})
}

// A nacked message whose retries are spent is dead-lettered: reported with
// its line and id, counted, and the exit status is 1.
func TestFakeDeadLetter(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	b.NackNext(1)
	in := doc("first", "x") + "\n" + doc("second", "y") + "\n"
	r := runFake(t, context.Background(), b, map[string]string{"ML_MAX_MESSAGE_RETRIES": "0"},
		strings.NewReader(in), "-progress", "off")
	if r.code != exitIncomplete {
		t.Fatalf("exit %d, want %d", r.code, exitIncomplete)
	}
	if !strings.Contains(r.stderr, "line 1: message first dead-lettered") {
		t.Errorf("stderr %q", r.stderr)
	}
	if !strings.Contains(r.stdout, "2 lines: 2 published, 1 confirmed, 1 dead-lettered, 0 refused, 0 unconfirmed") {
		t.Errorf("summary %q", r.stdout)
	}
}

// Ctrl-C: reading stops, what was taken is flushed and counted, and the
// exit status is 130.
func TestFakeInterrupt(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	pr, pw := io.Pipe()
	defer pw.Close() // ends the reader goroutine, blocked on the pipe
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for i := range 10 {
			fmt.Fprintln(pw, doc(fmt.Sprint("i-", i), "x"))
		}
		// The input stays open, as a terminal's would: wait until all
		// ten are stored, then interrupt.
		for len(b.StoredIDs()) < 10 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	r := runFake(t, ctx, b, nil, pr, "-progress", "off")
	if r.code != exitInterrupted {
		t.Fatalf("exit %d, want %d", r.code, exitInterrupted)
	}
	if !strings.Contains(r.stdout, "10 lines: 10 published, 10 confirmed, 0 dead-lettered, 0 refused, 0 unconfirmed") {
		t.Errorf("summary %q", r.stdout)
	}
}

// A real SIGINT to the process: it stops reading stdin (still open),
// flushes, prints the counts and exits 130.
func TestSignal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-progress", "lines", "-interval", "20ms")
	cmd.Env = append(os.Environ(), "BACKFILL_TEST_MAIN=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		fmt.Fprintln(stdin, doc(fmt.Sprint("s-", i), "x"))
	}
	// Wait until the progress says all ten are done (confirmed).
	var errText strings.Builder
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		fmt.Fprintln(&errText, sc.Text())
		if strings.Contains(sc.Text(), "backfill: 10/? lines") {
			break
		}
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	for sc.Scan() {
		fmt.Fprintln(&errText, sc.Text())
	}
	err = cmd.Wait()
	t.Logf("stdout: %s\nstderr: %s", stdout.String(), errText.String())
	if code := cmd.ProcessState.ExitCode(); code != exitInterrupted {
		t.Fatalf("exit %d (%v), want %d", code, err, exitInterrupted)
	}
	if !strings.Contains(stdout.String(), "10 lines: 10 published, 10 confirmed, 0 dead-lettered, 0 refused, 0 unconfirmed") {
		t.Errorf("summary %q", stdout.String())
	}
}

// Unconfirmed at the end: the flush deadline passes with confirms held;
// Close dead-letters them and the run exits 1.
func TestFakeFlushTimeout(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	b.HoldConfirms(true)
	in := doc("a", "x") + "\n" + doc("b", "y") + "\n"
	r := runFake(t, context.Background(), b, nil, strings.NewReader(in), "-progress", "off", "-flush-timeout", "200ms")
	if r.code != exitIncomplete {
		t.Fatalf("exit %d, want %d", r.code, exitIncomplete)
	}
	if !strings.Contains(r.stderr, "flush: context deadline exceeded") ||
		!strings.Contains(r.stdout, "2 published, 0 confirmed, 2 dead-lettered") {
		t.Errorf("stderr %q, stdout %q", r.stderr, r.stdout)
	}
}

// The summary lines and the bar show the counts.
func TestFakeProgress(t *testing.T) {
	for _, mode := range []string{"lines", "bar"} {
		t.Run(mode, func(t *testing.T) {
			b := mlproducertest.NewBroker()
			defer b.Close()
			path := filepath.Join(t.TempDir(), "in.jsonl")
			if err := os.WriteFile(path, []byte(doc("a", "x")+"\n"+doc("b", "y")+"\n"+"{}"), 0o600); err != nil {
				t.Fatal(err)
			}
			r := runFake(t, context.Background(), b, nil, nil, "-progress", mode, "-interval", "1h", path)
			if r.code != exitIncomplete {
				t.Fatalf("exit %d, want %d", r.code, exitIncomplete)
			}
			want := "3/3 lines (100.0%), "
			re := `confirmed 2, dead-lettered 0, refused 1`
			if mode == "bar" {
				want = "3/3"
			}
			if !strings.Contains(r.stderr, want) || !regexp.MustCompile(re).MatchString(r.stderr) {
				t.Errorf("stderr %q: want %q and %q", r.stderr, want, re)
			}
		})
	}
}

// No broker within -connect-timeout is a setup error (2), before reading.
func TestFakeNoBroker(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	b.RefuseDials(errors.New("connection refused"))
	r := runFake(t, context.Background(), b, nil, strings.NewReader(doc("a", "x")), "-connect-timeout", "100ms")
	if r.code != exitUsage || !strings.Contains(r.stderr, "no broker at ") || b.Published() != 0 {
		t.Fatalf("exit %d, stderr %q, %d published", r.code, r.stderr, b.Published())
	}
}

// -h documents the flags; bad flags are exit 2.
func TestUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, nil, &out, &errb, env(nil)); code != exitOK {
		t.Fatalf("-h: exit %d", code)
	}
	for _, f := range []string{"-task", "-id-field", "-content-field", "-dimensions", "-max-length", "-stop-on-error", "-progress", "-flush-timeout", "RABBITMQ_URL", "Exit status"} {
		if !strings.Contains(errb.String(), f) {
			t.Errorf("usage lacks %s", f)
		}
	}
	for _, args := range [][]string{{"-task", "transcription"}, {"-progress", "fancy"}, {"a", "b"}, {"/no/such/file"}} {
		errb.Reset()
		if code := run(context.Background(), args, nil, &out, &errb, env(nil)); code != exitUsage {
			t.Errorf("%v: exit %d, want %d (%s)", args, code, exitUsage, errb.String())
		}
	}
	// A bad environment variable is named.
	errb.Reset()
	code := run(context.Background(), nil, strings.NewReader(""), &out, &errb, env(map[string]string{"ML_MAX_MESSAGE_RETRIES": "many"}))
	if code != exitUsage || !strings.Contains(errb.String(), "ML_MAX_MESSAGE_RETRIES") {
		t.Errorf("bad env: exit %d, %s", code, errb.String())
	}
}

func TestMessageID(t *testing.T) {
	long := strings.Repeat("x", 129)
	for _, tc := range []struct{ doc, want string }{
		{"doc-1", "doc-1"},
		{strings.Repeat("y", 128), strings.Repeat("y", 128)},
		{long, "sha256-"},
		{"with space", "sha256-"},
		{"café", "sha256-"},
	} {
		got := messageID(tc.doc)
		if !strings.HasPrefix(got, tc.want) || (tc.want == "sha256-" && len(got) != 7+64) {
			t.Errorf("messageID(%q) = %q, want %q…", tc.doc, got, tc.want)
		}
		if messageID(tc.doc) != got {
			t.Errorf("messageID(%q) is not deterministic", tc.doc)
		}
	}
	if messageID("a b") == messageID("a c") {
		t.Error("different documents share an id")
	}
}

func TestReadLines(t *testing.T) {
	in := "one\r\ntwo\n\n" + strings.Repeat("z", 100) + "\nlast"
	lines, quit, done := readLines(strings.NewReader(in), 10)
	defer func() { close(quit); <-done }()
	var got []string
	for l := range lines {
		if l.err != nil {
			got = append(got, fmt.Sprintf("%d:err", l.n))
			continue
		}
		got = append(got, fmt.Sprintf("%d:%s", l.n, l.data))
	}
	want := "1:one 2:two 3: 4:err 5:last"
	if strings.Join(got, " ") != want {
		t.Errorf("got %q, want %q", strings.Join(got, " "), want)
	}
	for in, want := range map[string]int64{"": 0, "a": 1, "a\n": 1, "a\nb": 2, "\n\n": 2} {
		if n, _ := countLines(strings.NewReader(in)); n != want {
			t.Errorf("countLines(%q) = %d, want %d", in, n, want)
		}
	}
}

// The tracker keeps about what is unresolved, not every Delivery: with the
// Producer holding at most 164 messages (window and buffer), a tracker of
// minimum 512 never passes it, however many messages go through.
func TestTrackerBounded(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	p, err := mlproducer.New(mlproducer.WithDialer(b), mlproducer.WithMaxInFlight(64),
		mlproducer.WithRetryQueueCapacity(100, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	defer p.Close(ctx)
	var c counts
	const min = 512
	trk := newTrackerMin(newConsole(io.Discard), min)
	peak := 0
	const n = 10 * min
	for i := range n {
		msg, err := p.EmbeddingMessage(fmt.Sprint("t-", i), "s", "x", mlproducer.EmbeddingOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d, err := p.PublishAsync(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		trk.add(d, int64(i+1), &c)
		peak = max(peak, len(trk.pending))
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if left := trk.finish(&c); left != 0 || c.confirmed.Load() != n {
		t.Fatalf("left %d, confirmed %d of %d", left, c.confirmed.Load(), n)
	}
	if peak > min {
		t.Errorf("kept up to %d Deliveries for %d messages, want at most %d", peak, n, min)
	}
	if cap(trk.pending) > 2*min {
		t.Errorf("pending has capacity %d", cap(trk.pending))
	}
}

// The real broker: a generated file of 100,000 lines (10,000 with -short)
// arrives whole, each line once after de-duplication by message id, and
// the run exits 0. Queues and exchange are the test's own, deleted at the
// end.
func TestRabbitBackfill(t *testing.T) {
	url := rabbittest.Require(t)
	n := 100_000
	if testing.Short() {
		n = 10_000
	}
	name := "backfilltest-" + uuid.NewString()[:8]
	queues := []string{name + ".ml.summarization", name + ".ml.transcription", name + ".ml.embedding"}
	t.Cleanup(func() {
		rabbittest.DeleteQueues(t, url, queues...)
		ch, err := rabbittest.Dial(t, url).Channel()
		if err == nil {
			_ = ch.ExchangeDelete(name, false, false)
			_ = ch.Close()
		}
	})

	path := filepath.Join(t.TempDir(), "docs.jsonl")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for i := range n {
		fmt.Fprintf(w, `{"id":"doc-%07d","text":"Document %d of the backfill test, a few words long."}`+"\n", i, i)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	vars := map[string]string{
		"RABBITMQ_URL":             url,
		"ML_TOPOLOGY_EXCHANGE":     name,
		"ML_TOPOLOGY_QUEUE_PREFIX": name + ".",
	}
	var out, errb bytes.Buffer
	start := time.Now()
	code := run(context.Background(), []string{"-interval", "2s", path}, nil, &out, &errb, env(vars))
	t.Logf("run: %v\nstdout: %s\nstderr: %s", time.Since(start), out.String(), errb.String())
	if code != exitOK {
		t.Fatalf("exit %d, want 0", code)
	}
	want := fmt.Sprintf("%d lines: %d published, %d confirmed, 0 dead-lettered, 0 refused, 0 unconfirmed", n, n, n)
	if !strings.Contains(out.String(), want) {
		t.Errorf("summary %q, want %q", out.String(), want)
	}

	start = time.Now()
	ids := rabbittest.DrainIDs(t, url, queues[2], 3*time.Second)
	t.Logf("drained %d ids in %v", len(ids), time.Since(start))
	dups := 0
	for i := range n {
		id := fmt.Sprintf("doc-%07d", i)
		switch c := ids[id]; {
		case c == 0:
			t.Errorf("%s did not arrive", id)
		case c > 1:
			dups += c - 1 // at-least-once: a resend after a lost confirm
		}
		delete(ids, id)
	}
	if len(ids) > 0 {
		t.Errorf("%d unexpected ids arrived, e.g. %v", len(ids), firstKey(ids))
	}
	t.Logf("%d duplicates", dups)
}

func firstKey(m map[string]int) string {
	for k := range m {
		return k
	}
	return ""
}
