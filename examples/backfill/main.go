// Command backfill reads documents as JSON Lines and publishes an embedding
// or summarization task for each, with [mlproducer.Producer.PublishAsync]:
// one loop keeps the Producer's in-flight window full, at the broker's pace.
//
// Usage:
//
//	backfill [flags] [file]
//
// The input is file, or stdin when file is "-" or absent. Each line is a JSON
// object; the id field (-id-field, default "id", a string or a number) is the
// task's share id and gives its message id, and the content field
// (-content-field, default "text", a string) is the content. Blank lines are
// skipped. The message id is the document id itself when it is 1 to 128
// visible ASCII characters, and otherwise "sha256-" and the hex SHA-256 of
// it: the same document always gets the same message id, so a rerun
// republishes the same ids and consumers that de-duplicate by message id do
// the work once.
//
// A line that cannot be published (not a JSON object, a missing or empty
// field, content the Producer refuses) is refused: its line number and the
// reason go to stderr, it counts as refused, and reading goes on (or stops,
// with -stop-on-error). The broker is configured by the environment, as
// [mlproducer.OptionsFromEnv] reads it (RABBITMQ_URL and the rest).
//
// Progress goes to stderr: a progress bar when stderr is a terminal, and
// otherwise one summary line every -interval (done/total lines, msg/s over
// the last interval, ETA, confirmed, dead-lettered, refused). For a file the
// total is known (the lines are counted first); for stdin it is not.
//
// At the end of the input the command flushes (waits until every message is
// confirmed or dead-lettered, for at most -flush-timeout), closes the
// Producer and prints the counts on stdout. SIGINT or SIGTERM (Ctrl-C) stops
// reading and does the same; a second one exits at once.
//
// Exit status: 0 when every line was published and confirmed; 1 when a line
// was refused, a message was dead-lettered or was still unconfirmed at the
// end; 2 for a usage or setup error (bad flag, unreadable file, no broker
// within -connect-timeout); 130 when interrupted.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/mlproducer/mlproducer"
)

func main() { os.Exit(mainWith()) }

// mainWith is main with extra Producer options (a test's fake broker): the
// process's arguments, streams, environment and signals.
func mainWith(extra ...mlproducer.Option) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// After the first signal, a second one gets the default action:
		// exit at once, without waiting for the flush.
		<-ctx.Done()
		stop()
	}()
	return runWith(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv, extra...)
}
