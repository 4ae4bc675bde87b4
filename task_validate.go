package mlproducer

import (
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/mlproducer/mlproducer/internal/jsonvalid"
)

// taskLimits holds the validation limits that depend on the Producer's
// configuration. A zero or negative field means its default (see
// defaultTaskLimits), so the zero value is usable.
type taskLimits struct {
	maxShareID   int      // bytes; default 256
	maxContent   int      // bytes; default 1 MiB
	maxBody      int      // bytes; default maxContent + 64 KiB
	mediaSchemes []string // compared case-insensitively; default https, http, s3, gs
	privateHosts bool     // WithPrivateMediaHosts: media URLs may name internal hosts
	// holdBytes, when > 0, is the most body bytes the Producer may hold
	// (its retry queue's byte capacity, or its spool's): a body over it
	// could never be taken, whatever the body limit allows. Set by New;
	// DecodeTask's limits leave it 0.
	holdBytes int
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
	return l.checkHeld(field, "makes a body of ", n)
}

// takeLimit is the largest body the Producer can take: the body limit, or
// holdBytes when that is less.
func (l *taskLimits) takeLimit() int {
	if limit := l.bodyLimit(); l.holdBytes <= 0 || limit <= l.holdBytes {
		return limit
	}
	return l.holdBytes
}

// checkHeld refuses a body of n bytes that is over what the Producer may
// hold: it would meet "no room" for good (Publish refused with
// ErrRetryQueueFull, which says to try again; PublishAsync waited until its
// ctx ended).
func (l *taskLimits) checkHeld(field, makes string, n int) error {
	if l.holdBytes > 0 && n > l.holdBytes {
		return tooLarge(field, makes+strconv.Itoa(n)+" bytes, more than the "+strconv.Itoa(l.holdBytes)+
			" bytes of bodies the Producer may hold (the byte capacity of WithRetryQueueCapacity, or of WithSpoolCapacity with a spool), so it could never be taken: raise that capacity to the body limit ("+
			strconv.Itoa(l.bodyLimit())+" bytes) or lower WithMaxContentBytes")
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
	if err := l.checkHeld("body", "is ", len(m.Body)); err != nil {
		return err
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
	if n+5*len(content) <= l.takeLimit() {
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
