package mlproducer

import (
	"strconv"
	"time"
	"unicode/utf8"
)

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
	dst = appendBodyHead(dst, prefixSummarization, id, shareID, `,"content":`, content)
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

// appendBodyHead appends what every task body starts with: its prefix, the
// message and share ids, the content or media URL under key (with its
// leading comma and colon), and the opening of "options".
func appendBodyHead(dst []byte, prefix, id, shareID, key, value string) []byte {
	dst = append(dst, prefix...)
	dst = appendJSONString(dst, id)
	dst = append(dst, `,"shareId":`...)
	dst = appendJSONString(dst, shareID)
	dst = append(dst, key...)
	dst = appendJSONString(dst, value)
	return append(dst, `,"options":{`...)
}

// appendTranscriptionBody appends the JSON body of a transcription task to
// dst and returns the extended slice. It is like appendSummarizationBody
// with "mediaUrl" in place of "content". The arguments are not validated:
// call validateTranscription first.
func appendTranscriptionBody(dst []byte, id string, created time.Time, shareID, mediaURL string, o *TranscriptionOptions) []byte {
	dst = appendBodyHead(dst, prefixTranscription, id, shareID, `,"mediaUrl":`, mediaURL)
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
	dst = appendBodyHead(dst, prefixEmbedding, id, shareID, `,"content":`, content)
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
