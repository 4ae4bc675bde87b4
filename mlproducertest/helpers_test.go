package mlproducertest_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Minimal assertions (the module's go.sum does not carry testify's deps).

func msgOf(msgs []any) string {
	if len(msgs) == 0 {
		return ""
	}
	return fmt.Sprintf(fmt.Sprint(msgs[0]), msgs[1:]...) + ": "
}

func assertEqual(t testing.TB, want, got any, msgs ...any) bool {
	t.Helper()
	if !reflect.DeepEqual(want, got) {
		t.Errorf("%snot equal:\n want %#v\n  got %#v", msgOf(msgs), want, got)
		return false
	}
	return true
}

func assertNotEqual(t testing.TB, a, b any, msgs ...any) {
	t.Helper()
	if reflect.DeepEqual(a, b) {
		t.Errorf("%sunexpectedly equal: %#v", msgOf(msgs), a)
	}
}

func assertTrue(t testing.TB, v bool, msgs ...any) {
	t.Helper()
	if !v {
		t.Errorf("%sexpected true", msgOf(msgs))
	}
}

func assertLen(t testing.TB, v any, n int, msgs ...any) {
	t.Helper()
	if l := reflect.ValueOf(v).Len(); l != n {
		t.Errorf("%slen %d, want %d: %v", msgOf(msgs), l, n, v)
	}
}

func assertEmpty(t testing.TB, v any, msgs ...any) { t.Helper(); assertLen(t, v, 0, msgs...) }

func assertContains(t testing.TB, s, sub string, msgs ...any) {
	t.Helper()
	if !strings.Contains(s, sub) {
		t.Errorf("%s%q does not contain %q", msgOf(msgs), s, sub)
	}
}

func assertErrorIs(t testing.TB, err, target error, msgs ...any) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%serror %v is not %v", msgOf(msgs), err, target)
	}
}

func requireNoError(t testing.TB, err error, msgs ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%sunexpected error: %v", msgOf(msgs), err)
	}
}

func requireError(t testing.TB, err error, msgs ...any) {
	t.Helper()
	if err == nil {
		t.Fatalf("%sexpected an error", msgOf(msgs))
	}
}

func requireErrorAs(t testing.TB, err error, target any) {
	t.Helper()
	if !errors.As(err, target) {
		t.Fatalf("error %v is not a %T", err, target)
	}
}

// requireEventually polls cond (only in tests that run outside synctest).
func requireEventually(t testing.TB, cond func() bool, msgs ...any) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%scondition not met in time", msgOf(msgs))
		}
		time.Sleep(time.Millisecond)
	}
}
