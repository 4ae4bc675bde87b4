package mlproducer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/mlproducer/mlproducer/mlproducertest"
)

// secretMark is in every password of secretURLs, and nowhere else in them:
// a text that holds it shows (part of) a password.
const secretMark = "et99"

// secretURLs are broker URLs whose password holds a character with a meaning
// in a URL (from the security review). Raw '#', '/', '?' or a second '@' make
// url.Parse split the URL elsewhere than a reader: refused. Percent-encoded,
// the same passwords work.
var secretURLs = []struct {
	url     string
	refused bool
}{
	{"amqp://admin:#Secret99@rabbit:5672/", true},
	{"amqp://admin:2024#Secret99@rabbit:5672/", true},
	{"amqp://admin:/Secret99@rabbit:5672/", true},
	{"amqp://admin:?Secret99@rabbit:5672/", true},
	{"amqp://admin:p@ss#Secret99@rabbit:5672/", true},
	{"amqp://admin:p@ss/Secret99@rabbit:5672/", true},
	{"amqps://admin:p@ss?Secret99@rabbit:5671/", true},
	{"amqp://admin:Se:cr@et99@[::1]:5672/", true},
	{"amqp://ok:okpw@a/,amqp://admin:#Secret99@b/", true},
	{"amqp://admin:Sec%2Fret99@rabbit/", false},
	{"amqp://admin:Sec%2fret99@rabbit/", false},
	{"amqps://admin:p%40ss%23Secret99@rabbit:5671/vh", false},
	{"amqp://admin:Sec%3Fret99@rabbit/,amqp://admin:Se%3Acr%40et99@[::1]:5672/", false},
}

// TestURLPasswordNeverShown gives each of secretURLs to OptionsFromEnv (as
// RABBITMQ_URL) and to New (WithURLs): an ambiguous one is refused with an
// *OptionError that says to percent-encode and shows no password; a valid one
// runs a Producer on the fake broker, refusing its dials with an error that
// quotes the URL, or accepting them, and no password shows in the status, the
// handlers, the logs or WaitConnected's error.
func TestURLPasswordNeverShown(t *testing.T) {
	for _, c := range secretURLs {
		t.Run(c.url, func(t *testing.T) {
			opts, err := optionsFromLookup(func(k string) (string, bool) {
				if k == "RABBITMQ_URL" {
					return c.url, true
				}
				return "", false
			})
			checkURLRefusal(t, "RABBITMQ_URL", err, c.refused)
			if err == nil {
				// The Producer of the options, to show what it shows.
				for _, refuse := range []bool{true, false} {
					checkSurfaces(t, opts, c.url, refuse)
				}
			}
			b := mlproducertest.NewBroker()
			defer b.Close()
			p, err := New(WithURLs(strings.Split(c.url, ",")...), WithDialer(b))
			checkURLRefusal(t, "WithURLs", err, c.refused)
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := p.Close(ctx); err != nil {
					t.Errorf("Close: %v", err)
				}
			}
		})
	}
}

// checkURLRefusal checks err, the answer to one of secretURLs given as name.
func checkURLRefusal(t *testing.T, name string, err error, refused bool) {
	t.Helper()
	if err == nil {
		if refused {
			t.Errorf("%s: accepted, want an *OptionError asking to percent-encode", name)
		}
		return
	}
	if strings.Contains(err.Error(), secretMark) {
		t.Errorf("LEAK: %s: the error shows the password: %v", name, err)
	}
	var oe *OptionError
	switch {
	case !refused:
		t.Errorf("%s: refused a percent-encoded password: %v", name, err)
	case !errors.As(err, &oe) || !errors.Is(err, ErrInvalidOption):
		t.Errorf("%s: error %T %v, want an *OptionError", name, err, err)
	case oe.Name != name:
		t.Errorf("%s: error names %q", name, oe.Name)
	case !strings.Contains(oe.Reason, "percent-encode"):
		t.Errorf("%s: reason %q does not say to percent-encode", name, oe.Reason)
	}
}

// checkSurfaces runs a Producer with opts on the fake broker, which refuses
// every dial with an error quoting the URL dialed (one of raw's), or accepts
// it, and fails the test if
// the password shows anywhere the Producer reports.
func checkSurfaces(t *testing.T, opts []Option, raw string, refuse bool) {
	t.Helper()
	synctest.Test(t, func(t *testing.T) {
		var logs bytes.Buffer
		logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		b := mlproducertest.NewBroker()
		defer b.Close()
		if refuse {
			for _, u := range strings.Split(raw, ",") {
				b.RefuseURL(u, fmt.Errorf("dial %s: connect: connection refused", u))
			}
		}
		p, err := New(append(opts, WithDialer(b), WithLogger(logger),
			WithReconnectBackoff(5*time.Millisecond, 10*time.Millisecond))...)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		werr := p.WaitConnected(ctx)
		cancel()
		if (werr == nil) == refuse {
			t.Errorf("refuse=%v: WaitConnected returned %v", refuse, werr)
		}
		time.Sleep(50 * time.Millisecond)
		synctest.Wait()
		st := p.Status()
		surfaces := map[string]string{"Status.URL": st.URL, "Status.LastError": st.LastError}
		for name, h := range map[string]func() string{
			"StatusHandler":    func() string { return serveBody(p.StatusHandler(), "/status") },
			"MetricsHandler":   func() string { return serveBody(p.MetricsHandler(), "/metrics") },
			"ReadinessHandler": func() string { return serveBody(p.ReadinessHandler(), "/readyz") },
		} {
			surfaces[name] = h()
		}
		if werr != nil {
			surfaces["WaitConnected"] = werr.Error()
		}
		cctx, ccancel := context.WithTimeout(context.Background(), time.Second)
		_ = p.Close(cctx)
		ccancel()
		surfaces["logs"] = logs.String()
		if st.URL == "" || !strings.Contains(st.URL, "xxxxx") {
			t.Errorf("refuse=%v: Status.URL %q, want the URL with its password as xxxxx", refuse, st.URL)
		}
		for name, s := range surfaces {
			if i := strings.Index(s, secretMark); i >= 0 {
				t.Errorf("LEAK refuse=%v: %s shows the password: ...%s...", refuse, name, s[max(0, i-80):min(len(s), i+40)])
			}
		}
	})
}

func serveBody(h http.Handler, path string) string {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Body.String()
}

// TestRedactSecrets: every form of the password a text may hold goes.
func TestRedactSecrets(t *testing.T) {
	for _, c := range []struct{ raw, text string }{
		{"amqp://u:Sec%2Fret99@h/", "dial amqp://u:Sec%2Fret99@h/: refused; password Sec/ret99"},
		{"amqp://u:Sec%2fret99@h/", "dial amqp://u:Sec%2fret99@h/: refused; Sec%2Fret99 Sec/ret99"},
		{"amqp://u:a%20b%2Bet99@h/", "a b+et99 a+b%2Bet99 a%20b%2Bet99 a%20b+et99"},
		{"amqp://u:p@ss#Secret99@h/", "lookup ss: u:p@ss#Secret99@h"},
	} {
		if got := redactSecrets(c.text, c.raw); strings.Contains(got, secretMark) {
			t.Errorf("redactSecrets(%q, %q) = %q: the password shows", c.text, c.raw, got)
		}
	}
}
