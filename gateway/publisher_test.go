package gateway

import (
	"fmt"
	"testing"
	"time"
)

// TestPublisherConfigDefaults: the publisher gets every setting from the
// gateway's config mapping (config/defaults.go for what the file leaves
// out), so none of the mqtt package's zero-value fallbacks applies in a
// real run. In particular the shutdown grace is the gateway's (5 s), not
// the mqtt package's own 2 s.
func TestPublisherConfigDefaults(t *testing.T) {
	cfg := loadConfig(t, fmt.Sprintf(`
[gateway]
id = "gw"
state_dir = %q
[mqtt]
url = "mqtt://127.0.0.1:1883"
[metrics]
listen = ""
[[modbus]]
name = "plc"
url = "tcp://127.0.0.1:502"
  [[modbus.tag]]
  name = "t"
  table = "holding"
  address = 0
  type = "uint16"
`, t.TempDir()))
	c, err := publisherConfig(cfg, "v", nil)
	if err != nil {
		t.Fatal(err)
	}
	m := cfg.MQTT
	for _, d := range []struct {
		name      string
		got, want time.Duration
	}{
		{"ShutdownGrace", c.ShutdownGrace, DefaultShutdownGrace},
		{"KeepAlive", c.KeepAlive, m.KeepAlive},
		{"ConnectTimeout", c.ConnectTimeout, m.ConnectTimeout},
		{"SessionExpiry", c.SessionExpiry, m.SessionExpiry},
		{"ReconnectMin", c.ReconnectMin, m.ReconnectMin},
		{"ReconnectMax", c.ReconnectMax, m.ReconnectMax},
	} {
		if d.got != d.want || d.got <= 0 {
			t.Errorf("%s = %v, want %v (set by the mapping, never zero)", d.name, d.got, d.want)
		}
	}
	if c.MaxInflight != m.MaxInflight || c.MaxInflight <= 0 || c.DeadLetterAttempts != m.DeadLetterAttempts || c.DeadLetterAttempts <= 0 {
		t.Errorf("MaxInflight %d DeadLetterAttempts %d, want %d %d from the config", c.MaxInflight, c.DeadLetterAttempts, m.MaxInflight, m.DeadLetterAttempts)
	}
}
