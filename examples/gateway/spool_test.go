package main

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// With ML_SPOOL_DIR, a task answered 202 while the broker is down outlives
// the gateway: its Close leaves it in the spool, and the next gateway on the
// dir delivers it.
func TestSpoolDirFromEnvKeepsAcceptedTasks(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("ML_SPOOL_DIR", dir)
	opts, err := mlproducer.OptionsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	b := mlproducertest.NewBroker()
	t.Cleanup(b.Close)
	b.RefuseDials(errors.New("broker down"))
	newProducer := func() *mlproducer.Producer {
		p, err := mlproducer.New(append(opts, mlproducer.WithDialer(b), mlproducer.WithLogger(testLogger(t)))...)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := newProducer()
	res := do(t, newMux(p, testLogger(t)), http.MethodPost, "/api/ml/embed", validEmbed)
	expect(t, res, http.StatusAccepted)
	id, _ := res.JSON["messageId"].(string)
	if id == "" || res.JSON["state"] != "queued" {
		t.Fatalf("want a messageId and state queued, got %s", res.Body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	err = p.Close(ctx)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "left in the spool") {
		t.Fatalf("Close with the broker down: %v, want the task left in the spool", err)
	}

	b.RefuseDials(nil)
	p = newProducer()
	eventually(t, "the spooled task delivered", func() bool { return b.StoredIDs()[id] == 1 })
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
