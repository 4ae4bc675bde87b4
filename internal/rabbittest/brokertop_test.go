package rabbittest

import (
	"context"
	"os/exec"
	"regexp"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TestBrokerTopScript: scripts/broker-top.sh, run while a channel publishes
// with confirms, prints the broker's CPU (Erlang's runtime and the OS
// process's user and system time) and finds that channel's process and its
// queue's, with their reductions per second, among the five that did the
// most work.
func TestBrokerTopScript(t *testing.T) {
	url := Require(t)
	queue := tempQueue(t, url)
	ch, err := Dial(t, url).Channel()
	must(t, err, "channel")
	must(t, ch.Confirm(false), "confirm mode")

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // a window of 64 confirms until the script is done
		defer wg.Done()
		var window []*amqp.DeferredConfirmation
		for ctx.Err() == nil {
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, amqp.Publishing{Body: make([]byte, 1024)})
			if err != nil {
				return
			}
			window = append(window, dc)
			if len(window) == 64 {
				if _, err := window[0].WaitContext(ctx); err != nil {
					return
				}
				window = window[1:]
			}
		}
	}()
	script, err := scriptPath("broker-top.sh")
	must(t, err, "find the script")
	time.Sleep(200 * time.Millisecond) // under way
	out, err := exec.Command("bash", script, "1").CombinedOutput()
	cancel()
	wg.Wait()
	if err != nil {
		t.Fatalf("broker-top.sh: %v\n%s", err, out)
	}
	for _, want := range []string{
		`broker CPU \d+\.\d\d cores over 1 s`,
		`(?m)^ +\d+ % +[1-9]\d*/s  rabbit_channel$`,
		`(?m)^ +\d+ % +[1-9]\d*/s  rabbit_prequeue$`,
		`(?m)^OS process: user \d+\.\d\d cores, system \d+\.\d\d cores$`,
	} {
		if !regexp.MustCompile(want).Match(out) {
			t.Errorf("output has no line matching %s:\n%s", want, out)
		}
	}
	if out, err := exec.Command("bash", script, "0").CombinedOutput(); err == nil {
		t.Errorf("broker-top.sh 0 succeeded; want a usage error:\n%s", out)
	}
}
