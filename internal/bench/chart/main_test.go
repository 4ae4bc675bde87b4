package main

import (
	"bytes"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// texts returns the text elements of an SVG, checking that it parses as
// XML with an svg root.
func texts(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(b))
	var out []string
	root, inText := "", false
	for {
		tok, err := dec.Token()
		if err != nil {
			if err == io.EOF {
				break
			}
			t.Fatalf("%s: not XML: %v", file, err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tok.Name.Local
			}
			inText = tok.Name.Local == "text"
		case xml.CharData:
			if inText {
				out = append(out, string(tok))
			}
		case xml.EndElement:
			inText = false
		}
	}
	if root != "svg" {
		t.Fatalf("%s: root element %q, want svg", file, root)
	}
	return out
}

func TestChartFromFixture(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "BENCHMARKS")
	var stderr bytes.Buffer
	if code := run([]string{"-in", "testdata/results.json", "-out", prefix}, &stderr); code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr.String())
	}

	// 1 KiB: all four series, the ceiling, both panels, the x ticks.
	got := texts(t, prefix+"-1KiB.svg")
	want := []string{ceilingLabel, "msg/s, 1KiB bodies", "msg/s", "p99 (ms)", "5k", "10k", "20k", "messages in flight (callers, or window)", "1", "16", "64", "256", "1024", "4096"}
	for _, s := range allSeries {
		want = append(want, s.label)
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("1KiB chart: no text %q; texts: %q", w, got)
		}
	}
	if !slices.ContainsFunc(got, func(s string) bool {
		return strings.HasPrefix(s, "make bench (internal/bench), 2026-12-02 04:00 UTC: medians of 1 round(s) of 2s per case; other processes used 0.05 cores meanwhile")
	}) {
		t.Errorf("1KiB chart: no caption with the run's date; texts: %q", got)
	}

	// 16 KiB has only raw-64 and producer-publish-64: no window, async or
	// ceiling entry in its legend.
	got = texts(t, prefix+"-16KiB.svg")
	for _, s := range allSeries {
		has := slices.Contains(got, s.label)
		if want := s.kind == "raw" || s.kind == "publish"; has != want {
			t.Errorf("16KiB chart: legend has %q = %v, want %v", s.label, has, want)
		}
	}
	if slices.Contains(got, ceilingLabel) {
		t.Errorf("16KiB chart: has the ceiling, which the fixture does not measure at 16 KiB")
	}
	if !slices.Contains(got, "Dashed: raw amqp091-go; solid: the Producer.") {
		t.Errorf("16KiB chart: no second caption line; texts: %q", got)
	}
	if !strings.Contains(stderr.String(), prefix+"-16KiB.svg") {
		t.Errorf("stderr does not name the files written: %q", stderr.String())
	}
}

func TestChartPoints(t *testing.T) {
	f, err := os.Open("testdata/results.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := readResults(f)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.bodies(); !slices.Equal(got, []int{1024, 16384}) {
		t.Errorf("bodies = %v", got)
	}
	// raw-64-quorum and raw-64-env-x are left out; the others come by
	// messages in flight.
	var names []string
	for _, c := range r.points(allSeries[0], 1024) {
		names = append(names, c.Name)
	}
	if want := []string{"raw-1", "raw-16", "raw-64", "raw-256"}; !slices.Equal(names, want) {
		t.Errorf("raw points = %q, want %q", names, want)
	}
}

func TestChartRefuses(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"version":  `{"version": 2, "cases": []}`,
		"nothing":  `{"version": 1, "cases": [{"name": "raw-noconfirm", "kind": "raw-noconfirm", "body": 1024, "in_flight": 0, "median": {"msg_per_s": 100}}]}`,
		"not json": `version 1`,
	} {
		in := filepath.Join(dir, "in.json")
		if err := os.WriteFile(in, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		if code := run([]string{"-in", in, "-out", filepath.Join(dir, "x")}, &stderr); code != 1 {
			t.Errorf("%s: exit %d, want 1 (%s)", name, code, stderr.String())
		}
		if m, _ := filepath.Glob(filepath.Join(dir, "x-*.svg")); len(m) > 0 {
			t.Errorf("%s: wrote %v", name, m)
		}
	}
	if code := run(nil, new(bytes.Buffer)); code != 2 {
		t.Errorf("no -in: exit %d, want 2", code)
	}
}
