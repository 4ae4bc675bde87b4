package jsonvalid

import (
	"bytes"
	"iter"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Members returns the members of the JSON object b, in the order they appear:
// each key as it is written (a string token, quotes included) and its value
// as it is written (without the whitespace around it). Nothing is copied: both
// are sub-slices of b, and walking b allocates nothing.
//
// b must be valid JSON whose top-level value is an object, as [Object]
// reports; Members does not check it again. On other input it yields what it
// can make sense of and stops, without panicking.
func Members(b []byte) iter.Seq2[[]byte, []byte] {
	return func(yield func(key, value []byte) bool) {
		i := skipSpace(b, 0)
		if i >= len(b) || b[i] != '{' {
			return
		}
		i = skipSpace(b, i+1)
		for i < len(b) && b[i] == '"' {
			end, ok := scanString(b, i+1)
			if !ok {
				return
			}
			key := b[i:end]
			i = skipSpace(b, end)
			if i >= len(b) || b[i] != ':' {
				return
			}
			i = skipSpace(b, i+1)
			end, ok = skipValue(b, i)
			if !ok || !yield(key, b[i:end]) {
				return
			}
			i = skipSpace(b, end)
			if i >= len(b) || b[i] != ',' {
				return
			}
			i = skipSpace(b, i+1)
		}
	}
}

// skipValue returns the index just after the valid JSON value that starts at
// b[i].
func skipValue(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return i, false
	}
	switch b[i] {
	case '"':
		return scanString(b, i+1)
	case '{', '[':
		// The value is valid, so counting brackets outside strings finds
		// its end.
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				var ok bool
				if i, ok = scanString(b, i+1); !ok {
					return i, false
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, true
				}
			}
			i++
		}
		return i, false
	}
	// A number or a literal ends at a delimiter or at the end of b.
	start := i
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i, i > start
		}
		i++
	}
	return i, i > start
}

// Unquote returns the text of the JSON string token s (quotes included), as
// [Valid] accepts it, with its escapes decoded.
//
// ok is false if s is not a string token or if it escapes a lone UTF-16
// surrogate (\ud800 to \udfff outside a high-low pair), which stands for no
// character: encoding/json turns one into U+FFFD, other decoders keep it or
// fail, so its meaning depends on the reader. The bytes of s between escapes
// are copied as they are; check them for valid UTF-8 first if it matters.
//
// Without escapes, Unquote allocates the result only; with escapes, one
// buffer of len(s) bytes at most.
func Unquote(s []byte) (text string, ok bool) {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return "", false
	}
	s = s[1 : len(s)-1]
	first := bytes.IndexByte(s, '\\')
	if first < 0 {
		return string(s), true
	}
	var out strings.Builder
	out.Grow(len(s))
	out.Write(s[:first])
	for i := first; i < len(s); {
		c := s[i]
		if c != '\\' {
			next := bytes.IndexByte(s[i:], '\\')
			if next < 0 {
				out.Write(s[i:])
				break
			}
			out.Write(s[i : i+next])
			i += next
			continue
		}
		if i+1 >= len(s) {
			return "", false
		}
		switch e := s[i+1]; e {
		case '"', '\\', '/':
			out.WriteByte(e)
		case 'b':
			out.WriteByte('\b')
		case 'f':
			out.WriteByte('\f')
		case 'n':
			out.WriteByte('\n')
		case 'r':
			out.WriteByte('\r')
		case 't':
			out.WriteByte('\t')
		case 'u':
			r, ok := hex4(s, i+2)
			if !ok {
				return "", false
			}
			i += 6
			if utf16.IsSurrogate(r) {
				// Only a high surrogate followed by an escaped low one
				// makes a character.
				if r >= 0xdc00 || i+6 > len(s) || s[i] != '\\' || s[i+1] != 'u' {
					return "", false
				}
				lo, ok := hex4(s, i+2)
				if !ok {
					return "", false
				}
				if r = utf16.DecodeRune(r, lo); r == utf8.RuneError {
					return "", false
				}
				i += 6
			}
			out.WriteRune(r)
			continue
		default:
			return "", false
		}
		i += 2
	}
	return out.String(), true
}

// hex4 decodes the four hex digits at s[i:i+4].
func hex4(s []byte, i int) (rune, bool) {
	if i+4 > len(s) {
		return 0, false
	}
	var r rune
	for _, c := range s[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}
