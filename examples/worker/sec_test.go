package main

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"

	"github.com/mlproducer/mlproducer"
)

// From the security review.

// A RABBITMQ_URL whose password holds a raw '#', '/', '?' or '@' is refused
// without showing the password; a percent-encoded one is taken, and logged
// without its password in any form.
func TestWorkerURLPasswordNeverShown(t *testing.T) {
	for _, c := range []struct {
		url     string
		refused bool
	}{
		{"amqp://admin:#Secret99@rabbit:5672/", true},
		{"amqp://admin:/Secret99@rabbit:5672/", true},
		{"amqp://admin:?Secret99@rabbit:5672/", true},
		{"amqp://admin:p@ss?Secret99@rabbit/", true},
		{"amqp://admin:p@ss#Secret99@rabbit/", true},
		{"amqp://admin:Se:cr@et99@rabbit/", true},
		{"amqp://ok:ok@a/,amqp://admin:p@ss/Secret99@rabbit/", true},
		{"amqp://admin:p%40ss%23Secret99@rabbit:5672/vh", false},
		{"amqps://admin:Sec%2fret99@rabbit/", false},
	} {
		w, err := fromEnv(func(k string) string {
			if k == "RABBITMQ_URL" {
				return c.url
			}
			return ""
		})
		switch {
		case err != nil && strings.Contains(err.Error(), "et99"):
			t.Errorf("LEAK: fromEnv(%q): the error shows the password: %v", c.url, err)
		case err != nil && !c.refused:
			t.Errorf("fromEnv(%q) refused a percent-encoded password: %v", c.url, err)
		case err != nil && !strings.Contains(err.Error(), "percent-encode"):
			t.Errorf("fromEnv(%q): error %v does not say to percent-encode", c.url, err)
		case err == nil && c.refused:
			t.Errorf("fromEnv(%q) accepted a URL that reads two ways", c.url)
		}
		if err == nil && len(w.urls) == 0 {
			t.Errorf("fromEnv(%q): no URL", c.url)
		}
		for _, u := range strings.Split(c.url, ",") {
			if shown := redact(u); strings.Contains(shown, "et99") {
				t.Errorf("LEAK: the worker logs %q as %q", u, shown)
			}
		}
	}
	if got, want := redact("amqp://admin:p%40ss@rabbit:5672/vh%2Fa?heartbeat=5"), "amqp://admin:xxxxx@rabbit:5672/vh%2Fa"; got != want {
		t.Errorf("redact = %q, want %q", got, want)
	}
}

// No field of a task can end the worker's one-line-per-task output or forge
// a field: options are printed compact, and values with spaces or control
// characters quoted.
func TestWorkerOutputOneLinePerTask(t *testing.T) {
	for _, body := range []string{
		`{"version":1,"type":"summarization","messageId":"m1","shareId":"s","content":"c",` +
			"\"options\":{\n\n\"style\"   :   \"bullets\"  \n}" +
			`,"createdAt":"2026-01-02T03:04:05Z"}`,
		`{"version":1,"type":"transcription","messageId":"m2","shareId":"s","mediaUrl":"https://h/a b shareId=admin queue=ml.embedding","options":{},"createdAt":"2026-01-02T03:04:05Z"}`,
		`{"version":1,"type":"embedding","messageId":"m3","shareId":"s\u2028task x shareId=admin","content":"c","options":{"model":"m"},"createdAt":"2026-01-02T03:04:05Z"}`,
	} {
		task, err := mlproducer.DecodeTask([]byte(body))
		if err != nil {
			t.Logf("DecodeTask refuses %s: %v", body, err)
			continue
		}
		var out bytes.Buffer
		w := &worker{out: &out, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		if err := w.process("ml.x", "id\nqueue=forged", "1", false, &task); err != nil {
			t.Fatal(err)
		}
		line := out.String()
		if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") || strings.Contains(line, "\u2028") {
			t.Errorf("task %s: output is not one line:\n%s", task.MessageID, line)
		}
		keys, err := lineKeys(strings.TrimSuffix(line, "\n"))
		if want := "task " + string(task.Type) + " id shareId " + payloadKey(task) + " options attempt redelivered queue"; err != nil || keys != want {
			t.Errorf("task %s: fields %q (%v), want %q:\n%s", task.MessageID, keys, err, want, line)
		}
	}
}

func payloadKey(t mlproducer.Task) string {
	if t.Type == mlproducer.TaskTranscription {
		return "mediaUrl"
	}
	return "content"
}

// lineKeys reads an output line as "task <type>" and key=value fields, each
// value a bare word or a Go-quoted string, and returns "task <type>" and the
// keys, space-separated.
func lineKeys(line string) (string, error) {
	rest, ok := strings.CutPrefix(line, "task ")
	if !ok {
		return "", fmt.Errorf("no \"task \" at the start")
	}
	typ, rest, _ := strings.Cut(rest, " ")
	keys := []string{"task", typ}
	for rest != "" {
		key, after, ok := strings.Cut(rest, "=")
		if !ok || key == "" || strings.ContainsAny(key, " \"") {
			return strings.Join(keys, " "), fmt.Errorf("not a key=value field at %q", rest)
		}
		keys = append(keys, key)
		if strings.HasPrefix(after, `"`) {
			q, err := strconv.QuotedPrefix(after)
			if err != nil {
				return strings.Join(keys, " "), err
			}
			after = after[len(q):]
		} else if i := strings.IndexByte(after, ' '); i >= 0 {
			after = after[i:]
		} else {
			after = ""
		}
		if after != "" && !strings.HasPrefix(after, " ") {
			return strings.Join(keys, " "), fmt.Errorf("no space after the value of %s", key)
		}
		rest = strings.TrimPrefix(after, " ")
	}
	return strings.Join(keys, " "), nil
}

// Each output field reads back as the value it came from: a bare word as it
// is, a quoted one unquoted. So a value that looks quoted is quoted again.
func TestWorkerTokenReadsBack(t *testing.T) {
	for _, s := range []string{"", "plain", `"admin"`, `a"b`, `\`, `\"x`, "a b", "a\nb", "caf\u00e9", "\u2028", `x=1 y=2`} {
		tok := token(s)
		got := tok
		if strings.HasPrefix(tok, `"`) {
			var err error
			if got, err = strconv.Unquote(tok); err != nil {
				t.Errorf("token(%q) = %s: not a Go string: %v", s, tok, err)
				continue
			}
		}
		if got != s || strings.ContainsAny(tok, " \n") && !strings.HasPrefix(tok, `"`) {
			t.Errorf("token(%q) = %s reads back as %q", s, tok, got)
		}
	}
}
