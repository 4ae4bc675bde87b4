package mlproducer

import (
	"encoding/json"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mlproducer/mlproducer/internal/jsonvalid"
)

// TaskType names the kind of ML work a message asks for. It picks the
// routing key (and so the queue) of the message and is written in the body's
// "type" field.
type TaskType string

// The task types the Producer publishes.
const (
	// TaskSummarization asks for a summary of a text ("content").
	TaskSummarization TaskType = "summarization"
	// TaskTranscription asks for the transcript of an audio or video file
	// ("mediaUrl").
	TaskTranscription TaskType = "transcription"
	// TaskEmbedding asks for a vector embedding of a text ("content").
	TaskEmbedding TaskType = "embedding"
)

// TaskVersion is the version of the JSON body written in its "version"
// field. Any change to the body's shape (a field added, removed or changed)
// comes with a new version; [DecodeTask] accepts this version only.
const TaskVersion = 1

// Routing keys, one per task type.
const (
	routingKeySummarization = "ml.summarization"
	routingKeyTranscription = "ml.transcription"
	routingKeyEmbedding     = "ml.embedding"
)

// RoutingKey returns the routing key of messages of type t on the ml.tasks
// exchange: "ml.summarization", "ml.transcription" or "ml.embedding". It
// returns "" for an unknown type. It does not allocate.
func (t TaskType) RoutingKey() string {
	switch t {
	case TaskSummarization:
		return routingKeySummarization
	case TaskTranscription:
		return routingKeyTranscription
	case TaskEmbedding:
		return routingKeyEmbedding
	}
	return ""
}

// valid reports whether t is one of the known task types.
func (t TaskType) valid() bool {
	return t.RoutingKey() != ""
}

// Limits on option values. The zero value of every option means "the
// model's default" and is always accepted.
const (
	maxSummaryLength   = 10000 // SummarizationOptions.MaxLength, words
	maxLanguageTag     = 35    // Language, bytes (ASCII)
	maxSpeakers        = 32    // TranscriptionOptions.MaxSpeakers
	maxModelName       = 128   // EmbeddingOptions.Model, bytes (ASCII)
	maxEmbeddingDims   = 8192  // EmbeddingOptions.Dimensions
	maxMessageID       = 128   // Message.ID and the body's messageId, bytes
	maxMediaURL        = 4096  // mediaUrl, bytes
	defaultMaxShareID  = 256
	defaultMaxContent  = 1 << 20
	defaultBodyOverrun = 64 << 10
)

// Summarization styles accepted in [SummarizationOptions.Style].
const (
	styleParagraph = "paragraph"
	styleBullets   = "bullets"
	styleHeadline  = "headline"
)

// SummarizationOptions tune a summarization task. The zero value asks for
// the model's defaults and is always valid.
type SummarizationOptions struct {
	// MaxLength is the longest summary wanted, in words: 0 (model default)
	// or 1 to 10000.
	MaxLength int `json:"maxLength,omitempty"`
	// Language is the language of the summary as a BCP 47 tag such as "en"
	// or "pt-BR", at most 35 characters; "" lets the model choose (usually
	// the language of the content). Only the tag's syntax is checked.
	Language string `json:"language,omitempty"`
	// Style is the shape of the summary: "" (model default), "paragraph",
	// "bullets" or "headline".
	Style string `json:"style,omitempty"`
}

// TranscriptionOptions tune a transcription task. The zero value asks for
// the model's defaults and is always valid.
type TranscriptionOptions struct {
	// Language is the spoken language as a BCP 47 tag such as "en" or
	// "pt-BR", at most 35 characters; "" asks the model to detect it.
	Language string `json:"language,omitempty"`
	// Diarization asks the model to tell speakers apart.
	Diarization bool `json:"diarization,omitempty"`
	// MaxSpeakers is the most speakers to tell apart: 0 (model default) or 1
	// to 32. A non-zero value requires Diarization.
	MaxSpeakers int `json:"maxSpeakers,omitempty"`
}

// EmbeddingOptions tune an embedding task. The zero value asks for the
// model's defaults and is always valid.
type EmbeddingOptions struct {
	// Model names the embedding model: "" (the consumer's default) or at
	// most 128 visible ASCII characters (0x21 to 0x7E, so no spaces).
	Model string `json:"model,omitempty"`
	// Dimensions is the length of the vector wanted: 0 (model default) or 1
	// to 8192.
	Dimensions int `json:"dimensions,omitempty"`
}

// Message is the generic form of a task, published as is by
// [Producer.Publish]; the typed methods such as
// [Producer.PublishSummarization] build one.
type Message struct {
	// Type is required; it picks the routing key (see [TaskType.RoutingKey])
	// and the AMQP "type" property.
	Type TaskType
	// ID is the AMQP message id, kept across retries so that consumers can
	// de-duplicate. Empty means the Producer generates a UUIDv7. If set, it
	// is 1 to 128 visible ASCII characters (0x21 to 0x7E, so no spaces).
	ID string
	// Body is the message body, sent as is. It is required and must be a
	// JSON object in valid UTF-8, at most the Producer's body limit (by
	// default 1 MiB + 64 KiB). The Producer does not check it against the
	// task schema: the typed methods write bodies that follow it.
	Body []byte
}

// taskLimits holds the validation limits that depend on the Producer's
// configuration. A zero or negative field means its default (see
// defaultTaskLimits), so the zero value is usable.
type taskLimits struct {
	maxShareID   int      // bytes; default 256
	maxContent   int      // bytes; default 1 MiB
	maxBody      int      // bytes; default maxContent + 64 KiB
	mediaSchemes []string // compared case-insensitively; default https, http, s3, gs
}

// defaultTaskLimits returns the default limits. The scheme slice is new on
// every call, so the caller may change it.
func defaultTaskLimits() taskLimits {
	return taskLimits{
		maxShareID:   defaultMaxShareID,
		maxContent:   defaultMaxContent,
		maxBody:      defaultMaxContent + defaultBodyOverrun,
		mediaSchemes: []string{"https", "http", "s3", "gs"},
	}
}

func (l *taskLimits) shareIDLimit() int {
	if l.maxShareID > 0 {
		return l.maxShareID
	}
	return defaultMaxShareID
}

func (l *taskLimits) contentLimit() int {
	if l.maxContent > 0 {
		return l.maxContent
	}
	return defaultMaxContent
}

func (l *taskLimits) bodyLimit() int {
	if l.maxBody > 0 {
		return l.maxBody
	}
	return l.contentLimit() + defaultBodyOverrun
}

// schemeAllowed reports whether scheme is in the configured list (or the
// default list when none is configured), ignoring case.
func (l *taskLimits) schemeAllowed(scheme string) bool {
	schemes := l.mediaSchemes
	if len(schemes) == 0 {
		schemes = []string{"https", "http", "s3", "gs"}
	}
	for _, s := range schemes {
		if strings.EqualFold(s, scheme) {
			return true
		}
	}
	return false
}

// invalid returns an *InvalidTaskError for field.
func invalid(field, reason string) error {
	return &InvalidTaskError{Field: field, Reason: reason}
}

// validateMessage checks a generic message before it is published. Errors
// are *InvalidTaskError with Field "type", "id" or "body".
func (l *taskLimits) validateMessage(m *Message) error {
	if m == nil {
		return invalid("body", "message is nil")
	}
	if m.Type == "" {
		return invalid("type", "is required")
	}
	if !m.Type.valid() {
		return invalid("type", `must be "summarization", "transcription" or "embedding"`)
	}
	if m.ID != "" {
		if err := checkMessageID("id", m.ID); err != nil {
			return err
		}
	}
	if len(m.Body) == 0 {
		return invalid("body", "is required")
	}
	if limit := l.bodyLimit(); len(m.Body) > limit {
		return invalid("body", "is longer than "+strconv.Itoa(limit)+" bytes")
	}
	if !utf8.Valid(m.Body) {
		return invalid("body", "is not valid UTF-8")
	}
	// jsonvalid decides exactly as encoding/json.Valid, about eight times
	// faster: this check runs on every Publish.
	if !jsonvalid.Valid(m.Body) {
		return invalid("body", "is not valid JSON")
	}
	if b := firstNonSpace(m.Body); b != '{' {
		return invalid("body", "is not a JSON object")
	}
	return nil
}

// firstNonSpace returns the first byte of b that is not JSON whitespace, or
// 0 if there is none.
func firstNonSpace(b []byte) byte {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		}
		return c
	}
	return 0
}

// validateSummarization checks the arguments of a summarization task.
// Errors are *InvalidTaskError naming "shareId", "content" or
// "options.<name>".
func (l *taskLimits) validateSummarization(shareID, content string, o *SummarizationOptions) error {
	if err := checkShareID(shareID, l.shareIDLimit()); err != nil {
		return err
	}
	if err := checkContent(content, l.contentLimit()); err != nil {
		return err
	}
	return checkSummarizationOptions(o)
}

// validateTranscription checks the arguments of a transcription task.
// Errors are *InvalidTaskError naming "shareId", "mediaUrl" or
// "options.<name>".
func (l *taskLimits) validateTranscription(shareID, mediaURL string, o *TranscriptionOptions) error {
	if err := checkShareID(shareID, l.shareIDLimit()); err != nil {
		return err
	}
	if err := checkMediaURL(mediaURL, l.schemeAllowed); err != nil {
		return err
	}
	return checkTranscriptionOptions(o)
}

// validateEmbedding checks the arguments of an embedding task. Errors are
// *InvalidTaskError naming "shareId", "content" or "options.<name>".
func (l *taskLimits) validateEmbedding(shareID, content string, o *EmbeddingOptions) error {
	if err := checkShareID(shareID, l.shareIDLimit()); err != nil {
		return err
	}
	if err := checkContent(content, l.contentLimit()); err != nil {
		return err
	}
	return checkEmbeddingOptions(o)
}

// checkMessageID checks a message id: 1 to 128 visible ASCII characters.
func checkMessageID(field, id string) error {
	if id == "" {
		return invalid(field, "is required")
	}
	if len(id) > maxMessageID {
		return invalid(field, "is longer than 128 bytes")
	}
	if !visibleASCII(id) {
		return invalid(field, "must be visible ASCII characters (0x21 to 0x7E)")
	}
	return nil
}

// visibleASCII reports whether every byte of s is in 0x21..0x7E.
func visibleASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

// checkShareID checks a share id: not blank, at most limit bytes (when
// limit > 0), valid UTF-8, no control characters.
func checkShareID(s string, limit int) error {
	if s == "" {
		return invalid("shareId", "is required")
	}
	if limit > 0 && len(s) > limit {
		return invalid("shareId", "is longer than "+strconv.Itoa(limit)+" bytes")
	}
	if !utf8.ValidString(s) {
		return invalid("shareId", "is not valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return invalid("shareId", "contains a control character")
		}
	}
	if strings.TrimSpace(s) == "" {
		return invalid("shareId", "is blank")
	}
	return nil
}

// checkContent checks a text to work on: not blank, at most limit bytes
// (when limit > 0), valid UTF-8.
func checkContent(s string, limit int) error {
	if s == "" {
		return invalid("content", "is required")
	}
	if limit > 0 && len(s) > limit {
		return invalid("content", "is longer than "+strconv.Itoa(limit)+" bytes")
	}
	if !utf8.ValidString(s) {
		return invalid("content", "is not valid UTF-8")
	}
	if strings.TrimSpace(s) == "" {
		return invalid("content", "is blank")
	}
	return nil
}

// checkMediaURL checks a media URL: at most 4096 bytes, absolute, with a
// scheme that allowed accepts, a host (the bucket for s3 and gs), and no
// user information. Reasons never repeat the URL, which may hold secrets.
func checkMediaURL(s string, allowed func(scheme string) bool) error {
	if s == "" {
		return invalid("mediaUrl", "is required")
	}
	if len(s) > maxMediaURL {
		return invalid("mediaUrl", "is longer than 4096 bytes")
	}
	if !utf8.ValidString(s) {
		return invalid("mediaUrl", "is not valid UTF-8")
	}
	// The error of url.Parse quotes the URL; it is not passed on.
	u, err := url.Parse(s)
	if err != nil {
		return invalid("mediaUrl", "is not a valid URL")
	}
	if u.Scheme == "" {
		return invalid("mediaUrl", "is not an absolute URL")
	}
	if !allowed(u.Scheme) {
		return invalid("mediaUrl", "scheme "+strconv.Quote(u.Scheme)+" is not allowed")
	}
	if u.User != nil {
		return invalid("mediaUrl", "must not contain user information; credentials do not belong in task bodies")
	}
	if u.Hostname() == "" {
		return invalid("mediaUrl", "has no host (for s3 and gs: no bucket)")
	}
	return nil
}

// anyScheme accepts every URL scheme; consumers decoding a body do not know
// the producer's list.
func anyScheme(string) bool { return true }

func checkSummarizationOptions(o *SummarizationOptions) error {
	if o == nil {
		return nil
	}
	if o.MaxLength < 0 || o.MaxLength > maxSummaryLength {
		return invalid("options.maxLength", "must be 0 (model default) or 1 to 10000 words")
	}
	if err := checkLanguage(o.Language); err != nil {
		return err
	}
	switch o.Style {
	case "", styleParagraph, styleBullets, styleHeadline:
	default:
		return invalid("options.style", `must be "", "paragraph", "bullets" or "headline"`)
	}
	return nil
}

func checkTranscriptionOptions(o *TranscriptionOptions) error {
	if o == nil {
		return nil
	}
	if err := checkLanguage(o.Language); err != nil {
		return err
	}
	if o.MaxSpeakers < 0 || o.MaxSpeakers > maxSpeakers {
		return invalid("options.maxSpeakers", "must be 0 (model default) or 1 to 32")
	}
	if o.MaxSpeakers != 0 && !o.Diarization {
		return invalid("options.maxSpeakers", "requires options.diarization")
	}
	return nil
}

func checkEmbeddingOptions(o *EmbeddingOptions) error {
	if o == nil {
		return nil
	}
	if len(o.Model) > maxModelName {
		return invalid("options.model", "is longer than 128 bytes")
	}
	if !visibleASCII(o.Model) {
		return invalid("options.model", "must be visible ASCII characters (0x21 to 0x7E)")
	}
	if o.Dimensions < 0 || o.Dimensions > maxEmbeddingDims {
		return invalid("options.dimensions", "must be 0 (model default) or 1 to 8192")
	}
	return nil
}

// checkLanguage checks the syntax of a BCP 47 language tag (RFC 5646): ""
// or subtags of 1 to 8 ASCII letters or digits joined by "-", the first of
// 2 to 8 letters, or the singleton "x" (private use) or "i" (grandfathered)
// followed by at least one more subtag; at most 35 characters. Whether the
// subtags are registered is not checked.
func checkLanguage(tag string) error {
	if tag == "" {
		return nil
	}
	if len(tag) > maxLanguageTag {
		return invalid("options.language", "is longer than 35 characters")
	}
	if !validLanguageTag(tag) {
		return invalid("options.language", `must be a BCP 47 language tag such as "en" or "pt-BR"`)
	}
	return nil
}

func validLanguageTag(tag string) bool {
	first, rest, more := strings.Cut(tag, "-")
	switch {
	case len(first) == 1:
		if c := first[0] | 0x20; c != 'x' && c != 'i' {
			return false
		}
		if !more {
			return false
		}
	case len(first) >= 2 && len(first) <= 8:
		for i := 0; i < len(first); i++ {
			if !isASCIILetter(first[i]) {
				return false
			}
		}
	default:
		return false
	}
	for more {
		var sub string
		sub, rest, more = strings.Cut(rest, "-")
		if len(sub) < 1 || len(sub) > 8 {
			return false
		}
		for i := 0; i < len(sub); i++ {
			if c := sub[i]; !isASCIILetter(c) && (c < '0' || c > '9') {
				return false
			}
		}
	}
	return true
}

func isASCIILetter(c byte) bool {
	c |= 0x20
	return c >= 'a' && c <= 'z'
}

// Body prefixes, one per task type, up to the opening quote of messageId.
const (
	prefixSummarization = `{"version":1,"type":"summarization","messageId":`
	prefixTranscription = `{"version":1,"type":"transcription","messageId":`
	prefixEmbedding     = `{"version":1,"type":"embedding","messageId":`
	// bodyOverhead is enough for the fixed parts of a body besides the
	// prefix: keys, quotes and the timestamp, with all options set.
	bodyOverhead = 256
)

// appendSummarizationBody appends the JSON body of a summarization task to
// dst and returns the extended slice:
//
//	{"version":1,"type":"summarization","messageId":id,"shareId":shareID,
//	 "content":content,"options":{...},"createdAt":"2006-01-02T15:04:05.000000000Z"}
//
// (on one line). o may be nil; zero options are left out, so "options" is
// {} when all are zero. created is written in UTC with nine fractional
// digits; its year must be 0 to 9999. The arguments are not validated: call
// validateSummarization first. Invalid UTF-8 is written as U+FFFD so the
// output is always valid JSON.
func appendSummarizationBody(dst []byte, id string, created time.Time, shareID, content string, o *SummarizationOptions) []byte {
	dst = slices.Grow(dst, len(prefixSummarization)+len(id)+len(shareID)+len(content)+bodyOverhead)
	dst = append(dst, prefixSummarization...)
	dst = appendJSONString(dst, id)
	dst = append(dst, `,"shareId":`...)
	dst = appendJSONString(dst, shareID)
	dst = append(dst, `,"content":`...)
	dst = appendJSONString(dst, content)
	dst = append(dst, `,"options":{`...)
	if o != nil {
		comma := false
		if o.MaxLength != 0 {
			dst = append(dst, `"maxLength":`...)
			dst = strconv.AppendInt(dst, int64(o.MaxLength), 10)
			comma = true
		}
		if o.Language != "" {
			dst = appendKey(dst, comma, `"language":`)
			dst = appendJSONString(dst, o.Language)
			comma = true
		}
		if o.Style != "" {
			dst = appendKey(dst, comma, `"style":`)
			dst = appendJSONString(dst, o.Style)
		}
	}
	return appendCreatedAt(dst, created)
}

// appendTranscriptionBody appends the JSON body of a transcription task to
// dst and returns the extended slice. It is like appendSummarizationBody
// with "mediaUrl" in place of "content". The arguments are not validated:
// call validateTranscription first.
func appendTranscriptionBody(dst []byte, id string, created time.Time, shareID, mediaURL string, o *TranscriptionOptions) []byte {
	dst = slices.Grow(dst, len(prefixTranscription)+len(id)+len(shareID)+len(mediaURL)+bodyOverhead)
	dst = append(dst, prefixTranscription...)
	dst = appendJSONString(dst, id)
	dst = append(dst, `,"shareId":`...)
	dst = appendJSONString(dst, shareID)
	dst = append(dst, `,"mediaUrl":`...)
	dst = appendJSONString(dst, mediaURL)
	dst = append(dst, `,"options":{`...)
	if o != nil {
		comma := false
		if o.Language != "" {
			dst = append(dst, `"language":`...)
			dst = appendJSONString(dst, o.Language)
			comma = true
		}
		if o.Diarization {
			dst = appendKey(dst, comma, `"diarization":true`)
			comma = true
		}
		if o.MaxSpeakers != 0 {
			dst = appendKey(dst, comma, `"maxSpeakers":`)
			dst = strconv.AppendInt(dst, int64(o.MaxSpeakers), 10)
		}
	}
	return appendCreatedAt(dst, created)
}

// appendEmbeddingBody appends the JSON body of an embedding task to dst and
// returns the extended slice. It is like appendSummarizationBody with the
// embedding options. The arguments are not validated: call
// validateEmbedding first.
func appendEmbeddingBody(dst []byte, id string, created time.Time, shareID, content string, o *EmbeddingOptions) []byte {
	dst = slices.Grow(dst, len(prefixEmbedding)+len(id)+len(shareID)+len(content)+bodyOverhead)
	dst = append(dst, prefixEmbedding...)
	dst = appendJSONString(dst, id)
	dst = append(dst, `,"shareId":`...)
	dst = appendJSONString(dst, shareID)
	dst = append(dst, `,"content":`...)
	dst = appendJSONString(dst, content)
	dst = append(dst, `,"options":{`...)
	if o != nil {
		comma := false
		if o.Model != "" {
			dst = append(dst, `"model":`...)
			dst = appendJSONString(dst, o.Model)
			comma = true
		}
		if o.Dimensions != 0 {
			dst = appendKey(dst, comma, `"dimensions":`)
			dst = strconv.AppendInt(dst, int64(o.Dimensions), 10)
		}
	}
	return appendCreatedAt(dst, created)
}

// appendKey appends key, preceded by a comma if comma is set.
func appendKey(dst []byte, comma bool, key string) []byte {
	if comma {
		dst = append(dst, ',')
	}
	return append(dst, key...)
}

// createdAtLayout is RFC 3339 with nine fractional digits, as written in
// UTC.
const createdAtLayout = "2006-01-02T15:04:05.000000000Z07:00"

// appendCreatedAt closes the options object, appends the createdAt field
// and closes the body.
func appendCreatedAt(dst []byte, t time.Time) []byte {
	dst = append(dst, `},"createdAt":"`...)
	dst = appendTimestamp(dst, t)
	return append(dst, '"', '}')
}

// appendTimestamp appends t in UTC as createdAtLayout does, without parsing
// the layout on every call.
func appendTimestamp(dst []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(dst, createdAtLayout)
	}
	hour, minute, sec := t.Clock()
	dst = appendDigits(dst, year, 4)
	dst = append(dst, '-')
	dst = appendDigits(dst, int(month), 2)
	dst = append(dst, '-')
	dst = appendDigits(dst, day, 2)
	dst = append(dst, 'T')
	dst = appendDigits(dst, hour, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, minute, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, sec, 2)
	dst = append(dst, '.')
	dst = appendDigits(dst, t.Nanosecond(), 9)
	return append(dst, 'Z')
}

// appendDigits appends the n low decimal digits of v (v >= 0), padded with
// zeros.
func appendDigits(dst []byte, v, n int) []byte {
	var buf [9]byte
	for i := n - 1; i >= 0; i-- {
		buf[i] = byte('0' + v%10)
		v /= 10
	}
	return append(dst, buf[:n]...)
}

// hexDigits are the digits of \u escapes, lower case as encoding/json
// writes them.
const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string, quotes included. It escapes
// as encoding/json does with HTML escaping off: '"' and '\\', control
// characters below U+0020 (\b, \f, \n, \r and \t in short form, others as
// \u00XX), U+2028 and U+2029 (which break JavaScript); each byte of invalid
// UTF-8 becomes \ufffd. Everything else, valid UTF-8 included, is copied as
// is.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		// Skip plain ASCII eight bytes at a time.
		for i+8 <= len(s) && plainASCII8(load64(s[i:])) {
			i += 8
		}
		if i == len(s) {
			break
		}
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// load64 returns the first eight bytes of s (len(s) >= 8) as a little-endian
// word; the compiler makes it one load.
func load64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// plainASCII8 reports whether none of the eight bytes of x needs attention
// from appendJSONString: each is ASCII, at least 0x20, and neither '"' nor
// '\\'. It tests the eight at once (SWAR). If a byte has its high bit set,
// x does. Otherwise every byte is below 0x80, and subtracting n from each
// sets a high bit (through a wrap-around) only if some byte is below n: with
// n = 0x20 on x that finds control characters, with n = 1 on x ^ '"' and
// x ^ '\\' it finds those two.
func plainASCII8(x uint64) bool {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	return (x|(x-ones*0x20)|((x^ones*'"')-ones)|((x^ones*'\\')-ones))&highs == 0
}

// Task is a decoded task body, for consumers written in Go. See
// [DecodeTask] and testdata/task.schema.json in the module for the format.
type Task struct {
	// Version is the body's format version, [TaskVersion].
	Version int `json:"version"`
	// Type is the task type.
	Type TaskType `json:"type"`
	// MessageID equals the AMQP message id; it stays the same across
	// retries, so use it to de-duplicate.
	MessageID string `json:"messageId"`
	// ShareID is the caller's identifier of the shared item the task is
	// about.
	ShareID string `json:"shareId"`
	// Content is the text to work on (summarization and embedding).
	Content string `json:"content,omitempty"`
	// MediaURL locates the audio or video to transcribe (transcription).
	MediaURL string `json:"mediaUrl,omitempty"`
	// Options is the options object as sent: unmarshal it into
	// [SummarizationOptions], [TranscriptionOptions] or [EmbeddingOptions]
	// according to Type. It is always a JSON object, {} when no option is
	// set.
	Options json.RawMessage `json:"options"`
	// CreatedAt is when the producer built the task, in UTC.
	CreatedAt time.Time `json:"createdAt"`
}

// Field names of a version 1 body.
const (
	fieldVersion   = "version"
	fieldType      = "type"
	fieldMessageID = "messageId"
	fieldShareID   = "shareId"
	fieldContent   = "content"
	fieldMediaURL  = "mediaUrl"
	fieldOptions   = "options"
	fieldCreatedAt = "createdAt"
)

// DecodeTask decodes and checks a task body. It accepts version 1 bodies
// whose fields have the types and ranges that testdata/task.schema.json
// documents; unknown fields are refused, since any change to the shape
// comes with a new version. It does not apply a producer's size limits or
// its list of media URL schemes, which consumers cannot know. Keys are
// matched exactly (encoding/json would ignore case).
//
// Every error is an [*InvalidTaskError] (so it wraps [ErrInvalidTask])
// whose Field names the offending field, for example "options.maxLength";
// it is "body" when the body is not a JSON object in valid UTF-8.
func DecodeTask(body []byte) (Task, error) {
	if !utf8.Valid(body) {
		return Task{}, invalid("body", "is not valid UTF-8")
	}
	if firstNonSpace(body) != '{' {
		return Task{}, invalid("body", "is not a JSON object")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		// The error may quote the content; it is not passed on.
		return Task{}, invalid("body", "is not valid JSON")
	}
	if err := checkKnownKeys("", fields, fieldVersion, fieldType, fieldMessageID,
		fieldShareID, fieldContent, fieldMediaURL, fieldOptions, fieldCreatedAt); err != nil {
		return Task{}, err
	}

	var t Task
	if err := decodeRequired(fields, fieldVersion, "a number", &t.Version); err != nil {
		return Task{}, err
	}
	if t.Version != TaskVersion {
		return Task{}, invalid(fieldVersion, "must be 1; this decoder knows version 1 only")
	}
	if err := decodeRequired(fields, fieldType, "a string", &t.Type); err != nil {
		return Task{}, err
	}
	if !t.Type.valid() {
		return Task{}, invalid(fieldType, `must be "summarization", "transcription" or "embedding"`)
	}
	if err := decodeRequired(fields, fieldMessageID, "a string", &t.MessageID); err != nil {
		return Task{}, err
	}
	if err := checkMessageID(fieldMessageID, t.MessageID); err != nil {
		return Task{}, err
	}
	if err := decodeRequired(fields, fieldShareID, "a string", &t.ShareID); err != nil {
		return Task{}, err
	}
	if err := checkShareID(t.ShareID, 0); err != nil {
		return Task{}, err
	}

	// Exactly one of content and mediaUrl, according to the type.
	want, other := fieldContent, fieldMediaURL
	dst := &t.Content
	if t.Type == TaskTranscription {
		want, other = fieldMediaURL, fieldContent
		dst = &t.MediaURL
	}
	if _, ok := fields[other]; ok {
		return Task{}, invalid(other, "is not allowed in a "+string(t.Type)+" task")
	}
	if err := decodeRequired(fields, want, "a string", dst); err != nil {
		return Task{}, err
	}
	if t.Type == TaskTranscription {
		if err := checkMediaURL(t.MediaURL, anyScheme); err != nil {
			return Task{}, err
		}
	} else if err := checkContent(t.Content, 0); err != nil {
		return Task{}, err
	}

	opts, ok := fields[fieldOptions]
	if !ok {
		return Task{}, invalid(fieldOptions, "is required")
	}
	if err := checkOptions(t.Type, opts); err != nil {
		return Task{}, err
	}
	t.Options = opts

	var created string
	if err := decodeRequired(fields, fieldCreatedAt, "a string", &created); err != nil {
		return Task{}, err
	}
	if !rfc3339Syntax(created) {
		return Task{}, invalid(fieldCreatedAt, "must be an RFC 3339 date-time such as 2026-01-02T03:04:05.000000006Z")
	}
	at, err := time.Parse(time.RFC3339Nano, created)
	if err != nil {
		return Task{}, invalid(fieldCreatedAt, "must be an RFC 3339 date-time such as 2026-01-02T03:04:05.000000006Z")
	}
	t.CreatedAt = at.UTC()
	return t, nil
}

// maxFieldName is the longest unknown key repeated in an error.
const maxFieldName = 64

// checkKnownKeys refuses the first (in sorted order) key of fields that is
// not in known. prefix is prepended to the key in the error's Field; an
// empty key is shown as "" and a long one is cut.
func checkKnownKeys(prefix string, fields map[string]json.RawMessage, known ...string) error {
	var unknown string
	found := false
	for k := range fields {
		if slices.Contains(known, k) {
			continue
		}
		if !found || k < unknown {
			unknown, found = k, true
		}
	}
	if found {
		switch {
		case unknown == "":
			unknown = `""`
		case len(unknown) > maxFieldName:
			unknown = strings.ToValidUTF8(unknown[:maxFieldName], "") + "..."
		}
		return invalid(prefix+unknown, "is not a known field")
	}
	return nil
}

// decodeRequired decodes fields[name] into v. A missing field, null, or a
// value of another JSON type is an error naming field; want says what the
// value should be ("a string").
func decodeRequired(fields map[string]json.RawMessage, name, want string, v any) error {
	raw, ok := fields[name]
	if !ok {
		return invalid(name, "is required")
	}
	return decodeValue(raw, name, want, v)
}

// decodeValue decodes raw into v, refusing null (which encoding/json would
// skip silently) and values of another type.
func decodeValue(raw json.RawMessage, field, want string, v any) error {
	if string(raw) == "null" {
		return invalid(field, "must be "+want+", not null")
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return invalid(field, "must be "+want)
	}
	return nil
}

// checkOptions checks that raw is an options object for task type typ:
// known keys only, values of the right types and in range.
func checkOptions(typ TaskType, raw json.RawMessage) error {
	if firstNonSpace(raw) != '{' {
		return invalid(fieldOptions, "must be a JSON object")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return invalid(fieldOptions, "must be a JSON object")
	}
	const p = "options."
	switch typ {
	case TaskSummarization:
		if err := checkKnownKeys(p, fields, "maxLength", "language", "style"); err != nil {
			return err
		}
		var o SummarizationOptions
		if err := decodeOptional(fields, "maxLength", "an integer", &o.MaxLength); err != nil {
			return err
		}
		if err := decodeOptional(fields, "language", "a string", &o.Language); err != nil {
			return err
		}
		if err := decodeOptional(fields, "style", "a string", &o.Style); err != nil {
			return err
		}
		return checkSummarizationOptions(&o)
	case TaskTranscription:
		if err := checkKnownKeys(p, fields, "language", "diarization", "maxSpeakers"); err != nil {
			return err
		}
		var o TranscriptionOptions
		if err := decodeOptional(fields, "language", "a string", &o.Language); err != nil {
			return err
		}
		if err := decodeOptional(fields, "diarization", "a boolean", &o.Diarization); err != nil {
			return err
		}
		if err := decodeOptional(fields, "maxSpeakers", "an integer", &o.MaxSpeakers); err != nil {
			return err
		}
		return checkTranscriptionOptions(&o)
	default: // TaskEmbedding; the caller checked the type.
		if err := checkKnownKeys(p, fields, "model", "dimensions"); err != nil {
			return err
		}
		var o EmbeddingOptions
		if err := decodeOptional(fields, "model", "a string", &o.Model); err != nil {
			return err
		}
		if err := decodeOptional(fields, "dimensions", "an integer", &o.Dimensions); err != nil {
			return err
		}
		return checkEmbeddingOptions(&o)
	}
}

// decodeOptional decodes the option name from fields into v if present.
func decodeOptional(fields map[string]json.RawMessage, name, want string, v any) error {
	raw, ok := fields[name]
	if !ok {
		return nil
	}
	return decodeValue(raw, "options."+name, want, v)
}

// rfc3339Syntax reports whether s has the shape
// YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM), as the schema's pattern
// says. time.Parse checks the values.
func rfc3339Syntax(s string) bool {
	const base = "0000-00-00T00:00:00"
	if len(s) < len(base)+1 {
		return false
	}
	for i := 0; i < len(base); i++ {
		if base[i] == '0' {
			if s[i] < '0' || s[i] > '9' {
				return false
			}
		} else if s[i] != base[i] {
			return false
		}
	}
	rest := s[len(base):]
	if rest[0] == '.' {
		n := 1
		for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
			n++
		}
		if n == 1 {
			return false
		}
		rest = rest[n:]
	}
	if rest == "Z" {
		return true
	}
	if len(rest) != 6 || (rest[0] != '+' && rest[0] != '-') || rest[3] != ':' {
		return false
	}
	for _, i := range [...]int{1, 2, 4, 5} {
		if rest[i] < '0' || rest[i] > '9' {
			return false
		}
	}
	return true
}
