package mlproducer

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mlproducer/mlproducer/internal/jsonvalid"
)

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

// Indexes of the fields of a version 1 body, in the order above.
const (
	idxVersion = iota
	idxType
	idxMessageID
	idxShareID
	idxContent
	idxMediaURL
	idxOptions
	idxCreatedAt
	numFields
)

// DecodeTask decodes and checks a task body, as a consumer receives it. It
// accepts the bodies a Producer with the same options sends, and nothing
// else: a version 1 body whose fields have the types and ranges that
// testdata/task.schema.json documents, checked with the Producer's rules
// and limits.
//
// It is meant for untrusted queue contents. A body longer than the body
// limit ([DefaultMaxBodyBytes] by default) is refused before it is read,
// and reading a body allocates at most about its size (the decoded strings)
// whatever its shape. A consumer of a Producer built with
// [WithMaxContentBytes], [WithMediaURLSchemes] or [WithPrivateMediaHosts] passes the same options
// here, so that both sides apply the same limits; opts may be the very list
// given to [New], since the other options are ignored. A body over the
// limit those options give is not one the Producer sent: reject it
// (dead-letter or drop it) rather than raise the limit for it.
//
// What it checks, beyond the schema's shape:
//   - the share id as the Producer does (at most 256 bytes, no control
//     characters, not blank; Unicode format characters such as U+202E are
//     allowed, so escape the share id before you display it), the content
//     (at most the content limit, not blank; any character, NUL included),
//     the media URL (one of the allowed schemes, by default https, http, s3
//     and gs; a host; no user information; by default not a loopback,
//     link-local, private, unspecified or cloud metadata address, nor
//     "localhost", see [WithPrivateMediaHosts]) and the options' ranges;
//   - every key once: a body with a repeated key, even one spelled with
//     escapes (\u0074ype), is refused, since JSON parsers disagree on what
//     it means (the first, the last, or an error);
//   - keys matched exactly (encoding/json would ignore case), and unknown
//     keys refused, since any change to the shape comes with a new version;
//   - valid UTF-8, with no escaped lone surrogate (\ud800 alone), which
//     encoding/json would turn into U+FFFD silently.
//
// Every error about the body is an [*InvalidTaskError] (so it wraps
// [ErrInvalidTask], and [ErrTooLarge] for a body or content over its limit)
// whose Field names the offending field, for example "options.maxLength";
// it is "body" when the body is too long or not a JSON object in valid
// UTF-8. When two fields are wrong, the first key that is unknown or
// repeated is reported, or else the first wrong field in the order of the
// schema. An option that [New] would refuse makes every call return that
// [*OptionError].
func DecodeTask(body []byte, opts ...Option) (Task, error) {
	var l taskLimits // the zero value means the defaults
	if len(opts) > 0 {
		var err error
		if l, err = decodeLimits(opts); err != nil {
			return Task{}, err
		}
	}
	return l.decodeTask(body)
}

// decodeLimits returns the task limits that opts give a Producer.
func decodeLimits(opts []Option) (taskLimits, error) {
	c := defaultConfig()
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if err := c.limits.validate(); err != nil {
		return taskLimits{}, err
	}
	return c.limits, nil
}

// maxContentLimit is the largest WithMaxContentBytes: RabbitMQ refuses a
// message over 512 MiB whatever its max_message_size says.
const maxContentLimit = 512<<20 - 64<<10

// validate checks the options that set the limits, for [New] and for
// [DecodeTask] alike.
func (l *taskLimits) validate() error {
	switch {
	case l.maxContent <= 0 || l.maxContent > maxContentLimit:
		return optErr("WithMaxContentBytes", l.maxContent, "must be from 1 to "+strconv.Itoa(maxContentLimit)+" (RabbitMQ refuses a message over 512 MiB)")
	case len(l.mediaSchemes) == 0:
		return optErr("WithMediaURLSchemes", "", "at least one scheme is required")
	}
	return nil
}

// decodeTask is DecodeTask with the limits of l. It reads body in three
// passes that allocate nothing (UTF-8, JSON syntax, the top-level members),
// then decodes each field's value on its own: only the strings and a copy
// of the options object are allocated.
func (l *taskLimits) decodeTask(body []byte) (Task, error) {
	if limit := l.bodyLimit(); len(body) > limit {
		return Task{}, tooLarge("body", "is "+strconv.Itoa(len(body))+" bytes, over the limit of "+strconv.Itoa(limit)+
			" bytes (a Producer given a larger WithMaxContentBytes sends larger bodies: give DecodeTask the same option)")
	}
	if !utf8.Valid(body) {
		return Task{}, invalid("body", "is not valid UTF-8")
	}
	if firstNonSpace(body) != '{' {
		return Task{}, invalid("body", "is not a JSON object")
	}
	if !jsonvalid.Valid(body) {
		return Task{}, invalid("body", "is not valid JSON")
	}
	names := [numFields]string{fieldVersion, fieldType, fieldMessageID, fieldShareID,
		fieldContent, fieldMediaURL, fieldOptions, fieldCreatedAt}
	var raw [numFields][]byte
	if err := splitMembers(body, "", names[:], raw[:]); err != nil {
		return Task{}, err
	}

	var t Task
	var err error
	if raw[idxVersion] == nil {
		return Task{}, invalid(fieldVersion, "is required")
	}
	if t.Version, err = decodeInt(raw[idxVersion], fieldVersion, "a number"); err != nil {
		return Task{}, err
	}
	if t.Version != TaskVersion {
		return Task{}, invalid(fieldVersion, "must be 1; this decoder knows version 1 only")
	}
	typ, err := decodeRequiredString(raw[idxType], fieldType)
	if err != nil {
		return Task{}, err
	}
	if t.Type = TaskType(typ); !t.Type.valid() {
		return Task{}, invalid(fieldType, `must be "summarization", "transcription" or "embedding"`)
	}
	if t.MessageID, err = decodeRequiredString(raw[idxMessageID], fieldMessageID); err != nil {
		return Task{}, err
	}
	if err := checkMessageID(fieldMessageID, t.MessageID); err != nil {
		return Task{}, err
	}
	if t.ShareID, err = decodeRequiredString(raw[idxShareID], fieldShareID); err != nil {
		return Task{}, err
	}
	if err := checkShareID(t.ShareID, l.shareIDLimit()); err != nil {
		return Task{}, err
	}

	// Exactly one of content and mediaUrl, according to the type.
	if t.Type == TaskTranscription {
		if raw[idxContent] != nil {
			return Task{}, invalid(fieldContent, "is not allowed in a transcription task")
		}
		if t.MediaURL, err = decodeRequiredString(raw[idxMediaURL], fieldMediaURL); err != nil {
			return Task{}, err
		}
		if err := l.checkMediaURL(t.MediaURL); err != nil {
			return Task{}, err
		}
	} else {
		if raw[idxMediaURL] != nil {
			return Task{}, invalid(fieldMediaURL, "is not allowed in a "+string(t.Type)+" task")
		}
		if t.Content, err = decodeRequiredString(raw[idxContent], fieldContent); err != nil {
			return Task{}, err
		}
		if err := checkContent(t.Content, l.contentLimit()); err != nil {
			return Task{}, err
		}
	}

	opts := raw[idxOptions]
	if opts == nil {
		return Task{}, invalid(fieldOptions, "is required")
	}
	if err := checkOptions(t.Type, opts); err != nil {
		return Task{}, err
	}
	t.Options = bytes.Clone(opts)

	created, err := decodeRequiredString(raw[idxCreatedAt], fieldCreatedAt)
	if err != nil {
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

// splitMembers puts the value of each member of the JSON object obj (valid
// JSON) named names[i] in values[i], as a sub-slice of obj. A key that is
// not in names, or that comes twice, is an error whose Field is prefix and
// the key. Keys are compared once unescaped, and exactly.
func splitMembers(obj []byte, prefix string, names []string, values [][]byte) error {
	for key, value := range jsonvalid.Members(obj) {
		i := memberIndex(key, names)
		if i < 0 {
			return invalid(prefix+shownKey(key), "is not a known field")
		}
		if values[i] != nil {
			return invalid(prefix+names[i], "appears more than once; JSON parsers disagree on what a repeated key means")
		}
		values[i] = value
	}
	return nil
}

// memberIndex returns the index in names of the string token key, or -1.
// A key without escapes is compared without allocating; one with escapes
// is unquoted only if it is short enough to be one of names.
func memberIndex(key []byte, names []string) int {
	name := key[1 : len(key)-1]
	if bytes.IndexByte(name, '\\') >= 0 {
		longest := 0
		for _, n := range names {
			longest = max(longest, len(n))
		}
		if len(name) > len(`\u0000`)*longest { // the longest spelling of an ASCII name
			return -1
		}
		s, ok := jsonvalid.Unquote(key)
		if !ok {
			return -1
		}
		return slices.Index(names, s)
	}
	for i, n := range names {
		if string(name) == n {
			return i
		}
	}
	return -1
}

// shownKey returns an unknown key as an error shows it: unescaped (or as
// written, if it escapes a lone surrogate or is long), "" shown as `""`, a
// long one cut.
func shownKey(key []byte) string {
	var s string
	ok := false
	if len(key) <= 16*maxFieldName {
		s, ok = jsonvalid.Unquote(key)
	}
	if !ok {
		s = string(key[1:min(len(key)-1, 1+maxFieldName+1)])
	}
	switch {
	case s == "":
		return `""`
	case len(s) > maxFieldName:
		return strings.ToValidUTF8(s[:maxFieldName], "") + "..."
	}
	return s
}

// decodeRequiredString decodes the string value raw of the field; raw nil
// means the field is missing.
func decodeRequiredString(raw []byte, field string) (string, error) {
	if raw == nil {
		return "", invalid(field, "is required")
	}
	return decodeString(raw, field)
}

// decodeString decodes the string value raw of field, refusing null (which
// encoding/json would skip silently), values of another type, and strings
// that escape a lone surrogate.
func decodeString(raw []byte, field string) (string, error) {
	if string(raw) == "null" {
		return "", invalid(field, "must be a string, not null")
	}
	if raw[0] != '"' {
		return "", invalid(field, "must be a string")
	}
	s, ok := jsonvalid.Unquote(raw)
	if !ok {
		return "", invalid(field, `is not valid Unicode: it escapes a lone surrogate (\ud800 to \udfff outside a pair)`)
	}
	return s, nil
}

// maxIntLen is the length of the longest int64, sign included.
const maxIntLen = len("-9223372036854775808")

// decodeInt decodes the number raw of field as an int, as encoding/json
// would: no fraction, no exponent, in range. want says what the value
// should be ("an integer").
func decodeInt(raw []byte, field, want string) (int, error) {
	if string(raw) == "null" {
		return 0, invalid(field, "must be "+want+", not null")
	}
	if c := raw[0]; c != '-' && (c < '0' || c > '9') || len(raw) > maxIntLen {
		return 0, invalid(field, "must be "+want)
	}
	n, err := strconv.Atoi(string(raw))
	if err != nil {
		return 0, invalid(field, "must be "+want)
	}
	return n, nil
}

// decodeBool decodes the boolean raw of field.
func decodeBool(raw []byte, field string) (bool, error) {
	switch string(raw) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	case "null":
		return false, invalid(field, "must be a boolean, not null")
	}
	return false, invalid(field, "must be a boolean")
}

// checkOptions checks that raw (valid JSON) is an options object for task
// type typ: known keys only, each once, values of the right types and in
// range.
func checkOptions(typ TaskType, raw []byte) error {
	if raw[0] != '{' {
		return invalid(fieldOptions, "must be a JSON object")
	}
	const p = "options."
	var v [3][]byte
	var err error
	switch typ {
	case TaskSummarization:
		names := [...]string{"maxLength", "language", "style"}
		if err := splitMembers(raw, p, names[:], v[:]); err != nil {
			return err
		}
		var o SummarizationOptions
		if v[0] != nil {
			if o.MaxLength, err = decodeInt(v[0], p+"maxLength", "an integer"); err != nil {
				return err
			}
		}
		if v[1] != nil {
			if o.Language, err = decodeString(v[1], p+"language"); err != nil {
				return err
			}
		}
		if v[2] != nil {
			if o.Style, err = decodeString(v[2], p+"style"); err != nil {
				return err
			}
		}
		return checkSummarizationOptions(&o)
	case TaskTranscription:
		names := [...]string{"language", "diarization", "maxSpeakers"}
		if err := splitMembers(raw, p, names[:], v[:]); err != nil {
			return err
		}
		var o TranscriptionOptions
		if v[0] != nil {
			if o.Language, err = decodeString(v[0], p+"language"); err != nil {
				return err
			}
		}
		if v[1] != nil {
			if o.Diarization, err = decodeBool(v[1], p+"diarization"); err != nil {
				return err
			}
		}
		if v[2] != nil {
			if o.MaxSpeakers, err = decodeInt(v[2], p+"maxSpeakers", "an integer"); err != nil {
				return err
			}
		}
		return checkTranscriptionOptions(&o)
	default: // TaskEmbedding; the caller checked the type.
		names := [...]string{"model", "dimensions"}
		if err := splitMembers(raw, p, names[:], v[:2]); err != nil {
			return err
		}
		var o EmbeddingOptions
		if v[0] != nil {
			if o.Model, err = decodeString(v[0], p+"model"); err != nil {
				return err
			}
		}
		if v[1] != nil {
			if o.Dimensions, err = decodeInt(v[1], p+"dimensions", "an integer"); err != nil {
				return err
			}
		}
		return checkEmbeddingOptions(&o)
	}
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
