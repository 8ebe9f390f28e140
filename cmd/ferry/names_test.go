package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// Device and tag names in any script (issue 21: "пресс" was refused with
// "only letters … are allowed"): check passes, telemetry is published on
// P/пресс/давление, a command on P/пресс/уставка/set is carried out and
// answered, and /metrics labels the device with its name.
func TestUnicodeNamesEndToEnd(t *testing.T) {
	broker := mosquittotest.Start(t)
	sim := modbustest.New(t)
	sim.SetHolding(0, 321)
	metrics := freeAddr(t)
	path := writeConfig(t, fmt.Sprintf(`
[gateway]
id = "u"
state_dir = %q

[mqtt]
url = %q
topic_prefix = "plant/u"

[metrics]
listen = %q

[[modbus]]
name = "пресс"
url = %q
interval = "100ms"
timeout = "500ms"

  [[modbus.tag]]
  name = "давление"
  table = "holding"
  address = 0
  type = "uint16"

  [[modbus.tag]]
  name = "уставка"
  table = "holding"
  address = 1
  type = "uint16"
  writable = true
`, t.TempDir(), broker.URL(), metrics, sim.URL()))
	if code, stdout, stderr := run(t, "check", "-config", path); code != exitOK || !strings.Contains(stdout, "1 device") {
		t.Fatalf("check: exit %d\n%s%s", code, stdout, stderr)
	}
	sub := mosquittotest.Subscribe(t, broker.URL(), "plant/u/#", 1)
	startFerry(t, "run", "-config", path)

	m, err := sub.WaitFor(20*time.Second, func(m mosquittotest.Message) bool { return m.Topic == "plant/u/пресс/давление" })
	if err != nil {
		t.Fatalf("no reading on plant/u/пресс/давление: %v (got %d messages)", err, len(sub.Messages()))
	}
	var p payload
	if err := json.Unmarshal(m.Payload, &p); err != nil || p.Value != float64(321) || p.Quality != "good" {
		t.Fatalf("reading %s: %v", m.Payload, err)
	}
	if _, err := sub.WaitFor(10*time.Second, func(m mosquittotest.Message) bool {
		return m.Topic == "plant/u/пресс/status" && strings.Contains(string(m.Payload), `"up"`)
	}); err != nil {
		t.Fatalf("device status: %v", err)
	}

	// The command subscription may not be in place yet: send until answered
	// (the value is the same every time).
	const setTopic = "plant/u/пресс/уставка/set"
	var res mosquittotest.Message
	for i := 0; ; i++ {
		mosquittotest.Publish(t, broker.URL(), setTopic, []byte("7"), nil)
		if res, err = sub.WaitFor(2*time.Second, func(m mosquittotest.Message) bool { return m.Topic == setTopic+"/result" }); err == nil {
			break
		}
		if i == 10 {
			t.Fatalf("no answer on %s/result", setTopic)
		}
	}
	if !strings.Contains(string(res.Payload), `"ok":true`) {
		t.Fatalf("result %s", res.Payload)
	}
	if r := sim.Registers(config.TableHolding, 1, 1); r[0] != 7 {
		t.Fatalf("уставка register = %d, want 7", r[0])
	}
	waitFor(t, "ferry_device_up{device=\"пресс\"}", 10*time.Second, func() bool {
		s, err := tryScrape(t, metrics)
		return err == nil && s[`ferry_device_up{device="пресс",protocol="modbus"}`] == 1
	})
}
