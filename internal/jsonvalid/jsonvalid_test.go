package jsonvalid

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math/bits"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// cases are tricky inputs; want is what encoding/json.Valid says (checked by
// TestCases too, so a wrong expectation here cannot hide a difference).
var cases = []struct {
	in   string
	want bool
}{
	// Empty and whitespace.
	{"", false},
	{" ", false},
	{" \t\r\n", false},
	{"\v1", false},
	{"1\f", false},
	{"\u00a01", false}, // NBSP is not JSON whitespace
	{" \t\r\n1 \t\r\n", true},
	{"\x00", false},

	// Literals.
	{"true", true},
	{"false", true},
	{"null", true},
	{"tru", false},
	{"truee", false},
	{"True", false},
	{"nul", false},
	{"nulll", false},
	{"fals", false},
	{"falsey", false},
	{"true false", false},
	{"[true,false,null]", true},
	{"[truefalse]", false},
	{"NaN", false},
	{"Infinity", false},

	// Numbers.
	{"0", true},
	{"-0", true},
	{"1", true},
	{"-1", true},
	{"123456789012345678901234567890", true},
	{"01", false},
	{"-01", false},
	{"00", false},
	{"+1", false},
	{"-", false},
	{"--1", false},
	{"1.", false},
	{".1", false},
	{"1.5", true},
	{"0.0", true},
	{"1.e5", false},
	{"1e", false},
	{"1e+", false},
	{"1e-", false},
	{"1e5", true},
	{"1E5", true},
	{"1e+5", true},
	{"1e-5", true},
	{"1.5e05", true},
	{"-0.0e-0", true},
	{"1e5.5", false},
	{"1ee5", false},
	{"0x10", false},
	{"1_000", false},
	{"1 2", false},
	{"[01]", false},
	{"[1,-]", false},
	{"[-0.5e+10,0]", true},
	{"{\"a\":-}", false},
	{"1.5.", false},

	// Strings and escapes.
	{`""`, true},
	{`"`, false},
	{`"abc`, false},
	{`"abc"`, true},
	{`"abc""`, false},
	{`"\"\\\/\b\f\n\r\t"`, true},
	{`"\a"`, false},
	{`"\x41"`, false},
	{`"\'"`, false},
	{`"\0"`, false},
	{`"\U0041"`, false},
	{`"\u0041"`, true},
	{`"\uABCD\uabcd\u09aF"`, true},
	{`"\u004"`, false},
	{`"\u004g"`, false},
	{`"\uD800"`, true}, // lone surrogates are accepted
	{`"\uDC00\uD800"`, true},
	{`"\u"`, false},
	{`"\`, false},
	{`"\"`, false},
	{`"\\"`, true},
	{`"\\\"`, false},
	{`"abcdefgh\u00e9ijklmnop"`, true},
	{`"abcdefghijklmnopq\`, false},
	{"\"a\x00b\"", false},
	{"\"a\x1fb\"", false},
	{"\"a\tb\"", false},
	{"\"a\nb\"", false},
	{"\"0123456789abcde\nf\"", false},
	{"\"a\x7fb\"", true},
	{"\"a\x20b\"", true},
	{"\"h\u00e9llo \u4e16\u754c \U0001F600\"", true},
	{"\"\xff\xfe\"", true},         // invalid UTF-8 is accepted inside strings
	{"\"\xed\xa0\x80\"", true},     // UTF-8-encoded surrogate
	{"\"\xc0\xaf01234567\"", true}, // overlong encoding
	{"\"\x80\x80\x80\x80\x80\x80\x80\x80\x80\"", true},
	{"\xff", false}, // but not outside them
	{"\"a\"\xff", false},
	{"{\"\xff\":1}", true},
	{"'a'", false},

	// Arrays.
	{"[]", true},
	{"[ ]", true},
	{"[", false},
	{"]", false},
	{"[1", false},
	{"[1,", false},
	{"[1,]", false},
	{"[,1]", false},
	{"[,]", false},
	{"[1 2]", false},
	{"[1,,2]", false},
	{"[[]]", true},
	{"[[],[[]],{}]", true},
	{"[}", false},
	{"[1}", false},
	{"[]]", false},
	{"[][]", false},
	{" [ 1 , 2 ] ", true},

	// Objects.
	{"{}", true},
	{"{ }", true},
	{"{", false},
	{"}", false},
	{`{"a"}`, false},
	{`{"a":}`, false},
	{`{"a":1}`, true},
	{`{"a":1,}`, false},
	{`{,"a":1}`, false},
	{`{"a":1 "b":2}`, false},
	{`{"a":1,"b":2}`, true},
	{`{"a":1,"a":2}`, true}, // duplicate keys are valid
	{`{a:1}`, false},
	{`{1:1}`, false},
	{`{"a"::1}`, false},
	{`{"a" 1}`, false},
	{`{"a":1]`, false},
	{`{"a":[}`, false},
	{`{"a":{"b":[1,{"c":null}]}}`, true},
	{" \n{ \"a\" : 1 , \"b\" : [ ] } \n", true},
	{`{"a":1}}`, false},
	{`{"a":1}{}`, false},
	{`{"a\u0022":"\"}"}`, true},
	{`{"":""}`, true},

	// Long strings (scanLong): runs of 32 plain bytes or more.
	{`"` + long40 + `"`, true},
	{`"` + long40, false},
	{`"` + long40 + `\`, false},
	{`"` + long40 + `\"`, false},
	{`"` + long40 + `\\"`, true},
	{`"` + long40 + `\u00e`, false},
	{`"` + long40 + `\u00e9"`, true},
	{`"` + long40 + `\"` + long40 + `"`, true},
	{`"` + long40 + `\""`, true},
	{`"` + long40 + `\"\""`, true},
	{`"` + long40 + `\"` + long40, false},
	{`"` + long40 + `\"` + long40 + `\"` + long40 + `"`, true},
	{`"` + long40 + long40 + "\x1f\"", false},
	{`"` + long40 + long40 + "\x00", false},
	{`"` + long40 + "\t" + long40 + `"`, false},
	{`"` + long40 + `\n` + long40 + "\n" + long40 + `"`, false},
	{`"` + long40 + `\n` + long40 + `\q` + long40 + `"`, false},
	{`"` + long40 + `\n\n\n\u00e9\u00E9x\"` + long40 + `"`, true},
	{`["` + long40 + `","` + long40 + `"]`, true},
	{`["` + long40 + `",` + long40 + `"]`, false},
	{`{"` + long40 + `":"` + long40 + `\\"}`, true},
	{`{"` + long40 + `":"` + long40 + `\\\"}`, false},
	{`"` + long40 + "\x7f\x80\xff\"", true},
}

// long40 is 40 plain bytes: enough for scanString to hand a string over to
// scanLong.
const long40 = "0123456789abcdefghijklmnopqrstuvwxyzABCD"

func TestCases(t *testing.T) {
	for _, tc := range cases {
		in := []byte(tc.in)
		if std := json.Valid(in); std != tc.want {
			t.Errorf("bad expectation for %q: encoding/json.Valid = %v", tc.in, std)
		}
		if got := Valid(in); got != tc.want {
			t.Errorf("Valid(%q) = %v, want %v", tc.in, got, tc.want)
		}
		wantObj := tc.want && firstNonSpace(in) == '{'
		if got := Object(in); got != wantObj {
			t.Errorf("Object(%q) = %v, want %v", tc.in, got, wantObj)
		}
	}
}

// TestStringPositions moves every interesting byte through every position of
// strings long enough to exercise the 16- and 8-byte loops and the tail.
func TestStringPositions(t *testing.T) {
	specials := []string{`"`, `\`, `\n`, `\u00e9`, `\u00g9`, `\q`, "\x00", "\x1f", "\x20", "\x7f", "\x80", "\xff", "é"}
	for n := 0; n < 40; n++ {
		for pos := 0; pos <= n; pos++ {
			for _, sp := range specials {
				s := `"` + strings.Repeat("a", pos) + sp + strings.Repeat("b", n-pos) + `"`
				check(t, []byte(s))
				check(t, []byte(`{"k":`+s+`}`))
				check(t, []byte(s[:len(s)-1])) // unterminated
			}
		}
	}
}

// TestLongStringPositions moves every interesting byte through every
// position of strings of the lengths where word loops change (7, 8, 15, 16,
// 17 ... 65 bytes), after prefixes that make scanString hand over to scanLong
// at different offsets, and after escapes (an escaped quote is a '"' before
// the closing one that scanLong must step over).
func TestLongStringPositions(t *testing.T) {
	specials := []string{`"`, `\`, `\"`, `\n`, `\u00e9`, `\u00g9`, `\q`, "\x00", "\x1f", "\x20", "\x7f", "\x80", "\xff"}
	plain := func(n int) string { return strings.Repeat("p", n) }
	prefixes := []string{
		"", plain(16), plain(31), plain(32), plain(33), plain(48), plain(100),
		plain(40) + `\n`, plain(40) + `\"`, plain(40) + `\"` + plain(40),
		plain(40) + `\"` + plain(5) + `\u00e9`, plain(40) + `\\` + plain(20) + `\n` + plain(35),
	}
	for _, prefix := range prefixes {
		for _, n := range []int{7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65} {
			for pos := 0; pos <= n; pos++ {
				for _, sp := range specials {
					s := `"` + prefix + plain(pos) + sp + strings.Repeat("b", n-pos) + `"`
					check(t, []byte(s))
					check(t, []byte(`["`+plain(40)+`",`+s+`,"x"]`))
					check(t, []byte(s[:len(s)-1])) // unterminated
				}
			}
		}
	}
}

// TestControlIndex checks controlIndex against a byte-by-byte answer for
// control bytes at every position of slices up to 80 bytes long.
func TestControlIndex(t *testing.T) {
	for n := 0; n <= 80; n++ {
		for _, fill := range []byte{'a', 0x20, 0x21, 0x80, 0x9f, 0xff} {
			s := bytes.Repeat([]byte{fill}, n)
			if got := controlIndex(s); got != -1 {
				t.Fatalf("controlIndex(%q) = %d, want -1", s, got)
			}
			for pos := 0; pos < n; pos++ {
				for _, c := range []byte{0x00, 0x01, 0x0a, 0x1f} {
					s[pos] = c
					if got := controlIndex(s); got != pos {
						t.Fatalf("controlIndex(%q) = %d, want %d", s, got, pos)
					}
					if pos+1 < n { // a second control byte after the first
						s[n-1] = 0
						if got := controlIndex(s); got != pos {
							t.Fatalf("controlIndex(%q) = %d, want %d", s, got, pos)
						}
						s[n-1] = fill
					}
					s[pos] = fill
				}
			}
		}
	}
}

// TestStopBytes checks the SWAR mask against a byte-by-byte answer for every
// byte value at every position, among plain bytes and among other stop bytes.
func TestStopBytes(t *testing.T) {
	isStop := func(c byte) bool { return c == '"' || c == '\\' || c < 0x20 }
	for _, fill := range []byte{'a', 0xff, 0x80, 0x20, 0x21, 0x00, '"'} {
		for pos := 0; pos < 8; pos++ {
			for v := 0; v < 256; v++ {
				var w [8]byte
				for k := range w {
					w[k] = fill
				}
				w[pos] = byte(v)
				m := stopBytes(binary.LittleEndian.Uint64(w[:]))
				first := -1
				for k, c := range w {
					if isStop(c) {
						first = k
						break
					}
				}
				switch {
				case first < 0 && m != 0:
					t.Fatalf("stopBytes(%q) = %#x, want 0", w, m)
				case first >= 0 && (m == 0 || bits.TrailingZeros64(m)/8 != first):
					t.Fatalf("stopBytes(%q) = %#x, want lowest flag at byte %d", w, m, first)
				}
			}
		}
	}
}

// TestMasks checks escapesOrControls and controls as TestStopBytes checks
// stopBytes.
func TestMasks(t *testing.T) {
	for _, m := range []struct {
		name string
		mask func(uint64) uint64
		is   func(byte) bool
	}{
		{"escapesOrControls", escapesOrControls, func(c byte) bool { return c == '\\' || c < 0x20 }},
		{"controls", controls, func(c byte) bool { return c < 0x20 }},
	} {
		for _, fill := range []byte{'a', 0xff, 0x80, 0x20, 0x21, 0x00, '"', '\\'} {
			for pos := 0; pos < 8; pos++ {
				for v := 0; v < 256; v++ {
					var w [8]byte
					for k := range w {
						w[k] = fill
					}
					w[pos] = byte(v)
					got := m.mask(binary.LittleEndian.Uint64(w[:]))
					first := -1
					for k, c := range w {
						if m.is(c) {
							first = k
							break
						}
					}
					switch {
					case first < 0 && got != 0:
						t.Fatalf("%s(%q) = %#x, want 0", m.name, w, got)
					case first >= 0 && (got == 0 || bits.TrailingZeros64(got)/8 != first):
						t.Fatalf("%s(%q) = %#x, want lowest flag at byte %d", m.name, w, got, first)
					}
				}
			}
		}
	}
}

func TestDepth(t *testing.T) {
	for _, depth := range []int{1, 63, 64, 65, 127, 128, 129, 1000, maxDepth - 1, maxDepth, maxDepth + 1, 2 * maxDepth} {
		for _, in := range [][]byte{
			nest("[", "]", "", depth),
			nest("[", "]", "1", depth),
			nest(`{"a":`, "}", "{}", depth-1),
			nest(`{"a":`, "}", "[]", depth-1),
			nest(`[{"a":`, "}]", "0", depth/2),
			nest("[", "]", "", depth)[:depth], // unterminated
		} {
			check(t, in)
		}
	}
	if !Valid(nest("[", "]", "", maxDepth)) || Valid(nest("[", "]", "", maxDepth+1)) {
		t.Errorf("depth limit is not %d", maxDepth)
	}
}

// nest returns inner wrapped in depth pairs of open and close.
func nest(open, close, inner string, depth int) []byte {
	return []byte(strings.Repeat(open, depth) + inner + strings.Repeat(close, depth))
}

func TestAllocs(t *testing.T) {
	inputs := map[string][]byte{
		"1KiB":     body(1024),
		"16KiB":    body(16 << 10),
		"array":    array(16 << 10),
		"prose":    prose(16 << 10),
		"uescapes": uescapes(16 << 10),
		"short":    shortStrings(16 << 10),
		"depth128": nest(`{"a":[`, "]}", "1", 64),
		"invalid":  []byte(`{"a":[1,2,`),
		"garbage":  []byte("\xff\xfe"),
		"escapes":  []byte(`"\u00e9\n\t\"\\"`),
		"numbers":  []byte(`[-0.5e+10,123,0,1E-7]`),
		"literals": []byte(`[true,false,null]`),
	}
	for name, in := range inputs {
		if n := testing.AllocsPerRun(100, func() { Valid(in); Object(in) }); n != 0 {
			t.Errorf("%s: %v allocations per run, want 0", name, n)
		}
	}
	// Deeper, one bit per level: the deepest valid input (20 KB) needs
	// 157 words, in a few allocations as the stack grows.
	deep := nest("[", "]", "", maxDepth)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const runs = 10
	for range runs {
		if !Valid(deep) {
			t.Fatal("deepest valid input refused")
		}
	}
	runtime.ReadMemStats(&after)
	if perRun := (after.TotalAlloc - before.TotalAlloc) / runs; perRun > 4096 {
		t.Errorf("depth %d: %d bytes allocated per run, want at most 4096", maxDepth, perRun)
	}
}

// FuzzValid checks Valid and Object against encoding/json.Valid on arbitrary
// input. Seeds: cases, and testdata/fuzz/FuzzValid.
func FuzzValid(f *testing.F) {
	for _, tc := range cases {
		f.Add([]byte(tc.in))
	}
	f.Add(body(1024))
	f.Fuzz(func(t *testing.T, b []byte) {
		check(t, b)
	})
}

// check fails t if Valid or Object disagree with encoding/json on b.
func check(t *testing.T, b []byte) {
	t.Helper()
	want := json.Valid(b)
	if got := Valid(b); got != want {
		t.Fatalf("Valid(%s) = %v, encoding/json.Valid = %v", short(b), got, want)
	}
	wantObj := want && firstNonSpace(b) == '{'
	if got := Object(b); got != wantObj {
		t.Fatalf("Object(%s) = %v, want %v", short(b), got, wantObj)
	}
}

func short(b []byte) string {
	if len(b) > 200 {
		return strconv.Quote(string(b[:200])) + "... (" + strconv.Itoa(len(b)) + " bytes)"
	}
	return strconv.Quote(string(b))
}

// firstNonSpace returns the first byte of b that is not JSON whitespace, or 0.
func firstNonSpace(b []byte) byte {
	b = bytes.TrimLeft(b, " \t\n\r")
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

// body returns a task body of exactly n bytes, shaped like the library's
// summarization tasks, whose content is plain ASCII text.
func body(n int) []byte {
	const (
		head = `{"version":1,"type":"summarization","messageId":"0190b6a2-7f1e-7c3a-9d2b-4e5f60718293","shareId":"share-123","content":"`
		tail = `","options":{"maxLength":120},"createdAt":"2026-01-02T03:04:05.000000006Z"}`
		text = "The quick brown fox jumps over the lazy dog. "
	)
	pad := n - len(head) - len(tail)
	b := []byte(head + strings.Repeat(text, pad/len(text)+1)[:pad] + tail)
	if len(b) != n || !json.Valid(b) {
		panic("bad benchmark body")
	}
	return b
}

// array returns a structure-heavy JSON array of at least n bytes: many small
// objects with short strings, numbers and literals.
func array(n int) []byte {
	var b bytes.Buffer
	b.WriteByte('[')
	for i := 0; b.Len() < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"id":` + strconv.Itoa(i) + `,"name":"item ` + strconv.Itoa(i) +
			`","score":-12.5e-3,"ok":true,"tags":["a","b\n"],"next":null}`)
	}
	b.WriteByte(']')
	return b.Bytes()
}

func benchmark(b *testing.B, in []byte, valid func([]byte) bool) {
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if !valid(in) {
			b.Fatal("invalid")
		}
	}
}

func BenchmarkValid1KiB(b *testing.B)     { benchmark(b, body(1024), Valid) }
func BenchmarkStdValid1KiB(b *testing.B)  { benchmark(b, body(1024), json.Valid) }
func BenchmarkObject1KiB(b *testing.B)    { benchmark(b, body(1024), Object) }
func BenchmarkValid16KiB(b *testing.B)    { benchmark(b, body(16<<10), Valid) }
func BenchmarkStdValid16KiB(b *testing.B) { benchmark(b, body(16<<10), json.Valid) }

// The Array benchmarks are structure-heavy rather than string-heavy.
func BenchmarkValidArray16KiB(b *testing.B)    { benchmark(b, array(16<<10), Valid) }
func BenchmarkStdValidArray16KiB(b *testing.B) { benchmark(b, array(16<<10), json.Valid) }

// prose returns a task body of exactly n bytes whose content is prose with
// an escaped newline ("\n") every 80 bytes or so, as text with paragraphs is
// encoded.
func prose(n int) []byte {
	const (
		head = `{"version":1,"type":"summarization","content":"`
		tail = `"}`
		line = `The quick brown fox jumps over the lazy dog, and then it runs away fast.\n`
	)
	pad := n - len(head) - len(tail)
	text := strings.Repeat(line, pad/len(line)+1)[:pad]
	text = strings.TrimRight(text, `\`) // do not cut an escape in half
	text += strings.Repeat("x", pad-len(text))
	b := []byte(head + text + tail)
	if len(b) != n || !json.Valid(b) {
		panic("bad benchmark body")
	}
	return b
}

// uescapes returns a JSON string of about n bytes with two \u escapes every 20
// bytes, as encoders that escape non-ASCII text write it.
func uescapes(n int) []byte {
	var b bytes.Buffer
	b.WriteByte('"')
	for b.Len() < n-len(`"`) {
		b.WriteString(`caf\u00e9 na\u00efve `) // 20 bytes
	}
	b.WriteByte('"')
	if !json.Valid(b.Bytes()) {
		panic("bad benchmark body")
	}
	return b.Bytes()
}

// shortStrings returns a JSON array of at least n bytes of small objects
// whose keys and values are all short strings.
func shortStrings(n int) []byte {
	var b bytes.Buffer
	b.WriteByte('[')
	for i := 0; b.Len() < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"k":"v` + strconv.Itoa(i) + `","name":"a short name","label":"twenty-four bytes label"}`)
	}
	b.WriteByte(']')
	return b.Bytes()
}

// The Prose, UEscapes and ShortStrings benchmarks are the cases where a
// string scan that searches ahead could go slower or quadratic: frequent
// escapes in long text, and many short strings.
func BenchmarkValidProse16KiB(b *testing.B)        { benchmark(b, prose(16<<10), Valid) }
func BenchmarkValidUEscapes16KiB(b *testing.B)     { benchmark(b, uescapes(16<<10), Valid) }
func BenchmarkValidShortStrings16KiB(b *testing.B) { benchmark(b, shortStrings(16<<10), Valid) }
