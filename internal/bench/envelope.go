package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mlproducer/mlproducer"
)

// envCallers is the caller count of the envelope cases (issue 13 item 5).
const envCallers = 64

// The envelope cases: raw-64 publishing a bare persistent message to the
// Producer's exchange (ml.tasks, to a classic queue of its own), with one
// property (or the mandatory flag) on top, to see which of them the broker
// pays for. Each is compared with envBare in the same run.
const (
	envBare      = "bare"      // persistent (delivery mode 2), nothing else
	envMessageID = "msgid"     // + message_id, a UUIDv7
	envTimestamp = "timestamp" // + timestamp
	envType      = "type"      // + type, the task type
	envAppID     = "appid"     // + app_id
	envCType     = "ctype"     // + content_type application/json
	envAttempt   = "attempt"   // + headers {x-mlproducer-attempt: int32 1}
	envMandatory = "mandatory" // + the mandatory flag
	envKeep      = "keep"      // message id, content type and mandatory: what consumers need
	envProps     = "props"     // every property and mandatory, no headers table
	envAll       = "all"       // every property, the header and mandatory: the Producer's envelope before issue 13
)

// envCases are the envelope cases in the order of the report.
var envCases = []string{envBare, envMessageID, envTimestamp, envType, envAppID, envCType, envAttempt, envMandatory, envKeep, envProps, envAll}

// envelope returns the mandatory flag and a publishing builder for an
// envelope case: body with the case's properties.
func envelope(prop string, body []byte) (mandatory bool, build func() amqp.Publishing) {
	headers := amqp.Table{mlproducer.AttemptHeader: int32(1)} // read-only, shared
	has := func(p string) bool {
		return prop == p || prop == envAll || prop == envProps && p != envAttempt ||
			prop == envKeep && (p == envMessageID || p == envCType || p == envMandatory)
	}
	mandatory = has(envMandatory)
	return mandatory, func() amqp.Publishing {
		p := amqp.Publishing{DeliveryMode: amqp.Persistent, Body: body}
		if has(envMessageID) {
			id, _ := uuid.NewV7()
			p.MessageId = id.String()
		}
		if has(envTimestamp) {
			p.Timestamp = time.Now()
		}
		if has(envType) {
			p.Type = string(mlproducer.TaskSummarization)
		}
		if has(envAppID) {
			p.AppId = "mlproducer-bench"
		}
		if has(envCType) {
			p.ContentType = "application/json"
		}
		if has(envAttempt) {
			p.Headers = headers
		}
		return p
	}
}

// envReport prints, for each size, every envelope case as a ratio to the
// bare case: of the medians, and round by round (each round runs both, so
// the drift of the machine cancels), for msg/s and the broker's CPU per
// message. A property "costs" when the median ratio is worse than 1 by more
// than the noise (half the spread of the bare case's own rounds, at least
// 2 %) and every round agrees: in msg/s, and in the broker's CPU, which a
// loaded machine disturbs less.
func envReport(w io.Writer, cfg config, res *results) {
	printed := false
	for _, size := range cfg.sizes {
		bare := spec{kind: kindRawEnv, callers: envCallers, size: size, env: envBare}
		br := res.byKey[bare.key()]
		bRate, ok := medianOf(br, mRate)
		if !ok || bRate == 0 {
			continue
		}
		lo, hi := math.Inf(1), 0.0
		for _, o := range br {
			if o.m.msgs > 0 {
				lo, hi = min(lo, o.m.rate()), max(hi, o.m.rate())
			}
		}
		noise := max((hi-lo)/2/bRate, 0.02)
		bCPU, _ := medianOf(br, mBroker)
		cLo, cHi := math.Inf(1), 0.0
		for _, o := range br {
			if c := float64(o.m.brokerPerMsg()); c > 0 {
				cLo, cHi = min(cLo, c), max(cHi, c)
			}
		}
		cpuNoise := 0.02
		if bCPU > 0 {
			cpuNoise = max((cHi-cLo)/2/bCPU, 0.02)
		}
		if !printed {
			fmt.Fprintf(w, "\n### Envelope cost (issue 13 item 5): raw-%d, one property on top of a bare persistent publish to %s\n", envCallers, taskExchange)
			printed = true
		}
		fmt.Fprintf(w, "\n%s bodies; bare: %s msg/s, broker %s/msg; noise ±%.1f %% in msg/s, ±%.1f %% in broker CPU (half the spread of bare's rounds, at least 2 %%).\n\n",
			fmtSize(size), fmtRate(bRate), fmtDur(time.Duration(bCPU)), noise*100, cpuNoise*100)
		fmt.Fprintln(w, "| case | msg/s | / bare | by round | verdict | broker CPU/msg | / bare | by round | verdict |")
		fmt.Fprintln(w, "|---|---:|---:|---|---|---:|---:|---|---|")
		cases := make([]spec, 0, len(envCases)+2)
		for _, prop := range envCases {
			s := bare
			s.env = prop
			cases = append(cases, s)
		}
		cases = append(cases, spec{kind: kindPublish, callers: envCallers, size: size},
			spec{kind: kindPublish, callers: envCallers, size: size, env: envAll})
		for _, s := range cases {
			prop := s.env
			if s.kind == kindPublish {
				prop = s.name()
			}
			runs := res.byKey[s.key()]
			rate, ok := medianOf(runs, mRate)
			if !ok {
				continue
			}
			cpu, _ := medianOf(runs, mBroker)
			var byRate, byCPU []string
			allBelow, allAbove := true, true
			for i := range min(len(runs), len(br)) {
				a, b := runs[i].m, br[i].m
				if a.msgs == 0 || b.msgs == 0 {
					continue
				}
				r := a.rate() / b.rate()
				allBelow = allBelow && r < 1
				byRate = append(byRate, fmt.Sprintf("%.2f", r))
				if b.brokerPerMsg() > 0 {
					c := float64(a.brokerPerMsg()) / float64(b.brokerPerMsg())
					allAbove = allAbove && c > 1
					byCPU = append(byCPU, fmt.Sprintf("%.2f", c))
				}
			}
			cpuRatio, cpuVerdict := "n/a", "n/a"
			if bCPU > 0 {
				cpuRatio, cpuVerdict = fmt.Sprintf("%.2f", cpu/bCPU), "within noise"
				if prop != envBare && cpu/bCPU > 1+cpuNoise && allAbove {
					cpuVerdict = fmt.Sprintf("costs %.0f %%", (cpu/bCPU-1)*100)
				}
			}
			verdict := "within noise"
			switch {
			case prop == envBare:
				verdict, cpuVerdict = "(reference)", "(reference)"
			case rate/bRate < 1-noise && allBelow:
				verdict = fmt.Sprintf("costs %.0f %%", (1-rate/bRate)*100)
			}
			fmt.Fprintf(w, "| %s | %s | %.3f | %s | %s | %s | %s | %s | %s |\n", s.name(), fmtRate(rate), rate/bRate, strings.Join(byRate, " "), verdict,
				fmtDur(time.Duration(cpu)), cpuRatio, strings.Join(byCPU, " "), cpuVerdict)
		}
	}
}
