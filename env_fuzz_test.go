package mlproducer

import (
	"context"
	"errors"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mlproducer/mlproducer/mlproducertest"
)

// envVars are the variables OptionsFromEnv reads, in the order of the fuzz
// arguments.
var envVars = [...]string{
	"RABBITMQ_URL",
	"RABBITMQ_HEARTBEAT",
	"RABBITMQ_CONNECTION_TIMEOUT",
	"ML_MAX_MESSAGE_RETRIES",
	"ML_CIRCUIT_BREAKER_THRESHOLD",
	"ML_CIRCUIT_BREAKER_COOLDOWN",
}

// FuzzOptionsFromEnv feeds arbitrary values of the six environment variables
// to optionsFromLookup. It never panics; an error is an *OptionError wrapping
// ErrInvalidOption that names one of the variables and never shows a password
// of RABBITMQ_URL; options it returns either make a Producer (on the fake
// broker) or are refused by New with an *OptionError.
func FuzzOptionsFromEnv(f *testing.F) {
	f.Fuzz(func(t *testing.T, rawURL, heartbeat, connTimeout, retries, threshold, cooldown string) {
		values := [...]string{rawURL, heartbeat, connTimeout, retries, threshold, cooldown}
		env := make(map[string]string, len(values))
		for i, v := range values {
			// An empty value stands for an unset variable half of the
			// time: both must leave the default.
			if v != "" || i%2 == 0 {
				env[envVars[i]] = v
			}
		}
		opts, err := optionsFromLookup(func(k string) (string, bool) {
			v, ok := env[k]
			return v, ok
		})
		if err != nil {
			checkEnvError(t, err, values)
			return
		}

		b := mlproducertest.NewBroker()
		defer b.Close()
		p, err := New(append(opts, WithDialer(b))...)
		if err != nil {
			var oe *OptionError
			if !errors.As(err, &oe) || !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("New refused the options with %T %v, want an *OptionError", err, err)
			}
			checkNoPassword(t, err, oe, values)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			t.Fatalf("Close of an idle Producer: %v", err)
		}
	})
}

// checkEnvError checks an error of optionsFromLookup.
func checkEnvError(t *testing.T, err error, values [6]string) {
	t.Helper()
	var oe *OptionError
	if !errors.As(err, &oe) {
		t.Fatalf("error %T %v is not an *OptionError", err, err)
	}
	if !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("error %v does not wrap ErrInvalidOption", err)
	}
	i := slices.Index(envVars[:], oe.Name)
	if i < 0 {
		t.Fatalf("error %v names %q, not one of the six variables", err, oe.Name)
	}
	if !strings.Contains(err.Error(), oe.Name) {
		t.Fatalf("error %q does not show the variable %s", err, oe.Name)
	}
	if oe.Reason == "" {
		t.Fatalf("error %v gives no reason", err)
	}
	// The numeric variables report the value as given, trimmed.
	if i > 0 && oe.Value != strings.TrimSpace(values[i]) {
		t.Fatalf("error for %s reports the value %q, want %q", oe.Name, oe.Value, strings.TrimSpace(values[i]))
	}
	checkNoPassword(t, err, oe, values)
}

// checkNoPassword fails if a password of a RABBITMQ_URL entry shows in err.
// A password that also appears in text the error shows anyway (its template:
// the variable's name and the reason; the other entries and values; the URL
// with its password removed; the redaction placeholders) cannot be told apart and is
// not checked.
func checkNoPassword(t *testing.T, err error, oe *OptionError, values [6]string) {
	t.Helper()
	text := err.Error()
	template := strings.Replace(text, strconv.Quote(oe.Value), "", 1)
	entries := strings.Split(values[0], ",")
	for i, entry := range entries {
		entry = strings.TrimSpace(entry)
		others := slices.Concat(entries[:i:i], entries[i+1:], values[1:])
		for _, pw := range passwords(entry) {
			benign := strings.Join(append(others, template, "xxxxx", "<unparsable URL>",
				strings.Replace(entry, pw, "", 1)), "\n")
			if pw == "" || strings.Contains(benign, pw) {
				continue
			}
			// The rest of the text is the template, shown above as benign.
			if strings.Contains(oe.Value, pw) {
				t.Fatalf("error %q shows the password %q of RABBITMQ_URL entry %q", text, pw, entry)
			}
		}
	}
}

// passwords returns the password of a URL as a reader would see it
// (user:password@host, after scheme:// or scheme:/ if present, even when
// url.Parse would not take it for one) and, if it differs, as percent-decoded;
// nil when there is none.
func passwords(raw string) []string {
	rest := raw
	if _, after, ok := strings.Cut(raw, "://"); ok {
		rest = after
	} else if i := strings.Index(raw, ":/"); i > 0 && isScheme(raw[:i]) {
		rest = strings.TrimLeft(raw[i+1:], "/")
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return nil
	}
	_, pw, ok := strings.Cut(rest[:at], ":")
	if !ok || pw == "" {
		return nil
	}
	out := []string{pw}
	if dec, err := url.PathUnescape(pw); err == nil && dec != pw && dec != "" {
		out = append(out, dec)
	}
	return out
}

func isScheme(s string) bool {
	for i, c := range s {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}
