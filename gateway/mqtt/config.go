package mqtt

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"
)

// Config configures a Publisher. The gateway sets every field from its
// config (config/defaults.go is the one place for ferry's defaults; see
// gateway.publisherConfig). A zero value selects the fallback documented
// on the field, for tests and other callers that leave it out; the values
// match config/defaults.go where the config has the setting.
type Config struct {
	URL                string // mqtt://host:port or mqtts://host:port (also tcp://, tls://, ssl://)
	ClientID           string // required; fixed so the broker session resumes
	Username, Password string
	TLS                *tls.Config // for mqtts; nil means the system roots

	QoS         byte // telemetry QoS: 0 (acked once written), 1 (PUBACK), 2 (PUBCOMP)
	MaxInflight int  // records being published at once; 0 means 256. The broker's Receive Maximum bounds it further.

	KeepAlive      time.Duration // 0 means 30s
	ConnectTimeout time.Duration // dial + CONNECT/CONNACK; 0 means 10s
	SessionExpiry  time.Duration // broker-side session lifetime after a disconnect; 0 means 24h
	ReconnectMin   time.Duration // first backoff step after a failed attempt; 0 means 100ms
	ReconnectMax   time.Duration // backoff cap; 0 means 30s
	RetryMin       time.Duration // first retry delay of a refused publish (reason code >= 0x80); 0 means 1s
	RetryMax       time.Duration // its cap; 0 means 1m
	ShutdownGrace  time.Duration // how long Run waits for in-flight publishes on shutdown; 0 means 2s (the gateway passes its own, 5s)

	// SessionDir holds the persistent MQTT session (the packets in flight
	// and the buffer seq each carries). It must be a directory of its own;
	// the gateway passes <state_dir>/mqtt. Empty keeps the session in
	// memory: QoS 2 is then exactly-once only while the process runs, and
	// every process starts with Clean Start.
	SessionDir string
	// DeadLetterFile receives, as JSON lines, the records the broker refused
	// for good (0x87, 0x90, 0x99: at once, and the records of that topic
	// for a while after, unsent) or DeadLetterAttempts times (other codes),
	// each line fsynced; they are then acked so one bad topic never holds
	// up the stream. Empty retries them forever.
	DeadLetterFile string
	// DeadLetterTopic receives a notice (QoS 1, not retained) naming the
	// seqs, topic and reason of dead-lettered records (see deadNotice);
	// empty disables it. The gateway passes P/deadletter.
	DeadLetterTopic string
	// DeadLetterAttempts is the number of refused attempts (reason code >=
	// 0x80) after which a record is dead-lettered; 0 means 5.
	DeadLetterAttempts int
	// MaxReplayRate caps the messages/s published from backlog (records
	// marked replay); 0 means unlimited. Live records are not paced.
	MaxReplayRate float64
	// MessageExpiry sets the MQTT 5 Message Expiry Interval of telemetry
	// (whole seconds, counted by the broker from when it receives the
	// message); 0 means none.
	MessageExpiry time.Duration

	StatusTopic string // P/status; empty disables status and Will
	Version     string // reported in the status payload
	Logger      *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.ClientID == "" {
		return errors.New("mqtt: client id is required")
	}
	if c.QoS > 2 {
		return fmt.Errorf("mqtt: qos %d: must be 0, 1 or 2", c.QoS)
	}
	if c.MaxInflight < 0 || c.MaxInflight > 65535 {
		return fmt.Errorf("mqtt: max inflight %d: must be 1..65535", c.MaxInflight)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.DeadLetterAttempts < 0 {
		return fmt.Errorf("mqtt: dead letter attempts %d: must be >= 1", c.DeadLetterAttempts)
	}
	if c.DeadLetterAttempts == 0 {
		c.DeadLetterAttempts = 5
	}
	if c.MaxReplayRate < 0 {
		return fmt.Errorf("mqtt: max replay rate %v: must be >= 0", c.MaxReplayRate)
	}
	if c.MessageExpiry < 0 || c.MessageExpiry/time.Second > 0xFFFFFFFF {
		return fmt.Errorf("mqtt: message expiry %v out of range", c.MessageExpiry)
	}
	if c.MessageExpiry > 0 && c.MessageExpiry < time.Second {
		return fmt.Errorf("mqtt: message expiry %v: at least 1s (MQTT counts whole seconds)", c.MessageExpiry)
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = 256
	}
	def(&c.KeepAlive, 30*time.Second)
	def(&c.ConnectTimeout, 10*time.Second)
	def(&c.SessionExpiry, 24*time.Hour)
	def(&c.ReconnectMin, 100*time.Millisecond)
	def(&c.ReconnectMax, 30*time.Second)
	def(&c.RetryMin, time.Second)
	def(&c.RetryMax, time.Minute)
	def(&c.ShutdownGrace, 2*time.Second)
	if c.ReconnectMax < c.ReconnectMin {
		c.ReconnectMax = c.ReconnectMin
	}
	if c.RetryMax < c.RetryMin {
		c.RetryMax = c.RetryMin
	}
	if c.KeepAlive/time.Second > 65535 {
		return fmt.Errorf("mqtt: keep alive %v too long", c.KeepAlive)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if strings.ContainsAny(c.StatusTopic, "+#\x00") {
		return fmt.Errorf("mqtt: status topic %q: wildcards and NUL are not allowed", c.StatusTopic)
	}
	if strings.ContainsAny(c.DeadLetterTopic, "+#\x00") {
		return fmt.Errorf("mqtt: dead-letter topic %q: wildcards and NUL are not allowed", c.DeadLetterTopic)
	}
	return nil
}

// endpoint is a parsed URL.
type endpoint struct {
	tls  bool
	addr string // host:port
	host string // for TLS ServerName
}

func parseURL(raw string) (endpoint, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return endpoint{}, fmt.Errorf("mqtt: url: %w", err)
	}
	var e endpoint
	port := "1883"
	switch strings.ToLower(u.Scheme) {
	case "mqtt", "tcp":
	case "mqtts", "tls", "ssl":
		e.tls, port = true, "8883"
	default:
		return endpoint{}, fmt.Errorf("mqtt: url %q: scheme must be mqtt:// or mqtts://", raw)
	}
	if u.Hostname() == "" {
		return endpoint{}, fmt.Errorf("mqtt: url %q: no host", raw)
	}
	if p := u.Port(); p != "" {
		port = p
	}
	e.host = u.Hostname()
	e.addr = net.JoinHostPort(e.host, port)
	return e, nil
}

// backoff returns the delay before attempt n (n >= 1): exponential from min,
// capped at max, with jitter in [d/2, d].
func backoff(n int, minD, maxD time.Duration) time.Duration {
	d := minD
	for i := 1; i < n && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	half := int64(d / 2)
	return time.Duration(half + randInt63n(half+1))
}
