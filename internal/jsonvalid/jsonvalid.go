// Package jsonvalid reports whether a byte slice is one valid JSON value
// (RFC 8259), exactly as encoding/json.Valid does.
//
// It makes the same accept/reject decision as [encoding/json.Valid] for every
// input (FuzzValid checks this), including the parts where encoding/json is
// more lenient or stricter than one might guess:
//
//   - whitespace is exactly space, \t, \n and \r;
//   - strings are not checked for valid UTF-8 (any byte >= 0x20 other than
//     '"' and '\\' is accepted, including 0x7f and invalid UTF-8), and \u
//     escapes need four hex digits but are not checked for surrogate pairs;
//   - arrays and objects may nest at most 10000 deep.
//
// Unlike encoding/json's scanner, which calls a function pointer per byte,
// this package uses a non-recursive parser whose loop for string contents
// checks 16 bytes at a time, and finds the end of long runs of text with the
// vectorized [bytes.IndexByte]; it does not allocate unless the input nests
// deeper than 128 levels (and then one bit per level). It is about 28 times
// faster than encoding/json on a 16 KiB object with a long text field
// (BenchmarkValid16KiB), about 13 times on a 1 KiB one, and about 2.7 times
// on structure-heavy input (BenchmarkValidArray16KiB).
//
// For input it has validated, [Members] walks an object's members without
// copying them, and [Unquote] decodes a string token: together they read a
// small object without encoding/json's maps and copies, and see what
// encoding/json hides (duplicate keys, escaped lone surrogates).
package jsonvalid

import (
	"bytes"
	"encoding/binary"
	"math/bits"
)

// maxDepth is encoding/json's maxNestingDepth: how deep arrays and objects
// may nest. The 10001st nested '{' or '[' makes the input invalid, even when
// that container is empty.
const maxDepth = 10000

// Valid reports whether b is one valid JSON value, optionally surrounded by
// JSON whitespace, with the same result as encoding/json.Valid(b).
func Valid(b []byte) bool {
	_, ok := scan(b)
	return ok
}

// Object reports whether b is valid JSON (as [Valid] reports) and its
// top-level value is an object ({...}). Whitespace around the object is
// allowed.
func Object(b []byte) bool {
	first, ok := scan(b)
	return ok && first == '{'
}

// scan reports whether b is one valid JSON value and returns the first byte
// of that value (0 if b is all whitespace).
//
// The parser is a loop over values: the top of the loop parses one value
// (descending into an array or object pushes the byte that closes it onto
// stack and parses its first element), and the inner loop after a value
// consumes closing brackets, commas and object keys until another value
// must follow.
func scan(b []byte) (first byte, ok bool) {
	n := len(b)
	i := skipSpace(b, 0)
	if i >= n {
		return 0, false
	}
	first = b[i]

	// stack has one bit per open container, set for an object and clear
	// for an array: bit d%64 of word d/64 for the container at depth d
	// (the outermost at depth 0); depth counts them. The fixed array keeps
	// inputs up to 128 levels deep allocation-free, and the deepest valid
	// input needs 157 words.
	var fixed [2]uint64
	stack := fixed[:]
	depth := 0

	for {
		// A value must start at i (after optional whitespace).
		i = skipSpace(b, i)
		if i >= n {
			return first, false
		}
		switch c := b[i]; c {
		case '"':
			if i, ok = scanString(b, i+1); !ok {
				return first, false
			}
		case '{', '[':
			// encoding/json counts the container before looking inside,
			// so an empty one still counts toward the depth limit.
			if depth >= maxDepth {
				return first, false
			}
			closer := byte('}')
			if c == '[' {
				closer = ']'
			}
			i = skipSpace(b, i+1)
			if i < n && b[i] == closer {
				i++ // empty container: it is a complete value
				break
			}
			if depth/64 == len(stack) {
				stack = append(stack, 0)
			}
			if c == '{' {
				stack[depth/64] |= 1 << (depth % 64)
			} else {
				stack[depth/64] &^= 1 << (depth % 64)
			}
			depth++
			if c == '{' {
				if i, ok = scanKey(b, i); !ok {
					return first, false
				}
			}
			continue // parse the first element or member value
		case 't':
			if !hasLiteral(b, i, "true") {
				return first, false
			}
			i += len("true")
		case 'f':
			if !hasLiteral(b, i, "false") {
				return first, false
			}
			i += len("false")
		case 'n':
			if !hasLiteral(b, i, "null") {
				return first, false
			}
			i += len("null")
		default:
			if i, ok = scanNumber(b, i); !ok {
				return first, false
			}
		}

		// A value ended just before i. Close containers until a comma says
		// another value follows.
		for {
			i = skipSpace(b, i)
			if depth == 0 {
				return first, i == n // only whitespace may follow the top value
			}
			if i >= n {
				return first, false
			}
			closer := byte(']')
			if top := depth - 1; stack[top/64]&(1<<(top%64)) != 0 {
				closer = '}'
			}
			if b[i] == ',' {
				if closer == '}' {
					if i, ok = scanKey(b, i+1); !ok {
						return first, false
					}
				} else {
					i++
				}
				break // parse the next element or member value
			}
			if b[i] != closer {
				return first, false
			}
			depth--
			i++
		}
	}
}

// skipSpace returns the index of the first byte at or after i that is not
// JSON whitespace, or len(b).
func skipSpace(b []byte, i int) int {
	for i < len(b) {
		c := b[i]
		if c > ' ' || (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
			return i
		}
		i++
	}
	return i
}

// scanKey scans an object member's `"key" :` starting at b[i] (whitespace
// allowed before the key) and returns the index just after the colon.
func scanKey(b []byte, i int) (int, bool) {
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != '"' {
		return i, false
	}
	i, ok := scanString(b, i+1)
	if !ok {
		return i, false
	}
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != ':' {
		return i, false
	}
	return i + 1, true
}

// hasLiteral reports whether b[i:] starts with lit.
func hasLiteral(b []byte, i int, lit string) bool {
	return len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit
}

// scanNumber scans a JSON number starting at b[i] and returns the index just
// after it:
//
//	-? ( 0 | [1-9][0-9]* ) ( . [0-9]+ )? ( [eE] [+-]? [0-9]+ )?
//
// What follows the number is checked by the caller.
func scanNumber(b []byte, i int) (int, bool) {
	n := len(b)
	if b[i] == '-' {
		i++
		if i >= n {
			return i, false
		}
	}
	switch c := b[i]; {
	case c == '0':
		i++ // no leading zeros: "01" fails when the caller sees '1'
	case '1' <= c && c <= '9':
		i = skipDigits(b, i+1)
	default:
		return i, false
	}
	if i < n && b[i] == '.' {
		i++
		if i >= n || !isDigit(b[i]) {
			return i, false
		}
		i = skipDigits(b, i+1)
	}
	if i < n && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < n && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= n || !isDigit(b[i]) {
			return i, false
		}
		i = skipDigits(b, i+1)
	}
	return i, true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// skipDigits returns the index of the first byte at or after i that is not
// an ASCII digit, or len(b).
func skipDigits(b []byte, i int) int {
	for i < len(b) && isDigit(b[i]) {
		i++
	}
	return i
}

// SWAR ("SIMD within a register") constants: each repeats one byte 8 times.
const (
	ones   = 0x0101010101010101
	highs  = 0x8080808080808080
	quotes = '"' * ones
	slashs = '\\' * ones
	spaces = ' ' * ones
)

// stopBytes returns a mask with the high bit of a byte set where the
// corresponding byte of the little-endian word x is '"', '\\' or below 0x20:
// the bytes that end a run of plain string content.
//
// It uses the classic "has a zero byte" trick: (v - 0x01...) & ^v & 0x80...
// flags bytes of v that are zero, and (x - 0x20...) & ^x & 0x80... flags bytes
// of x below 0x20. A borrow can flag a byte above a flagged one by mistake,
// but never one below, so the lowest flagged byte is always a real stop byte.
// Bytes >= 0x80 (in UTF-8 sequences or not) are never flagged.
func stopBytes(x uint64) uint64 {
	q := x ^ quotes // zero where x has '"'
	s := x ^ slashs // zero where x has '\\'
	return (((q - ones) &^ q) | ((s - ones) &^ s) | ((x - spaces) &^ x)) & highs
}

// shortRun is how many plain bytes in a row scanString checks with stopBytes
// before it treats the string as text and hands it over to scanLong: keys and
// short values end (or reach an escape) within it and never pay for
// scanLong's searches.
const shortRun = 32

// probeRun is how many plain bytes after an escape scanLong checks word by
// word before it searches again: escapes that come every few bytes (\u00e9 in
// accented text) do not pay for a search each. (Measured on escapes every 36
// to 1000 bytes: with 32, scanLong is never slower than a word loop alone;
// 64 is faster on gaps of 36 to 60 bytes but 20-40% slower on gaps of 80 to
// 120, as in prose.)
const probeRun = 32

// scanString scans the rest of a string whose opening quote is just before
// b[i] and returns the index just after the closing quote.
//
// Like encoding/json, it rejects bytes below 0x20 and unknown escapes, and
// accepts every other byte, valid UTF-8 or not.
//
// It checks 16 bytes at a time with stopBytes (8 at a time near the end of
// b), takes the position of a stop byte from the two words' masks rather
// than testing them again (short strings end in their first 16 bytes), and
// after shortRun plain bytes in a row (text, not a key or a short value) it
// leaves the rest of the string to scanLong.
func scanString(b []byte, i int) (int, bool) {
	n := len(b)
	for {
		// Skip plain content 16, then 8 bytes at a time. (Two independent
		// words per step let the CPU overlap their arithmetic.)
		long := i + shortRun
		for n-i >= 16 {
			w := b[i : i+16]
			m0 := stopBytes(binary.LittleEndian.Uint64(w))
			m1 := stopBytes(binary.LittleEndian.Uint64(w[8:]))
			if m0|m1 != 0 {
				if m0 != 0 {
					i += bits.TrailingZeros64(m0) / 8
				} else {
					i += 8 + bits.TrailingZeros64(m1)/8
				}
				goto stop
			}
			i += 16
			if i >= long {
				return scanLong(b, i)
			}
		}
		for n-i >= 8 {
			m := stopBytes(binary.LittleEndian.Uint64(b[i:]))
			if m != 0 {
				i += bits.TrailingZeros64(m) / 8
				break
			}
			i += 8
		}
	stop:
		// Handle the stop byte at i, or the last few bytes one at a time.
		for {
			if i >= n {
				return i, false
			}
			c := b[i]
			if c == '"' {
				return i + 1, true
			}
			if c < 0x20 {
				return i, false
			}
			i++
			if c == '\\' {
				var ok bool
				if i, ok = scanEscape(b, i); !ok {
					return i, false
				}
				break // back to the fast loop
			}
		}
	}
}

// scanLong is scanString for the rest of a string from b[i], called once
// shortRun plain bytes in a row say that the string is text.
//
// It finds where a long run of plain bytes ends with the stdlib's vectorized
// bytes.IndexByte: the next '"' in the rest of b, then the next '\\' before
// that quote. The bytes before the nearer of the two need checking only for
// bytes below 0x20, one test per word (controlIndex) instead of stopBytes'
// three. On 16 KiB of text this is more than twice as fast as scanString's
// loop.
//
// The searches cannot go quadratic with many escapes: the position q of the
// next quote is kept until i passes it (only an escaped quote does that, and
// then the next search starts after it), and each search for a backslash
// stops at q or at the backslash it finds, so no byte is searched twice for
// either. And after each escape, up to probeRun bytes are first checked word
// by word, with the two tests of escapesOrControls ('"' cannot occur before
// q): frequent escapes pay no more than in scanString's loop.
func scanLong(b []byte, i int) (int, bool) {
	n := len(b)
	q := -1 // the next '"' at or after i, when q >= i (n: there is none)
	for {
		// A long run starts at i.
		if q < i {
			q = bytes.IndexByte(b[i:], '"')
			if q < 0 {
				q = n
			} else {
				q += i
			}
		}
		end := q
		if s := bytes.IndexByte(b[i:q], '\\'); s >= 0 {
			end = i + s
		}
		if c := controlIndex(b[i:end]); c >= 0 {
			return i + c, false
		}
		if end == q {
			if q == n {
				return n, false // unterminated
			}
			return q + 1, true
		}
		var ok bool
		if i, ok = scanEscape(b, end+1); !ok {
			return i, false
		}

		// After the escape: check up to probeRun bytes 16 at a time, while
		// they all come before q, and handle an escape found there (then
		// start again after it). A longer run, or the last 15 bytes before
		// q, go back to the searches.
		for k := 0; k < probeRun && q-i >= 16; k += 16 {
			w := b[i : i+16]
			m0 := escapesOrControls(binary.LittleEndian.Uint64(w))
			m1 := escapesOrControls(binary.LittleEndian.Uint64(w[8:]))
			if m0|m1 == 0 {
				i += 16
				continue
			}
			if m0 != 0 {
				i += bits.TrailingZeros64(m0) / 8
			} else {
				i += 8 + bits.TrailingZeros64(m1)/8
			}
			if b[i] < 0x20 {
				return i, false
			}
			if i, ok = scanEscape(b, i+1); !ok { // b[i] is '\\'
				return i, false
			}
			k = -16 // a new short run
		}
	}
}

// escapesOrControls is stopBytes without the test for '"': the mask flags
// '\\' and bytes below 0x20, with the same guarantee.
func escapesOrControls(x uint64) uint64 {
	s := x ^ slashs // zero where x has '\\'
	return (((s - ones) &^ s) | ((x - spaces) &^ x)) & highs
}

// controls returns a mask with the high bit of a byte set where the
// corresponding byte of the little-endian word x is below 0x20, and maybe in
// some bytes above such a byte (a borrow), never below: x has a control byte
// exactly when the mask is not zero, and the lowest flag is the first one.
func controls(x uint64) uint64 {
	return (x - spaces) &^ x & highs
}

// controlIndex returns the index of the first byte of s below 0x20, or -1.
// It checks 32 bytes at a time, then 8, then the last bytes in one word that
// overlaps bytes already checked.
func controlIndex(s []byte) int {
	i := 0
	for len(s)-i >= 32 {
		w := s[i : i+32]
		x0 := binary.LittleEndian.Uint64(w)
		x1 := binary.LittleEndian.Uint64(w[8:])
		x2 := binary.LittleEndian.Uint64(w[16:])
		x3 := binary.LittleEndian.Uint64(w[24:])
		if ((x0-spaces)&^x0|(x1-spaces)&^x1|(x2-spaces)&^x2|(x3-spaces)&^x3)&highs != 0 {
			break
		}
		i += 32
	}
	for len(s)-i >= 8 {
		if m := controls(binary.LittleEndian.Uint64(s[i:])); m != 0 {
			return i + bits.TrailingZeros64(m)/8
		}
		i += 8
	}
	if i == len(s) {
		return -1
	}
	if len(s) >= 8 {
		// The last word, overlapping bytes already checked (none of them
		// is a control byte, so the first flag is in the new bytes).
		j := len(s) - 8
		if m := controls(binary.LittleEndian.Uint64(s[j:])); m != 0 {
			return j + bits.TrailingZeros64(m)/8
		}
		return -1
	}
	for ; i < len(s); i++ {
		if s[i] < 0x20 {
			return i
		}
	}
	return -1
}

// scanEscape scans the escape whose backslash is just before b[i] and
// returns the index just after it.
func scanEscape(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return i, false
	}
	switch b[i] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return i + 1, true
	case 'u':
		if len(b)-i < 5 {
			return i, false
		}
		for _, h := range b[i+1 : i+5] {
			if !isHex(h) {
				return i, false
			}
		}
		return i + 5, true
	}
	return i, false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
