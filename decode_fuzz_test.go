package mlproducer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeTask: DecodeTask on arbitrary queue contents never panics; what it
// accepts is valid JSON, re-encodes with encoding/json into a body it accepts
// again with the same values, and the typed options re-encode into a body the
// producer-side validators accept.
func FuzzDecodeTask(f *testing.F) {
	files, _ := filepath.Glob("testdata/golden/*.json")
	for _, p := range files {
		b, _ := os.ReadFile(p)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		task, err := DecodeTask(body)
		if err != nil {
			var ite *InvalidTaskError
			if e, ok := err.(*InvalidTaskError); !ok || e.Field == "" || !utf8.ValidString(e.Field) {
				t.Fatalf("bad error %T %v", err, err)
			}
			_ = ite
			return
		}
		if !json.Valid(body) {
			t.Fatalf("accepted invalid JSON %q", body)
		}
		again, err := json.Marshal(task)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		t2, err := DecodeTask(again)
		if err != nil {
			t.Fatalf("re-encoded %s refused: %v", again, err)
		}
		if t2.ShareID != task.ShareID || t2.Content != task.Content || t2.MediaURL != task.MediaURL || !t2.CreatedAt.Equal(task.CreatedAt) {
			t.Fatalf("round trip changed the task: %+v vs %+v", task, t2)
		}
		l := defaultTaskLimits()
		l.maxContent, l.maxShareID = 1<<30, 1<<30
		switch task.Type {
		case TaskSummarization:
			var o SummarizationOptions
			if err := json.Unmarshal(task.Options, &o); err != nil {
				t.Fatalf("options: %v", err)
			}
			if _, err := l.validateSummarization(task.ShareID, task.Content, &o); err != nil {
				t.Fatalf("DecodeTask accepts what the producer refuses: %v body %q", err, body)
			}
		case TaskEmbedding:
			var o EmbeddingOptions
			if err := json.Unmarshal(task.Options, &o); err != nil {
				t.Fatalf("options: %v", err)
			}
			if _, err := l.validateEmbedding(task.ShareID, task.Content, &o); err != nil {
				t.Fatalf("DecodeTask accepts what the producer refuses: %v body %q", err, body)
			}
		case TaskTranscription:
			var o TranscriptionOptions
			if err := json.Unmarshal(task.Options, &o); err != nil {
				t.Fatalf("options: %v", err)
			}
			if err := checkTranscriptionOptions(&o); err != nil {
				t.Fatalf("DecodeTask accepts options the producer refuses: %v", err)
			}
		}
	})
}
