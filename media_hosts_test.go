package mlproducer

import (
	"errors"
	"strings"
	"testing"
)

// From the security review: workers fetch media URLs, so by default neither
// the Producer nor DecodeTask takes one that names an internal host, in any
// spelling; WithPrivateMediaHosts allows them, on both sides alike.
func TestMediaURLInternalHosts(t *testing.T) {
	internal := []string{
		"http://localhost/a.mp3",
		"http://LOCALHOST./a.mp3",
		"http://media.localhost:8080/a.mp3",
		"http://127.0.0.1/a.mp3",
		"http://127.8.9.10:15672/api/definitions",
		"http://[::1]/a.mp3",
		"http://[::ffff:127.0.0.1]/a.mp3",
		"http://[::ffff:7f00:1]/a.mp3",
		"http://[0:0:0:0:0:ffff:10.0.0.1]/a.mp3",
		"http://[64:ff9b::a9fe:a9fe]/a.mp3",
		"http://169.254.169.254/latest/meta-data/iam/security-credentials/",
		"http://[fd00:ec2::254]/latest/meta-data/",
		"http://169.254.1.2/a.mp3",
		"http://[fe80::1%25eth0]/a.mp3",
		"http://10.1.2.3/a.mp3",
		"http://172.16.0.1/a.mp3",
		"http://172.31.255.255/a.mp3",
		"http://192.168.1.1/a.mp3",
		"http://100.100.100.200/latest/meta-data/",
		"http://[fc00::1]/a.mp3",
		"http://[fdff:ffff::1]/a.mp3",
		"http://0.0.0.0/a.mp3",
		"http://0.1.2.3/a.mp3",
		"http://[::]/a.mp3",
		"http://127.1/a.mp3",
		"http://2130706433/a.mp3",
		"http://0x7f000001/a.mp3",
		"http://0x7f.0.0.1/a.mp3",
		"http://0177.0.0.1/a.mp3",
		"s3://127.0.0.1/key",
	}
	public := []string{
		"https://media.example.com/a.mp3",
		"http://203.0.113.7:8080/a.mp3",
		"https://[2001:db8::1]/a.mp3",
		"https://172.32.0.1/a.mp3",
		"https://100.128.0.1/a.mp3",
		"https://1.1.1.1/a.mp3",
		"https://localhost.example.com/a.mp3",
		"https://host.0day/a.mp3",
		"s3://bucket/key",
		"gs://my-bucket/a.wav",
	}
	body := func(u string) []byte {
		return []byte(`{"version":1,"type":"transcription","messageId":"m","shareId":"s","mediaUrl":"` +
			strings.ReplaceAll(u, `"`, `\"`) + `","options":{},"createdAt":"2026-01-02T03:04:05Z"}`)
	}
	allowed, err := decodeLimits([]Option{WithPrivateMediaHosts()})
	if err != nil {
		t.Fatal(err)
	}
	def := defaultTaskLimits()
	for _, u := range internal {
		t.Run("internal/"+u, func(t *testing.T) {
			_, err := def.validateTranscription("s", u, nil)
			assertInvalid(t, err, "mediaUrl")
			if !strings.Contains(err.Error(), "WithPrivateMediaHosts") {
				t.Errorf("error does not name the option: %v", err)
			}
			if strings.Contains(err.Error(), "a.mp3") || strings.Contains(err.Error(), "meta-data") {
				t.Errorf("error repeats the URL: %v", err)
			}
			_, err = DecodeTask(body(u))
			assertInvalid(t, err, "mediaUrl")
			if _, err := allowed.validateTranscription("s", u, nil); err != nil {
				t.Errorf("with WithPrivateMediaHosts: %v", err)
			}
			if _, err := DecodeTask(body(u), WithPrivateMediaHosts()); err != nil {
				t.Errorf("DecodeTask with WithPrivateMediaHosts: %v", err)
			}
		})
	}
	for _, u := range public {
		t.Run("public/"+u, func(t *testing.T) {
			if _, err := def.validateTranscription("s", u, nil); err != nil {
				t.Errorf("validateTranscription: %v", err)
			}
			task, err := DecodeTask(body(u))
			if err != nil {
				t.Errorf("DecodeTask: %v", err)
			} else if task.MediaURL != u {
				t.Errorf("MediaURL %q, want %q", task.MediaURL, u)
			}
		})
	}
}

// WithPrivateMediaHosts is a valid option for New, and an internal media URL
// refused without it is an ErrInvalidTask, as any bad field.
func TestMediaURLInternalHostsOption(t *testing.T) {
	c := defaultConfig()
	WithPrivateMediaHosts()(&c)
	if err := c.limits.validate(); err != nil {
		t.Fatal(err)
	}
	if !c.limits.privateHosts {
		t.Fatal("WithPrivateMediaHosts did not set the limit")
	}
	def := defaultTaskLimits()
	_, err := def.validateTranscription("s", "http://169.254.169.254/", nil)
	if !errors.Is(err, ErrInvalidTask) {
		t.Fatalf("err %v, want ErrInvalidTask", err)
	}
}
