package mlproducer_test

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

var updateGolden = flag.Bool("update-metrics", false, "rewrite the golden files in testdata/metrics (-update is taken by tasks_test.go)")

// goldenMetrics are the metrics compared with the golden files: all but the
// latency histogram, whose observations depend on timing and are checked by
// TestMetricsConfirmLatencyHistogram.
var goldenMetrics = []string{
	"ml_producer_connection_state",
	"ml_producer_circuit_breaker_open",
	"ml_producer_retry_queue_size",
	"ml_producer_pending_confirms",
	"ml_producer_messages_total",
	"ml_producer_attempt_failures_total",
	"ml_producer_retries_total",
	"ml_producer_dead_letters_total",
	"ml_producer_reconnects_total",
	"ml_producer_dead_letter_hook_panics_total",
}

// compareGolden compares the goldenMetrics gathered from g with
// testdata/metrics/name, or rewrites the file with -update-metrics.
func compareGolden(t *testing.T, g prometheus.Gatherer, name string) {
	t.Helper()
	path := filepath.Join("testdata", "metrics", name)
	if *updateGolden {
		out, err := testutil.GatherAndFormat(g, expfmt.TypeTextPlain, goldenMetrics...)
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, out, 0o644))
	}
	f, err := os.Open(path)
	require.NoError(t, err, "run go test -run %s -update-metrics to create it", t.Name())
	defer f.Close()
	require.NoError(t, testutil.GatherAndCompare(g, f, goldenMetrics...), "golden file %s", path)
}

// A connected Producer after 3 confirmed summarizations, a transcription
// nacked once then confirmed on retry, an embedding nacked on both of its
// attempts (dead-lettered), and a publish refused for an unknown type.
func TestMetricsGoldenConnected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		reg := prometheus.NewPedanticRegistry()
		var dl deadLetters
		p := newFake(t, b,
			mlproducer.WithRegisterer(reg),
			mlproducer.WithConnectionName("golden"),
			mlproducer.WithMaxRetries(1),
			mlproducer.WithDeadLetter(dl.hook))
		waitConnected(t, p)
		ctx := context.Background()

		for range 3 {
			r, err := p.PublishSummarization(ctx, "share-1", "text", mlproducer.SummarizationOptions{})
			require.NoError(t, err)
			require.Equal(t, mlproducer.Confirmed, r.State)
		}
		b.NackNext(1)
		_, err := p.PublishTranscription(ctx, "share-1", "https://media.example/a.mp3", mlproducer.TranscriptionOptions{})
		require.NoError(t, err)
		time.Sleep(time.Second)
		synctest.Wait()
		b.NackNext(2)
		_, err = p.PublishEmbedding(ctx, "share-1", "text", mlproducer.EmbeddingOptions{})
		require.NoError(t, err)
		time.Sleep(time.Second)
		synctest.Wait()
		_, err = p.Publish(ctx, mlproducer.Message{Type: "translation", Body: []byte(`{}`)})
		require.ErrorIs(t, err, mlproducer.ErrInvalidTask)
		require.Len(t, dl.all(), 1)

		compareGolden(t, reg, "connected.prom")
		require.NoError(t, closeProducer(t, p))
		n, err := testutil.GatherAndCount(reg)
		require.NoError(t, err)
		assert.Zero(t, n, "Close unregisters the collector")
	})
}

// While the broker blocks publishers, the state is 4 and publishes wait in
// the retry queue.
func TestMetricsGoldenBlocked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		reg := prometheus.NewPedanticRegistry()
		p := newFake(t, b, mlproducer.WithRegisterer(reg), mlproducer.WithConnectionName("golden"))
		waitConnected(t, p)
		b.Block("memory")
		synctest.Wait()
		for range 2 {
			r, err := p.PublishSummarization(context.Background(), "share-1", "text", mlproducer.SummarizationOptions{})
			require.NoError(t, err)
			require.Equal(t, mlproducer.Queued, r.State)
		}
		compareGolden(t, reg, "blocked.prom")
		b.Unblock()
		require.NoError(t, closeProducer(t, p))
	})
}

// Every type × outcome and every failure reason is exported from the start,
// zeros included.
func TestMetricsEveryLabelCombination(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		reg := prometheus.NewPedanticRegistry()
		p := newFake(t, b, mlproducer.WithRegisterer(reg))
		for name, want := range map[string]int{
			"ml_producer_messages_total":          4 * 9,
			"ml_producer_attempt_failures_total":  4,
			"ml_producer_connection_state":        1,
			"ml_producer_confirm_latency_seconds": 1,
		} {
			n, err := testutil.GatherAndCount(reg, name)
			require.NoError(t, err)
			assert.Equal(t, want, n, name)
		}
		mfs, err := reg.Gather()
		require.NoError(t, err)
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				assert.True(t, slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
					return l.GetName() == "producer" && l.GetValue() == "mlproducer"
				}), "%s has producer=\"mlproducer\"", mf.GetName())
			}
		}
		require.NoError(t, closeProducer(t, p))
	})
}

// publishHeld publishes an embedding while the broker holds confirms; the
// call gives up waiting after 1ms and the message stays pending.
func publishHeld(t *testing.T, p *mlproducer.Producer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	r, err := p.PublishEmbedding(ctx, "share-1", "text", mlproducer.EmbeddingOptions{})
	require.NoError(t, err)
	require.Equal(t, mlproducer.Pending, r.State)
}

// The histogram has the latency bounds, cumulative counts and one
// observation per confirmed message. Under synctest, holding the confirms
// sets the latencies exactly: sent at 0, 1 and 2 ms, confirmed at 4 ms.
func TestMetricsConfirmLatencyHistogram(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		reg := prometheus.NewPedanticRegistry()
		p := newFake(t, b, mlproducer.WithRegisterer(reg))
		waitConnected(t, p)
		n, err := testutil.GatherAndCount(reg, "ml_producer_confirm_latency_seconds")
		require.NoError(t, err)
		require.Equal(t, 1, n, "exported before any observation")
		assert.Zero(t, gatherHistogram(t, reg, "ml_producer_confirm_latency_seconds").GetSampleCount())

		b.HoldConfirms(true)
		for range 3 {
			publishHeld(t, p)
		}
		time.Sleep(time.Millisecond)
		b.HoldConfirms(false)
		synctest.Wait()
		require.EqualValues(t, 3, p.Status().Confirmed)

		h := gatherHistogram(t, reg, "ml_producer_confirm_latency_seconds")
		assert.EqualValues(t, 3, h.GetSampleCount())
		assert.InDelta(t, 0.004+0.003+0.002, h.GetSampleSum(), 1e-9)
		want := map[float64]uint64{.0005: 0, .001: 0, .0025: 1, .005: 3, .01: 3, .025: 3, .05: 3, .1: 3, .25: 3, .5: 3, 1: 3, 2.5: 3, 5: 3, 10: 3}
		got := map[float64]uint64{}
		var bounds []float64
		for _, bk := range h.GetBucket() {
			bounds = append(bounds, bk.GetUpperBound())
			got[bk.GetUpperBound()] = bk.GetCumulativeCount()
		}
		assert.Equal(t, want, got, "cumulative counts by upper bound")
		assert.True(t, slices.IsSorted(bounds))
		require.NoError(t, closeProducer(t, p))
	})
}

// An observation past the last bound counts in +Inf: in the total, in no
// bucket.
func TestMetricsConfirmLatencyOverflow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		reg := prometheus.NewPedanticRegistry()
		p := newFake(t, b, mlproducer.WithRegisterer(reg), mlproducer.WithConfirmTimeout(time.Minute))
		waitConnected(t, p)
		b.HoldConfirms(true)
		publishHeld(t, p)
		time.Sleep(12 * time.Second)
		b.HoldConfirms(false)
		synctest.Wait()
		h := gatherHistogram(t, reg, "ml_producer_confirm_latency_seconds")
		assert.EqualValues(t, 1, h.GetSampleCount())
		assert.InDelta(t, 12.001, h.GetSampleSum(), 1e-9)
		for _, bk := range h.GetBucket() {
			assert.Zero(t, bk.GetCumulativeCount(), "le=%g", bk.GetUpperBound())
		}
		require.NoError(t, closeProducer(t, p))
	})
}

func gatherHistogram(t *testing.T, g prometheus.Gatherer, name string) *dto.Histogram {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			require.Equal(t, dto.MetricType_HISTOGRAM, mf.GetType())
			require.Len(t, mf.GetMetric(), 1)
			return mf.GetMetric()[0].GetHistogram()
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

// Producers with distinct connection names share a registerer; a second one
// with the same name is refused by New, which then leaves nothing running.
func TestRegisterTwoProducersOnOneRegistry(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	reg := prometheus.NewPedanticRegistry()
	p1 := newFake(t, b, mlproducer.WithRegisterer(reg), mlproducer.WithConnectionName("orders"))
	p2 := newFake(t, b, mlproducer.WithRegisterer(reg), mlproducer.WithConnectionName("billing"))
	waitConnected(t, p1)
	waitConnected(t, p2)

	mfs, err := reg.Gather()
	require.NoError(t, err)
	var producers []string
	for _, mf := range mfs {
		if mf.GetName() != "ml_producer_connection_state" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "producer" {
					producers = append(producers, l.GetValue())
				}
			}
			assert.EqualValues(t, 3, m.GetGauge().GetValue())
		}
	}
	slices.Sort(producers)
	assert.Equal(t, []string{"billing", "orders"}, producers)

	running := goleak.IgnoreCurrent()
	p3, err := mlproducer.New(mlproducer.WithDialer(b), mlproducer.WithRegisterer(reg), mlproducer.WithConnectionName("orders"))
	require.Error(t, err)
	assert.Nil(t, p3)
	assert.ErrorContains(t, err, "mlproducer: register metrics")
	assert.ErrorContains(t, err, "WithConnectionName")
	var already prometheus.AlreadyRegisteredError
	assert.ErrorAs(t, err, &already)
	goleak.VerifyNone(t, running)

	// Close frees the name.
	require.NoError(t, closeProducer(t, p1))
	p4 := newFake(t, b, mlproducer.WithRegisterer(reg), mlproducer.WithConnectionName("orders"))
	require.NoError(t, closeProducer(t, p4))
	require.NoError(t, closeProducer(t, p2))
}

// The metrics follow Prometheus' naming and documentation conventions.
func TestMetricsLint(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		reg := prometheus.NewPedanticRegistry()
		p := newFake(t, b, mlproducer.WithRegisterer(reg))
		waitConnected(t, p)
		_, err := p.PublishEmbedding(context.Background(), "share-1", "text", mlproducer.EmbeddingOptions{})
		require.NoError(t, err)
		problems, err := testutil.GatherAndLint(reg)
		require.NoError(t, err)
		assert.Empty(t, problems)
		require.NoError(t, closeProducer(t, p))
	})
}

// alertsFile holds the example alert rules of the gateway example; every
// metric its expressions use must be one the collector exports.
const alertsFile = "examples/gateway/alerts.yml"

func TestAlertRulesUseExportedMetrics(t *testing.T) {
	abs, err := filepath.Abs(alertsFile)
	require.NoError(t, err)
	data, err := os.ReadFile(alertsFile)
	if errors.Is(err, os.ErrNotExist) {
		t.Fatalf("alert rules %s do not exist; they must, and every ml_producer_ metric in their expr must be exported", abs)
	}
	require.NoError(t, err)

	unknown, used := unexportedAlertMetrics(string(data), exportedSeriesNames(t))
	assert.NotZero(t, used, "%s: no expr uses an ml_producer_ metric", abs)
	for _, u := range unknown {
		t.Errorf("%s:%d: expr uses %s, which mlproducer does not export", abs, u.line, u.text)
	}
}

// unexportedAlertMetrics returns the ml_producer_ names used in the exprs of
// a rules file that are not in exported, and how many names it used.
func unexportedAlertMetrics(rules string, exported map[string]bool) (unknown []alertExpr, used int) {
	metricName := regexp.MustCompile(`\bml_producer_[a-z0-9_]+`)
	for _, e := range alertExprs(rules) {
		for _, name := range metricName.FindAllString(e.text, -1) {
			used++
			if !exported[name] {
				unknown = append(unknown, alertExpr{line: e.line, text: name})
			}
		}
	}
	return unknown, used
}

// exportedSeriesNames returns the names a scrape of a Producer can show:
// each metric, plus _bucket, _sum and _count for the histogram.
func exportedSeriesNames(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		reg := prometheus.NewPedanticRegistry()
		p := newFake(t, b, mlproducer.WithRegisterer(reg))
		mfs, err := reg.Gather()
		require.NoError(t, err)
		for _, mf := range mfs {
			names[mf.GetName()] = true
			if mf.GetType() == dto.MetricType_HISTOGRAM {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					names[mf.GetName()+suffix] = true
				}
			}
		}
		require.NoError(t, closeProducer(t, p))
	})
	return names
}

type alertExpr struct {
	line int
	text string
}

// alertExprs returns the value of every expr: key of a Prometheus rules
// file, inline ("expr: a > 1", quoted or not) or as a block scalar
// ("expr: |" followed by more indented lines).
func alertExprs(yaml string) []alertExpr {
	exprKey := regexp.MustCompile(`^(\s*)(?:-\s+)?expr:\s*(.*)$`)
	var out []alertExpr
	lines := strings.Split(yaml, "\n")
	for i := 0; i < len(lines); i++ {
		m := exprKey.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		indent, value := len(m[1]), strings.TrimSpace(m[2])
		e := alertExpr{line: i + 1}
		if value == "" || strings.HasPrefix(value, "|") || strings.HasPrefix(value, ">") {
			var block []string
			for i+1 < len(lines) {
				next := lines[i+1]
				if strings.TrimSpace(next) != "" && len(next)-len(strings.TrimLeft(next, " \t")) <= indent {
					break
				}
				block = append(block, next)
				i++
			}
			e.text = strings.Join(block, "\n")
		} else {
			e.text = value
		}
		out = append(out, e)
	}
	return out
}

func TestAlertExprsParsing(t *testing.T) {
	got := alertExprs(`groups:
  - name: mlproducer
    rules:
      - alert: A
        expr: ml_producer_retry_queue_size > 50 # comment
      - alert: B
        expr: "ml_producer_circuit_breaker_open == 1"
      - alert: C
        expr: |
          histogram_quantile(0.99,
            rate(ml_producer_confirm_latency_seconds_bucket[5m])) > 1
        for: 5m
      - expr: ml_producer_connection_state != 3
        alert: D
`)
	require.Len(t, got, 4)
	assert.Equal(t, 5, got[0].line)
	assert.Contains(t, got[0].text, "ml_producer_retry_queue_size")
	assert.Contains(t, got[1].text, "ml_producer_circuit_breaker_open")
	assert.Contains(t, got[2].text, "ml_producer_confirm_latency_seconds_bucket[5m]")
	assert.NotContains(t, got[2].text, "for:")
	assert.Equal(t, "ml_producer_connection_state != 3", got[3].text)
}

// The alert check accepts the guide's alerts and the histogram's series and
// catches a name the collector does not export.
func TestAlertCheckFindsUnexportedMetric(t *testing.T) {
	unknown, used := unexportedAlertMetrics(`groups:
  - name: mlproducer
    rules:
      - alert: MLProducerRetryQueueHigh
        expr: ml_producer_retry_queue_size > 50
      - alert: MLProducerCircuitBreakerOpen
        expr: ml_producer_circuit_breaker_open == 1
      - alert: MLProducerDisconnected
        expr: ml_producer_connection_state != 3
      - alert: MLProducerSlowConfirms
        expr: histogram_quantile(0.99, sum by (le) (rate(ml_producer_confirm_latency_seconds_bucket[5m]))) > 1
      - alert: MLProducerDeadLetters
        expr: rate(ml_producer_dead_letters_total[5m]) > 0 or ml_producer_queue_depth > 10
`, exportedSeriesNames(t))
	assert.Equal(t, 6, used)
	assert.Equal(t, []alertExpr{{line: 13, text: "ml_producer_queue_depth"}}, unknown)
}
