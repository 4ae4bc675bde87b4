package mlproducer

import (
	"context"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"log/slog"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer/mlproducertest"
)

// lookupMap is a lookup function over m, as OptionsFromLookup takes.
func lookupMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// envConfig applies the options OptionsFromLookup makes of env to the
// default configuration and checks that validate accepts the result.
func envConfig(t *testing.T, env map[string]string) (config, error) {
	t.Helper()
	opts, err := OptionsFromLookup(lookupMap(env))
	if err != nil {
		return config{}, err
	}
	cfg := defaultConfig()
	cfg.logger = slog.New(slog.DiscardHandler)
	for _, o := range opts {
		o(&cfg)
	}
	require.NoError(t, cfg.validate(), "validate refuses what OptionsFromLookup accepted from %v", env)
	return cfg, nil
}

// envCase is one variable: good values and the configuration each gives,
// and bad values, each refused with an *OptionError naming the variable.
type envCase struct {
	name string
	good map[string]func(*testing.T, config)
	bad  []string
}

func envCases() []envCase {
	ms := func(n int64) time.Duration { return time.Duration(n) * time.Millisecond }
	maxMs := strconv.FormatInt(maxMillis, 10)
	overMs := strconv.FormatInt(maxMillis+1, 10)
	maxInt := strconv.Itoa(math.MaxInt)
	return []envCase{
		{"RABBITMQ_URL", map[string]func(*testing.T, config){
			" amqp://u:p@a:5672/ , amqps://b/vh ": func(t *testing.T, c config) {
				assert.Equal(t, []string{"amqp://u:p@a:5672/", "amqps://b/vh"}, c.urls)
			},
		}, []string{"http://host/", "amqp://ok/,", "amqp:///nohost"}},
		{"RABBITMQ_URLS_IN_ORDER", map[string]func(*testing.T, config){
			"true":  func(t *testing.T, c config) { assert.True(t, c.urlsInOrder) },
			"1":     func(t *testing.T, c config) { assert.True(t, c.urlsInOrder) },
			"false": func(t *testing.T, c config) { assert.False(t, c.urlsInOrder) },
		}, []string{"yes", "in order", "2"}},
		{"RABBITMQ_HEARTBEAT", map[string]func(*testing.T, config){
			"0":    func(t *testing.T, c config) { assert.Equal(t, time.Duration(0), c.heartbeat) },
			"3600": func(t *testing.T, c config) { assert.Equal(t, time.Hour, c.heartbeat) },
		}, []string{"-1", "3601", "ten", "1.5", "10s"}},
		{"RABBITMQ_CONNECTION_TIMEOUT", map[string]func(*testing.T, config){
			"1":   func(t *testing.T, c config) { assert.Equal(t, ms(1), c.connectionTimeout) },
			maxMs: func(t *testing.T, c config) { assert.Equal(t, ms(maxMillis), c.connectionTimeout) },
		}, []string{"0", "-5", "10s", overMs}},
		{"ML_MAX_MESSAGE_RETRIES", map[string]func(*testing.T, config){
			"0":    func(t *testing.T, c config) { assert.Equal(t, 0, c.maxRetries) },
			maxInt: func(t *testing.T, c config) { assert.Equal(t, math.MaxInt, c.maxRetries) },
		}, []string{"-1", "many", "9223372036854775808"}},
		{"ML_CIRCUIT_BREAKER_THRESHOLD", map[string]func(*testing.T, config){
			"1": func(t *testing.T, c config) {
				assert.Equal(t, 1, c.breakerThreshold)
				assert.Equal(t, defaultConfig().breakerCooldown, c.breakerCooldown, "the cooldown keeps its default")
			},
			"4294967295": func(t *testing.T, c config) { assert.Equal(t, math.MaxUint32, c.breakerThreshold) },
		}, []string{"0", "4294967296", "x"}},
		{"ML_CIRCUIT_BREAKER_COOLDOWN", map[string]func(*testing.T, config){
			"1500": func(t *testing.T, c config) {
				assert.Equal(t, ms(1500), c.breakerCooldown)
				assert.Equal(t, defaultConfig().breakerThreshold, c.breakerThreshold, "the threshold keeps its default")
			},
		}, []string{"0", "-5", "30s", overMs}},
		{"ML_CONFIRM_TIMEOUT", map[string]func(*testing.T, config){
			"2500": func(t *testing.T, c config) { assert.Equal(t, ms(2500), c.confirmTimeout) },
			maxMs:  func(t *testing.T, c config) { assert.Equal(t, ms(maxMillis), c.confirmTimeout) },
		}, []string{"0", "-1", "5s", overMs}},
		{"ML_RETRY_QUEUE_MESSAGES", map[string]func(*testing.T, config){
			"5": func(t *testing.T, c config) {
				assert.Equal(t, 5, c.retryCapCount)
				assert.Equal(t, defaultConfig().retryCapBytes, c.retryCapBytes, "the bytes keep their default")
			},
		}, []string{"0", "-1", "lots"}},
		{"ML_RETRY_QUEUE_BYTES", map[string]func(*testing.T, config){
			"1048576": func(t *testing.T, c config) {
				assert.Equal(t, 1<<20, c.retryCapBytes)
				assert.Equal(t, defaultConfig().retryCapCount, c.retryCapCount, "the count keeps its default")
			},
		}, []string{"0", "-1", "1MiB"}},
		{"ML_RETRY_BACKOFF_INITIAL", map[string]func(*testing.T, config){
			"50": func(t *testing.T, c config) {
				assert.Equal(t, ms(50), c.retryInitial)
				assert.Equal(t, defaultConfig().retryMax, c.retryMax, "the max keeps its default")
			},
			"10000": func(t *testing.T, c config) { assert.Equal(t, 10*time.Second, c.retryInitial) },
		}, []string{"0", "10001", "fast"}},
		{"ML_RETRY_BACKOFF_MAX", map[string]func(*testing.T, config){
			"60000": func(t *testing.T, c config) {
				assert.Equal(t, time.Minute, c.retryMax)
				assert.Equal(t, defaultConfig().retryInitial, c.retryInitial, "the initial keeps its default")
			},
			"200": func(t *testing.T, c config) { assert.Equal(t, ms(200), c.retryMax) },
		}, []string{"0", "199", overMs}},
		{"ML_RECONNECT_BACKOFF_INITIAL", map[string]func(*testing.T, config){
			"500": func(t *testing.T, c config) {
				assert.Equal(t, ms(500), c.reconnectInitial)
				assert.Equal(t, defaultConfig().reconnectMax, c.reconnectMax, "the max keeps its default")
			},
		}, []string{"0", "10001", "-1"}},
		{"ML_RECONNECT_BACKOFF_MAX", map[string]func(*testing.T, config){
			"2000": func(t *testing.T, c config) {
				assert.Equal(t, 2*time.Second, c.reconnectMax)
				assert.Equal(t, defaultConfig().reconnectInitial, c.reconnectInitial, "the initial keeps its default")
			},
			"100": func(t *testing.T, c config) { assert.Equal(t, ms(100), c.reconnectMax) },
		}, []string{"0", "99", "2s"}},
		{"ML_HEALTH_CHECK_INTERVAL", map[string]func(*testing.T, config){
			"0":    func(t *testing.T, c config) { assert.Equal(t, time.Duration(0), c.healthInterval) },
			"5000": func(t *testing.T, c config) { assert.Equal(t, 5*time.Second, c.healthInterval) },
		}, []string{"-1", "5s", overMs}},
		{"ML_MAX_IN_FLIGHT", map[string]func(*testing.T, config){
			"1":   func(t *testing.T, c config) { assert.Equal(t, 1, c.maxInFlight) },
			"256": func(t *testing.T, c config) { assert.Equal(t, 256, c.maxInFlight) },
		}, []string{"0", "-1", "many"}},
		{"ML_MAX_CONTENT_BYTES", map[string]func(*testing.T, config){
			"1": func(t *testing.T, c config) {
				assert.Equal(t, 1, c.limits.maxContent)
				assert.Equal(t, 1+64<<10, c.limits.maxBody)
			},
			strconv.Itoa(maxContentLimit): func(t *testing.T, c config) { assert.Equal(t, maxContentLimit, c.limits.maxContent) },
		}, []string{"0", "-1", strconv.Itoa(maxContentLimit + 1), "1MiB"}},
		{"ML_MEDIA_URL_SCHEMES", map[string]func(*testing.T, config){
			"https, s3": func(t *testing.T, c config) { assert.Equal(t, []string{"https", "s3"}, c.limits.mediaSchemes) },
		}, []string{"https,", ",", "https,,s3"}},
		{"ML_CONNECTION_NAME", map[string]func(*testing.T, config){
			" billing-api ": func(t *testing.T, c config) { assert.Equal(t, "billing-api", c.connectionName) },
		}, nil},
		{"ML_ENVELOPE", map[string]func(*testing.T, config){
			"timestamp":    func(t *testing.T, c config) { assert.Equal(t, EnvelopeTimestamp, c.envelope) },
			"Type, app_id": func(t *testing.T, c config) { assert.Equal(t, EnvelopeType|EnvelopeAppID, c.envelope) },
			"attempt":      func(t *testing.T, c config) { assert.Equal(t, EnvelopeAttempt, c.envelope) },
			"all":          func(t *testing.T, c config) { assert.Equal(t, EnvelopeAll, c.envelope) },
			"none":         func(t *testing.T, c config) { assert.Zero(t, c.envelope) },
		}, []string{"headers", "none,type", "type,", "appid"}},
		{"ML_SPOOL_DIR", map[string]func(*testing.T, config){
			"/var/lib/mlproducer": func(t *testing.T, c config) { assert.Equal(t, "/var/lib/mlproducer", c.spoolDir) },
		}, nil},
		{"ML_SPOOL_MESSAGES", map[string]func(*testing.T, config){
			"1000": func(t *testing.T, c config) {
				assert.Equal(t, 1000, c.spoolCapCount)
				assert.Equal(t, defaultConfig().spoolCapBytes, c.spoolCapBytes, "the bytes keep their default")
			},
		}, []string{"0", "-1", "1k"}},
		{"ML_SPOOL_BYTES", map[string]func(*testing.T, config){
			"9223372036854775807": func(t *testing.T, c config) {
				assert.Equal(t, int64(math.MaxInt64), c.spoolCapBytes)
				assert.Equal(t, defaultConfig().spoolCapCount, c.spoolCapCount, "the count keeps its default")
			},
		}, []string{"0", "-1", "1GiB", "9223372036854775808"}},
		{"ML_TOPOLOGY_EXCHANGE", map[string]func(*testing.T, config){
			"tasks.v2": func(t *testing.T, c config) {
				assert.Equal(t, Topology{Exchange: "tasks.v2", QueueType: QueueClassic}, c.topology)
			},
		}, nil},
		{"ML_TOPOLOGY_QUEUE_TYPE", map[string]func(*testing.T, config){
			"quorum": func(t *testing.T, c config) {
				assert.Equal(t, Topology{Exchange: "ml.tasks", QueueType: QueueQuorum}, c.topology)
			},
			"classic": func(t *testing.T, c config) { assert.Equal(t, QueueClassic, c.topology.QueueType) },
		}, []string{"stream", "Quorum", "quorum,classic"}},
		{"ML_TOPOLOGY_NO_DECLARE", map[string]func(*testing.T, config){
			"true": func(t *testing.T, c config) {
				assert.Equal(t, Topology{Exchange: "ml.tasks", QueueType: QueueClassic, NoDeclare: true}, c.topology)
			},
			"0": func(t *testing.T, c config) { assert.False(t, c.topology.NoDeclare) },
		}, []string{"yes", "2", "on"}},
		{"ML_TOPOLOGY_QUEUE_PREFIX", map[string]func(*testing.T, config){
			"staging.": func(t *testing.T, c config) {
				assert.Equal(t, Topology{Exchange: "ml.tasks", QueueType: QueueClassic, QueuePrefix: "staging."}, c.topology)
				assert.Equal(t, "staging.ml.summarization", c.topology.queueName(TaskSummarization))
			},
		}, []string{"amq.x", strings.Repeat("p", 256)}},
		{"ML_TOPOLOGY_SUMMARIZATION_QUEUE", map[string]func(*testing.T, config){
			"sum": func(t *testing.T, c config) { assert.Equal(t, "sum", c.topology.queueName(TaskSummarization)) },
		}, []string{"amq.sum"}},
		{"ML_TOPOLOGY_TRANSCRIPTION_QUEUE", map[string]func(*testing.T, config){
			"asr": func(t *testing.T, c config) { assert.Equal(t, "asr", c.topology.queueName(TaskTranscription)) },
		}, []string{strings.Repeat("q", 256)}},
		{"ML_TOPOLOGY_EMBEDDING_QUEUE", map[string]func(*testing.T, config){
			"vec": func(t *testing.T, c config) { assert.Equal(t, "vec", c.topology.queueName(TaskEmbedding)) },
		}, []string{"amq.vec"}},
		{"ML_TOPOLOGY_MAX_LENGTH", map[string]func(*testing.T, config){
			"1":                   func(t *testing.T, c config) { assert.Equal(t, int64(1), c.topology.MaxLength) },
			"9223372036854775807": func(t *testing.T, c config) { assert.Equal(t, int64(math.MaxInt64), c.topology.MaxLength) },
		}, []string{"0", "-1", "9223372036854775808", "1k"}},
		{"ML_TOPOLOGY_OVERFLOW", map[string]func(*testing.T, config){
			"drop-head":          func(t *testing.T, c config) { assert.Equal(t, OverflowDropHead, c.topology.Overflow) },
			"reject-publish":     func(t *testing.T, c config) { assert.Equal(t, OverflowRejectPublish, c.topology.Overflow) },
			"reject-publish-dlx": func(t *testing.T, c config) { assert.Equal(t, OverflowRejectPublishDLX, c.topology.Overflow) },
		}, []string{"drop-tail", "Reject-Publish"}},
		{"ML_TOPOLOGY_MESSAGE_TTL", map[string]func(*testing.T, config){
			"60000": func(t *testing.T, c config) {
				assert.Equal(t, time.Minute, c.topology.MessageTTL)
				assert.Equal(t, int64(60000), c.topology.queueArgs()["x-message-ttl"])
			},
		}, []string{"0", "1m", "-5"}},
		{"ML_TOPOLOGY_DEAD_LETTER_EXCHANGE", map[string]func(*testing.T, config){
			"ml.dlx": func(t *testing.T, c config) {
				assert.Equal(t, "ml.dlx", c.topology.queueArgs()["x-dead-letter-exchange"])
			},
		}, []string{strings.Repeat("x", 256)}},
		{"ML_TOPOLOGY_MAX_PRIORITY", map[string]func(*testing.T, config){
			"10":  func(t *testing.T, c config) { assert.Equal(t, uint8(10), c.topology.MaxPriority) },
			"255": func(t *testing.T, c config) { assert.Equal(t, int64(255), c.topology.queueArgs()["x-max-priority"]) },
		}, []string{"0", "256", "high"}},
		{"ML_TOPOLOGY_DELIVERY_LIMIT", map[string]func(*testing.T, config){
			"5": func(t *testing.T, c config) {
				assert.Equal(t, 5, c.topology.DeliveryLimit)
				assert.Equal(t, QueueQuorum, c.topology.QueueType)
			},
		}, []string{"0", "-1", "many"}},
	}
}

// envContext is what a variable needs beside it to be valid: the delivery
// limit applies to quorum queues only.
var envContext = map[string]map[string]string{
	"ML_TOPOLOGY_DELIVERY_LIMIT": {"ML_TOPOLOGY_QUEUE_TYPE": "quorum"},
}

// withContext returns {name: value} plus name's envContext.
func withContext(name, value string) map[string]string {
	env := map[string]string{name: value}
	for k, v := range envContext[name] {
		env[k] = v
	}
	return env
}

// TestOptionsFromLookupEveryVariable sets each variable alone to good values
// (the configuration field is set, the rest keeps its default, validate
// accepts it) and to bad ones (an *OptionError names the variable and the
// value). The cases cover exactly the variables of OptionsFromEnv's doc.
func TestOptionsFromLookupEveryVariable(t *testing.T) {
	t.Parallel()
	cases := envCases()
	var names []string
	for _, tc := range cases {
		names = append(names, tc.name)
	}
	assert.ElementsMatch(t, docEnvVars(t), names, "the cases and the OptionsFromEnv doc list different variables")

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.NotEmpty(t, tc.good)
			for value, check := range tc.good {
				cfg, err := envConfig(t, withContext(tc.name, value))
				require.NoError(t, err, "%s=%q", tc.name, value)
				check(t, cfg)
			}
			for _, value := range tc.bad {
				_, err := OptionsFromLookup(lookupMap(withContext(tc.name, value)))
				var oe *OptionError
				require.ErrorAs(t, err, &oe, "%s=%q", tc.name, value)
				assert.ErrorIs(t, err, ErrInvalidOption)
				assert.Equal(t, tc.name, oe.Name, "%s=%q", tc.name, value)
				if tc.name != "RABBITMQ_URL" { // shown redacted
					assert.Equal(t, strings.TrimSpace(value), oe.Value)
				}
				assert.NotEmpty(t, oe.Reason)
			}
			// Unset and empty (or blank) leave the default.
			for _, env := range []map[string]string{{}, {tc.name: ""}, {tc.name: "  "}} {
				opts, err := OptionsFromLookup(lookupMap(env))
				require.NoError(t, err)
				assert.Empty(t, opts)
			}
		})
	}
}

// TestOptionsFromLookupPairs checks the variables that set one half of a
// two-value option together.
func TestOptionsFromLookupPairs(t *testing.T) {
	t.Parallel()
	ok := []struct {
		env   map[string]string
		check func(*testing.T, config)
	}{
		{map[string]string{"ML_RETRY_QUEUE_MESSAGES": "0", "ML_RETRY_QUEUE_BYTES": "0"}, func(t *testing.T, c config) {
			assert.Equal(t, [2]int{0, 0}, [2]int{c.retryCapCount, c.retryCapBytes})
		}},
		{map[string]string{"ML_RETRY_BACKOFF_INITIAL": "20000", "ML_RETRY_BACKOFF_MAX": "20000"}, func(t *testing.T, c config) {
			assert.Equal(t, [2]time.Duration{20 * time.Second, 20 * time.Second}, [2]time.Duration{c.retryInitial, c.retryMax})
		}},
		{map[string]string{"ML_RECONNECT_BACKOFF_INITIAL": "1", "ML_RECONNECT_BACKOFF_MAX": "2"}, func(t *testing.T, c config) {
			assert.Equal(t, [2]time.Duration{time.Millisecond, 2 * time.Millisecond}, [2]time.Duration{c.reconnectInitial, c.reconnectMax})
		}},
		{map[string]string{"ML_CIRCUIT_BREAKER_THRESHOLD": "4", "ML_CIRCUIT_BREAKER_COOLDOWN": "1500"}, func(t *testing.T, c config) {
			assert.Equal(t, 4, c.breakerThreshold)
			assert.Equal(t, 1500*time.Millisecond, c.breakerCooldown)
		}},
		{map[string]string{"ML_SPOOL_DIR": "/d", "ML_SPOOL_MESSAGES": "3", "ML_SPOOL_BYTES": "4096"}, func(t *testing.T, c config) {
			assert.Equal(t, 3, c.spoolCapCount)
			assert.Equal(t, int64(4096), c.spoolCapBytes)
		}},
		{map[string]string{"ML_TOPOLOGY_EXCHANGE": "x", "ML_TOPOLOGY_QUEUE_TYPE": "quorum", "ML_TOPOLOGY_NO_DECLARE": "TRUE"}, func(t *testing.T, c config) {
			assert.Equal(t, Topology{Exchange: "x", QueueType: QueueQuorum, NoDeclare: true}, c.topology)
		}},
	}
	for _, tc := range ok {
		cfg, err := envConfig(t, tc.env)
		require.NoError(t, err, "%v", tc.env)
		tc.check(t, cfg)
	}
	bad := []struct {
		env  map[string]string
		name string
	}{
		{map[string]string{"ML_RETRY_QUEUE_MESSAGES": "0", "ML_RETRY_QUEUE_BYTES": "10"}, "ML_RETRY_QUEUE_MESSAGES"},
		{map[string]string{"ML_RETRY_QUEUE_BYTES": " 00 "}, "ML_RETRY_QUEUE_BYTES"},
		{map[string]string{"ML_RETRY_BACKOFF_INITIAL": "020000"}, "ML_RETRY_BACKOFF_INITIAL"},
		{map[string]string{"ML_RECONNECT_BACKOFF_MAX": "050"}, "ML_RECONNECT_BACKOFF_MAX"},
		{map[string]string{"ML_RETRY_QUEUE_MESSAGES": "10", "ML_RETRY_QUEUE_BYTES": "0"}, "ML_RETRY_QUEUE_BYTES"},
		{map[string]string{"ML_RETRY_BACKOFF_INITIAL": "2000", "ML_RETRY_BACKOFF_MAX": "1000"}, "ML_RETRY_BACKOFF_INITIAL"},
		{map[string]string{"ML_RECONNECT_BACKOFF_INITIAL": "2000", "ML_RECONNECT_BACKOFF_MAX": "1000"}, "ML_RECONNECT_BACKOFF_INITIAL"},
		// The first bad variable is the one reported.
		{map[string]string{"RABBITMQ_HEARTBEAT": "x", "ML_TOPOLOGY_NO_DECLARE": "x"}, "RABBITMQ_HEARTBEAT"},
	}
	for _, tc := range bad {
		_, err := OptionsFromLookup(lookupMap(tc.env))
		var oe *OptionError
		require.ErrorAs(t, err, &oe, "%v", tc.env)
		assert.Equal(t, tc.name, oe.Name, "%v", tc.env)
		assert.Equal(t, strings.TrimSpace(tc.env[tc.name]), oe.Value, "the value as given")
	}

	_, err := OptionsFromLookup(nil)
	var oe *OptionError
	require.ErrorAs(t, err, &oe)
	assert.Equal(t, "OptionsFromLookup", oe.Name)
}

// TestOptionsFromLookupOverriddenByLaterOptions checks that options after
// those of the environment win, and that a half set from the environment
// keeps the other half of an option before it.
func TestOptionsFromLookupOverriddenByLaterOptions(t *testing.T) {
	t.Parallel()
	opts, err := OptionsFromLookup(lookupMap(map[string]string{"ML_CONFIRM_TIMEOUT": "100", "ML_RETRY_BACKOFF_MAX": "30000"}))
	require.NoError(t, err)
	cfg := defaultConfig()
	WithRetryBackoff(time.Second, 2*time.Second)(&cfg)
	for _, o := range append(opts, WithConfirmTimeout(time.Second)) {
		o(&cfg)
	}
	assert.Equal(t, time.Second, cfg.confirmTimeout)
	assert.Equal(t, time.Second, cfg.retryInitial)
	assert.Equal(t, 30*time.Second, cfg.retryMax)
}

// TestOptionsFromEnvDocMatchesREADME parses the variables listed in the doc
// comment of OptionsFromEnv and in the README's Configuration table: the two
// lists must be the same.
func TestOptionsFromEnvDocMatchesREADME(t *testing.T) {
	t.Parallel()
	doc := docEnvVars(t)
	require.GreaterOrEqual(t, len(doc), 24)
	readme := readmeEnvVars(t)
	assert.ElementsMatch(t, doc, readme, "OptionsFromEnv's doc and README.md's Configuration table list different variables")
}

// docEnvVars returns the variables in the indented list of OptionsFromEnv's
// doc comment.
func docEnvVars(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "options.go", nil, parser.ParseComments)
	require.NoError(t, err)
	var text string
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Name.Name == "OptionsFromEnv" && fd.Recv == nil {
			text = fd.Doc.Text()
		}
	}
	require.NotEmpty(t, text, "no doc comment on OptionsFromEnv")
	varName := regexp.MustCompile(`^[A-Z][A-Z0-9_]+$`)
	var names []string
	for line := range strings.SplitSeq(text, "\n") {
		if !strings.HasPrefix(line, "\t") {
			continue
		}
		fields := strings.Fields(line)
		require.NotEmpty(t, fields)
		require.Regexp(t, varName, fields[0], "doc line %q", line)
		require.NotContains(t, names, fields[0], "listed twice in the doc")
		names = append(names, fields[0])
	}
	return names
}

// readmeEnvVars returns the variables in the second column of the table in
// README.md's "## Configuration" section.
func readmeEnvVars(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	require.NoError(t, err)
	_, section, ok := strings.Cut(string(b), "\n## Configuration\n")
	require.True(t, ok, "README.md has no Configuration section")
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	varName := regexp.MustCompile("`([A-Z][A-Z0-9]*_[A-Z0-9_]+)`")
	var names []string
	rows := 0
	for line := range strings.SplitSeq(section, "\n") {
		if !strings.HasPrefix(line, "|") {
			continue
		}
		cells := strings.Split(line, "|")
		require.GreaterOrEqual(t, len(cells), 4, "row %q", line)
		rows++
		for _, m := range varName.FindAllStringSubmatch(cells[2], -1) {
			require.NotContains(t, names, m[1], "listed twice in the README")
			names = append(names, m[1])
		}
	}
	require.Greater(t, rows, 2, "no table in the Configuration section")
	return names
}

// FuzzOptionsFromLookup sets two variables of OptionsFromEnv's list (by
// index) to arbitrary values. It never panics; an error is an *OptionError
// naming one of the two, with the value as given (trimmed) for all but
// RABBITMQ_URL; options it returns are always accepted by New, so the
// variables' ranges are within what New accepts.
func FuzzOptionsFromLookup(f *testing.F) {
	names := slices.Sorted(slices.Values(envVarNames()))
	for i := range names {
		f.Add(uint8(i), "1", uint8(i+1), "0")
		f.Add(uint8(i), " 9223372036854775807 ", uint8(i+7), "true")
	}
	f.Fuzz(func(t *testing.T, i uint8, v string, j uint8, w string) {
		a, b := names[int(i)%len(names)], names[int(j)%len(names)]
		env := map[string]string{a: v, b: w}
		if a == b {
			env = map[string]string{a: v}
		}
		if _, ok := env["ML_SPOOL_DIR"]; ok {
			env["ML_SPOOL_DIR"] = t.TempDir()
		}
		opts, err := OptionsFromLookup(lookupMap(env))
		if err != nil {
			var oe *OptionError
			if !errors.As(err, &oe) || !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("error %T %v is not an *OptionError", err, err)
			}
			given, ok := env[oe.Name]
			if !ok {
				t.Fatalf("error %v names %q, not one of the variables set (%s, %s)", err, oe.Name, a, b)
			}
			if oe.Name != "RABBITMQ_URL" && oe.Value != strings.TrimSpace(given) {
				t.Fatalf("error for %s reports %q, want %q", oe.Name, oe.Value, strings.TrimSpace(given))
			}
			return
		}
		broker := mlproducertest.NewBroker()
		defer broker.Close()
		p, err := New(append(opts, WithDialer(broker))...)
		if err != nil {
			t.Fatalf("New refused what OptionsFromLookup accepted from %q: %v", env, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			t.Fatalf("Close of an idle Producer: %v", err)
		}
	})
}

// envVarNames returns the variables of envCases.
func envVarNames() []string {
	var names []string
	for _, tc := range envCases() {
		names = append(names, tc.name)
	}
	return names
}
