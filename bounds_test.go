package mlproducer

// Size limits and decoding of untrusted bodies: the BOUND findings of the
// security review (issue 9, item 13), adapted from its reproductions
// sec_amplify_test.go and sec_decode_test.go.

import (
	"errors"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// assertTooLarge fails t unless err is an *InvalidTaskError for field that
// wraps ErrTooLarge (and so ErrInvalidTask) and whose reason gives each of
// the numbers in figures.
func assertTooLarge(t testing.TB, err error, field string, figures ...int) {
	t.Helper()
	assertInvalid(t, err, field)
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("errors.Is(%v, ErrTooLarge) = false", err)
	}
	for _, n := range figures {
		if !strings.Contains(err.Error(), strconv.Itoa(n)) {
			t.Errorf("error %q does not say %d", err, n)
		}
	}
}

// TestTypedBodyLimit: content within its own limit can still grow past the
// body limit once escaped as JSON (a control character takes 6 bytes, a
// quote 2). The typed validators refuse it, naming the content, before the
// body is built; Publish refuses the same body built by hand.
func TestTypedBodyLimit(t *testing.T) {
	l := defaultTaskLimits()
	limit := l.bodyLimit()
	created := time.Now()
	for name, content := range map[string]string{
		"control": strings.Repeat("\x01", l.maxContent),
		"quote":   strings.Repeat(`"`, l.maxContent),
		"newline": "x" + strings.Repeat("\n", l.maxContent-1),
		"u2028":   "x" + strings.Repeat("\u2028", l.maxContent/3-1),
		"mixed":   strings.Repeat("a\"\\\x1f", l.maxContent/4),
	} {
		t.Run(name, func(t *testing.T) {
			body := appendSummarizationBody(nil, goldenID, created, "s", content, nil)
			if len(body) <= limit {
				t.Fatalf("test content makes a body of %d bytes, within the limit", len(body))
			}
			_, err := l.validateSummarization("s", content, nil)
			assertTooLarge(t, err, "content", len(body), limit)
			_, err = l.validateEmbedding("s", content, nil)
			assertTooLarge(t, err, "content", len(appendEmbeddingBody(nil, goldenID, created, "s", content, nil)), limit)
			assertTooLarge(t, l.validateMessage(&Message{Type: TaskSummarization, Body: body}), "body", limit)
		})
	}

	// At the limit exactly, accepted; one byte over, refused. A Producer's
	// limits leave 64 KiB for the rest of the body; these do not, to put
	// the boundary where content of any length can reach it.
	small := taskLimits{maxContent: 4096, maxBody: 2048}
	content := strings.Repeat("\"\n\x00", 100)
	content += strings.Repeat("x", 2048-len(appendSummarizationBody(nil, goldenID, created, "s", content, nil)))
	if n, err := small.validateSummarization("s", content, nil); err != nil || n != 2048 {
		t.Errorf("body of 2048 bytes at a limit of 2048: %d, %v", n, err)
	}
	_, err := small.validateSummarization("s", content+"x", nil)
	assertTooLarge(t, err, "content", 2049, 2048)
	_, err = small.validateSummarization("s", content+`"`, nil)
	assertTooLarge(t, err, "content", 2050, 2048)
	_, err = small.validateEmbedding("s", content+"\x01", nil)
	assertTooLarge(t, err, "content")
	tiny := taskLimits{maxBody: 200}
	_, err = tiny.validateTranscription("s", "https://h/"+strings.Repeat("a", 100), nil)
	assertTooLarge(t, err, "mediaUrl")

	// Content over its own limit is too large too; a long share id is not
	// a size problem but a malformed id.
	_, err = l.validateSummarization("s", strings.Repeat("a", l.maxContent+1), nil)
	assertTooLarge(t, err, "content", l.maxContent)
	_, err = l.validateSummarization(strings.Repeat("s", 257), "c", nil)
	assertInvalid(t, err, "shareId")
	if errors.Is(err, ErrTooLarge) {
		t.Errorf("a long share id wraps ErrTooLarge: %v", err)
	}
	if !errors.Is(ErrTooLarge, ErrInvalidTask) {
		t.Error("ErrTooLarge does not wrap ErrInvalidTask")
	}
}

// TestValidatorBodyLen: the *BodyLen functions give the length of the body
// the encoder writes, and the capacity a validator returns holds the body
// in one allocation: exactly when it counted the escapes of large content,
// with room to spare for a few escapes otherwise.
func TestValidatorBodyLen(t *testing.T) {
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := goldenCases()
	cases = append(cases,
		goldenCase{typ: TaskSummarization, shareID: "a\"\\\u2028é", text: "\x00\x1f\"\\\n\u2029 \xff",
			sum: &SummarizationOptions{MaxLength: 10000, Language: "x-a", Style: "headline"}},
		goldenCase{typ: TaskSummarization, shareID: "s", text: "t", sum: &SummarizationOptions{MaxLength: 1}},
		goldenCase{typ: TaskSummarization, shareID: "s", text: "t", sum: &SummarizationOptions{Style: "bullets"}},
		goldenCase{typ: TaskTranscription, shareID: "s", text: "gs://b/k", trans: &TranscriptionOptions{Diarization: true}},
		goldenCase{typ: TaskTranscription, shareID: "s", text: "http://h/\"", trans: &TranscriptionOptions{MaxSpeakers: 9, Diarization: true}},
		goldenCase{typ: TaskEmbedding, shareID: "s", text: "t", emb: &EmbeddingOptions{Model: `a"b\c`}},
		goldenCase{typ: TaskEmbedding, shareID: "s", text: "t", emb: &EmbeddingOptions{Dimensions: 8192}},
	)
	for _, g := range cases {
		body := g.encode(nil, goldenID, created)
		if n := g.bodyLen(goldenID); n != len(body) {
			t.Errorf("bodyLen %d, wrote %d bytes: %s", n, len(body), body)
		}
		n, err := g.validate()
		if g.text == "\x00\x1f\"\\\n\u2029 \xff" {
			assertInvalid(t, err, "content") // invalid UTF-8
			continue
		}
		if err != nil {
			t.Fatalf("%+v: %v", g, err)
		}
		if len(body) > n || n > len(body)+len(body)/16+1 {
			t.Errorf("capacity %d for a body of %d bytes: %s", n, len(body), body)
		}
	}
	// Large content (the escapes are counted): exact.
	l := defaultTaskLimits()
	for _, content := range []string{strings.Repeat("a", 200<<10), strings.Repeat("a\n", 100<<10), strings.Repeat("\x01a", 100<<10)} {
		n, err := l.validateSummarization("s", content, nil)
		if err != nil {
			t.Fatal(err)
		}
		if body := appendSummarizationBody(nil, goldenID, created, "s", content, nil); len(body) != n {
			t.Errorf("capacity %d for a body of %d bytes", n, len(body))
		}
	}
	for _, v := range []int{0, 1, 9, 10, 99, 100, -1, -9, -10, 1 << 40, -1 << 40} {
		if got, want := intLen(v), len(strconv.Itoa(v)); got != want {
			t.Errorf("intLen(%d) = %d, want %d", v, got, want)
		}
	}
}

// TestDecodeTaskSizeCap: a consumer reads whatever is in the queue, so
// DecodeTask refuses a body over the producer's body limit before reading
// it; the producer's options give the same limit to both sides.
func TestDecodeTaskSizeCap(t *testing.T) {
	if l := defaultTaskLimits(); DefaultMaxBodyBytes != l.bodyLimit() {
		t.Fatalf("DefaultMaxBodyBytes = %d, the producer's default body limit is %d", DefaultMaxBodyBytes, l.bodyLimit())
	}
	// A valid body of exactly n bytes: the content at its default limit,
	// then whitespace.
	padded := func(n int) []byte {
		b := appendSummarizationBody(nil, goldenID, goldenTime(), "s", strings.Repeat("c", defaultMaxContent), nil)
		b = b[:len(b)-1] // before the closing brace
		return append(append(b, strings.Repeat(" ", n-len(b)-1)...), '}')
	}
	if _, err := DecodeTask(padded(DefaultMaxBodyBytes)); err != nil {
		t.Errorf("body at the limit: %v", err)
	}
	over := padded(DefaultMaxBodyBytes + 1)
	_, err := DecodeTask(over)
	assertTooLarge(t, err, "body", len(over), DefaultMaxBodyBytes)
	if !strings.Contains(err.Error(), "WithMaxContentBytes") {
		t.Errorf("the error does not say what to do: %v", err)
	}
	if _, err := DecodeTask(over, WithMaxContentBytes(2<<20)); err != nil {
		t.Errorf("with the producer's WithMaxContentBytes(2 MiB): %v", err)
	}
	// The content limit applies as the producer applies it.
	big := appendSummarizationBody(nil, goldenID, goldenTime(), "s", strings.Repeat("c", defaultMaxContent+1), nil)
	_, err = DecodeTask(big, WithMaxContentBytes(2<<20))
	if err != nil {
		t.Errorf("content of 1 MiB + 1 with a 2 MiB limit: %v", err)
	}
	_, err = DecodeTask(big, WithMaxContentBytes(defaultMaxContent), WithURLs("amqp://ignored/"))
	assertTooLarge(t, err, "content", defaultMaxContent)

	// An option New refuses is an *OptionError.
	for _, opt := range []Option{WithMaxContentBytes(0), WithMediaURLSchemes()} {
		_, err := DecodeTask(big, opt)
		var oe *OptionError
		if !errors.As(err, &oe) || !errors.Is(err, ErrInvalidOption) {
			t.Errorf("bad option: %T %v", err, err)
		}
	}
}

// decodeShapes returns makers of hostile bodies of about n bytes, from the
// security review and beyond: some made the old decoder allocate up to 18
// times their size.
func decodeShapes() map[string]func(n int) []byte {
	return map[string]func(n int) []byte{
		"plain_content": func(n int) []byte {
			return appendSummarizationBody(nil, goldenID, goldenTime(), "s", strings.Repeat("c", n-256), nil)
		},
		"many_distinct_unknown_keys": func(n int) []byte {
			b := []byte(secHead)
			for i := 0; len(b) < n; i++ {
				b = append(strconv.AppendInt(append(b, '"'), int64(i), 16), `":0,`...)
			}
			return append(b, `"content":"c"}`...)
		},
		"many_unknown_options": func(n int) []byte {
			b := []byte(`{"version":1,"type":"summarization","messageId":"m","shareId":"s","content":"c","createdAt":"2026-01-02T03:04:05Z","options":{`)
			for i := 0; len(b) < n; i++ {
				b = append(strconv.AppendInt(append(b, '"'), int64(i), 16), `":0,`...)
			}
			return append(b, `"style":""}}`...)
		},
		"duplicate_content_keys": func(n int) []byte {
			return []byte(secHead + strings.Repeat(`"content":"c",`, n/14) + `"content":"c"}`)
		},
		"deep_nesting_in_options_value": func(n int) []byte {
			d := min(n/2, 9997) // as deep as valid JSON goes
			return []byte(strings.Replace(secHead, `"options":{}`, `"options":{"maxLength":`+strings.Repeat("[", d)+strings.Repeat("]", d)+`}`, 1) + `"content":"c"}`)
		},
		"deep_nesting_in_unknown": func(n int) []byte {
			d := min(n/2, 9998)
			return []byte(secHead + `"zz":` + strings.Repeat("[", d) + strings.Repeat("]", d) + `,"content":"c"}`)
		},
		"escaped_content": func(n int) []byte {
			return []byte(secHead + `"content":"` + strings.Repeat(`\u00e9`, n/6) + `"}`)
		},
		"escaped_keys": func(n int) []byte {
			return []byte(secHead + `"` + strings.Repeat(`\u0063`, n/6) + `":0,"content":"c"}`)
		},
		"long_fraction_createdAt": func(n int) []byte {
			return []byte(strings.Replace(secHead, `05Z`, `05.`+strings.Repeat("1", n)+`Z`, 1) + `"content":"c"}`)
		},
		"long_number": func(n int) []byte {
			return []byte(strings.Replace(secHead, `"options":{}`, `"options":{"maxLength":1`+strings.Repeat("0", n)+`}`, 1) + `"content":"c"}`)
		},
		"many_empty_arrays_in_unknown": func(n int) []byte {
			return []byte(secHead + `"zz":[` + strings.Repeat("[],", n/3) + `[]],"content":"c"}`)
		},
		"whitespace": func(n int) []byte {
			return []byte(strings.Replace(secHead, `"options":{}`, `"options":{`+strings.Repeat(" ", n)+`}`, 1) + `"content":"c"}`)
		},
	}
}

const secHead = `{"version":1,"type":"summarization","messageId":"m","shareId":"s","options":{},"createdAt":"2026-01-02T03:04:05Z",`

// allocated returns the bytes f allocates: the first run within bound, or
// the least of three (other goroutines of the test binary may allocate
// meanwhile).
func allocated(f func(), bound uint64) uint64 {
	least := ^uint64(0)
	for range 3 {
		var a, b runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&a)
		f()
		runtime.ReadMemStats(&b)
		if least = min(least, b.TotalAlloc-a.TotalAlloc); least <= bound {
			break
		}
	}
	return least
}

// TestDecodeTaskAllocation: whatever the shape of a body, DecodeTask
// allocates at most about its size (the decoded strings, a copy of the
// options), at the default limit and at a larger one. The bound is loose
// (3 times the input, plus 64 KiB) so that it does not depend on the
// runtime's size classes; the old decoder needed up to 18 times.
func TestDecodeTaskAllocation(t *testing.T) {
	for _, tc := range []struct {
		n    int
		opts []Option
	}{
		{1 << 20, nil},
		{3 << 20, []Option{WithMaxContentBytes(3 << 20)}},
	} {
		for name, shape := range decodeShapes() {
			body := shape(tc.n)
			if len(body) > 2*tc.n {
				t.Fatalf("%s: %d bytes for %d", name, len(body), tc.n)
			}
			var err error
			bound := 3*uint64(len(body)) + 64<<10
			got := allocated(func() { _, err = DecodeTask(body, tc.opts...) }, bound)
			if errors.Is(err, ErrTooLarge) {
				t.Fatalf("%s: %d bytes refused as too large; the test measures nothing", name, len(body))
			}
			t.Logf("%-30s %9d bytes in, %9d allocated (%.2fx)", name, len(body), got, float64(got)/float64(len(body)))
			if got > bound {
				t.Errorf("%s: %d bytes in, %d allocated (%.1fx), want at most %d (err %v)", name, len(body), got, float64(got)/float64(len(body)), bound, err)
			}
		}
	}
}

// TestSecDecodeTaskSemantics: bodies whose meaning depends on the parser, or
// that the producer would never have sent, and what DecodeTask decides.
func TestSecDecodeTaskSemantics(t *testing.T) {
	const (
		tail  = `,"options":{},"createdAt":"2026-01-02T03:04:05Z"}`
		sum   = `{"version":1,"type":"summarization","messageId":"m","shareId":"s",`
		trans = `{"version":1,"type":"transcription","messageId":"m","shareId":"s",`
	)
	cases := []struct {
		name  string
		body  string
		field string // "" means accepted
		opts  []Option
		check func(Task) bool
	}{
		// A repeated key means the first, the last, or an error, depending
		// on the parser: refused, whichever copy is wrong.
		{name: "dup_type", body: trans + `"mediaUrl":"https://h/x","type":"transcription"` + tail, field: "type"},
		{name: "dup_option_first_out_of_range", body: sum + `"content":"c","options":{"maxLength":999999999,"maxLength":5},"createdAt":"2026-01-02T03:04:05Z"}`, field: "options.maxLength"},
		{name: "dup_shareId_second_has_control", body: `{"version":1,"type":"summarization","messageId":"m","shareId":"a\nb","shareId":"ok","content":"c"` + tail, field: "shareId"},
		{name: "dup_key_escaped", body: sum + `"content":"c","\u0063ontent":"d"` + tail, field: "content"},
		{name: "dup_version", body: `{"version":2,"version":1,"type":"embedding","messageId":"m","shareId":"s","content":"c"` + tail, field: "version"},
		// Keys are compared once unescaped, so an escaped key is the key.
		{name: "escaped_key", body: sum + `"\u0063ontent":"c"` + tail, check: func(t Task) bool { return t.Content == "c" }},
		// Text that is not Unicode: refused, where encoding/json would
		// substitute U+FFFD silently.
		{name: "lone_surrogate_content", body: sum + `"content":"\ud800"` + tail, field: "content"},
		{name: "lone_surrogate_shareId", body: `{"version":1,"type":"summarization","messageId":"m","shareId":"a\udc00","content":"c"` + tail, field: "shareId"},
		{name: "lone_surrogate_key", body: sum + `"\ud800":1,"content":"c"` + tail, field: `\ud800`},
		{name: "surrogate_pair", body: sum + `"content":"\ud83d\ude00"` + tail, check: func(t Task) bool { return t.Content == "\U0001F600" }},
		// The producer's rules: what it accepts is accepted, with the same
		// limits.
		{name: "nul_in_content", body: sum + `"content":"a\u0000b"` + tail, check: func(t Task) bool { return t.Content == "a\x00b" }},
		{name: "bidi_override_shareId", body: `{"version":1,"type":"summarization","messageId":"m","shareId":"user\u202egnp.exe","content":"c"` + tail,
			check: func(t Task) bool { return t.ShareID == "user\u202egnp.exe" }},
		{name: "shareId_control_c1", body: `{"version":1,"type":"summarization","messageId":"m","shareId":"a\u0085","content":"c"` + tail, field: "shareId"},
		{name: "shareId_too_long", body: `{"version":1,"type":"summarization","messageId":"m","shareId":"` + strings.Repeat("s", 257) + `","content":"c"` + tail, field: "shareId"},
		{name: "media_file_scheme", body: trans + `"mediaUrl":"file://localhost/etc/shadow"` + tail, field: "mediaUrl"},
		{name: "media_gopher_internal", body: trans + `"mediaUrl":"gopher://127.0.0.1:6379/_FLUSHALL"` + tail, field: "mediaUrl"},
		{name: "media_javascript", body: trans + `"mediaUrl":"javascript://x/%0aalert(1)"` + tail, field: "mediaUrl"},
		{name: "media_scheme_configured", body: trans + `"mediaUrl":"ftp://h/a.mp3"` + tail, opts: []Option{WithMediaURLSchemes("ftp")},
			check: func(t Task) bool { return t.MediaURL == "ftp://h/a.mp3" }},
		{name: "media_https_refused_when_not_configured", body: trans + `"mediaUrl":"https://h/a.mp3"` + tail, opts: []Option{WithMediaURLSchemes("s3")}, field: "mediaUrl"},
		{name: "maxLength_exponent", body: sum + `"content":"c","options":{"maxLength":1e2},"createdAt":"2026-01-02T03:04:05Z"}`, field: "options.maxLength"},
		{name: "maxLength_huge", body: sum + `"content":"c","options":{"maxLength":` + strings.Repeat("9", 40) + `},"createdAt":"2026-01-02T03:04:05Z"}`, field: "options.maxLength"},
		{name: "maxLength_minus_zero", body: sum + `"content":"c","options":{"maxLength":-0},"createdAt":"2026-01-02T03:04:05Z"}`, check: func(t Task) bool { return string(t.Options) == `{"maxLength":-0}` }},
		{name: "diarization_string", body: trans + `"mediaUrl":"https://h/x","options":{"diarization":"true"},"createdAt":"2026-01-02T03:04:05Z"}`, field: "options.diarization"},
		{name: "options_with_space", body: sum + `"content":"c","options":{ "style" : "bullets" },"createdAt":"2026-01-02T03:04:05Z"}`,
			check: func(t Task) bool { return string(t.Options) == `{ "style" : "bullets" }` }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			task, err := DecodeTask([]byte(tc.body), tc.opts...)
			if tc.field != "" {
				assertInvalid(t, err, tc.field)
				return
			}
			if err != nil {
				t.Fatalf("DecodeTask: %v", err)
			}
			if !tc.check(task) {
				t.Errorf("decoded %+v", task)
			}
		})
	}
	// The options are a copy: the caller may reuse the body's buffer.
	body := []byte(sum + `"content":"c","options":{"style":"bullets"},"createdAt":"2026-01-02T03:04:05Z"}`)
	task, err := DecodeTask(body)
	if err != nil {
		t.Fatal(err)
	}
	for i := range body {
		body[i] = 'x'
	}
	if string(task.Options) != `{"style":"bullets"}` {
		t.Errorf("options changed with the body: %s", task.Options)
	}
}
