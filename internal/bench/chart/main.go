// Command chart draws what internal/bench measured (its -json file) as one
// SVG per body size: messages per second and p99 from the call to its
// confirm, against the messages in flight, for raw amqp091-go beside the
// Producer's Publish and PublishAsync. make bench runs it after the bench:
//
//	go run ./internal/bench -json /tmp/bench.json
//	cd internal/bench/chart && go run . -in /tmp/bench.json -out ../../../BENCHMARKS
//
// which writes BENCHMARKS-1KiB.svg and BENCHMARKS-16KiB.svg (one per body
// size in the file). Messages in flight are a case's callers when each waits
// for its own confirm (raw-N, producer-publish-N) and its window when one
// goroutine keeps a window of confirms outstanding (raw-windowW,
// producer-async-wW). Each point is the median of the run's rounds.
//
// It is a module of its own so that its plotting dependency stays out of the
// library's module graph, and so out of the go.sum of the services that
// import the library.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// jsonVersion is the layout of internal/bench's -json file this reads.
const jsonVersion = 1

// results is the part of internal/bench's -json file the chart uses.
type results struct {
	Version  int         `json:"version"`
	Date     time.Time   `json:"date"`
	Repeat   int         `json:"repeat"`
	Duration string      `json:"duration"`
	Cases    []benchCase `json:"cases"`
}

type benchCase struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"`
	Body     int    `json:"body"`
	Channels int    `json:"channels"`
	Quorum   bool   `json:"quorum"`
	InFlight int    `json:"in_flight"`
	Median   struct {
		Rate   float64 `json:"msg_per_s"`
		P99    int64   `json:"p99_ns"`
		Others float64 `json:"others_cores"`
	} `json:"median"`
}

// series is one line of the chart: the cases of one kind whose name is
// name with their messages in flight (so that variants of a kind, such as
// raw-64-ch4 or a case with another envelope, stay off the line).
type series struct {
	kind, name, label string
	dashed            bool // raw amqp091-go: dashed; the Producer: solid
}

var allSeries = []series{
	{"raw", "raw-%d", "raw amqp091-go: N callers, each waits (raw-N)", true},
	{"raw-window", "raw-window%d", "raw amqp091-go: 1 goroutine, window W (raw-windowW)", true},
	{"publish", "producer-publish-%d", "Publish: N callers (producer-publish-N)", false},
	{"publish-async", "producer-async-w%d", "PublishAsync: 1 goroutine, W in flight (producer-async-wW)", false},
}

// has says whether c is a point of s.
func (s series) has(c benchCase) bool {
	return c.Kind == s.kind && c.Name == fmt.Sprintf(s.name, c.InFlight) && charted(c)
}

// ceilingLabel names the dotted line of raw-noconfirm, when the run has it.
const ceilingLabel = "raw amqp091-go without confirms (raw-noconfirm)"

// inFlightTicks are the x axis's labelled values (more are added where the
// run has points elsewhere).
var inFlightTicks = []float64{1, 16, 64, 256, 1024, 4096}

func main() { os.Exit(run(os.Args[1:], os.Stderr)) }

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("chart", flag.ContinueOnError)
	fs.SetOutput(stderr)
	in := fs.String("in", "", "internal/bench's -json file (required)")
	out := fs.String("out", "BENCHMARKS", "prefix of the SVG files: <prefix>-<body size>.svg, e.g. BENCHMARKS-1KiB.svg")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *in == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "chart: -in FILE is required, and nothing else")
		return 2
	}
	files, err := drawAll(*in, *out)
	if err != nil {
		fmt.Fprintf(stderr, "chart: %v\n", err)
		return 1
	}
	for _, f := range files {
		fmt.Fprintf(stderr, "chart: wrote %s\n", f)
	}
	return 0
}

// drawAll reads the results in path and writes one SVG per body size; it
// returns the files written.
func drawAll(path, prefix string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, err := readResults(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var files []string
	for _, body := range r.bodies() {
		name := fmt.Sprintf("%s-%s.svg", prefix, fmtSize(body))
		if err := writeSVG(name, r, body); err != nil {
			return files, err
		}
		files = append(files, name)
	}
	if len(files) == 0 {
		return nil, errors.New("no raw, Publish or PublishAsync case to draw")
	}
	return files, nil
}

func readResults(rd io.Reader) (results, error) {
	var r results
	if err := json.NewDecoder(rd).Decode(&r); err != nil {
		return r, err
	}
	if r.Version != jsonVersion {
		return r, fmt.Errorf("layout version %d, this chart reads %d", r.Version, jsonVersion)
	}
	return r, nil
}

// charted says whether a case belongs on the chart: the classic-queue
// cases of one shared channel that measured something.
func charted(c benchCase) bool {
	return !c.Quorum && c.Channels <= 1 && c.InFlight > 0 && c.Median.Rate > 0
}

// bodies are the body sizes that have something to draw, in order.
func (r results) bodies() []int {
	var out []int
	for _, c := range r.Cases {
		if !charted(c) || slices.Contains(out, c.Body) {
			continue
		}
		if slices.ContainsFunc(allSeries, func(s series) bool { return s.has(c) }) {
			out = append(out, c.Body)
		}
	}
	slices.Sort(out)
	return out
}

// points returns the cases of a series and body size, by messages in
// flight.
func (r results) points(s series, body int) []benchCase {
	var out []benchCase
	for _, c := range r.Cases {
		if c.Body == body && s.has(c) {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b benchCase) int { return a.InFlight - b.InFlight })
	return out
}

// others is the median of the CPU other processes used during body's
// charted cases, in cores: a high value marks a noisy run.
func (r results) others(body int) float64 {
	var xs []float64
	for _, c := range r.Cases {
		if c.Body == body && charted(c) {
			xs = append(xs, c.Median.Others)
		}
	}
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	if n := len(xs); n%2 == 0 {
		return (xs[n/2-1] + xs[n/2]) / 2
	}
	return xs[len(xs)/2]
}

func fmtSize(n int) string {
	if n%1024 == 0 {
		return fmt.Sprintf("%dKiB", n/1024)
	}
	return fmt.Sprintf("%dB", n)
}

// chart is one body size's drawing: two panels side by side, and under
// them the legends (raw amqp091-go on the left, the Producer on the right)
// and a line that says which run it is.
type chart struct {
	rate, p99     *plot.Plot
	raw, producer plot.Legend
	caption       string
}

// writeSVG draws body's chart into one SVG file.
func writeSVG(name string, r results, body int) error {
	ch, err := newChart(r, body)
	if err != nil {
		return err
	}
	const w, h, strip = 11 * vg.Inch, 5.4 * vg.Inch, 0.9 * vg.Inch
	c := vgsvg.New(w, h)
	dc := draw.New(c)
	pad := vg.Millimeter * 2
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Centimeter, PadTop: pad, PadBottom: pad, PadLeft: pad, PadRight: pad}
	cs := plot.Align([][]*plot.Plot{{ch.rate, ch.p99}}, tiles, draw.Crop(dc, 0, 0, strip, 0))
	ch.rate.Draw(cs[0][0])
	ch.p99.Draw(cs[0][1])
	below := draw.Crop(dc, 0, 0, 0, strip-h)
	ch.raw.Draw(draw.Crop(below, vg.Centimeter, -w/2, 0, 0))
	ch.producer.Draw(draw.Crop(below, w/2, 0, 0, 0))
	sty := ch.rate.X.Tick.Label
	sty.XAlign, sty.YAlign = draw.XLeft, draw.YBottom
	sty.Font.Size = 9
	dc.FillText(sty, vg.Point{X: vg.Centimeter, Y: pad}, ch.caption)

	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func newLegend() plot.Legend {
	l := plot.NewLegend()
	l.Top, l.Left = true, true
	l.YOffs = -vg.Millimeter
	l.Padding = vg.Points(3)
	l.ThumbnailWidth = vg.Points(30)
	l.TextStyle.Font.Size = 10
	return l
}

// newChart builds body's panels and legends.
func newChart(r results, body int) (*chart, error) {
	ch := &chart{rate: plot.New(), p99: plot.New(), raw: newLegend(), producer: newLegend()}
	rate, p99 := ch.rate, ch.p99
	rate.Title.Text = fmt.Sprintf("msg/s, %s bodies", fmtSize(body))
	p99.Title.Text = fmt.Sprintf("p99 from the call to its confirm, %s bodies", fmtSize(body))
	ch.caption = fmt.Sprintf("make bench (internal/bench), %s: medians of %d round(s) of %s per case; other processes used %.2f cores meanwhile (median).\nDashed: raw amqp091-go; solid: the Producer.",
		r.Date.UTC().Format("2006-01-02 15:04 UTC"), r.Repeat, r.Duration, r.others(body))
	xmin, xmax := inFlightTicks[0], inFlightTicks[len(inFlightTicks)-1]
	ticks := slices.Clone(inFlightTicks)
	for _, p := range []*plot.Plot{rate, p99} {
		p.X.Label.Text = "messages in flight (callers, or window)"
		p.X.Scale = plot.LogScale{}
		p.Add(plotter.NewGrid())
	}
	rate.Y.Label.Text = "msg/s"
	rate.Y.Min = 0
	rate.Y.Tick.Marker = kTicks{}
	p99.Y.Label.Text = "p99 (ms)"
	p99.Y.Scale = plot.LogScale{}
	p99.Y.Tick.Marker = msTicks{}

	var ymax float64
	pmin, pmax := math.Inf(1), 0.0
	for i, s := range allSeries {
		pts := r.points(s, body)
		if len(pts) == 0 {
			continue
		}
		rxy, pxy := make(plotter.XYs, 0, len(pts)), make(plotter.XYs, 0, len(pts))
		for _, c := range pts {
			x := float64(c.InFlight)
			xmin, xmax = math.Min(xmin, x), math.Max(xmax, x)
			if !slices.Contains(ticks, x) {
				ticks = append(ticks, x)
			}
			rxy = append(rxy, plotter.XY{X: x, Y: c.Median.Rate})
			ymax = math.Max(ymax, c.Median.Rate)
			if c.Median.P99 > 0 {
				ms := float64(c.Median.P99) / 1e6
				pxy = append(pxy, plotter.XY{X: x, Y: ms})
				pmin, pmax = math.Min(pmin, ms), math.Max(pmax, ms)
			}
		}
		var thumbs []plot.Thumbnailer
		for _, panel := range []struct {
			p   *plot.Plot
			xys plotter.XYs
		}{{rate, rxy}, {p99, pxy}} {
			if len(panel.xys) == 0 {
				continue
			}
			l, sc, err := plotter.NewLinePoints(panel.xys)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.label, err)
			}
			l.Color, sc.Color = plotutil.Color(i), plotutil.Color(i)
			l.Width = vg.Points(1.5)
			if s.dashed {
				l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
			}
			sc.Shape = plotutil.Shape(i)
			sc.Radius = vg.Points(3)
			panel.p.Add(l, sc)
			thumbs = []plot.Thumbnailer{l, sc}
		}
		if s.dashed {
			ch.raw.Add(s.label, thumbs...)
		} else {
			ch.producer.Add(s.label, thumbs...)
		}
	}
	if ymax == 0 {
		return nil, fmt.Errorf("%s: no raw, Publish or PublishAsync case", fmtSize(body))
	}
	// raw-noconfirm is not bounded by messages in flight: a dotted line
	// across the msg/s panel, the broker's ingest ceiling.
	for _, c := range r.Cases {
		if c.Kind == "raw-noconfirm" && c.Body == body && !c.Quorum && c.Median.Rate > 0 {
			l, err := plotter.NewLine(plotter.XYs{{X: xmin / 1.3, Y: c.Median.Rate}, {X: xmax * 1.3, Y: c.Median.Rate}})
			if err != nil {
				return nil, err
			}
			l.Color = plotutil.Color(len(allSeries))
			l.Dashes = []vg.Length{vg.Points(1), vg.Points(3)}
			l.Width = vg.Points(1.5)
			rate.Add(l)
			ch.raw.Add(ceilingLabel, l)
			ymax = math.Max(ymax, c.Median.Rate)
		}
	}
	slices.Sort(ticks)
	for _, p := range []*plot.Plot{rate, p99} {
		p.X.Min, p.X.Max = xmin/1.3, xmax*1.3
		p.X.Tick.Marker = plot.ConstantTicks(constTicks(ticks))
	}
	rate.Y.Max = ymax * 1.08
	if pmax > 0 {
		p99.Y.Min, p99.Y.Max = pmin/1.3, pmax*1.3
	} else { // no latency at all: a linear axis, which takes an empty range
		p99.Y.Scale, p99.Y.Tick.Marker = plot.LinearScale{}, plot.DefaultTicks{}
	}
	return ch, nil
}

func constTicks(xs []float64) []plot.Tick {
	out := make([]plot.Tick, len(xs))
	for i, x := range xs {
		out[i] = plot.Tick{Value: x, Label: fmt.Sprint(x)}
	}
	return out
}

// kTicks labels msg/s as 5k, 10k, ... at a round step giving about five
// to ten labels, with a minor tick between two labels.
type kTicks struct{}

func (kTicks) Ticks(min, max float64) []plot.Tick {
	if !(max > min) {
		return nil
	}
	mag := math.Pow(10, math.Floor(math.Log10((max-min)/5)))
	step := mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if step = m * mag; (max-min)/step <= 10 {
			break
		}
	}
	var ts []plot.Tick
	for i := math.Ceil(min / step * 2); i*step/2 <= max; i++ {
		v := i * step / 2
		if int(i)%2 != 0 {
			ts = append(ts, plot.Tick{Value: v})
			continue
		}
		label := fmt.Sprintf("%.0f", v)
		if math.Abs(v) >= 1000 {
			label = strconv.FormatFloat(v/1000, 'f', -1, 64) + "k"
		}
		ts = append(ts, plot.Tick{Value: v, Label: label})
	}
	return ts
}

// msTicks labels a log axis of milliseconds at 1, 2 and 5 of each decade,
// so that a range inside one decade still has labels.
type msTicks struct{}

func (msTicks) Ticks(min, max float64) []plot.Tick {
	var ts []plot.Tick
	for d := math.Pow(10, math.Floor(math.Log10(min))); d <= max; d *= 10 {
		for _, m := range []float64{1, 2, 5} {
			v := d * m
			if v < min || v > max {
				continue
			}
			ts = append(ts, plot.Tick{Value: v, Label: strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".")})
		}
		for m := 2.0; m < 10; m++ {
			if v := d * m; v >= min && v <= max && m != 2 && m != 5 {
				ts = append(ts, plot.Tick{Value: v})
			}
		}
	}
	return ts
}
