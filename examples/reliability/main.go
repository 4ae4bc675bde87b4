// Command reliability runs the reliability scenarios against a real RabbitMQ,
// as the NestJS service's ./test-ml-producer-reliability.js did:
//
//	go run ./examples/reliability all|connection-resilience|message-retry|circuit-breaker|flow-control|broker-restart|partition|chaos [-duration 60s]
//	go run ./examples/reliability crash [-kills 12]
//	go run ./examples/reliability long-outage [-outage 2m]
//	go run ./examples/reliability cluster [-cluster-outage 20s]
//
// The last two are about the crash-safe spool (WithSpool) and are not part
// of "all": crash starts this program again as a publishing child process
// and kills it with SIGKILL at least 12 times (while publishing, while the
// broker is cut off, in the middle of Close), restarting it on the same spool
// dir, then checks that every message a child accepted arrived (duplicates
// are counted, not failed); long-outage makes the broker refuse connections
// for 2 minutes under load and checks that no publish is refused while the
// spool has room, that everything is delivered after, and how soon the first
// confirm comes once the broker is back.
//
// cluster is not part of "all" either: it runs on the local 3-node cluster
// of scripts/rabbitmq-cluster.sh (started if needed; `make
// reliability-cluster`), 64 callers on quorum queues while the Producer's
// node, then a queue's leader, then every node in turn is stopped and
// started, then two of the three stay down for 20 s (no majority); it leaves
// every node running.
//
// Each scenario drives a real Producer while a fault hits it, then checks by
// consuming what arrived that no accepted message was lost, that no publish
// returned later than its deadline plus 50 ms and that no goroutine was left
// behind. The command prints one PASS/FAIL line per scenario with its figures
// (and its notes, indented), then a table of them all; its exit status is 1
// if any scenario failed, 2 on a usage error.
//
// It uses the broker in RABBITMQ_URL (default amqp://guest:guest@127.0.0.1:5672/)
// and rabbitmqctl on the local node, so run it on the broker's machine, as
// root or a user rabbitmqctl accepts; `make reliability` starts a local
// broker first and runs `all`. The scenarios work in a virtual host of their
// own. flow-control raises a memory alarm and broker-restart stops the
// broker's application for a few seconds: both take the lock the
// integration tests share, so they wait for running tests, and always
// restore the broker, also on Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/mlproducer/mlproducer/internal/reliability"
	"github.com/mlproducer/mlproducer/internal/spoolchild"
)

func main() {
	// The crash scenario runs this program again as its child.
	if spoolchild.IsChild() {
		os.Exit(spoolchild.Main())
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reliability", flag.ContinueOnError)
	fs.SetOutput(stderr)
	duration := fs.Duration("duration", 60*time.Second, "how long the chaos scenario publishes")
	goroutines := fs.Int("goroutines", 64, "publisher goroutines of the chaos scenario")
	publishers := fs.Int("publishers", 16, "publisher goroutines of the other scenarios")
	seed := fs.Uint64("seed", 0, "seed of the chaos scenario's faults and of the crash scenario's kills (0: from the clock)")
	kills := fs.Int("kills", 12, "least number of SIGKILLs of the crash scenario")
	outage := fs.Duration("outage", 2*time.Minute, "how long the broker refuses connections in the long-outage scenario")
	clusterOutage := fs.Duration("cluster-outage", 20*time.Second, "how long two of three nodes stay down in the cluster scenario")
	clusterTap := fs.String("cluster-tap", os.Getenv(reliability.ClusterTapEnv), "cluster scenario: watch the wire through a tap per node, judge by it, and write its records to this directory (default $"+reliability.ClusterTapEnv+")")
	verbose := fs.Bool("v", false, "show progress and the Producers' warnings on stderr")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: reliability all|%s [flags]\n\nscenarios (all runs these):\n", strings.Join(append(reliability.Names(), reliability.Extra()...), "|"))
		for _, n := range reliability.Names() {
			fmt.Fprintf(stderr, "  %-22s %s\n", n, reliability.Describe(n))
		}
		fmt.Fprintln(stderr, "\nscenarios of the spool (WithSpool) and of the local cluster, run one at a time, not by all:")
		for _, n := range reliability.Extra() {
			fmt.Fprintf(stderr, "  %-22s %s\n", n, reliability.Describe(n))
		}
		fmt.Fprintln(stderr, "\nflags:")
		fs.PrintDefaults()
	}
	// The scenario may come before or after the flags.
	var names []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		args = fs.Args()
		if len(args) > 0 {
			names = append(names, args[0])
			args = args[1:]
		}
	}
	if len(names) != 1 {
		fs.Usage()
		return 2
	}
	list := []string{names[0]}
	if names[0] == "all" {
		list = reliability.Names()
	} else if !slices.Contains(reliability.Names(), names[0]) && !slices.Contains(reliability.Extra(), names[0]) {
		fmt.Fprintf(stderr, "reliability: unknown scenario %q\n", names[0])
		fs.Usage()
		return 2
	}

	cfg := reliability.Config{
		ChaosDuration:   *duration,
		ChaosPublishers: *goroutines,
		Publishers:      *publishers,
		Seed:            *seed,
		CrashKills:      *kills,
		OutageDuration:  *outage,
		ClusterOutage:   *clusterOutage,
		ClusterTapDir:   *clusterTap,
	}
	if *verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		cfg.Logf = func(format string, args ...any) { fmt.Fprintf(stderr, format+"\n", args...) }
	}

	// Ctrl-C ends the scenario early; it still restores the broker.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := reliability.NewRunner(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer func() {
		if err := r.Close(); err != nil {
			fmt.Fprintln(stderr, err)
		}
	}()

	var results []reliability.Result
	failed := false
	for _, name := range list {
		if ctx.Err() != nil {
			break
		}
		if *verbose {
			fmt.Fprintf(stderr, "running %s: %s\n", name, reliability.Describe(name))
		}
		res := r.Run(ctx, name)
		results = append(results, res)
		failed = failed || !res.Pass
		_ = res.WriteReport(stdout)
	}
	fmt.Fprintln(stdout)
	_ = reliability.WriteTable(stdout, results)
	if failed || ctx.Err() != nil {
		return 1
	}
	return 0
}
