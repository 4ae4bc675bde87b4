package main

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPercentileAndMedian(t *testing.T) {
	ns := []int64{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	if got := percentile(ns, 50); got != 5 {
		t.Errorf("p50 = %d, want 5", got)
	}
	if got := percentile(ns, 99); got != 10 {
		t.Errorf("p99 = %d, want 10", got)
	}
	if got := percentile(nil, 99); got != 0 {
		t.Errorf("p99 of nothing = %d, want 0", got)
	}
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median = %v, want 2", got)
	}
	if got := median([]float64{4, 1, 2, 3}); got != 2.5 {
		t.Errorf("median = %v, want 2.5", got)
	}
}

func TestTaskBody(t *testing.T) {
	for _, n := range []int{256, 1024, 16384} {
		b, err := taskBody(n)
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if len(b) != n || json.Unmarshal(b, &v) != nil || v["type"] != "summarization" {
			t.Errorf("taskBody(%d): %d bytes, %q", n, len(b), b[:40])
		}
	}
	if _, err := taskBody(100); err == nil {
		t.Error("taskBody(100): no error")
	}
}

func TestURLs(t *testing.T) {
	u, err := withVhost("amqp://guest:guest@127.0.0.1:5672/", "mlproducer-bench")
	if err != nil || u != "amqp://guest:guest@127.0.0.1:5672/mlproducer-bench" {
		t.Errorf("withVhost = %q, %v", u, err)
	}
	if got := withHost(u, "127.0.0.1:40000"); got != "amqp://guest:guest@127.0.0.1:40000/mlproducer-bench" {
		t.Errorf("withHost = %q", got)
	}
	if hp, _ := hostPort("amqp://localhost/"); hp != "localhost:5672" {
		t.Errorf("hostPort = %q", hp)
	}
	if got := redact(u); got != "amqp://guest:xxxxx@127.0.0.1:5672/mlproducer-bench" {
		t.Errorf("redact = %q", got)
	}
}

func TestForwarder(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := echo.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	fw, err := newForwarder(echo.Addr().String())
	if err != nil {
		t.Fatal(err)
	}

	// Refusing: the connection is closed before anything comes back.
	c, err := net.Dial("tcp", fw.addr())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("refusing forwarder: read %d bytes, want an error", n)
	}
	c.Close()

	// Forwarding.
	fw.setForward(true)
	c, err = net.Dial("tcp", fw.addr())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Errorf("through the forwarder: %q, %v", buf, err)
	}
	// close cuts forwarded connections.
	fw.close()
	if _, err := c.Read(buf); err == nil {
		t.Error("read after forwarder close: no error")
	}
	c.Close()
	<-done
}

func TestFSInfo(t *testing.T) {
	desc, mem := fsInfo(t.TempDir())
	if desc == "" || strings.HasPrefix(desc, "unknown") {
		t.Errorf("fsInfo(TempDir) = %q", desc)
	}
	// /dev/shm is tmpfs on Linux: fsInfo must call it memory.
	if b, err := os.ReadFile("/proc/self/mounts"); err == nil && strings.Contains(string(b), " /dev/shm tmpfs ") {
		if desc, mem = fsInfo("/dev/shm"); !mem || !strings.HasPrefix(desc, "tmpfs") {
			t.Errorf("fsInfo(/dev/shm) = %q, %v; want tmpfs, in memory", desc, mem)
		}
	}
}

// The async-heap verdict compares the peak live heap with 1.5 × window ×
// 1 KiB + 16 MiB, and an error is a FAIL.
func TestAsyncHeapReport(t *testing.T) {
	for _, tc := range []struct {
		r    asyncHeapResult
		want string
	}{
		{asyncHeapResult{msgs: 10, window: 4096, peakLive: 22 << 20}, "| PASS |"},
		{asyncHeapResult{msgs: 10, window: 4096, peakLive: 23 << 20}, "| FAIL |"},
		{asyncHeapResult{msgs: 10, window: 256, peakLive: 17 << 20}, "| FAIL |"},
		{asyncHeapResult{msgs: 10, window: 4096, err: errors.New("boom")}, "ERROR: boom"},
	} {
		var b strings.Builder
		asyncHeapReport(&b, &tc.r)
		if !strings.Contains(b.String(), tc.want) {
			t.Errorf("%+v: report lacks %q:\n%s", tc.r, tc.want, b.String())
		}
	}
	var b strings.Builder
	asyncHeapReport(&b, nil)
	if b.Len() != 0 {
		t.Errorf("a case not run prints %q", b.String())
	}
}

// TestPlanPutsRatiosSideBySide: in every round of the default plan, each
// case runs once and the two cases of each throughput target run one after
// the other, so that a slow spell of the machine falls on both.
func TestPlanPutsRatiosSideBySide(t *testing.T) {
	cfg := config{
		sizes: []int{1024, 16384}, callers: []int{1, 16, 64, 256},
		rawWindows: []int{1, 16, 64, 256, 1024, 4096}, asyncWindows: []int{64, 256, 1024, 4096},
		rawChannels: 1, cluster: true,
	}
	for round := range 2 {
		specs, _, _ := plan(cfg, round)
		at := map[string]int{}
		for i, s := range specs {
			if j, dup := at[s.key()]; dup {
				t.Fatalf("round %d: %s at %d and %d", round, s.key(), j, i)
			}
			at[s.key()] = i
		}
		for _, size := range cfg.sizes {
			pairs := [][2]spec{
				{{kind: kindPublishAsync, callers: 1, window: 256}, {kind: kindRawWindow, callers: 1, window: 256}},
				{{kind: kindPublishAsync, callers: 1, window: 4096}, {kind: kindRawNoConfirm, callers: 1}},
				{{kind: kindPublishAsync, callers: 1, window: 1024}, {kind: kindRawWindow, callers: 1, window: 1024}},
			}
			for _, n := range cfg.callers {
				pairs = append(pairs, [2]spec{{kind: kindPublish, callers: n}, {kind: kindRawWindow, callers: 1, window: n}})
				if n == envCallers {
					pairs = append(pairs, [2]spec{{kind: kindPublish, callers: n}, {kind: kindRawEnv, callers: n, env: envBare}})
				} else {
					pairs = append(pairs, [2]spec{{kind: kindPublish, callers: n}, {kind: kindRaw, callers: n}})
				}
			}
			for _, p := range pairs {
				p[0].size, p[1].size = size, size
				i, ok1 := at[p[0].key()]
				j, ok2 := at[p[1].key()]
				if !ok1 || !ok2 {
					t.Fatalf("round %d: %s or %s not planned", round, p[0].key(), p[1].key())
				}
				if i-j != 1 && j-i != 1 {
					t.Errorf("round %d: %s at %d, %s at %d: not side by side", round, p[0].key(), i, p[1].key(), j)
				}
			}
		}
		if n := len(at); n < 2*(4*5+6+4) {
			t.Errorf("round %d: %d cases planned; want every case of the default run", round, n)
		}
	}
}
