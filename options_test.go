package mlproducer

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func applyEnv(t *testing.T, env map[string]string) (config, error) {
	t.Helper()
	opts, err := OptionsFromLookup(lookupMap(env))
	cfg := defaultConfig()
	cfg.logger = nil
	for _, o := range opts {
		o(&cfg)
	}
	return cfg, err
}

func TestOptionsFromEnv(t *testing.T) {
	t.Parallel()
	cfg, err := applyEnv(t, map[string]string{
		"RABBITMQ_URL":                 "amqp://u:p@a:5672/, amqps://u:p@b:5671/vh",
		"RABBITMQ_HEARTBEAT":           "15",
		"RABBITMQ_CONNECTION_TIMEOUT":  "2500",
		"ML_MAX_MESSAGE_RETRIES":       "0",
		"ML_CIRCUIT_BREAKER_THRESHOLD": "4",
		"ML_CIRCUIT_BREAKER_COOLDOWN":  "1500",
	})
	require.NoError(t, err)
	assert.Equal(t, []string{"amqp://u:p@a:5672/", "amqps://u:p@b:5671/vh"}, cfg.urls)
	assert.Equal(t, 15*time.Second, cfg.heartbeat)
	assert.Equal(t, 2500*time.Millisecond, cfg.connectionTimeout)
	assert.Equal(t, 0, cfg.maxRetries)
	assert.Equal(t, 4, cfg.breakerThreshold)
	assert.Equal(t, 1500*time.Millisecond, cfg.breakerCooldown)

	// Unset and empty leave the defaults.
	cfg, err = applyEnv(t, map[string]string{"RABBITMQ_HEARTBEAT": ""})
	require.NoError(t, err)
	def := defaultConfig()
	assert.Equal(t, def.heartbeat, cfg.heartbeat)
	assert.Equal(t, def.urls, cfg.urls)
	assert.Equal(t, 10*time.Second, def.connectionTimeout)
	assert.Equal(t, 3, def.maxRetries)
	assert.Equal(t, 10, def.breakerThreshold)
	assert.Equal(t, 30*time.Second, def.breakerCooldown)
	assert.Equal(t, 30*time.Second, def.healthInterval)
	assert.Equal(t, 5*time.Second, def.confirmTimeout)
}

func TestOptionsFromEnvRefusesBadValues(t *testing.T) {
	t.Parallel()
	cases := []struct{ name, value string }{
		{"RABBITMQ_URL", "http://host/"},
		{"RABBITMQ_URL", "amqp://ok/,"},
		{"RABBITMQ_URL", "amqp:///nohost"},
		{"RABBITMQ_HEARTBEAT", "ten"},
		{"RABBITMQ_HEARTBEAT", "-1"},
		{"RABBITMQ_HEARTBEAT", "1.5"},
		{"RABBITMQ_CONNECTION_TIMEOUT", "0"},
		{"RABBITMQ_CONNECTION_TIMEOUT", "10s"},
		{"ML_MAX_MESSAGE_RETRIES", "-3"},
		{"ML_MAX_MESSAGE_RETRIES", "many"},
		{"ML_CIRCUIT_BREAKER_THRESHOLD", "0"},
		{"ML_CIRCUIT_BREAKER_THRESHOLD", "4294967296"},
		{"ML_CIRCUIT_BREAKER_COOLDOWN", "-5"},
		{"ML_CIRCUIT_BREAKER_COOLDOWN", "30s"},
	}
	for _, tc := range cases {
		t.Run(tc.name+"="+tc.value, func(t *testing.T) {
			t.Parallel()
			_, err := applyEnv(t, map[string]string{tc.name: tc.value})
			require.Error(t, err)
			assert.True(t, errors.Is(err, ErrInvalidOption))
			var oe *OptionError
			require.ErrorAs(t, err, &oe)
			assert.Equal(t, tc.name, oe.Name)
			assert.Contains(t, err.Error(), tc.name)
		})
	}
}

func TestOptionErrorRedactsPassword(t *testing.T) {
	t.Parallel()
	// Malformed values that url.Parse takes without seeing a password in
	// them are the ones that leaked before: the error must not show it either.
	for _, raw := range []string{
		"http://user:s3cret@host/",
		"user:s3cret@127.0.0.1:5672/",
		"amqp:/user:s3cret@host/",
		"amqp#://user:s3cret@host/",
		"amqp://user:s3cret@/",
		"A#00://:s3cret@0000",
		"amqp://user:s3cr%zzet@host/",
	} {
		t.Run(raw, func(t *testing.T) {
			t.Parallel()
			_, err := applyEnv(t, map[string]string{"RABBITMQ_URL": raw})
			require.ErrorIs(t, err, ErrInvalidOption)
			assert.NotContains(t, err.Error(), "s3cr")
			_, err = New(WithURLs(raw))
			require.ErrorIs(t, err, ErrInvalidOption)
			assert.NotContains(t, err.Error(), "s3cr")
		})
	}
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]string{
		"amqp://user:s3cret@host:5672/vh": "amqp://user:xxxxx@host:5672/vh",
		"amqps://host/":                   "amqps://host/",
		"amqp:/user:s3cret@host/":         "xxxxx@host/",
		"user:s3cret@host:5672":           "xxxxx@host:5672",
		"localhost:5672":                  "localhost:5672",
		"amqp://h/%zz":                    "<unparsable URL>",
		// Built from the parts: no query, nothing of the password.
		"amqps://u:Sec%2Fret99@h:5671/vh%2Fa?heartbeat=5": "amqps://u:xxxxx@h:5671/vh%2Fa",
		"amqp://us%3Aer:pw@[::1]:5672/":                   "amqp://us%3Aer:xxxxx@[::1]:5672/",
		"amqp://user@h":                                   "amqp://user@h",
		// Refused as ambiguous: nothing before the last '@'.
		"amqp://admin:p@ss#Secret99@rabbit:5672/": "xxxxx@rabbit:5672/",
		"amqp://admin:/Secret99@rabbit/":          "xxxxx@rabbit/",
		"amqp://admin:#Secret99":                  "amqp://admin:#xxxxx",
	} {
		assert.Equal(t, want, redactURL(raw), raw)
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	huge := int64(1) << 32 // 0 as a uint32, the breaker's counter
	cases := []struct {
		opt  Option
		name string
	}{
		{WithURLs(), "WithURLs"},
		{WithURLs("amqp://h/", "nope"), "WithURLs"},
		{WithHeartbeat(-time.Second), "WithHeartbeat"},
		{WithConnectionTimeout(0), "WithConnectionTimeout"},
		{WithConfirmTimeout(0), "WithConfirmTimeout"},
		{WithMaxRetries(-1), "WithMaxRetries"},
		{WithRetryQueueCapacity(0, 10), "WithRetryQueueCapacity"},
		{WithRetryQueueCapacity(10, 0), "WithRetryQueueCapacity"},
		{WithRetryBackoff(time.Second, time.Millisecond), "WithRetryBackoff"},
		{WithReconnectBackoff(0, time.Second), "WithReconnectBackoff"},
		{WithCircuitBreaker(0, time.Second), "WithCircuitBreaker"},
		{WithCircuitBreaker(3, 0), "WithCircuitBreaker"},
		{WithCircuitBreaker(int(huge), time.Second), "WithCircuitBreaker"},
		{WithHealthCheckInterval(-time.Second), "WithHealthCheckInterval"},
		{WithMaxInFlight(0), "WithMaxInFlight"},
		{WithTopology(Topology{QueueType: "stream"}), "WithTopology"},
		{WithLogger(nil), "WithLogger"},
		{WithMaxContentBytes(-1), "WithMaxContentBytes"},
		{WithMaxContentBytes(512 << 20), "WithMaxContentBytes"},
		{WithMaxContentBytes(math.MaxInt), "WithMaxContentBytes"},
		{WithMediaURLSchemes(), "WithMediaURLSchemes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tc.opt)
			require.Error(t, err)
			assert.Nil(t, p)
			var oe *OptionError
			require.ErrorAs(t, err, &oe)
			assert.Equal(t, tc.name, oe.Name)
			assert.ErrorIs(t, err, ErrInvalidOption)
		})
	}
}
