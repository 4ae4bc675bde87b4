package mlproducer

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/mlproducer/mlproducer/internal/jsonvalid"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden from the encoder's output")

const (
	goldenID   = "01890a5d-ac96-774b-bcce-b302099a8057"
	schemaPath = "testdata/task.schema.json"
)

// errOf returns the error of a validator, dropping the body length.
func errOf(_ int, err error) error { return err }

func goldenTime() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC) }

// assertInvalid fails t unless err is an *InvalidTaskError for field that
// wraps ErrInvalidTask.
func assertInvalid(t testing.TB, err error, field string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want an invalid %q", field)
	}
	if !errors.Is(err, ErrInvalidTask) {
		t.Errorf("errors.Is(%v, ErrInvalidTask) = false", err)
	}
	var ite *InvalidTaskError
	if !errors.As(err, &ite) {
		t.Fatalf("errors.As(%v, *InvalidTaskError) = false", err)
	}
	if ite.Field != field {
		t.Errorf("Field = %q, want %q (error: %v)", ite.Field, field, err)
	}
	if ite.Reason == "" {
		t.Errorf("empty Reason for %q", field)
	}
}

// checkWellFormed fails t unless err, if not nil, is an *InvalidTaskError
// with a field and a reason, wrapping ErrInvalidTask.
func checkWellFormed(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var ite *InvalidTaskError
	if !errors.Is(err, ErrInvalidTask) || !errors.As(err, &ite) || ite.Field == "" || ite.Reason == "" {
		t.Fatalf("malformed error %T %v", err, err)
	}
}

func TestTaskTypeRoutingKey(t *testing.T) {
	for _, tc := range []struct {
		typ   TaskType
		key   string
		valid bool
	}{
		{TaskSummarization, "ml.summarization", true},
		{TaskTranscription, "ml.transcription", true},
		{TaskEmbedding, "ml.embedding", true},
		{"", "", false},
		{"Summarization", "", false},
		{"translation", "", false},
	} {
		if got := tc.typ.RoutingKey(); got != tc.key {
			t.Errorf("%q.RoutingKey() = %q, want %q", tc.typ, got, tc.key)
		}
		if got := tc.typ.valid(); got != tc.valid {
			t.Errorf("%q.valid() = %v, want %v", tc.typ, got, tc.valid)
		}
	}
	typ := TaskType(strings.Clone("embedding"))
	if n := testing.AllocsPerRun(100, func() { _ = typ.RoutingKey() }); n != 0 {
		t.Errorf("RoutingKey allocates %v times", n)
	}
}

func TestDefaultTaskLimits(t *testing.T) {
	l := defaultTaskLimits()
	if l.maxShareID != 256 || l.maxContent != 1<<20 || l.maxBody != 1<<20+64<<10 {
		t.Errorf("defaultTaskLimits() = %+v", l)
	}
	want := []string{"https", "http", "s3", "gs"}
	if strings.Join(l.mediaSchemes, ",") != strings.Join(want, ",") {
		t.Errorf("mediaSchemes = %v, want %v", l.mediaSchemes, want)
	}
	l.mediaSchemes[0] = "ftp"
	if defaultTaskLimits().mediaSchemes[0] != "https" {
		t.Error("defaultTaskLimits shares its scheme slice between calls")
	}
}

// validCase is an input that must be accepted (field == "") or refused
// with an error naming field.
type summarizationCase struct {
	name    string
	shareID string
	content string
	opts    *SummarizationOptions
	field   string
}

func TestValidateSummarization(t *testing.T) {
	l := defaultTaskLimits()
	cases := []summarizationCase{
		{name: "minimal", shareID: "s", content: "x"},
		{name: "nil options", shareID: "share-1", content: "text", opts: nil},
		{name: "zero options", shareID: "share-1", content: "text", opts: &SummarizationOptions{}},
		{name: "unicode share id", shareID: "partage-é-日本", content: "texte"},
		{name: "share id at limit", shareID: strings.Repeat("a", 256), content: "x"},
		{name: "content at limit", shareID: "s", content: strings.Repeat("a", 1<<20)},
		{name: "content with spaces around", shareID: "s", content: "  \n text \t"},
		{name: "content with controls", shareID: "s", content: "a\x00b\x1f\u2028"},
		{name: "all options", shareID: "s", content: "x", opts: &SummarizationOptions{MaxLength: 10000, Language: "pt-BR", Style: "headline"}},
		{name: "maxLength 1", shareID: "s", content: "x", opts: &SummarizationOptions{MaxLength: 1}},
		{name: "style paragraph", shareID: "s", content: "x", opts: &SummarizationOptions{Style: "paragraph"}},
		{name: "style bullets", shareID: "s", content: "x", opts: &SummarizationOptions{Style: "bullets"}},
		{name: "language script region", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "zh-Hant-TW"}},
		{name: "language upper", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "EN"}},
		{name: "language private use", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "x-klingon"}},
		{name: "language grandfathered", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "i-klingon"}},
		{name: "language 35 chars", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "en-" + strings.Repeat("abcdefg-", 4)[:31] + "a"}},

		{name: "empty share id", shareID: "", content: "x", field: "shareId"},
		{name: "long share id", shareID: strings.Repeat("a", 257), content: "x", field: "shareId"},
		{name: "share id bad utf8", shareID: "a\xffb", content: "x", field: "shareId"},
		{name: "share id newline", shareID: "a\nb", content: "x", field: "shareId"},
		{name: "share id NUL", shareID: "a\x00", content: "x", field: "shareId"},
		{name: "share id DEL", shareID: "a\x7f", content: "x", field: "shareId"},
		{name: "share id C1", shareID: "a\u0085", content: "x", field: "shareId"},
		{name: "share id blank", shareID: "   ", content: "x", field: "shareId"},
		{name: "empty content", shareID: "s", content: "", field: "content"},
		{name: "blank content", shareID: "s", content: " \n\t\r\u3000", field: "content"},
		{name: "content bad utf8", shareID: "s", content: "ok \xfe\xff", field: "content"},
		{name: "content truncated rune", shareID: "s", content: "日本"[:4], field: "content"},
		{name: "content too long", shareID: "s", content: strings.Repeat("a", 1<<20+1), field: "content"},
		{name: "maxLength negative", shareID: "s", content: "x", opts: &SummarizationOptions{MaxLength: -1}, field: "options.maxLength"},
		{name: "maxLength too big", shareID: "s", content: "x", opts: &SummarizationOptions{MaxLength: 10001}, field: "options.maxLength"},
		{name: "style unknown", shareID: "s", content: "x", opts: &SummarizationOptions{Style: "long"}, field: "options.style"},
		{name: "style case", shareID: "s", content: "x", opts: &SummarizationOptions{Style: "Bullets"}, field: "options.style"},
		{name: "language one letter", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "e"}, field: "options.language"},
		{name: "language underscore", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "en_US"}, field: "options.language"},
		{name: "language trailing dash", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "en-"}, field: "options.language"},
		{name: "language leading dash", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "-en"}, field: "options.language"},
		{name: "language double dash", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "en--US"}, field: "options.language"},
		{name: "language bare x", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "x"}, field: "options.language"},
		{name: "language digit first", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "1en"}, field: "options.language"},
		{name: "language long subtag", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "en-abcdefghi"}, field: "options.language"},
		{name: "language 36 chars", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "en-" + strings.Repeat("abcdefg-", 5)[:32] + "a"}, field: "options.language"},
		{name: "language non-ascii", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "日本"}, field: "options.language"},
		{name: "language space", shareID: "s", content: "x", opts: &SummarizationOptions{Language: "en US"}, field: "options.language"},
		// The first bad field is reported.
		{name: "share id before content", shareID: "", content: "", field: "shareId"},
		{name: "content before options", shareID: "s", content: "", opts: &SummarizationOptions{MaxLength: -1}, field: "content"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := l.validateSummarization(tc.shareID, tc.content, tc.opts)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			assertInvalid(t, err, tc.field)
		})
	}
}

func TestValidateTranscription(t *testing.T) {
	l := defaultTaskLimits()
	diar := func(n int) *TranscriptionOptions { return &TranscriptionOptions{Diarization: true, MaxSpeakers: n} }
	cases := []struct {
		name     string
		shareID  string
		mediaURL string
		opts     *TranscriptionOptions
		field    string
	}{
		{name: "https", shareID: "s", mediaURL: "https://media.example.com/a.mp3"},
		{name: "http with port", shareID: "s", mediaURL: "http://203.0.113.7:8080/a.mp3?x=1#t=10"},
		{name: "scheme case", shareID: "s", mediaURL: "HTTPS://Example.COM/a.mp3"},
		{name: "s3 bucket", shareID: "s", mediaURL: "s3://bucket/key/a.wav"},
		{name: "gs bucket", shareID: "s", mediaURL: "gs://bucket/a.wav"},
		{name: "ipv6 host", shareID: "s", mediaURL: "https://[2001:db8::1]:443/a"},
		{name: "url at limit", shareID: "s", mediaURL: "https://h/" + strings.Repeat("a", 4096-len("https://h/"))},
		{name: "all options", shareID: "s", mediaURL: "https://h/a", opts: &TranscriptionOptions{Language: "en-US", Diarization: true, MaxSpeakers: 32}},
		{name: "diarization alone", shareID: "s", mediaURL: "https://h/a", opts: &TranscriptionOptions{Diarization: true}},
		{name: "one speaker", shareID: "s", mediaURL: "https://h/a", opts: diar(1)},

		{name: "empty share id", shareID: "", mediaURL: "https://h/a", field: "shareId"},
		{name: "empty url", shareID: "s", mediaURL: "", field: "mediaUrl"},
		{name: "relative", shareID: "s", mediaURL: "recordings/a.mp3", field: "mediaUrl"},
		{name: "absolute path", shareID: "s", mediaURL: "/recordings/a.mp3", field: "mediaUrl"},
		{name: "protocol relative", shareID: "s", mediaURL: "//host/a.mp3", field: "mediaUrl"},
		{name: "ftp", shareID: "s", mediaURL: "ftp://host/a.mp3", field: "mediaUrl"},
		{name: "file", shareID: "s", mediaURL: "file:///etc/passwd", field: "mediaUrl"},
		{name: "javascript", shareID: "s", mediaURL: "javascript:alert(1)", field: "mediaUrl"},
		{name: "user and password", shareID: "s", mediaURL: "https://alice:s3cret@host/a.mp3", field: "mediaUrl"},
		{name: "user only", shareID: "s", mediaURL: "https://token@host/a.mp3", field: "mediaUrl"},
		{name: "empty userinfo", shareID: "s", mediaURL: "https://@host/a.mp3", field: "mediaUrl"},
		{name: "no host", shareID: "s", mediaURL: "https:///a.mp3", field: "mediaUrl"},
		{name: "port only", shareID: "s", mediaURL: "https://:443/a.mp3", field: "mediaUrl"},
		{name: "s3 no bucket", shareID: "s", mediaURL: "s3:///key", field: "mediaUrl"},
		{name: "opaque", shareID: "s", mediaURL: "https:host/a.mp3", field: "mediaUrl"},
		{name: "unparsable", shareID: "s", mediaURL: "http://[::1/a", field: "mediaUrl"},
		{name: "control char", shareID: "s", mediaURL: "https://host/a\x00.mp3", field: "mediaUrl"},
		{name: "bad utf8", shareID: "s", mediaURL: "https://host/\xff", field: "mediaUrl"},
		{name: "too long", shareID: "s", mediaURL: "https://h/" + strings.Repeat("a", 4097-len("https://h/")), field: "mediaUrl"},
		{name: "language", shareID: "s", mediaURL: "https://h/a", opts: &TranscriptionOptions{Language: "english language"}, field: "options.language"},
		{name: "speakers negative", shareID: "s", mediaURL: "https://h/a", opts: diar(-1), field: "options.maxSpeakers"},
		{name: "speakers too many", shareID: "s", mediaURL: "https://h/a", opts: diar(33), field: "options.maxSpeakers"},
		{name: "speakers without diarization", shareID: "s", mediaURL: "https://h/a", opts: &TranscriptionOptions{MaxSpeakers: 2}, field: "options.maxSpeakers"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := l.validateTranscription(tc.shareID, tc.mediaURL, tc.opts)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			assertInvalid(t, err, tc.field)
			if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "token") {
				t.Errorf("error repeats the URL's credentials: %v", err)
			}
		})
	}
}

func TestValidateEmbedding(t *testing.T) {
	l := defaultTaskLimits()
	cases := []struct {
		name    string
		shareID string
		content string
		opts    *EmbeddingOptions
		field   string
	}{
		{name: "minimal", shareID: "s", content: "x"},
		{name: "all options", shareID: "s", content: "x", opts: &EmbeddingOptions{Model: "text-embedding-3-small", Dimensions: 1536}},
		{name: "model with slash", shareID: "s", content: "x", opts: &EmbeddingOptions{Model: "BAAI/bge-m3"}},
		{name: "model at limit", shareID: "s", content: "x", opts: &EmbeddingOptions{Model: strings.Repeat("m", 128)}},
		{name: "dimensions limits", shareID: "s", content: "x", opts: &EmbeddingOptions{Dimensions: 8192}},
		{name: "dimensions one", shareID: "s", content: "x", opts: &EmbeddingOptions{Dimensions: 1}},

		{name: "empty share id", shareID: "", content: "x", field: "shareId"},
		{name: "share id tab", shareID: "a\tb", content: "x", field: "shareId"},
		{name: "empty content", shareID: "s", content: "", field: "content"},
		{name: "blank content", shareID: "s", content: "\n\n", field: "content"},
		{name: "content bad utf8", shareID: "s", content: "\xc3", field: "content"},
		{name: "model space", shareID: "s", content: "x", opts: &EmbeddingOptions{Model: "my model"}, field: "options.model"},
		{name: "model tab", shareID: "s", content: "x", opts: &EmbeddingOptions{Model: "m\t"}, field: "options.model"},
		{name: "model non-ascii", shareID: "s", content: "x", opts: &EmbeddingOptions{Model: "modèle"}, field: "options.model"},
		{name: "model too long", shareID: "s", content: "x", opts: &EmbeddingOptions{Model: strings.Repeat("m", 129)}, field: "options.model"},
		{name: "dimensions negative", shareID: "s", content: "x", opts: &EmbeddingOptions{Dimensions: -1}, field: "options.dimensions"},
		{name: "dimensions too big", shareID: "s", content: "x", opts: &EmbeddingOptions{Dimensions: 8193}, field: "options.dimensions"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := l.validateEmbedding(tc.shareID, tc.content, tc.opts)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			assertInvalid(t, err, tc.field)
		})
	}
}

func TestValidateMessage(t *testing.T) {
	l := defaultTaskLimits()
	body := []byte(`{"version":1}`)
	cases := []struct {
		name  string
		msg   *Message
		field string
	}{
		{name: "no id", msg: &Message{Type: TaskSummarization, Body: body}},
		{name: "uuid id", msg: &Message{Type: TaskTranscription, ID: goldenID, Body: body}},
		{name: "id at limit", msg: &Message{Type: TaskEmbedding, ID: strings.Repeat("~", 128), Body: body}},
		{name: "body with spaces", msg: &Message{Type: TaskEmbedding, Body: []byte(" \n{ } \t")}},
		{name: "body at limit", msg: &Message{Type: TaskEmbedding, Body: bigObject(1<<20 + 64<<10)}},

		{name: "nil", msg: nil, field: "body"},
		{name: "no type", msg: &Message{Body: body}, field: "type"},
		{name: "unknown type", msg: &Message{Type: "translation", Body: body}, field: "type"},
		{name: "type case", msg: &Message{Type: "Embedding", Body: body}, field: "type"},
		{name: "id too long", msg: &Message{Type: TaskEmbedding, ID: strings.Repeat("a", 129), Body: body}, field: "id"},
		{name: "id space", msg: &Message{Type: TaskEmbedding, ID: "a b", Body: body}, field: "id"},
		{name: "id non-ascii", msg: &Message{Type: TaskEmbedding, ID: "é", Body: body}, field: "id"},
		{name: "id control", msg: &Message{Type: TaskEmbedding, ID: "a\n", Body: body}, field: "id"},
		{name: "no body", msg: &Message{Type: TaskEmbedding}, field: "body"},
		{name: "empty body", msg: &Message{Type: TaskEmbedding, Body: []byte{}}, field: "body"},
		{name: "blank body", msg: &Message{Type: TaskEmbedding, Body: []byte("  ")}, field: "body"},
		{name: "array", msg: &Message{Type: TaskEmbedding, Body: []byte("[]")}, field: "body"},
		{name: "string", msg: &Message{Type: TaskEmbedding, Body: []byte(`"x"`)}, field: "body"},
		{name: "null", msg: &Message{Type: TaskEmbedding, Body: []byte(`null`)}, field: "body"},
		{name: "truncated", msg: &Message{Type: TaskEmbedding, Body: []byte(`{"a":`)}, field: "body"},
		{name: "trailing data", msg: &Message{Type: TaskEmbedding, Body: []byte(`{}{}`)}, field: "body"},
		{name: "bad utf8", msg: &Message{Type: TaskEmbedding, Body: []byte("{\"a\":\"\xff\"}")}, field: "body"},
		{name: "too big", msg: &Message{Type: TaskEmbedding, Body: bigObject(1<<20 + 64<<10 + 1)}, field: "body"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := l.validateMessage(tc.msg)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			assertInvalid(t, err, tc.field)
		})
	}
}

// bigObject returns a JSON object of exactly n bytes (n >= 8).
func bigObject(n int) []byte {
	b := make([]byte, 0, n)
	b = append(b, `{"a":"`...)
	b = append(b, bytes.Repeat([]byte("x"), n-len(`{"a":""}`))...)
	return append(b, `"}`...)
}

func TestTaskLimitsConfigured(t *testing.T) {
	l := taskLimits{maxShareID: 4, maxContent: 10, maxBody: 10 + 64<<10, mediaSchemes: []string{"S3"}}
	if _, err := l.validateSummarization("abcd", strings.Repeat("c", 10), nil); err != nil {
		t.Errorf("at limits: %v", err)
	}
	assertInvalid(t, errOf(l.validateSummarization("abcde", "c", nil)), "shareId")
	assertInvalid(t, errOf(l.validateEmbedding("a", strings.Repeat("c", 11), nil)), "content")
	if _, err := l.validateTranscription("a", "s3://bucket/k", nil); err != nil {
		t.Errorf("configured scheme: %v", err)
	}
	assertInvalid(t, errOf(l.validateTranscription("a", "https://host/k", nil)), "mediaUrl")
	if err := l.validateMessage(&Message{Type: TaskEmbedding, Body: bigObject(10 + 64<<10)}); err != nil {
		t.Errorf("body at limit: %v", err)
	}
	assertInvalid(t, l.validateMessage(&Message{Type: TaskEmbedding, Body: bigObject(10 + 64<<10 + 1)}), "body")

	// Zero limits mean the defaults.
	var zero taskLimits
	if _, err := zero.validateSummarization(strings.Repeat("s", 256), strings.Repeat("c", 1<<20), nil); err != nil {
		t.Errorf("zero limits at default limits: %v", err)
	}
	assertInvalid(t, errOf(zero.validateSummarization(strings.Repeat("s", 257), "c", nil)), "shareId")
	assertInvalid(t, errOf(zero.validateSummarization("s", strings.Repeat("c", 1<<20+1), nil)), "content")
	for _, u := range []string{"https://h/a", "http://h/a", "s3://b/k", "GS://b/k"} {
		if _, err := zero.validateTranscription("s", u, nil); err != nil {
			t.Errorf("zero limits, %s: %v", u, err)
		}
	}
	assertInvalid(t, errOf(zero.validateTranscription("s", "ftp://h/a", nil)), "mediaUrl")
	assertInvalid(t, zero.validateMessage(&Message{Type: TaskEmbedding, Body: bigObject(1<<20 + 64<<10 + 1)}), "body")
}

// goldenCase is one golden body: the inputs and the file holding the
// encoder's output for them.
type goldenCase struct {
	file    string
	typ     TaskType
	shareID string
	text    string // content or mediaUrl
	sum     *SummarizationOptions
	trans   *TranscriptionOptions
	emb     *EmbeddingOptions
}

func goldenCases() []goldenCase {
	return []goldenCase{
		{
			file: "summarization.json", typ: TaskSummarization, shareID: "share-123",
			text: "The quarterly report shows revenue up 12% on last year, driven by new subscriptions.",
		},
		{
			file: "summarization_full.json", typ: TaskSummarization, shareID: "share-123",
			text: "Line one: \"quoted\" and a back\\slash.\nLine two:\ttabbed; ünïcödé, 日本語, 🙂; <b>&amp;</b>\u2028after a line separator.",
			sum:  &SummarizationOptions{MaxLength: 250, Language: "pt-BR", Style: "bullets"},
		},
		{
			file: "transcription.json", typ: TaskTranscription, shareID: "share-456",
			text: "https://media.example.com/recordings/meeting-42.mp3",
		},
		{
			file: "transcription_full.json", typ: TaskTranscription, shareID: "share-456",
			text:  "s3://ml-media/recordings/meeting-42.wav?versionId=3",
			trans: &TranscriptionOptions{Language: "en-US", Diarization: true, MaxSpeakers: 4},
		},
		{
			file: "embedding.json", typ: TaskEmbedding, shareID: "share-789",
			text: "Embeddings map text to vectors.",
		},
		{
			file: "embedding_full.json", typ: TaskEmbedding, shareID: "share-789",
			text: "Embeddings map text to vectors.",
			emb:  &EmbeddingOptions{Model: "text-embedding-3-small", Dimensions: 1536},
		},
	}
}

// validate runs the validator of the case's type with the default limits
// and returns the body length it predicts for a generated message id.
func (g *goldenCase) validate() (int, error) {
	l := defaultTaskLimits()
	switch g.typ {
	case TaskSummarization:
		return l.validateSummarization(g.shareID, g.text, g.sum)
	case TaskTranscription:
		return l.validateTranscription(g.shareID, g.text, g.trans)
	default:
		return l.validateEmbedding(g.shareID, g.text, g.emb)
	}
}

// bodyLen returns the length the *BodyLen functions predict for the case's
// body with message id id.
func (g *goldenCase) bodyLen(id string) int {
	idLen, sidLen, textLen := jsonStringLen(id), jsonStringLen(g.shareID), jsonStringLen(g.text)
	switch g.typ {
	case TaskSummarization:
		return summarizationBodyLen(idLen, sidLen, textLen, g.sum)
	case TaskTranscription:
		return transcriptionBodyLen(idLen, sidLen, textLen, g.trans)
	default:
		return embeddingBodyLen(idLen, sidLen, textLen, g.emb)
	}
}

// encode runs the encoder of the case's type.
func (g *goldenCase) encode(dst []byte, id string, created time.Time) []byte {
	switch g.typ {
	case TaskSummarization:
		return appendSummarizationBody(dst, id, created, g.shareID, g.text, g.sum)
	case TaskTranscription:
		return appendTranscriptionBody(dst, id, created, g.shareID, g.text, g.trans)
	default:
		return appendEmbeddingBody(dst, id, created, g.shareID, g.text, g.emb)
	}
}

// checkTask fails t unless task holds the case's inputs.
func (g *goldenCase) checkTask(t testing.TB, task Task, id string, created time.Time) {
	t.Helper()
	if task.Version != 1 || task.Type != g.typ || task.MessageID != id || task.ShareID != g.shareID {
		t.Errorf("header = %d %q %q %q, want 1 %q %q %q",
			task.Version, task.Type, task.MessageID, task.ShareID, g.typ, id, g.shareID)
	}
	wantContent, wantURL := g.text, ""
	if g.typ == TaskTranscription {
		wantContent, wantURL = "", g.text
	}
	if task.Content != wantContent || task.MediaURL != wantURL {
		t.Errorf("content, mediaUrl = %q, %q; want %q, %q", task.Content, task.MediaURL, wantContent, wantURL)
	}
	if !task.CreatedAt.Equal(created) {
		t.Errorf("createdAt = %v, want %v", task.CreatedAt, created)
	}
	switch g.typ {
	case TaskSummarization:
		var got, want SummarizationOptions
		if g.sum != nil {
			want = *g.sum
		}
		decodeStrict(t, task.Options, &got)
		if got != want {
			t.Errorf("options = %+v, want %+v", got, want)
		}
	case TaskTranscription:
		var got, want TranscriptionOptions
		if g.trans != nil {
			want = *g.trans
		}
		decodeStrict(t, task.Options, &got)
		if got != want {
			t.Errorf("options = %+v, want %+v", got, want)
		}
	default:
		var got, want EmbeddingOptions
		if g.emb != nil {
			want = *g.emb
		}
		decodeStrict(t, task.Options, &got)
		if got != want {
			t.Errorf("options = %+v, want %+v", got, want)
		}
	}
}

func decodeStrict(t testing.TB, raw []byte, v any) {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(raw))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		t.Fatalf("decoding options %s: %v", raw, err)
	}
}

func TestGolden(t *testing.T) {
	for _, g := range goldenCases() {
		t.Run(g.file, func(t *testing.T) {
			if _, err := g.validate(); err != nil {
				t.Fatalf("golden input refused: %v", err)
			}
			got := g.encode(nil, goldenID, goldenTime())
			path := filepath.Join("testdata", "golden", g.file)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -run TestGolden -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("encoder output differs from %s:\n got: %s\nwant: %s", path, got, want)
			}

			task, err := DecodeTask(want)
			if err != nil {
				t.Fatalf("DecodeTask: %v", err)
			}
			g.checkTask(t, task, goldenID, goldenTime())

			var plain Task
			if err := json.Unmarshal(want, &plain); err != nil {
				t.Fatalf("json.Unmarshal: %v", err)
			}
			g.checkTask(t, plain, goldenID, goldenTime())
		})
	}
}

func compileSchema(t testing.TB) *jsonschema.Schema {
	t.Helper()
	sch, err := jsonschema.NewCompiler().Compile(schemaPath)
	if err != nil {
		t.Fatalf("compiling %s: %v", schemaPath, err)
	}
	return sch
}

func schemaValidate(sch *jsonschema.Schema, body []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return err
	}
	return sch.Validate(inst)
}

func TestGoldenFilesMatchSchema(t *testing.T) {
	sch := compileSchema(t)
	files, err := filepath.Glob(filepath.Join("testdata", "golden", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < len(goldenCases()) {
		t.Fatalf("found %d golden files, want at least %d", len(files), len(goldenCases()))
	}
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := schemaValidate(sch, body); err != nil {
			t.Errorf("%s does not match the schema: %v", f, err)
		}
		if _, err := DecodeTask(body); err != nil {
			t.Errorf("%s: DecodeTask: %v", f, err)
		}
	}
}

// withField returns base (a JSON object) with key set to raw, or removed
// when raw is "-".
func withField(t testing.TB, base []byte, key, raw string) []byte {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(base, &m); err != nil {
		t.Fatal(err)
	}
	if raw == "-" {
		delete(m, key)
	} else {
		m[key] = json.RawMessage(raw)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeTaskAndSchema(t *testing.T) {
	sch := compileSchema(t)
	sum := appendSummarizationBody(nil, goldenID, goldenTime(), "share-1", "text", nil)
	trans := appendTranscriptionBody(nil, goldenID, goldenTime(), "share-1", "https://h/a.mp3", nil)
	emb := appendEmbeddingBody(nil, goldenID, goldenTime(), "share-1", "text", nil)

	cases := []struct {
		name  string
		body  []byte
		field string // "" means accepted
		// schemaToo says the schema gives the same verdict. Where it is
		// false, DecodeTask is stricter than the schema can say (a body
		// that is not JSON, a date that does not exist).
		schemaToo bool
	}{
		{"summarization", sum, "", true},
		{"transcription", trans, "", true},
		{"embedding", emb, "", true},
		{"https scheme", withField(t, trans, "mediaUrl", `"HTTPS://host/a.mp3"`), "", true},
		{"s3 scheme", withField(t, trans, "mediaUrl", `"s3://bucket/a.mp3"`), "", true},
		{"offset time", withField(t, sum, "createdAt", `"2026-01-02T04:04:05+01:00"`), "", true},
		{"no fraction", withField(t, sum, "createdAt", `"2026-01-02T03:04:05Z"`), "", true},
		{"zero options", withField(t, sum, "options", `{"maxLength":0,"language":"","style":""}`), "", true},
		{"diarization false", withField(t, trans, "options", `{"diarization":false}`), "", true},
		{"speakers zero", withField(t, trans, "options", `{"maxSpeakers":0}`), "", true},

		{"not utf8", []byte("{\"version\":1,\"x\":\"\xff\"}"), "body", false},
		{"empty", []byte(""), "body", false},
		{"array", []byte("[]"), "body", true},
		{"null", []byte("null"), "body", true},
		{"truncated", sum[:len(sum)-1], "body", false},
		{"empty object", []byte("{}"), "version", true},
		{"unknown field", withField(t, sum, "priority", `1`), "priority", true},
		{"key case", withField(t, withField(t, sum, "shareId", "-"), "ShareId", `"share-1"`), "ShareId", true},
		{"no version", withField(t, sum, "version", "-"), "version", true},
		{"version 2", withField(t, sum, "version", `2`), "version", true},
		{"version string", withField(t, sum, "version", `"1"`), "version", true},
		{"version null", withField(t, sum, "version", `null`), "version", true},
		{"no type", withField(t, sum, "type", "-"), "type", true},
		{"unknown type", withField(t, sum, "type", `"translation"`), "type", true},
		{"no message id", withField(t, sum, "messageId", "-"), "messageId", true},
		{"empty message id", withField(t, sum, "messageId", `""`), "messageId", true},
		{"message id space", withField(t, sum, "messageId", `"a b"`), "messageId", true},
		{"message id long", withField(t, sum, "messageId", `"`+strings.Repeat("a", 129)+`"`), "messageId", true},
		{"no share id", withField(t, sum, "shareId", "-"), "shareId", true},
		{"share id control", withField(t, sum, "shareId", `"a\u0001"`), "shareId", true},
		{"share id number", withField(t, sum, "shareId", `12`), "shareId", true},
		{"summarization media", withField(t, sum, "mediaUrl", `"https://h/a"`), "mediaUrl", true},
		{"summarization no content", withField(t, sum, "content", "-"), "content", true},
		{"blank content", withField(t, sum, "content", `" \n "`), "content", true},
		{"null content", withField(t, sum, "content", `null`), "content", true},
		{"embedding media", withField(t, emb, "mediaUrl", `"https://h/a"`), "mediaUrl", true},
		{"transcription content", withField(t, trans, "content", `"x"`), "content", true},
		{"transcription no media", withField(t, trans, "mediaUrl", "-"), "mediaUrl", true},
		{"relative media", withField(t, trans, "mediaUrl", `"a.mp3"`), "mediaUrl", true},
		{"media credentials", withField(t, trans, "mediaUrl", `"https://u:p@h/a"`), "mediaUrl", true},
		{"media no host", withField(t, trans, "mediaUrl", `"https:///a"`), "mediaUrl", true},
		// The schema leaves the scheme to the producer's list; DecodeTask
		// applies the default list unless given WithMediaURLSchemes.
		{"ftp scheme", withField(t, trans, "mediaUrl", `"ftp://host/a.mp3"`), "mediaUrl", false},
		{"no options", withField(t, sum, "options", "-"), "options", true},
		{"options null", withField(t, sum, "options", `null`), "options", true},
		{"options array", withField(t, sum, "options", `[]`), "options", true},
		{"unknown option", withField(t, sum, "options", `{"temperature":1}`), "options.temperature", true},
		{"option of other type", withField(t, sum, "options", `{"model":"m"}`), "options.model", true},
		{"maxLength negative", withField(t, sum, "options", `{"maxLength":-1}`), "options.maxLength", true},
		{"maxLength big", withField(t, sum, "options", `{"maxLength":10001}`), "options.maxLength", true},
		{"maxLength string", withField(t, sum, "options", `{"maxLength":"5"}`), "options.maxLength", true},
		{"maxLength null", withField(t, sum, "options", `{"maxLength":null}`), "options.maxLength", true},
		{"language", withField(t, sum, "options", `{"language":"en_US"}`), "options.language", true},
		{"style", withField(t, sum, "options", `{"style":"long"}`), "options.style", true},
		{"speakers alone", withField(t, trans, "options", `{"maxSpeakers":2}`), "options.maxSpeakers", true},
		{"speakers no diarization", withField(t, trans, "options", `{"maxSpeakers":2,"diarization":false}`), "options.maxSpeakers", true},
		{"speakers many", withField(t, trans, "options", `{"maxSpeakers":33,"diarization":true}`), "options.maxSpeakers", true},
		{"diarization null", withField(t, trans, "options", `{"diarization":null}`), "options.diarization", true},
		{"diarization string", withField(t, trans, "options", `{"diarization":"yes"}`), "options.diarization", true},
		{"model space", withField(t, emb, "options", `{"model":"a b"}`), "options.model", true},
		{"dimensions big", withField(t, emb, "options", `{"dimensions":8193}`), "options.dimensions", true},
		{"dimensions float", withField(t, emb, "options", `{"dimensions":1.5}`), "options.dimensions", true},
		{"no createdAt", withField(t, sum, "createdAt", "-"), "createdAt", true},
		{"createdAt number", withField(t, sum, "createdAt", `1767322800`), "createdAt", true},
		{"createdAt date only", withField(t, sum, "createdAt", `"2026-01-02"`), "createdAt", true},
		{"createdAt comma", withField(t, sum, "createdAt", `"2026-01-02T03:04:05,5Z"`), "createdAt", true},
		{"createdAt lower t", withField(t, sum, "createdAt", `"2026-01-02t03:04:05Z"`), "createdAt", true},
		{"createdAt no zone", withField(t, sum, "createdAt", `"2026-01-02T03:04:05"`), "createdAt", true},
		{"createdAt month 13", withField(t, sum, "createdAt", `"2026-13-02T03:04:05Z"`), "createdAt", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			task, err := DecodeTask(tc.body)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("DecodeTask: %v", err)
				}
				if task.Version != 1 || !task.Type.valid() || len(task.Options) == 0 || task.CreatedAt.Location() != time.UTC {
					t.Errorf("decoded %+v", task)
				}
			} else {
				assertInvalid(t, err, tc.field)
			}
			if !tc.schemaToo {
				return
			}
			serr := schemaValidate(sch, tc.body)
			if tc.field == "" && serr != nil {
				t.Errorf("schema refuses an accepted body %s: %v", tc.body, serr)
			}
			if tc.field != "" && serr == nil {
				t.Errorf("schema accepts a refused body %s", tc.body)
			}
		})
	}
}

func TestEncodeOptionsForms(t *testing.T) {
	created := goldenTime()
	// nil and zero options are the same: an empty object.
	a := appendSummarizationBody(nil, "id", created, "s", "c", nil)
	b := appendSummarizationBody(nil, "id", created, "s", "c", &SummarizationOptions{})
	if !bytes.Equal(a, b) || !bytes.Contains(a, []byte(`"options":{}`)) {
		t.Errorf("nil options %s, zero options %s", a, b)
	}
	for _, tc := range []struct {
		got  []byte
		want string
	}{
		{appendSummarizationBody(nil, "id", created, "s", "c", &SummarizationOptions{Style: "bullets"}), `"options":{"style":"bullets"}`},
		{appendSummarizationBody(nil, "id", created, "s", "c", &SummarizationOptions{Language: "en", Style: "bullets"}), `"options":{"language":"en","style":"bullets"}`},
		{appendTranscriptionBody(nil, "id", created, "s", "https://h/a", &TranscriptionOptions{}), `"options":{}`},
		{appendTranscriptionBody(nil, "id", created, "s", "https://h/a", &TranscriptionOptions{Diarization: true}), `"options":{"diarization":true}`},
		{appendTranscriptionBody(nil, "id", created, "s", "https://h/a", &TranscriptionOptions{Diarization: true, MaxSpeakers: 2}), `"options":{"diarization":true,"maxSpeakers":2}`},
		{appendTranscriptionBody(nil, "id", created, "s", "https://h/a", &TranscriptionOptions{MaxSpeakers: 2}), `"options":{"maxSpeakers":2}`},
		{appendEmbeddingBody(nil, "id", created, "s", "c", nil), `"options":{}`},
		{appendEmbeddingBody(nil, "id", created, "s", "c", &EmbeddingOptions{Dimensions: 3}), `"options":{"dimensions":3}`},
	} {
		if !bytes.Contains(tc.got, []byte(tc.want)) {
			t.Errorf("%s does not contain %s", tc.got, tc.want)
		}
		if !json.Valid(tc.got) {
			t.Errorf("invalid JSON %s", tc.got)
		}
	}
}

func TestEncodeAppends(t *testing.T) {
	prefix := []byte("prefix:")
	dst := append(make([]byte, 0, 4096), prefix...)
	out := appendEmbeddingBody(dst, "id", goldenTime(), "s", "c", nil)
	if !bytes.HasPrefix(out, prefix) {
		t.Fatalf("prefix lost: %s", out)
	}
	if want := appendEmbeddingBody(nil, "id", goldenTime(), "s", "c", nil); !bytes.Equal(out[len(prefix):], want) {
		t.Errorf("appended %s, want %s", out[len(prefix):], want)
	}
	// With room in dst, encoding does not allocate.
	buf := make([]byte, 0, 8192)
	content := strings.Repeat("lorem ipsum ", 100)
	opts := &SummarizationOptions{MaxLength: 100, Language: "en", Style: "bullets"}
	created := time.Now()
	if n := testing.AllocsPerRun(50, func() {
		buf = appendSummarizationBody(buf[:0], goldenID, created, "share", content, opts)
	}); n != 0 {
		t.Errorf("appendSummarizationBody allocates %v times with a large enough dst", n)
	}
}

func TestCreatedAtFormat(t *testing.T) {
	loc := time.FixedZone("UTC-3", -3*3600)
	times := []time.Time{
		goldenTime(),
		time.Date(2026, 11, 28, 4, 7, 25, 123456789, time.UTC),
		time.Date(2026, 1, 2, 0, 0, 0, 0, loc), // written in UTC
		time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(12345, 1, 1, 0, 0, 0, 0, time.UTC), // outside RFC 3339; falls back to AppendFormat
		time.Now(),
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		times = append(times, time.Unix(r.Int64N(253402300800), r.Int64N(1e9)))
	}
	for _, tm := range times {
		got := string(appendTimestamp(nil, tm))
		if want := tm.UTC().Format(createdAtLayout); got != want {
			t.Errorf("appendTimestamp(%v) = %s, want %s", tm, got, want)
		}
	}
	if got := string(appendTimestamp(nil, goldenTime())); got != "2026-01-02T03:04:05.000000006Z" {
		t.Errorf("golden time written as %s", got)
	}
}

func TestPlainASCII8(t *testing.T) {
	naive := func(s string) bool {
		for i := 0; i < len(s); i++ {
			if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' {
				return false
			}
		}
		return true
	}
	buf := []byte("abcdefgh")
	for pos := range 8 {
		for b := range 256 {
			copy(buf, "abcdefgh")
			buf[pos] = byte(b)
			if got, want := plainASCII8(load64(string(buf))), naive(string(buf)); got != want {
				t.Errorf("plainASCII8(%q) = %v, want %v", buf, got, want)
			}
			// And in the middle of a longer string through the escaper.
			s := "0123" + string(buf) + "456789abcdef"
			if got, std := appendJSONString(nil, s), jsonMarshalString(t, s); !bytes.Equal(got, std) {
				t.Errorf("appendJSONString(%q) = %s, encoding/json %s", s, got, std)
			}
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 100000 {
		for i := range buf {
			buf[i] = byte(0x1c + r.IntN(0x66)) // around both ends of the plain range
		}
		if got, want := plainASCII8(load64(string(buf))), naive(string(buf)); got != want {
			t.Errorf("plainASCII8(%q) = %v, want %v", buf, got, want)
		}
	}
}

// jsonMarshalString encodes s as encoding/json does without HTML escaping.
func jsonMarshalString(t testing.TB, s string) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

func TestAppendJSONString(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", `""`},
		{"plain", `"plain"`},
		{`"`, `"\""`},
		{`\`, `"\\"`},
		{"\b\f\n\r\t", `"\b\f\n\r\t"`},
		{"\x00\x01\x1f", `"\u0000\u0001\u001f"`},
		{"\x7f", "\"\x7f\""},
		{"<>&", `"<>&"`},
		{"é日本🙂", `"é日本🙂"`},
		{"a\u2028b\u2029c", `"a\u2028b\u2029c"`},
		{"\xff", `"\ufffd"`},
		{"a\xe6\x97b", `"a\ufffd\ufffdb"`},
		{"\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`}, // a surrogate encoded in UTF-8
		{"/", `"/"`},
	} {
		got := string(appendJSONString(nil, tc.in))
		if got != tc.want {
			t.Errorf("appendJSONString(%q) = %s, want %s", tc.in, got, tc.want)
		}
		if std := string(jsonMarshalString(t, tc.in)); got != std {
			t.Errorf("appendJSONString(%q) = %s, encoding/json writes %s", tc.in, got, std)
		}
	}
	// Every single byte and every rune around the special ones.
	for b := range 256 {
		s := string([]byte{'a', byte(b), 'z'})
		if got, std := appendJSONString(nil, s), jsonMarshalString(t, s); !bytes.Equal(got, std) {
			t.Errorf("byte %#x: %s, encoding/json %s", b, got, std)
		}
		// At every offset of the 8-byte fast path, jsonStringLen counts
		// what appendJSONString writes.
		for pos := range 17 {
			s := strings.Repeat("a", pos) + string(rune(b)) + string([]byte{byte(b)}) + strings.Repeat("z", 16-pos)
			if n, want := jsonStringLen(s), len(appendJSONString(nil, s)); n != want {
				t.Errorf("jsonStringLen(%q) = %d, want %d", s, n, want)
			}
		}
	}
	for r := rune(0x2000); r < 0x2100; r++ {
		s := string(r)
		if got, std := appendJSONString(nil, s), jsonMarshalString(t, s); !bytes.Equal(got, std) {
			t.Errorf("rune %U: %s, encoding/json %s", r, got, std)
		}
	}
}

// FuzzAppendJSONString checks the escaper against encoding/json, byte for
// byte, and that the output decodes back to the input when it is valid
// UTF-8.
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "\"\\\n\x00\u2028\u2029", "é日本🙂", "\xff\xfe", "<a href='x'>&</a>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := appendJSONString(nil, s)
		if std := jsonMarshalString(t, s); !bytes.Equal(got, std) {
			t.Fatalf("appendJSONString(%q) = %s, encoding/json writes %s", s, got, std)
		}
		if n := jsonStringLen(s); n != len(got) {
			t.Fatalf("jsonStringLen(%q) = %d, want %d", s, n, len(got))
		}
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("output %s does not decode: %v", got, err)
		}
		if utf8.ValidString(s) && back != s {
			t.Fatalf("round trip of %q gave %q", s, back)
		}
	})
}

// fuzzCase builds a golden case from fuzz arguments.
func fuzzCase(kind uint8, shareID, text, s1, s2 string, n int, flag bool) goldenCase {
	g := goldenCase{shareID: shareID, text: text}
	switch kind % 3 {
	case 0:
		g.typ = TaskSummarization
		g.sum = &SummarizationOptions{MaxLength: n, Language: s1, Style: s2}
	case 1:
		g.typ = TaskTranscription
		g.trans = &TranscriptionOptions{Language: s1, Diarization: flag, MaxSpeakers: n}
	default:
		g.typ = TaskEmbedding
		g.emb = &EmbeddingOptions{Model: s1, Dimensions: n}
	}
	return g
}

// FuzzEncodeBody checks that whatever the validators accept is encoded as
// a body that encoding/json, DecodeTask and the schema all accept and that
// decodes to the same values.
func FuzzEncodeBody(f *testing.F) {
	f.Add(uint8(0), "share-1", "Some text to summarize.", "en", "bullets", 100, false, int64(1767323045000000006))
	f.Add(uint8(0), "partage-é", "Texte \"cité\"\n\tet\u2028séparé \\ fin", "pt-BR", "", 0, false, int64(0))
	f.Add(uint8(1), "share-2", "https://media.example.com/a.mp3", "en-US", "", 3, true, int64(-1))
	f.Add(uint8(1), "share-2", "s3://bucket/key.wav?v=1#t", "", "", 0, false, int64(1))
	f.Add(uint8(2), "share-3", "embed me", "text-embedding-3-small", "", 1536, false, int64(1<<62))
	f.Add(uint8(2), "s", "\x00\x1f control", "", "", 0, false, int64(123456789))
	sch := compileSchema(f)
	f.Fuzz(func(t *testing.T, kind uint8, shareID, text, s1, s2 string, n int, flag bool, nanos int64) {
		g := fuzzCase(kind, shareID, text, s1, s2, n, flag)
		size, err := g.validate()
		if err != nil {
			checkWellFormed(t, err)
			return
		}
		created := time.Unix(0, nanos)
		// The validator's capacity is at least the body's length without
		// escapes.
		if body := g.encode(nil, goldenID, created); size < len(body)-(jsonStringLen(g.text)-len(g.text)-2) {
			t.Fatalf("validator's capacity %d, for a body of %d bytes: %s", size, len(body), body)
		}
		id := goldenID
		if kind >= 128 && visibleASCII(s2) && s2 != "" && len(s2) <= 128 {
			id = s2
		}
		body := g.encode(nil, id, created)
		if want := g.bodyLen(id); len(body) != want {
			t.Fatalf("body length %d, predicted %d: %s", len(body), want, body)
		}
		if !json.Valid(body) {
			t.Fatalf("invalid JSON: %s", body)
		}
		var plain Task
		if err := json.Unmarshal(body, &plain); err != nil {
			t.Fatalf("json.Unmarshal(%s): %v", body, err)
		}
		g.checkTask(t, plain, id, created)
		task, err := DecodeTask(body)
		if err != nil {
			t.Fatalf("DecodeTask(%s): %v", body, err)
		}
		g.checkTask(t, task, id, created)
		if err := schemaValidate(sch, body); err != nil {
			t.Fatalf("schema refuses %s: %v", body, err)
		}
	})
}

// FuzzValidate feeds arbitrary input to every validator and to DecodeTask:
// none panics, every error is a well-formed *InvalidTaskError, and a body
// that DecodeTask accepts is one the producer could have sent: the schema
// accepts it, encoding/json reads it with no key repeated, the producer's
// validators (with the same, default, limits) accept its fields, and
// re-encoding the decoded task, with the producer's encoder or with
// encoding/json, gives a body that decodes to the same task. (This covers
// the security review's FuzzSecDecodeTask, whose seeds are in
// testdata/fuzz/FuzzValidate.)
func FuzzValidate(f *testing.F) {
	f.Add("share-1", "text", "en", "bullets", 10, true, goldenID, []byte(`{"version":1}`))
	f.Add("", "", "", "", 0, false, "", []byte(nil))
	f.Add("a\x00", "\xff", "x-", "Bullets", -1, false, "a b", []byte(`[]`))
	f.Add("s", "https://u:p@h/a", "i-klingon", "summarization", 33, true, "id", []byte("{\"a\":\"\xff\"}"))
	for _, g := range goldenCases() {
		f.Add(g.shareID, g.text, "en", string(g.typ), 1, true, goldenID, g.encode(nil, goldenID, goldenTime()))
	}
	sch := compileSchema(f)
	l := defaultTaskLimits()
	f.Fuzz(func(t *testing.T, shareID, text, s1, s2 string, n int, flag bool, id string, body []byte) {
		checkWellFormed(t, errOf(l.validateSummarization(shareID, text, &SummarizationOptions{MaxLength: n, Language: s1, Style: s2})))
		checkWellFormed(t, errOf(l.validateTranscription(shareID, text, &TranscriptionOptions{Language: s1, Diarization: flag, MaxSpeakers: n})))
		checkWellFormed(t, errOf(l.validateEmbedding(shareID, text, &EmbeddingOptions{Model: s1, Dimensions: n})))
		checkWellFormed(t, l.validateMessage(&Message{Type: TaskType(s2), ID: id, Body: body}))

		task, err := DecodeTask(body)
		if err != nil {
			checkWellFormed(t, err)
			return
		}
		if err := schemaValidate(sch, body); err != nil {
			t.Fatalf("DecodeTask accepts %s but the schema refuses it: %v", body, err)
		}
		if err := l.validateMessage(&Message{Type: task.Type, ID: task.MessageID, Body: body}); err != nil {
			t.Fatalf("validateMessage refuses a body DecodeTask accepts: %v", err)
		}
		var keys map[string]json.RawMessage
		if err := json.Unmarshal(body, &keys); err != nil {
			t.Fatalf("encoding/json refuses %s: %v", body, err)
		}
		members := 0
		for range jsonvalid.Members(body) {
			members++
		}
		if members != len(keys) {
			t.Fatalf("DecodeTask accepts a repeated key: %s", body)
		}
		// The producer's validators accept the decoded fields.
		var verr error
		switch task.Type {
		case TaskSummarization:
			var o SummarizationOptions
			decodeStrict(t, task.Options, &o)
			verr = errOf(l.validateSummarization(task.ShareID, task.Content, &o))
		case TaskTranscription:
			var o TranscriptionOptions
			decodeStrict(t, task.Options, &o)
			verr = errOf(l.validateTranscription(task.ShareID, task.MediaURL, &o))
		default:
			var o EmbeddingOptions
			decodeStrict(t, task.Options, &o)
			verr = errOf(l.validateEmbedding(task.ShareID, task.Content, &o))
		}
		// A body over the limit was refused, so its fields fit too.
		if verr != nil {
			t.Fatalf("DecodeTask accepts what the producer refuses: %v; body %q", verr, body)
		}
		// encoding/json's form of the task decodes to the same task.
		plain, err := json.Marshal(task)
		if err != nil {
			t.Fatal(err)
		}
		if t2, err := DecodeTask(plain); err != nil {
			t.Fatalf("encoding/json's %s refused: %v", plain, err)
		} else if t2.ShareID != task.ShareID || t2.Content != task.Content || t2.MediaURL != task.MediaURL ||
			!t2.CreatedAt.Equal(task.CreatedAt) || t2.MessageID != task.MessageID || t2.Type != task.Type {
			t.Fatalf("round trip through encoding/json changed the task: %+v vs %+v", task, t2)
		}
		// Re-encode and decode again.
		g := goldenCase{typ: task.Type, shareID: task.ShareID, text: task.Content}
		switch task.Type {
		case TaskSummarization:
			g.sum = new(SummarizationOptions)
			decodeStrict(t, task.Options, g.sum)
		case TaskTranscription:
			g.text = task.MediaURL
			g.trans = new(TranscriptionOptions)
			decodeStrict(t, task.Options, g.trans)
		default:
			g.emb = new(EmbeddingOptions)
			decodeStrict(t, task.Options, g.emb)
		}
		again, err := DecodeTask(g.encode(nil, task.MessageID, task.CreatedAt))
		if err != nil {
			t.Fatalf("re-encoded task refused: %v", err)
		}
		g.checkTask(t, again, task.MessageID, task.CreatedAt)
	})
}

func BenchmarkAppendSummarizationBody(b *testing.B) {
	content := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 23)[:1024] // 1 KiB
	opts := &SummarizationOptions{MaxLength: 200, Language: "en", Style: "bullets"}
	created := time.Date(2026, 11, 28, 4, 7, 25, 123456789, time.UTC)
	b.Run("reuse", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(content)))
		var buf []byte
		for b.Loop() {
			buf = appendSummarizationBody(buf[:0], goldenID, created, "share-123", content, opts)
		}
	})
	b.Run("new", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(content)))
		// As the typed methods do: the validator gives the exact size.
		l := defaultTaskLimits()
		size, err := l.validateSummarization("share-123", content, opts)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			_ = appendSummarizationBody(make([]byte, 0, size), goldenID, created, "share-123", content, opts)
		}
	})
	// encoding/json on an equivalent struct, for comparison.
	b.Run("encoding_json", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(content)))
		type body struct {
			Version   int                   `json:"version"`
			Type      TaskType              `json:"type"`
			MessageID string                `json:"messageId"`
			ShareID   string                `json:"shareId"`
			Content   string                `json:"content"`
			Options   *SummarizationOptions `json:"options"`
			CreatedAt time.Time             `json:"createdAt"`
		}
		for b.Loop() {
			_, _ = json.Marshal(body{1, TaskSummarization, goldenID, "share-123", content, opts, created})
		}
	})
}

func BenchmarkValidateSummarization(b *testing.B) {
	content := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 23)[:1024]
	opts := &SummarizationOptions{MaxLength: 200, Language: "en", Style: "bullets"}
	l := defaultTaskLimits()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := l.validateSummarization("share-123", content, opts); err != nil {
			b.Fatal(err)
		}
	}
}
