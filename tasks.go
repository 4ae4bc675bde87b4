package mlproducer

import (
	"bytes"
	"encoding/json"
	"net/netip"
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

// DefaultMaxBodyBytes is the body limit of a Producer with the default
// [WithMaxContentBytes] (1 MiB of content plus 64 KiB for the rest of the
// body), and so the largest body [DecodeTask] accepts by default. A Producer
// refuses to publish a bigger body: a typed task whose content grows past it
// once escaped as JSON, or a [Message] whose Body is longer.
const DefaultMaxBodyBytes = defaultMaxContent + defaultBodyOverrun

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
	privateHosts bool     // WithPrivateMediaHosts: media URLs may name internal hosts
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

// tooLarge returns an *InvalidTaskError for field that wraps ErrTooLarge.
func tooLarge(field, reason string) error {
	return &InvalidTaskError{Field: field, Reason: reason, err: ErrTooLarge}
}

// checkBodySize refuses a typed task whose body, n bytes once encoded, is
// over the body limit. Escaping can make the body several times longer than
// the content: a quote or a backslash takes 2 bytes, a control character 2
// or 6, U+2028 and U+2029 6 (for 3), so content within its own limit can
// still make a body over this one.
func (l *taskLimits) checkBodySize(field string, n int) error {
	if limit := l.bodyLimit(); n > limit {
		return tooLarge(field, "makes a body of "+strconv.Itoa(n)+" bytes once escaped as JSON, over the body limit of "+
			strconv.Itoa(limit)+" bytes (quotes, backslashes and control characters take 2 to 6 bytes each)")
	}
	return nil
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
		return tooLarge("body", "is longer than "+strconv.Itoa(limit)+" bytes")
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

// validateSummarization checks the arguments of a summarization task and
// returns a capacity for its body with a generated message id (see
// typedBodySize). Errors are *InvalidTaskError naming "shareId", "content"
// or "options.<name>"; content that would make the body longer than the
// body limit is refused here, before the body is built.
func (l *taskLimits) validateSummarization(shareID, content string, o *SummarizationOptions) (int, error) {
	if err := checkShareID(shareID, l.shareIDLimit()); err != nil {
		return 0, err
	}
	if err := checkContent(content, l.contentLimit()); err != nil {
		return 0, err
	}
	if err := checkSummarizationOptions(o); err != nil {
		return 0, err
	}
	return l.typedBodySize(content, func(contentLen int) int {
		return summarizationBodyLen(generatedIDLen+2, jsonStringLen(shareID), contentLen, o)
	})
}

// validateTranscription checks the arguments of a transcription task and
// returns the exact length of its body with a generated message id. Errors are
// *InvalidTaskError naming "shareId", "mediaUrl" or "options.<name>".
func (l *taskLimits) validateTranscription(shareID, mediaURL string, o *TranscriptionOptions) (int, error) {
	if err := checkShareID(shareID, l.shareIDLimit()); err != nil {
		return 0, err
	}
	if err := l.checkMediaURL(mediaURL); err != nil {
		return 0, err
	}
	if err := checkTranscriptionOptions(o); err != nil {
		return 0, err
	}
	// The URL and the share id are short (with any limits a Producer can
	// be given, they fit): their length is always counted exactly.
	n := transcriptionBodyLen(generatedIDLen+2, jsonStringLen(shareID), jsonStringLen(mediaURL), o)
	return n, l.checkBodySize(fieldMediaURL, n)
}

// validateEmbedding checks the arguments of an embedding task and returns
// a capacity for its body, as validateSummarization does. Errors are
// *InvalidTaskError naming "shareId", "content" or "options.<name>".
func (l *taskLimits) validateEmbedding(shareID, content string, o *EmbeddingOptions) (int, error) {
	if err := checkShareID(shareID, l.shareIDLimit()); err != nil {
		return 0, err
	}
	if err := checkContent(content, l.contentLimit()); err != nil {
		return 0, err
	}
	if err := checkEmbeddingOptions(o); err != nil {
		return 0, err
	}
	return l.typedBodySize(content, func(contentLen int) int {
		return embeddingBodyLen(generatedIDLen+2, jsonStringLen(shareID), contentLen, o)
	})
}

// typedBodySize checks the size of a typed body with the given content
// before it is built, and returns a capacity to build it in. bodyLen gives
// the body's length for a content whose JSON string is contentLen bytes.
//
// Escaping at most multiplies the length of content by 6 (a control
// character becomes \u00XX), so content short enough to fit even then, as
// all but the largest is, is not read again: the capacity is then the
// body's length without escapes plus 1/16 for them (append grows the body
// if that is not enough). Longer content is read once more to count its
// escapes, the body's length is exact, and a body over the limit is refused
// with an error for the content that wraps ErrTooLarge.
func (l *taskLimits) typedBodySize(content string, bodyLen func(contentLen int) int) (int, error) {
	n := bodyLen(len(content) + 2)
	if n+5*len(content) <= l.bodyLimit() {
		return n + n/16, nil
	}
	n = bodyLen(jsonStringLen(content))
	return n, l.checkBodySize(fieldContent, n)
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

// checkContent checks a text to work on: not blank, at most limit bytes,
// valid UTF-8.
func checkContent(s string, limit int) error {
	if s == "" {
		return invalid("content", "is required")
	}
	if len(s) > limit {
		return tooLarge("content", "is longer than "+strconv.Itoa(limit)+" bytes")
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
// scheme that l allows, a host (the bucket for s3 and gs), no user
// information and, unless l allows private hosts, a host that is not
// internal (see internalHost). Reasons never repeat the URL, which may hold
// secrets.
func (l *taskLimits) checkMediaURL(s string) error {
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
	if !l.schemeAllowed(u.Scheme) {
		return invalid("mediaUrl", "scheme "+strconv.Quote(u.Scheme)+" is not allowed")
	}
	if u.User != nil {
		return invalid("mediaUrl", "must not contain user information; credentials do not belong in task bodies")
	}
	host := u.Hostname()
	if host == "" {
		return invalid("mediaUrl", "has no host (for s3 and gs: no bucket)")
	}
	if !l.privateHosts {
		if why := internalHost(host); why != "" {
			return invalid("mediaUrl", "host is "+why+"; workers fetch media URLs, so internal hosts are refused "+
				"(WithPrivateMediaHosts allows them, given to New and DecodeTask alike)")
		}
	}
	return nil
}

// Address ranges a media URL may not name by default, beside what netip
// classifies as loopback, private, link-local or unspecified.
var (
	// thisNetwork is 0.0.0.0/8: Linux connects 0.x.y.z to the local host.
	thisNetwork = netip.MustParsePrefix("0.0.0.0/8")
	// sharedSpace is 100.64.0.0/10 (carrier-grade NAT), where some clouds
	// put their metadata service (100.100.100.200).
	sharedSpace = netip.MustParsePrefix("100.64.0.0/10")
	// nat64 is 64:ff9b::/96, which embeds an IPv4 address.
	nat64 = netip.MustParsePrefix("64:ff9b::/96")
)

// internalHost says what kind of internal host host is ("a loopback
// address", ...), or returns "" for a host a worker may fetch from. host is
// a URL's Hostname: an IP literal in any form netip parses (IPv4, IPv6,
// IPv4-mapped IPv6, with a zone), or a name. Of names only "localhost" and
// its subdomains are refused: others are not resolved, so a name whose DNS
// points inside is not caught (a worker that must be safe from that checks
// the address it connects to). Numbers in the forms inet_aton reads (127.1,
// 2130706433, 0x7f.1) are refused too, since some resolvers take them for
// addresses.
func internalHost(host string) string {
	host = strings.TrimSuffix(host, ".")
	lower := strings.ToLower(host)
	if lower == "localhost" || strings.HasSuffix(lower, ".localhost") {
		return "localhost"
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		if numericHost(lower) {
			return "a number some resolvers read as an IP address; write an address in dotted decimal"
		}
		return ""
	}
	a = a.WithZone("").Unmap()
	if nat64.Contains(a) {
		b := a.As16()
		a = netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	}
	switch {
	case a == netip.MustParseAddr("169.254.169.254") || a == netip.MustParseAddr("fd00:ec2::254"):
		return "a cloud metadata address"
	case a.IsLoopback():
		return "a loopback address"
	case a.IsUnspecified() || thisNetwork.Contains(a):
		return "an unspecified address"
	case a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast():
		return "a link-local address"
	case a.IsPrivate() || sharedSpace.Contains(a):
		return "a private address"
	}
	return ""
}

// numericHost reports whether the last label of host (lower case) is a
// number, decimal or 0x hexadecimal: no top-level domain is, so such a host
// is an address in a form netip does not read.
func numericHost(host string) bool {
	label := host[strings.LastIndexByte(host, '.')+1:]
	digits := strings.TrimPrefix(label, "0x")
	if digits == "" {
		return label == "0x"
	}
	hex := len(digits) < len(label)
	for _, c := range digits {
		if !('0' <= c && c <= '9' || hex && 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

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
// validateSummarization first, which also returns the body's length, so
// that dst can have room for it (append grows dst otherwise). Invalid UTF-8
// is written as U+FFFD so the output is always valid JSON.
func appendSummarizationBody(dst []byte, id string, created time.Time, shareID, content string, o *SummarizationOptions) []byte {
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

// generatedIDLen is the length of a message id the Producer generates: a
// UUID in its 36-character text form, which needs no escaping.
const generatedIDLen = len("01890a5d-ac96-774b-bcce-b302099a8057")

// Lengths of the fixed parts of every body: the keys around the share id
// and the content (or media URL), and the tail around the timestamp.
const (
	lenShareIDKey = len(`,"shareId":`)
	lenContentKey = len(`,"content":`)
	lenMediaKey   = len(`,"mediaUrl":`)
	lenOptionsKey = len(`,"options":{`)
	lenTail       = len(`},"createdAt":"`) + len("2006-01-02T15:04:05.000000000Z") + len(`"}`)
)

// The lengths below are those of the bodies the append functions write, for
// a created time in the years 0 to 9999; each argument named *Len is the
// length of that string as a JSON string, quotes included (jsonStringLen).
// TestValidatorBodyLen and FuzzEncodeBody check them against the append
// functions.

// summarizationBodyLen returns len(appendSummarizationBody(...)).
func summarizationBodyLen(idLen, shareIDLen, contentLen int, o *SummarizationOptions) int {
	n := len(prefixSummarization) + idLen + lenShareIDKey + shareIDLen + lenContentKey + contentLen + lenOptionsKey + lenTail
	if o != nil {
		members := 0
		if o.MaxLength != 0 {
			n += len(`"maxLength":`) + intLen(o.MaxLength)
			members++
		}
		if o.Language != "" {
			n += len(`"language":`) + jsonStringLen(o.Language)
			members++
		}
		if o.Style != "" {
			n += len(`"style":`) + jsonStringLen(o.Style)
			members++
		}
		n += commas(members)
	}
	return n
}

// transcriptionBodyLen returns len(appendTranscriptionBody(...)).
func transcriptionBodyLen(idLen, shareIDLen, mediaURLLen int, o *TranscriptionOptions) int {
	n := len(prefixTranscription) + idLen + lenShareIDKey + shareIDLen + lenMediaKey + mediaURLLen + lenOptionsKey + lenTail
	if o != nil {
		members := 0
		if o.Language != "" {
			n += len(`"language":`) + jsonStringLen(o.Language)
			members++
		}
		if o.Diarization {
			n += len(`"diarization":true`)
			members++
		}
		if o.MaxSpeakers != 0 {
			n += len(`"maxSpeakers":`) + intLen(o.MaxSpeakers)
			members++
		}
		n += commas(members)
	}
	return n
}

// embeddingBodyLen returns len(appendEmbeddingBody(...)).
func embeddingBodyLen(idLen, shareIDLen, contentLen int, o *EmbeddingOptions) int {
	n := len(prefixEmbedding) + idLen + lenShareIDKey + shareIDLen + lenContentKey + contentLen + lenOptionsKey + lenTail
	if o != nil {
		members := 0
		if o.Model != "" {
			n += len(`"model":`) + jsonStringLen(o.Model)
			members++
		}
		if o.Dimensions != 0 {
			n += len(`"dimensions":`) + intLen(o.Dimensions)
			members++
		}
		n += commas(members)
	}
	return n
}

// commas returns the number of commas between n object members.
func commas(n int) int { return max(n-1, 0) }

// intLen returns the length of strconv.Itoa(v).
func intLen(v int) int {
	n := 1
	if v < 0 {
		n++ // the sign; the digits of v and -v are the same
	}
	for v /= 10; v != 0; v /= 10 {
		n++
	}
	return n
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

// jsonStringLen returns the length of what appendJSONString appends for s,
// quotes included: it follows appendJSONString byte for byte, without
// writing (at about 5 GB/s on plain ASCII; utf8.ValidString is faster
// still).
func jsonStringLen(s string) int {
	n := len(s) + 2
	for i := 0; i < len(s); {
		for i+8 <= len(s) && plainASCII8(load64(s[i:])) {
			i += 8
		}
		if i == len(s) {
			break
		}
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t':
				n++ // a short escape: 2 bytes for 1
			case c < 0x20:
				n += 5 // \u00XX: 6 bytes for 1
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			n += 5 // \ufffd: 6 bytes for 1
		case r == '\u2028' || r == '\u2029':
			n += 3 // \u202X: 6 bytes for 3
		}
		i += size
	}
	return n
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
