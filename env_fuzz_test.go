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

// envVars are the six variables of the service mlproducer replaces, in the
// order of the fuzz arguments (FuzzOptionsFromLookup covers all the others).
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
// of RABBITMQ_URL; a URL it accepts is dialed at the host a reader sees and
// shown without its password; options it returns either make a Producer (on
// the fake broker) or are refused by New with an *OptionError.
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
		opts, err := OptionsFromLookup(lookupMap(env))
		if err != nil {
			checkEnvError(t, err, values)
			return
		}
		if _, set := env["RABBITMQ_URL"]; set && strings.TrimSpace(rawURL) != "" {
			for _, entry := range strings.Split(rawURL, ",") {
				checkAccepted(t, strings.TrimSpace(entry))
			}
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
// (user:password@host, after scheme:// or scheme:/ if present, up to the last
// '@', even when url.Parse would not take it for one) and, if it differs, as
// percent-decoded; nil when there is none.
func passwords(raw string) []string {
	start, end, ok := passwordSpan(raw)
	if !ok {
		return nil
	}
	pw := raw[start:end]
	out := []string{pw}
	if dec, err := url.PathUnescape(pw); err == nil && dec != pw && dec != "" {
		out = append(out, dec)
	}
	return out
}

// passwordSpan returns where the password of raw is as a reader would see
// it: from the first ':' after the scheme to the last '@'; ok is false when
// there is none.
func passwordSpan(raw string) (start, end int, ok bool) {
	rest := raw
	if _, after, found := strings.Cut(raw, "://"); found {
		rest = after
	} else if i := strings.Index(raw, ":/"); i > 0 && isScheme(raw[:i]) {
		rest = strings.TrimLeft(raw[i+1:], "/")
	}
	off := len(raw) - len(rest)
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return 0, 0, false
	}
	colon := strings.Index(rest[:at], ":")
	if colon < 0 || colon+1 == at {
		return 0, 0, false
	}
	return off + colon + 1, off + at, true
}

// checkAccepted checks a RABBITMQ_URL entry that was accepted: the host is
// the one a reader sees (after the last '@'), and the form shown in the
// status and logs does not depend on the password: it is the same with the
// password replaced.
func checkAccepted(t *testing.T, entry string) {
	t.Helper()
	u, err := url.Parse(entry)
	if err != nil {
		t.Fatalf("accepted %q, which url.Parse refuses: %v", entry, err)
	}
	start, end, ok := passwordSpan(entry)
	if !ok {
		return
	}
	host := entry[end+1:]
	if i := strings.IndexAny(host, "/?#"); i >= 0 {
		host = host[:i]
	}
	if u.Host != host {
		t.Errorf("accepted %q: the Producer would dial %q, a reader sees the host %q", entry, u.Host, host)
	}
	other := entry[:start] + "Q" + entry[end:]
	if checkURL(other) != nil {
		t.Errorf("accepted %q but not %q, the same URL with another password", entry, other)
	} else if shown, want := redactURL(entry), redactURL(other); shown != want {
		t.Errorf("shows %q as %q: the password changes it (want %q)", entry, shown, want)
	}
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
