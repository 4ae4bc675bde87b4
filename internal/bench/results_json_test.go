package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestJSONRoundTrip(t *testing.T) {
	res := results{byKey: map[string][]outcome{}}
	add := func(s spec, ms ...measurement) {
		res.order = append(res.order, s)
		for _, m := range ms {
			res.byKey[s.key()] = append(res.byKey[s.key()], outcome{m: m, check: "ok"})
		}
	}
	m := func(msgs int64, p99 time.Duration) measurement {
		return measurement{msgs: msgs, dur: 2 * time.Second, p50: p99 / 4, p99: p99, cpu: time.Duration(msgs) * 30 * time.Microsecond,
			mallocs: uint64(msgs) * 25, broker: time.Duration(msgs) * 80 * time.Microsecond, others: 100 * time.Millisecond}
	}
	add(spec{kind: kindRaw, callers: 64, size: 1024}, m(26000, 8*time.Millisecond), m(27000, 9*time.Millisecond), m(25000, 7*time.Millisecond))
	add(spec{kind: kindRawWindow, callers: 1, size: 1024, window: 1024}, m(36000, 60*time.Millisecond))
	add(spec{kind: kindPublishAsync, callers: 1, size: 1024, window: 256}, m(33000, 20*time.Millisecond))
	add(spec{kind: kindPublish, callers: 16, size: 16384}, m(9000, 3*time.Millisecond))
	add(spec{kind: kindRawNoConfirm, callers: 1, size: 1024}, m(50000, 0))
	add(spec{kind: kindRaw, callers: 64, size: 1024, quorum: true}, m(8000, 30*time.Millisecond))
	res.byKey[spec{kind: kindPublish, callers: 16, size: 16384}.key()][0].bad = true

	cfg := config{repeat: 3, duration: 2 * time.Second}
	date := time.Date(2026, 12, 2, 4, 5, 6, 789, time.FixedZone("x", 3600))
	in := toJSON(cfg, []string{"machine: test"}, &res, date)

	path := filepath.Join(t.TempDir(), "sub", "bench.json")
	if err := writeJSONFile(path, in); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, err := readJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip:\n in  %+v\n out %+v", in, out)
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".bench-*")); len(m) > 0 {
		t.Errorf("temporary files left: %v", m)
	}

	// What the chart reads: names, kinds, messages in flight, medians.
	type row struct {
		name, kind string
		body, in   int
		quorum     bool
	}
	var got []row
	for _, c := range out.Cases {
		got = append(got, row{c.Name, c.Kind, c.Body, c.InFlight, c.Quorum})
	}
	want := []row{
		{"raw-64", "raw", 1024, 64, false},
		{"raw-window1024", "raw-window", 1024, 1024, false},
		{"raw-noconfirm", "raw-noconfirm", 1024, 0, false},
		{"producer-async-w256", "publish-async", 1024, 256, false},
		{"raw-64-quorum", "raw", 1024, 64, true},
		{"producer-publish-16", "publish", 16384, 16, false},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("cases:\n got  %v\n want %v", got, want)
	}
	raw := out.Cases[0]
	if raw.Median.Rate != 13000 || raw.Median.P99 != int64(8*time.Millisecond) || len(raw.Rounds) != 3 || raw.Rounds[1].Rate != 13500 {
		t.Errorf("raw-64: median %+v, rounds %+v", raw.Median, raw.Rounds)
	}
	if !out.Cases[5].Rounds[0].Bad || out.Date != date.UTC() || out.Duration != "2s" {
		t.Errorf("bad flag %v, date %v, duration %q", out.Cases[5].Rounds[0].Bad, out.Date, out.Duration)
	}
}

func TestReadJSONRefuses(t *testing.T) {
	for name, body := range map[string]string{
		"version": `{"version": 2}`,
		"unknown": `{"version": 1, "surprise": true}`,
	} {
		if _, err := readJSON(strings.NewReader(body)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestChartFixtureLayout keeps internal/bench/chart's fixture in the layout
// writeJSON writes: a field renamed here fails this test until the fixture
// (and the chart) follow.
func TestChartFixtureLayout(t *testing.T) {
	b, err := os.ReadFile("chart/testdata/results.json")
	if err != nil {
		t.Fatal(err)
	}
	r, err := readJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("chart/testdata/results.json: %v", err)
	}
	for _, c := range r.Cases {
		if c.Kind == "" || c.Name == "" || c.Body == 0 || len(c.Rounds) == 0 {
			t.Errorf("fixture case %+v: a field is missing", c)
		}
	}
}
