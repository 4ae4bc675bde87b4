package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/mlproducer/mlproducer"
)

const (
	// maxBodyBytes bounds a request body; larger ones get 413. The library
	// itself refuses content over 1 MiB (WithMaxContentBytes): a 413 too.
	maxBodyBytes = 2 << 20
	// publishTimeout bounds each publish: how long a request waits for the
	// hand-off and the broker's confirm. A message accepted but not yet
	// confirmed when it passes is answered 202 with state "pending".
	publishTimeout = 3 * time.Second
	// retryAfterCircuitOpen is the Retry-After (seconds) sent while the
	// circuit breaker is open: its default cooldown.
	retryAfterCircuitOpen = 30
	// retryAfterBusy is the Retry-After (seconds) sent when the retry queue
	// is full or the Producer is shutting down.
	retryAfterBusy = 5
	// maxEchoedName bounds a field name repeated in an error response, so
	// that a request cannot make the response larger than itself.
	maxEchoedName = 64
)

// gateway serves the ML task API over one Producer. It is two handlers:
// the gateway itself, the public API, and admin, for operators only.
type gateway struct {
	log      *slog.Logger
	timeout  time.Duration // per-publish bound
	draining atomic.Bool   // set at shutdown: /readyz answers 503
	mux      *http.ServeMux
	adminMux *http.ServeMux
}

// newMux returns the gateway's public HTTP handler:
//
//	POST /api/ml/summarize          {"shareId","content","options"}   -> 202 {"messageId","state"}
//	POST /api/ml/transcribe         {"shareId","mediaUrl","options"}
//	POST /api/ml/embed              {"shareId","content","options"}
//	GET  /healthz, /readyz          liveness, readiness
//
// Status and metrics are on [gateway.admin], served on a listener of its own.
func newMux(p *mlproducer.Producer, logger *slog.Logger) http.Handler {
	return newGateway(p, logger, publishTimeout)
}

func newGateway(p *mlproducer.Producer, logger *slog.Logger, timeout time.Duration) *gateway {
	g := &gateway{log: logger, timeout: timeout, mux: http.NewServeMux(), adminMux: http.NewServeMux()}

	g.mux.Handle("/api/ml/summarize", only(http.MethodPost, publishHandler(g, "summarization",
		func(ctx context.Context, r *summarizeRequest, o mlproducer.SummarizationOptions) (mlproducer.Receipt, error) {
			return p.PublishSummarization(ctx, r.ShareID, r.Content, o)
		})))
	g.mux.Handle("/api/ml/transcribe", only(http.MethodPost, publishHandler(g, "transcription",
		func(ctx context.Context, r *transcribeRequest, o mlproducer.TranscriptionOptions) (mlproducer.Receipt, error) {
			return p.PublishTranscription(ctx, r.ShareID, r.MediaURL, o)
		})))
	g.mux.Handle("/api/ml/embed", only(http.MethodPost, publishHandler(g, "embedding",
		func(ctx context.Context, r *embedRequest, o mlproducer.EmbeddingOptions) (mlproducer.Receipt, error) {
			return p.PublishEmbedding(ctx, r.ShareID, r.Content, o)
		})))

	// Status and metrics show the broker's address, the last connection
	// error and traffic figures: for operators, on the admin listener only.
	status := p.StatusHandler()
	g.adminMux.Handle("/api/ml/status", only(http.MethodGet, status))
	g.adminMux.Handle("/api/ml/metrics/json", only(http.MethodGet, status))
	g.adminMux.Handle("/api/ml/metrics/prometheus", only(http.MethodGet, p.MetricsHandler()))

	// The probes are on both: the kubelet reaches the pod's address, which
	// the admin listener may not listen on, and they tell only up or down.
	live := only(http.MethodGet, p.LivenessHandler())
	ready := p.ReadinessHandler()
	readyz := only(http.MethodGet, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.draining.Load() {
			writeError(w, http.StatusServiceUnavailable, "shutting down", "")
			return
		}
		ready.ServeHTTP(w, r)
	}))
	notFound := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The path is not repeated: the answer is the same for any.
		writeError(w, http.StatusNotFound, "no such endpoint", "")
	})
	for _, m := range []*http.ServeMux{g.mux, g.adminMux} {
		m.Handle("/healthz", live)
		m.Handle("/readyz", readyz)
		m.Handle("/", notFound)
	}
	return g
}

// admin returns the operators' handler, for the admin listener:
//
//	GET  /api/ml/status             Producer status (JSON)
//	GET  /api/ml/metrics/json       status plus counters (JSON)
//	GET  /api/ml/metrics/prometheus Prometheus text format
//	GET  /healthz, /readyz          liveness, readiness
func (g *gateway) admin() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { g.serve(g.adminMux, w, r) })
}

// drain makes /readyz fail, so that load balancers stop sending requests
// before the server shuts down. Requests still arriving are served.
func (g *gateway) drain() { g.draining.Store(true) }

// ServeHTTP serves the public API.
func (g *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) { g.serve(g.mux, w, r) }

// serve runs mux for one request, with the headers and the log line every
// response gets.
func (g *gateway) serve(mux *http.ServeMux, w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	// Every response is JSON or Prometheus text: never sniffed as HTML.
	w.Header().Set("X-Content-Type-Options", "nosniff")
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	mux.ServeHTTP(rec, r)
	level := slog.LevelInfo
	switch {
	case rec.status >= 500:
		level = slog.LevelWarn
	case isProbe(r.URL.Path) && rec.status < 300:
		level = slog.LevelDebug // probes and scrapes would drown the log
	}
	g.log.LogAttrs(r.Context(), level, "http request",
		slog.String("method", r.Method), slog.String("path", r.URL.Path),
		slog.Int("status", rec.status), slog.Duration("duration", time.Since(start)))
}

func isProbe(path string) bool {
	return path == "/healthz" || path == "/readyz" || strings.HasPrefix(path, "/api/ml/metrics/") || path == "/api/ml/status"
}

// The request bodies. Options are decoded in a second step into the
// library's option structs, so that an unknown option is reported with its
// full name ("options.maxLen"); their JSON names are those of the task body
// ("maxLength", "diarization"...).
type summarizeRequest struct {
	ShareID string `json:"shareId"`
	Content string `json:"content"`
	optionsField
}

type transcribeRequest struct {
	ShareID  string `json:"shareId"`
	MediaURL string `json:"mediaUrl"`
	optionsField
}

type embedRequest struct {
	ShareID string `json:"shareId"`
	Content string `json:"content"`
	optionsField
}

type optionsField struct {
	Options json.RawMessage `json:"options"`
}

func (o *optionsField) rawOptions() json.RawMessage { return o.Options }

// publishHandler decodes a request of type T and its options of type O
// strictly, and publishes it with the request's context bounded by the
// gateway's timeout. The body must be declared application/json: a browser
// sends another site's form (text/plain, form-urlencoded, multipart) without
// asking first, and such a request must not publish.
func publishHandler[T any, O any](g *gateway, taskType string, publish func(context.Context, *T, O) (mlproducer.Receipt, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
			writeError(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json", "")
			return
		}
		var req T
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
		if status, msg, field := decodeStrict(dec, &req, ""); status != 0 {
			writeError(w, status, msg, field)
			return
		}
		var opts O
		if raw := any(&req).(interface{ rawOptions() json.RawMessage }).rawOptions(); len(raw) > 0 && string(raw) != "null" {
			dec := json.NewDecoder(bytes.NewReader(raw))
			if status, msg, field := decodeStrict(dec, &opts, "options"); status != 0 {
				writeError(w, status, msg, field)
				return
			}
		}

		ctx, cancel := context.WithTimeout(r.Context(), g.timeout)
		defer cancel()
		receipt, err := publish(ctx, &req, opts)
		if err != nil {
			g.publishError(w, r, taskType, err)
			return
		}
		g.log.LogAttrs(r.Context(), slog.LevelInfo, "task accepted",
			slog.String("type", taskType), slog.String("messageId", receipt.MessageID),
			slog.String("state", receipt.State.String()))
		writeJSON(w, http.StatusAccepted, receipt)
	})
}

// publishError answers a publish that the Producer did not take. Each error
// means nothing was sent or kept, so the client may retry.
func (g *gateway) publishError(w http.ResponseWriter, r *http.Request, taskType string, err error) {
	var invalid *mlproducer.InvalidTaskError
	switch {
	case errors.As(err, &invalid) && errors.Is(err, mlproducer.ErrTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, invalid.Field+": "+invalid.Reason, invalid.Field)
	case errors.As(err, &invalid):
		writeError(w, http.StatusBadRequest, invalid.Field+": "+invalid.Reason, invalid.Field)
	case errors.Is(err, mlproducer.ErrInvalidTask):
		writeError(w, http.StatusBadRequest, err.Error(), "")
	case errors.Is(err, mlproducer.ErrCircuitOpen):
		w.Header().Set("Retry-After", fmt.Sprint(retryAfterCircuitOpen))
		writeError(w, http.StatusServiceUnavailable, "the message broker is failing; try again later", "")
	case errors.Is(err, mlproducer.ErrRetryQueueFull):
		w.Header().Set("Retry-After", fmt.Sprint(retryAfterBusy))
		writeError(w, http.StatusServiceUnavailable, "too many tasks waiting for the message broker; try again later", "")
	case errors.Is(err, mlproducer.ErrClosed):
		w.Header().Set("Retry-After", fmt.Sprint(retryAfterBusy))
		writeError(w, http.StatusServiceUnavailable, "shutting down; try again later", "")
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		// The request's deadline passed (or the client went away) before
		// the Producer took the task: it was not sent.
		writeError(w, http.StatusGatewayTimeout, "the task was not accepted in time; it was not sent", "")
	default:
		g.log.LogAttrs(r.Context(), slog.LevelError, "publish failed",
			slog.String("type", taskType), slog.Any("error", err))
		writeError(w, http.StatusInternalServerError, "internal error", "")
	}
}

// decodeStrict decodes exactly one JSON object from dec into v, refusing
// unknown fields. It returns 0 on success, or the status, message and
// offending field to answer with: 413 when the body is over maxBodyBytes,
// 400 otherwise. prefix ("options") is prepended to field names.
func decodeStrict(dec *json.Decoder, v any, prefix string) (status int, msg, field string) {
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// One value only: anything after it but white space is an error.
		_, err = dec.Token()
		if err == io.EOF {
			return 0, "", ""
		}
		if tooLarge := new(http.MaxBytesError); !errors.As(err, &tooLarge) {
			return http.StatusBadRequest, "request body has data after the JSON object", ""
		}
	}

	join := func(f string) string {
		switch {
		case prefix == "":
			return f
		case f == "":
			return prefix
		}
		return prefix + "." + f
	}
	var (
		tooLarge  *http.MaxBytesError
		syntaxErr *json.SyntaxError
		typeErr   *json.UnmarshalTypeError
	)
	const unknownKey = "json: unknown field "
	switch {
	case errors.As(err, &tooLarge):
		return http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", tooLarge.Limit), ""
	case errors.Is(err, io.EOF):
		return http.StatusBadRequest, "request body is empty; want a JSON object", ""
	case errors.Is(err, io.ErrUnexpectedEOF):
		return http.StatusBadRequest, "request body is truncated JSON", ""
	case errors.As(err, &syntaxErr):
		return http.StatusBadRequest, fmt.Sprintf("invalid JSON: %v", syntaxErr), ""
	case errors.As(err, &typeErr):
		f := join(typeErr.Field)
		return http.StatusBadRequest, fmt.Sprintf("%s: must be %s, not %s", fieldOrBody(f), jsonKind(typeErr.Type.Kind().String()), typeErr.Value), f
	case strings.HasPrefix(err.Error(), unknownKey):
		// encoding/json has no typed error for this one, and names the key
		// without its path: hence the separate decoding of options.
		f := join(shortName(strings.Trim(strings.TrimPrefix(err.Error(), unknownKey), `"`)))
		return http.StatusBadRequest, f + ": unknown field", f
	default:
		return http.StatusBadRequest, "invalid request body: " + err.Error(), join("")
	}
}

// shortName returns name, cut to maxEchoedName bytes (on a rune boundary)
// with "…" when longer.
func shortName(name string) string {
	if len(name) <= maxEchoedName {
		return name
	}
	cut := maxEchoedName
	for cut > 0 && !utf8.RuneStart(name[cut]) {
		cut--
	}
	return name[:cut] + "…"
}

func fieldOrBody(f string) string {
	if f == "" {
		return "request body"
	}
	return f
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "struct", "map":
		return "an object"
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "float32", "float64":
		return "a number"
	}
	return "a " + goKind
}

// errorBody is every error response: a message and, for a refused field,
// its name as in the request ("shareId", "options.maxLength").
type errorBody struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

func writeError(w http.ResponseWriter, status int, msg, field string) {
	writeJSON(w, status, errorBody{Error: msg, Field: field})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// only lets method through (GET also allows HEAD) and answers anything else
// with 405 and an Allow header.
func only(method string, h http.Handler) http.Handler {
	allow := method
	if method == http.MethodGet {
		allow = "GET, HEAD"
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method && !(method == http.MethodGet && r.Method == http.MethodHead) {
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed; use %s", r.Method, allow), "")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// statusRecorder remembers the status code written, for the access log.
type statusRecorder struct {
	http.ResponseWriter
	status  int
	written bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.written {
		s.status, s.written = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.written = true
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
