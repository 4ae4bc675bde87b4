package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// jsonVersion is the version of the -json file's layout; a reader refuses
// any other (internal/bench/chart reads it).
const jsonVersion = 1

// jsonResults is what -json writes: every case of the run with each of its
// rounds and their medians (the table's figures), for the chart that make
// bench draws. The drain and spool-heap cases are not in it.
type jsonResults struct {
	Version  int        `json:"version"`
	Date     time.Time  `json:"date"`
	Info     []string   `json:"info"`
	Repeat   int        `json:"repeat"`
	Duration string     `json:"duration"` // of each case's measured window
	Cases    []jsonCase `json:"cases"`
}

type jsonCase struct {
	Name string `json:"name"`
	// Kind is the kind of the case: raw, raw-window, raw-noconfirm,
	// publish, summarization, publish-spool, publish-async (other: one
	// the chart does not know).
	Kind     string `json:"kind"`
	Body     int    `json:"body"` // bytes
	Callers  int    `json:"callers"`
	Window   int    `json:"window,omitempty"`   // raw-window and publish-async
	Channels int    `json:"channels,omitempty"` // raw-N-chK
	Quorum   bool   `json:"quorum,omitempty"`
	// InFlight is the most messages the case has in flight: its callers
	// (each waits for its confirm), or its window; 0 for raw-noconfirm,
	// which has no bound.
	InFlight int        `json:"in_flight"`
	Median   jsonFigure `json:"median"` // over the rounds that confirmed anything
	Rounds   []jsonRun  `json:"rounds"`
}

// jsonFigure is one case's figures; durations in nanoseconds.
type jsonFigure struct {
	Rate         float64 `json:"msg_per_s"`
	P50          int64   `json:"p50_ns"`
	P99          int64   `json:"p99_ns"`
	CPUPerMsg    int64   `json:"cpu_per_msg_ns"`
	AllocsPerMsg float64 `json:"allocs_per_msg"`
	BrokerPerMsg int64   `json:"broker_cpu_per_msg_ns"`
	OthersCores  float64 `json:"others_cores"`
}

type jsonRun struct {
	jsonFigure
	Msgs  int64  `json:"msgs"`
	Check string `json:"check"`
	Bad   bool   `json:"bad,omitempty"`
}

func (k kind) jsonName() string {
	switch k {
	case kindRaw:
		return "raw"
	case kindRawWindow:
		return "raw-window"
	case kindRawNoConfirm:
		return "raw-noconfirm"
	case kindPublish:
		return "publish"
	case kindSummarization:
		return "summarization"
	case kindPublishSpool:
		return "publish-spool"
	case kindPublishAsync:
		return "publish-async"
	}
	return "other"
}

// inFlight is the most messages a case keeps in flight (0: unbounded).
func (s spec) inFlight() int {
	switch s.kind {
	case kindRawNoConfirm:
		return 0
	case kindRawWindow, kindPublishAsync:
		return s.windowLen()
	}
	return s.callers
}

func figureOf(m measurement) jsonFigure {
	return jsonFigure{
		Rate:         m.rate(),
		P50:          int64(m.p50),
		P99:          int64(m.p99),
		CPUPerMsg:    int64(m.cpuPerMsg()),
		AllocsPerMsg: m.allocsPerMsg(),
		BrokerPerMsg: int64(m.brokerPerMsg()),
		OthersCores:  m.othersShare(),
	}
}

// medianFigure takes each figure's median over the runs that confirmed
// anything, as the table does.
func medianFigure(runs []outcome) jsonFigure {
	get := func(f func(measurement) float64) float64 { v, _ := medianOf(runs, metric{get: f}); return v }
	return jsonFigure{
		Rate:         get(measurement.rate),
		P50:          int64(get(func(m measurement) float64 { return float64(m.p50) })),
		P99:          int64(get(func(m measurement) float64 { return float64(m.p99) })),
		CPUPerMsg:    int64(get(func(m measurement) float64 { return float64(m.cpuPerMsg()) })),
		AllocsPerMsg: get(measurement.allocsPerMsg),
		BrokerPerMsg: int64(get(func(m measurement) float64 { return float64(m.brokerPerMsg()) })),
		OthersCores:  get(measurement.othersShare),
	}
}

func toJSON(cfg config, info []string, res *results, date time.Time) jsonResults {
	out := jsonResults{
		Version:  jsonVersion,
		Date:     date.UTC(),
		Info:     info,
		Repeat:   cfg.repeat,
		Duration: cfg.duration.String(),
		Cases:    []jsonCase{},
	}
	for _, s := range res.sortedSpecs() {
		runs := res.byKey[s.key()]
		c := jsonCase{
			Name: s.name(), Kind: s.kind.jsonName(), Body: s.size, Callers: s.callers,
			Quorum: s.quorum, InFlight: s.inFlight(), Median: medianFigure(runs),
			Rounds: make([]jsonRun, 0, len(runs)),
		}
		if s.kind == kindRawWindow || s.kind == kindPublishAsync {
			c.Window = s.windowLen()
		}
		if s.channels > 1 {
			c.Channels = s.channels
		}
		for _, o := range runs {
			c.Rounds = append(c.Rounds, jsonRun{jsonFigure: figureOf(o.m), Msgs: o.m.msgs, Check: o.check, Bad: o.bad})
		}
		out.Cases = append(out.Cases, c)
	}
	return out
}

func writeJSON(w io.Writer, r jsonResults) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// readJSON reads what writeJSON wrote, refusing fields it does not know
// and other versions.
func readJSON(rd io.Reader) (jsonResults, error) {
	var r jsonResults
	dec := json.NewDecoder(rd)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, err
	}
	if r.Version != jsonVersion {
		return r, fmt.Errorf("version %d, want %d", r.Version, jsonVersion)
	}
	return r, nil
}

// writeJSONFile writes the results to path (its directory made if missing)
// through a temporary file, so that a reader never sees half of it.
func writeJSONFile(path string, r jsonResults) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".bench-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := writeJSON(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
