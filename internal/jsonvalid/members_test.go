package jsonvalid

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

type member struct{ key, value string }

func members(b []byte) []member {
	var ms []member
	for k, v := range Members(b) {
		ms = append(ms, member{string(k), string(v)})
	}
	return ms
}

func TestMembers(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []member
	}{
		{`{}`, nil},
		{` { } `, nil},
		{`{"a":1}`, []member{{`"a"`, `1`}}},
		{" {\n\"a\" :\t-1.5e3 , \"b\":\"x,}\\\"]\" ,\"\":null}\r\n", []member{{`"a"`, `-1.5e3`}, {`"b"`, `"x,}\"]"`}, {`""`, `null`}}},
		{`{"a":{"b":[1,{"c":"]}"}],"d":{}},"e":[],"f":true,"a":false}`, []member{
			{`"a"`, `{"b":[1,{"c":"]}"}],"d":{}}`}, {`"e"`, `[]`}, {`"f"`, `true`}, {`"a"`, `false`},
		}},
		{`{"k\u0022":[[[]]]}`, []member{{`"k\u0022"`, `[[[]]]`}}},
	} {
		if got := members([]byte(tc.in)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Members(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	// Stopping early stops.
	n := 0
	for range Members([]byte(`{"a":1,"b":2,"c":3}`)) {
		if n++; n == 2 {
			break
		}
	}
	if n != 2 {
		t.Errorf("break after 2 members: walked %d", n)
	}
	// Input that is not an object yields nothing; broken input yields what
	// came before the break, and nothing panics.
	for _, tc := range []struct {
		in   string
		want int
	}{
		{``, 0}, {`[]`, 0}, {`"a"`, 0}, {`1`, 0}, {`{"a"`, 0}, {`{"a":`, 0}, {`{"a":[`, 0},
		{`{"a":"`, 0}, {`{"a":1,`, 1}, {`{"a" 1}`, 0}, {`{"a":1 "b":2}`, 1}, {`{1:2}`, 0}, {`{"a":1,"b`, 1},
	} {
		if got := len(members([]byte(tc.in))); got != tc.want {
			t.Errorf("Members(%q) yields %d members, want %d", tc.in, got, tc.want)
		}
	}
}

func TestMembersAllocs(t *testing.T) {
	in := body(16 << 10)
	if n := testing.AllocsPerRun(100, func() {
		for k, v := range Members(in) {
			_, _ = k, v
		}
	}); n != 0 {
		t.Errorf("Members: %v allocations per run, want 0", n)
	}
}

func TestUnquote(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		ok   bool
	}{
		{`""`, "", true},
		{`"abc"`, "abc", true},
		{`"é\u00e9"`, "éé", true},
		{`"\"\\\/\b\f\n\r\t"`, "\"\\/\b\f\n\r\t", true},
		{`"a\u0000b"`, "a\x00b", true},
		{`"\u2028\uFFFD"`, "\u2028\ufffd", true},
		{`"\ud83d\ude00!"`, "\U0001F600!", true},
		{`"\uD83D\uDE00"`, "\U0001F600", true},
		{`"x\ud800"`, "", false},
		{`"\ud800x"`, "", false},
		{`"\ud800\u0041"`, "", false},
		{`"\ud800\ud800"`, "", false},
		{`"\udc00\ud800"`, "", false},
		{`"\ude00"`, "", false},
		{`"\ud800\n"`, "", false},
		{`abc`, "", false},
		{`"`, "", false},
		{`"\"`, "", false},
		{`"\q"`, "", false},
		{`"\u12"`, "", false},
		{`"\u12g4"`, "", false},
	} {
		got, ok := Unquote([]byte(tc.in))
		if got != tc.want || ok != tc.ok {
			t.Errorf("Unquote(%s) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	// Without escapes: the result is the only allocation. With escapes:
	// one buffer.
	plain := []byte(`"` + strings.Repeat("a", 4096) + `"`)
	escaped := []byte(`"` + strings.Repeat(`\u00e9`, 1024) + `"`)
	for name, in := range map[string][]byte{"plain": plain, "escaped": escaped} {
		if n := testing.AllocsPerRun(100, func() { Unquote(in) }); n != 1 {
			t.Errorf("%s: %v allocations per run, want 1", name, n)
		}
	}
}

// FuzzMembers checks Members and Unquote against encoding/json: the members
// of a valid object, put back together, mean what the object means (a
// duplicate key too, since the later one wins in both), and every key and
// string value unquotes as encoding/json decodes it unless it escapes a lone
// surrogate.
func FuzzMembers(f *testing.F) {
	for _, tc := range cases {
		f.Add([]byte(tc.in))
	}
	f.Add(body(1024))
	f.Add([]byte(`{"a":"\ud800","b":"\ud83d\ude00","a":[1,{"c":"]"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if !Object(b) {
			for k, v := range Members(b) { // must not panic
				_, _ = k, v
			}
			return
		}
		var rebuilt bytes.Buffer
		rebuilt.WriteByte('{')
		n := 0
		for k, v := range Members(b) {
			if n > 0 {
				rebuilt.WriteByte(',')
			}
			n++
			if !Valid(k) || k[0] != '"' || !Valid(v) || len(bytes.TrimSpace(v)) != len(v) {
				t.Fatalf("member %q: %q of %s", k, v, short(b))
			}
			rebuilt.Write(k)
			rebuilt.WriteByte(':')
			rebuilt.Write(v)
			checkUnquote(t, k)
			if v[0] == '"' {
				checkUnquote(t, v)
			}
		}
		rebuilt.WriteByte('}')
		var want, got any
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(rebuilt.Bytes(), &got); err != nil {
			t.Fatalf("rebuilt %s: %v", short(rebuilt.Bytes()), err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("members of %s rebuild %s", short(b), short(rebuilt.Bytes()))
		}
	})
}

// checkUnquote compares Unquote(s) with encoding/json on the valid string
// token s.
func checkUnquote(t *testing.T, s []byte) {
	t.Helper()
	var want string
	if err := json.Unmarshal(s, &want); err != nil {
		t.Fatal(err)
	}
	got, ok := Unquote(s)
	if !ok {
		// Only a lone surrogate is refused; encoding/json replaced it.
		if !bytes.Contains(bytes.ToLower(s), []byte(`\ud`)) || !strings.ContainsRune(want, utf8.RuneError) {
			t.Fatalf("Unquote(%s) refused; encoding/json gives %q", short(s), want)
		}
		return
	}
	if utf8.Valid(s) && got != want {
		t.Fatalf("Unquote(%s) = %q, encoding/json gives %q", short(s), got, want)
	}
}
