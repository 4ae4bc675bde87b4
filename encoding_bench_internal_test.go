package mlproducer

// Issue 11, item 7: is the hand-written body encoder (appendSummarizationBody
// and its siblings) and the generic body check (internal/jsonvalid) worth
// keeping against encoding/json? `make bench` runs these benchmarks with the
// others; BENCHMARKS.md ("Body encoding: hand-written vs encoding/json")
// records the figures and the verdict.
//
// The encoding/json variants are what a real replacement would be:
//
//   - encoding_json: a json.Encoder with HTML escaping off, into a buffer
//     grown to the size the validator computes, trailing newline dropped. Its
//     output is byte for byte the hand-written one's
//     (TestStdEncoderMatchesHandWritten), so the comparison is fair.
//   - json_marshal: plain json.Marshal, which escapes <, > and & as \u003c
//     and so on: the same JSON value, other bytes.
//
// The generic check's replacement is json.Valid alone: Publish checks that
// the body is one JSON object in valid UTF-8, not the task schema, and
// jsonvalid makes exactly json.Valid's decision (its FuzzValid), so nothing
// would need json.Unmarshal.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/mlproducer/mlproducer/internal/jsonvalid"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// The bodies as encoding/json structs: the same keys in the same order as
// the hand-written encoder, the options by value (so zero options are {}, as
// the hand-written encoder writes them) and createdAt preformatted, since
// time.Time's MarshalJSON drops trailing zeros of the fraction.
type (
	stdSummarizationBody struct {
		Version   int                  `json:"version"`
		Type      TaskType             `json:"type"`
		MessageID string               `json:"messageId"`
		ShareID   string               `json:"shareId"`
		Content   string               `json:"content"`
		Options   SummarizationOptions `json:"options"`
		CreatedAt string               `json:"createdAt"`
	}
	stdTranscriptionBody struct {
		Version   int                  `json:"version"`
		Type      TaskType             `json:"type"`
		MessageID string               `json:"messageId"`
		ShareID   string               `json:"shareId"`
		MediaURL  string               `json:"mediaUrl"`
		Options   TranscriptionOptions `json:"options"`
		CreatedAt string               `json:"createdAt"`
	}
	stdEmbeddingBody struct {
		Version   int              `json:"version"`
		Type      TaskType         `json:"type"`
		MessageID string           `json:"messageId"`
		ShareID   string           `json:"shareId"`
		Content   string           `json:"content"`
		Options   EmbeddingOptions `json:"options"`
		CreatedAt string           `json:"createdAt"`
	}
)

// stdCreatedAt formats created as the hand-written encoder does.
func stdCreatedAt(created time.Time) string {
	return created.UTC().Format(createdAtLayout)
}

// stdEncode encodes v with encoding/json, HTML escaping off, into a buffer
// of capacity size, without the Encoder's trailing newline.
func stdEncode(v any, size int) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(size + 1) // + the newline
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return b[:len(b)-1], nil
}

// bodyEncoder is one way of encoding a task body, the same for every task
// type: text is the content, or the media URL of a transcription.
type bodyEncoder struct {
	name string
	enc  func(typ TaskType, size int, id string, created time.Time, shareID, text string, o any) ([]byte, error)
}

var bodyEncoders = []bodyEncoder{
	{"handwritten", func(typ TaskType, size int, id string, created time.Time, shareID, text string, o any) ([]byte, error) {
		dst := make([]byte, 0, size)
		switch typ {
		case TaskSummarization:
			return appendSummarizationBody(dst, id, created, shareID, text, o.(*SummarizationOptions)), nil
		case TaskTranscription:
			return appendTranscriptionBody(dst, id, created, shareID, text, o.(*TranscriptionOptions)), nil
		}
		return appendEmbeddingBody(dst, id, created, shareID, text, o.(*EmbeddingOptions)), nil
	}},
	{"encoding_json", func(typ TaskType, size int, id string, created time.Time, shareID, text string, o any) ([]byte, error) {
		return stdEncode(stdBody(typ, id, created, shareID, text, o), size)
	}},
	{"json_marshal", func(typ TaskType, _ int, id string, created time.Time, shareID, text string, o any) ([]byte, error) {
		return json.Marshal(stdBody(typ, id, created, shareID, text, o))
	}},
}

// stdBody returns the encoding/json struct of a body; o is a pointer to the
// options of typ, nil for zero options.
func stdBody(typ TaskType, id string, created time.Time, shareID, text string, o any) any {
	switch typ {
	case TaskSummarization:
		b := &stdSummarizationBody{Version: TaskVersion, Type: typ, MessageID: id, ShareID: shareID, Content: text, CreatedAt: stdCreatedAt(created)}
		if o := o.(*SummarizationOptions); o != nil {
			b.Options = *o
		}
		return b
	case TaskTranscription:
		b := &stdTranscriptionBody{Version: TaskVersion, Type: typ, MessageID: id, ShareID: shareID, MediaURL: text, CreatedAt: stdCreatedAt(created)}
		if o := o.(*TranscriptionOptions); o != nil {
			b.Options = *o
		}
		return b
	}
	b := &stdEmbeddingBody{Version: TaskVersion, Type: typ, MessageID: id, ShareID: shareID, Content: text, CreatedAt: stdCreatedAt(created)}
	if o := o.(*EmbeddingOptions); o != nil {
		b.Options = *o
	}
	return b
}

// encodingText returns n bytes of prose as services send it, cut at a rune
// boundary: ASCII with a newline and two quotes per 120 bytes or so (2.5 %
// more bytes once escaped, within the 1/16 that typedBodySize allows),
// accented letters and CJK, and <, > and & that only json.Marshal escapes.
func encodingText(n int) string {
	const para = "Die Übersicht: \"Q3\" grew 12 % <year on year> & costs fell; café, naïve, 東京 and more of the same.\n"
	s := strings.Repeat(para, n/len(para)+1)[:n]
	return strings.ToValidUTF8(s, "")
}

// encodingASCII is n bytes of plain ASCII (what internal/bench sends).
func encodingASCII(n int) string {
	const text = "The quick brown fox jumps over the lazy dog. "
	return strings.Repeat(text, n/len(text)+1)[:n]
}

// encodingCase is one set of arguments of a typed publish.
type encodingCase struct {
	typ  TaskType
	text string
	opts any // *SummarizationOptions, *TranscriptionOptions or *EmbeddingOptions
}

// size returns what the validator of the case's type returns: the capacity
// the typed methods give the body.
func (c encodingCase) size(tb testing.TB, l *taskLimits) int {
	var n int
	var err error
	switch c.typ {
	case TaskSummarization:
		n, err = l.validateSummarization("share-123", c.text, c.opts.(*SummarizationOptions))
	case TaskTranscription:
		n, err = l.validateTranscription("share-123", c.text, c.opts.(*TranscriptionOptions))
	default:
		n, err = l.validateEmbedding("share-123", c.text, c.opts.(*EmbeddingOptions))
	}
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// TestStdEncoderMatchesHandWritten checks that the encoding/json variant of
// the benchmarks writes exactly the hand-written encoder's bytes, and
// json.Marshal the same JSON value, for every task type, with zero and full
// options and content that needs every kind of escape; then on random
// strings of the characters where encoders differ.
func TestStdEncoderMatchesHandWritten(t *testing.T) {
	created := time.Date(2026, 11, 28, 4, 7, 25, 120000000, time.FixedZone("CET", 3600))
	texts := []string{
		"plain",
		encodingText(1024),
		"quote \" backslash \\ slash / nul \x00 bell \x07 bs \b ff \f nl \n cr \r tab \t del \x7f",
		"html <script>&amp;</script>",
		"seps \u2028 \u2029 and bom \ufeff",
		"invalid \xff\xfe utf-8 \xe2\x82 cut",
		"emoji 😀 and 東京",
	}
	rng := rand.New(rand.NewPCG(11, 7))
	alphabet := []string{"a", " ", "\"", "\\", "\n", "\x01", "\x1f", "<", "&", "é", "\u2028", "\u2029", "\xff", "\xc3", "😀", "\ufffd"}
	for range 500 {
		var b strings.Builder
		for range 1 + rng.IntN(40) {
			b.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		texts = append(texts, b.String())
	}
	url := "https://media.example.com/a/b?x=1&y=<2>"
	var cases []encodingCase
	for _, text := range texts {
		cases = append(cases,
			encodingCase{TaskSummarization, text, (*SummarizationOptions)(nil)},
			encodingCase{TaskSummarization, text, &SummarizationOptions{MaxLength: 200, Language: "pt-BR", Style: "bullets"}},
			encodingCase{TaskEmbedding, text, (*EmbeddingOptions)(nil)},
			encodingCase{TaskEmbedding, text, &EmbeddingOptions{Model: "text-embed-3<&>", Dimensions: 768}},
		)
	}
	cases = append(cases,
		encodingCase{TaskTranscription, url, (*TranscriptionOptions)(nil)},
		encodingCase{TaskTranscription, url, &TranscriptionOptions{Language: "en", Diarization: true, MaxSpeakers: 4}},
		encodingCase{TaskTranscription, url, &TranscriptionOptions{Diarization: true}},
	)
	for i, c := range cases {
		// Not validated: the texts include invalid UTF-8 and control
		// characters on purpose, which the encoders must still agree on.
		want, _ := bodyEncoders[0].enc(c.typ, 0, goldenID, created, "share<&>\u2028", c.text, c.opts)
		got, err := bodyEncoders[1].enc(c.typ, 0, goldenID, created, "share<&>\u2028", c.text, c.opts)
		if err != nil {
			t.Fatalf("case %d: encoding/json: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("case %d (%s, %q): encoding/json wrote\n%s\nthe hand-written encoder\n%s", i, c.typ, c.text, got, want)
		}
		marshalled, err := bodyEncoders[2].enc(c.typ, 0, goldenID, created, "share<&>\u2028", c.text, c.opts)
		if err != nil {
			t.Fatalf("case %d: json.Marshal: %v", i, err)
		}
		var a, b any
		if err := json.Unmarshal(want, &a); err != nil {
			t.Fatalf("case %d: hand-written body is not JSON: %v", i, err)
		}
		if err := json.Unmarshal(marshalled, &b); err != nil {
			t.Fatalf("case %d: json.Marshal body is not JSON: %v", i, err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("case %d (%s, %q): json.Marshal wrote another value:\n%s\nvs\n%s", i, c.typ, c.text, marshalled, want)
		}
	}
}

// encodingBenchCases are the typed bodies of the benchmarks: summarization
// and embedding with 1 KiB and 16 KiB of plain ASCII and of prose, and a
// transcription (its media URL is at most 4 KiB; a typical one is used).
func encodingBenchCases() []struct {
	name string
	c    encodingCase
} {
	sumOpts := &SummarizationOptions{MaxLength: 200, Language: "en"}
	embOpts := &EmbeddingOptions{Model: "text-embedding-3-small", Dimensions: 768}
	var out []struct {
		name string
		c    encodingCase
	}
	for _, typ := range []TaskType{TaskSummarization, TaskEmbedding} {
		var opts any = sumOpts
		if typ == TaskEmbedding {
			opts = embOpts
		}
		for _, size := range []int{1 << 10, 16 << 10} {
			for _, kind := range []string{"ascii", "text"} {
				text := encodingASCII(size)
				if kind == "text" {
					text = encodingText(size)
				}
				out = append(out, struct {
					name string
					c    encodingCase
				}{fmt.Sprintf("%s/%dKiB-%s", typ, size>>10, kind), encodingCase{typ, text, opts}})
			}
		}
	}
	out = append(out, struct {
		name string
		c    encodingCase
	}{"transcription/url", encodingCase{TaskTranscription,
		"https://media.example.com/recordings/2026/11/28/0190b6a2-7f1e-7c3a-9d2b-4e5f60718293.m4a?version=3",
		&TranscriptionOptions{Language: "en", Diarization: true, MaxSpeakers: 4}}})
	return out
}

// BenchmarkEncodeBody is the encoding of one typed body, as the typed
// methods do it once validation has given the size: hand-written, with
// encoding/json (the same bytes) and with json.Marshal (the same value).
// SetBytes is the content's (or URL's) length.
func BenchmarkEncodeBody(b *testing.B) {
	created := time.Date(2026, 11, 28, 4, 7, 25, 123456789, time.UTC)
	l := defaultTaskLimits()
	for _, bc := range encodingBenchCases() {
		size := bc.c.size(b, &l)
		for _, e := range bodyEncoders {
			b.Run(bc.name+"/"+e.name, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(bc.c.text)))
				for b.Loop() {
					if _, err := e.enc(bc.c.typ, size, goldenID, created, "share-123", bc.c.text, bc.c.opts); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkBodyCheck is the JSON syntax check of the generic Publish on a
// summarization body of 1 KiB and 16 KiB of prose: internal/jsonvalid
// against encoding/json.Valid, its exact replacement. (The rest of
// validateMessage, utf8.Valid and the first byte, is the same for both.)
func BenchmarkBodyCheck(b *testing.B) {
	created := time.Date(2026, 11, 28, 4, 7, 25, 123456789, time.UTC)
	opts := &SummarizationOptions{MaxLength: 200, Language: "en"}
	checks := []struct {
		name  string
		valid func([]byte) bool
	}{{"jsonvalid", jsonvalid.Valid}, {"encoding_json", json.Valid}}
	for _, size := range []int{1 << 10, 16 << 10} {
		body := appendSummarizationBody(nil, goldenID, created, "share-123", encodingText(size), opts)
		for _, c := range checks {
			b.Run(fmt.Sprintf("%dKiB/%s", size>>10, c.name), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(body)))
				for b.Loop() {
					if !c.valid(body) {
						b.Fatal("body refused")
					}
				}
			})
		}
	}
}

// processCPU returns the CPU time (user + system) this process has used.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// encodingProducer returns a connected Producer on a fresh fake broker,
// closed when the benchmark ends.
func encodingProducer(b *testing.B) (*mlproducertest.Broker, *Producer) {
	b.Helper()
	broker := mlproducertest.NewBroker()
	p, err := New(WithDialer(broker))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			b.Error(err)
		}
		broker.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitConnected(ctx); err != nil {
		b.Fatal(err)
	}
	return broker, p
}

// encodingPurgeEvery bounds what the fake broker keeps (it stores every
// message): 256 messages of 16 KiB are 4 MiB, so the live heap, and with it
// the GC's share, stays small and alike for every variant.
const encodingPurgeEvery = 256

// run64 runs publish from 64 goroutines until b.N calls are done, purging
// the fake broker every encodingPurgeEvery messages, and reports the process's CPU per
// message (cpu-ns/op: the Producer, the fake broker, the runtime and GC).
func run64(b *testing.B, broker *mlproducertest.Broker, publish func() (Receipt, error)) {
	b.ReportAllocs()
	b.SetParallelism((64 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	var n atomic.Int64
	b.ResetTimer()
	cpu := processCPU(b)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r, err := publish()
			if err == nil && r.State != Confirmed {
				err = fmt.Errorf("receipt %v, want confirmed", r.State)
			}
			if err != nil {
				b.Error(err)
				return
			}
			if n.Add(1)%encodingPurgeEvery == 0 {
				broker.Purge()
			}
		}
	})
	b.ReportMetric(float64(processCPU(b)-cpu)/float64(b.N), "cpu-ns/op")
}

// publishSummarizationWith is PublishSummarization with its encoder
// swapped (the same steps otherwise), for BenchmarkEncodePublish64.
func publishSummarizationWith(p *Producer, ctx context.Context, e bodyEncoder, shareID, content string, opts SummarizationOptions) (Receipt, error) {
	size, err := p.cfg.limits.validateSummarization(shareID, content, &opts)
	if err != nil {
		return Receipt{}, err
	}
	done, err := p.begin(ctx, TaskSummarization)
	if err != nil {
		return Receipt{}, err
	}
	id, err := newMessageID()
	if err != nil {
		p.abandon(done)
		return Receipt{}, err
	}
	now := time.Now()
	body, err := e.enc(TaskSummarization, size, id, now, shareID, content, &opts)
	if err != nil {
		p.abandon(done)
		return Receipt{}, err
	}
	return benchSubmit(p, ctx, done, id, TaskSummarization, body, now)
}

// publishWith is Publish with its JSON check swapped (the same steps
// otherwise), for BenchmarkBodyCheckPublish64.
func publishWith(p *Producer, ctx context.Context, valid func([]byte) bool, msg Message) (Receipt, error) {
	l := &p.cfg.limits
	switch {
	case !msg.Type.valid(), len(msg.Body) == 0, len(msg.Body) > l.bodyLimit(), !utf8.Valid(msg.Body),
		!valid(msg.Body), firstNonSpace(msg.Body) != '{':
		return Receipt{}, invalid("body", "refused")
	}
	body := bytes.Clone(msg.Body)
	done, err := p.begin(ctx, msg.Type)
	if err != nil {
		return Receipt{}, err
	}
	id, err := newMessageID()
	if err != nil {
		p.abandon(done)
		return Receipt{}, err
	}
	return benchSubmit(p, ctx, done, id, msg.Type, body, time.Now())
}

// benchSubmit is p.submit for the swapped publish paths above, the one
// place that follows submit's signature (with per-message metadata, issue
// 11 item 1, it takes a trailing *msgMeta: pass nil).
func benchSubmit(p *Producer, ctx context.Context, done func(error), id string, typ TaskType, body []byte, created time.Time) (Receipt, error) {
	return p.submit(ctx, done, id, typ, body, nil, created, nil)
}

// BenchmarkEncodePublish64 is PublishSummarization on the fake broker from
// 64 callers, with the hand-written encoder and with encoding/json (the same
// bytes): what the encoder changes in msg/s (ns/op) and client CPU per
// message (cpu-ns/op) at 64 callers.
func BenchmarkEncodePublish64(b *testing.B) {
	opts := SummarizationOptions{MaxLength: 200, Language: "en"}
	ctx := context.Background()
	for _, size := range []int{1 << 10, 16 << 10} {
		content := encodingASCII(size)
		for _, e := range bodyEncoders[:2] {
			b.Run(fmt.Sprintf("%dKiB/%s", size>>10, e.name), func(b *testing.B) {
				broker, p := encodingProducer(b)
				b.SetBytes(int64(size))
				run64(b, broker, func() (Receipt, error) {
					return publishSummarizationWith(p, ctx, e, "share-123", content, opts)
				})
			})
		}
	}
}

// BenchmarkBodyCheckPublish64 is Publish of a prebuilt summarization body
// (1 KiB and 16 KiB of content) on the fake broker from 64 callers, with the
// JSON check of internal/jsonvalid and with encoding/json.Valid.
func BenchmarkBodyCheckPublish64(b *testing.B) {
	created := time.Date(2026, 11, 28, 4, 7, 25, 123456789, time.UTC)
	opts := &SummarizationOptions{MaxLength: 200, Language: "en"}
	ctx := context.Background()
	checks := []struct {
		name  string
		valid func([]byte) bool
	}{{"jsonvalid", jsonvalid.Valid}, {"encoding_json", json.Valid}}
	for _, size := range []int{1 << 10, 16 << 10} {
		msg := Message{Type: TaskSummarization,
			Body: appendSummarizationBody(nil, goldenID, created, "share-123", encodingASCII(size), opts)}
		for _, c := range checks {
			b.Run(fmt.Sprintf("%dKiB/%s", size>>10, c.name), func(b *testing.B) {
				broker, p := encodingProducer(b)
				b.SetBytes(int64(len(msg.Body)))
				run64(b, broker, func() (Receipt, error) { return publishWith(p, ctx, c.valid, msg) })
			})
		}
	}
}
