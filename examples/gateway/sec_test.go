package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// From the security review.

// The password of RABBITMQ_URL never reaches the unauthenticated status
// endpoints: a raw '#' in it is refused at configuration, and a
// percent-encoded one is not shown, even when the dial error quotes the URL.
func TestGatewayStatusNeverShowsPassword(t *testing.T) {
	for _, c := range []struct {
		url     string
		refused bool
	}{
		{"amqp://admin:p@ss#Secret99@rabbit:5672/", true},
		{"amqp://admin:p%40ss%23Secret99@rabbit:5672/", false},
		{"amqp://admin:p%40ss%23secret99@rabbit:5672/", false},
	} {
		t.Run(c.url, func(t *testing.T) {
			t.Setenv("RABBITMQ_URL", c.url)
			opts, err := mlproducer.OptionsFromEnv()
			switch {
			case err != nil && strings.Contains(strings.ToLower(err.Error()), "secret99"):
				t.Errorf("LEAK: the configuration error shows the password: %v", err)
			case err != nil && !c.refused:
				t.Fatalf("refused a percent-encoded password: %v", err)
			case err != nil:
				return // the gateway exits 2 with this error
			case c.refused:
				t.Errorf("accepted a URL with a raw '#' in its password")
			}
			synctest.Test(t, func(t *testing.T) {
				b := mlproducertest.NewBroker()
				defer b.Close()
				b.RefuseDials(fmt.Errorf("dial %s: lookup ss: no such host", c.url))
				p, err := mlproducer.New(append(opts, mlproducer.WithDialer(b))...)
				if err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Second)
				synctest.Wait()
				g := newGateway(p, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Second)
				for _, h := range []http.Handler{g, g.admin()} {
					for _, path := range []string{"/api/ml/status", "/api/ml/metrics/json", "/api/ml/metrics/prometheus", "/readyz"} {
						rec := httptest.NewRecorder()
						h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
						if body := strings.ToLower(rec.Body.String()); strings.Contains(body, "secret99") {
							t.Errorf("LEAK: GET %s (no auth) shows the broker password: %s", path, rec.Body.String())
						}
					}
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				if err := p.Close(ctx); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
		})
	}
}

// A browser posts another site's form without asking first when it is
// text/plain, form-urlencoded or multipart: such a body is refused with 415
// and nothing is published; application/json (with parameters) works.
func TestGatewayPublishNeedsJSONContentType(t *testing.T) {
	p, b := fakeProducer(t)
	g := newGateway(p, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Second)
	// What <form enctype="text/plain"> with name=`{"shareId":"x","content":"` value=`"}` sends.
	body := `{"shareId":"x","content":"="}` + "\r\n"
	for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "application/jsonx"} {
		r := httptest.NewRequest(http.MethodPost, "/api/ml/summarize", strings.NewReader(body))
		if ct != "" {
			r.Header.Set("Content-Type", ct)
		}
		r.Header.Set("Origin", "https://evil.example")
		res := serve(t, g, r)
		if res.Code != http.StatusUnsupportedMediaType {
			t.Errorf("Content-Type %q: %d %s, want 415", ct, res.Code, res.Body)
		}
	}
	if n := len(b.Messages("ml.summarization")); n != 0 {
		t.Errorf("%d messages published by refused requests", n)
	}
	r := httptest.NewRequest(http.MethodPost, "/api/ml/summarize", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json; charset=utf-8")
	expect(t, serve(t, g, r), http.StatusAccepted)
}

// An error response does not grow with the request: a 1 MiB unknown key is
// named cut short; a 404 does not repeat the path; no response is sniffed.
func TestGatewayErrorsDoNotReflectInput(t *testing.T) {
	p, _ := fakeProducer(t)
	g := newGateway(p, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Second)
	key := strings.Repeat("K", 1<<20)
	res := do(t, g, http.MethodPost, "/api/ml/summarize", `{"`+key+`":1}`)
	expectError(t, res, http.StatusBadRequest, strings.Repeat("K", maxEchoedName)+"…")
	if len(res.Body) > 1024 {
		t.Errorf("1 MiB unknown key: response of %d bytes", len(res.Body))
	}
	res = serve(t, g, httptest.NewRequest(http.MethodGet, "/<script>alert(1)</script>", nil))
	expect(t, res, http.StatusNotFound)
	if strings.Contains(res.Body, "script") {
		t.Errorf("404 repeats the path: %s", res.Body)
	}
	for _, h := range []http.Handler{g, g.admin()} {
		for _, path := range []string{"/nope", "/api/ml/status", "/api/ml/metrics/prometheus", "/healthz"} {
			res := serve(t, h, httptest.NewRequest(http.MethodGet, path, nil))
			if got := res.Header.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("GET %s: X-Content-Type-Options %q, want nosniff", path, got)
			}
		}
	}
}

// Status and metrics (the broker's address, the last error, the traffic)
// are not on the public listener: 404 there, served on the admin one. The
// probes are on both; the publish endpoints on the public one only.
func TestGatewayStatusOnlyOnAdminListener(t *testing.T) {
	p, _ := fakeProducer(t)
	g := newGateway(p, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Second)
	admin := g.admin()
	for _, path := range []string{"/api/ml/status", "/api/ml/metrics/json", "/api/ml/metrics/prometheus"} {
		expect(t, do(t, g, http.MethodGet, path, ""), http.StatusNotFound)
		expect(t, do(t, admin, http.MethodGet, path, ""), http.StatusOK)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		expect(t, do(t, g, http.MethodGet, path, ""), http.StatusOK)
		expect(t, do(t, admin, http.MethodGet, path, ""), http.StatusOK)
	}
	expect(t, do(t, admin, http.MethodPost, "/api/ml/summarize", validSummarize), http.StatusNotFound)
	expect(t, do(t, g, http.MethodPost, "/api/ml/summarize", validSummarize), http.StatusAccepted)
}

// A media URL to an internal host is refused with 400 naming mediaUrl, and
// nothing is published: workers would fetch it.
func TestGatewayRefusesInternalMediaURL(t *testing.T) {
	p, b := fakeProducer(t)
	g := newGateway(p, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Second)
	for _, u := range []string{
		"http://169.254.169.254/latest/meta-data/iam/security-credentials/",
		"http://127.0.0.1:15672/api/definitions",
		"http://localhost/a.mp3",
		"http://[::ffff:10.0.0.1]/a.mp3",
	} {
		res := do(t, g, http.MethodPost, "/api/ml/transcribe", `{"shareId":"x","mediaUrl":"`+u+`"}`)
		expectError(t, res, http.StatusBadRequest, "mediaUrl")
	}
	if n := len(b.Messages("ml.transcription")); n != 0 {
		t.Errorf("%d messages published by refused requests", n)
	}
}
