package mlproducer_test

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// A service mounts the Producer's handlers next to its own: Prometheus text on
// /metrics, the status and counters as JSON on /status, and the probes on
// /livez and /readyz. Here a recorder stands in for the HTTP server and the
// fake broker for RabbitMQ.
func ExampleProducer_MetricsHandler() {
	broker := mlproducertest.NewBroker()
	defer broker.Close()

	p, err := mlproducer.New(mlproducer.WithDialer(broker), mlproducer.WithConnectionName("gateway"))
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	defer p.Close(ctx)

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", p.MetricsHandler())
	mux.Handle("/status", p.StatusHandler())
	mux.Handle("/livez", p.LivenessHandler())
	mux.Handle("/readyz", p.ReadinessHandler())
	// In a service: http.ListenAndServe(":9090", mux), or a separate admin port.

	if err := p.WaitConnected(ctx); err != nil {
		log.Fatal(err)
	}
	get := func(path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec
	}
	for _, path := range []string{"/livez", "/readyz"} {
		rec := get(path)
		fmt.Println(path, rec.Code, strings.TrimSpace(rec.Body.String()))
	}
	sc := bufio.NewScanner(get("/metrics").Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "ml_producer_connection_state") {
			fmt.Println(sc.Text())
		}
	}
	// Output:
	// /livez 200 {"status":"ok"}
	// /readyz 200 {"status":"ready"}
	// ml_producer_connection_state{producer="gateway"} 3
}
