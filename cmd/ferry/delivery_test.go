package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/adapters/opcua/opcuatest"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// TestOutageQoS2 stops the broker for 20 s while ferry polls at 10 Hz and
// publishes at QoS 2. After the broker is back every seq arrives exactly
// once and in order, and what was sampled during the outage is marked
// replay=true.
func TestOutageQoS2(t *testing.T) {
	broker := mosquittotest.Start(t, mosquittotest.WithPersistence())
	sim := modbustest.New(t)
	sim.SetHolding(0, 1)
	path := writeConfig(t, fmt.Sprintf(`
[gateway]
id = "outage"
state_dir = %q
[mqtt]
url = %q
qos = 2
topic_prefix = "plant/outage"
reconnect_max = "1s"
[metrics]
listen = ""
[[modbus]]
name = "plc1"
url = %q
interval = "100ms"
  [[modbus.tag]]
  name = "a"
  table = "holding"
  address = 0
  type = "uint16"
`, t.TempDir(), broker.URL(), sim.URL()))
	sub := mosquittotest.Subscribe(t, broker.URL(), "plant/outage/plc1/a", 2)
	p := startFerry(t, "run", "-config", path)
	if _, err := sub.WaitN(10, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	broker.Stop()
	outageStart := time.Now()
	time.Sleep(20 * time.Second)
	outageEnd := time.Now()
	broker.Restart()
	// Everything sampled until a few cycles after the restart arrives.
	var last uint64
	if _, err := sub.WaitFor(60*time.Second, func(m mosquittotest.Message) bool {
		var pl payload
		if json.Unmarshal(m.Payload, &pl) != nil || pl.Seq == nil {
			return false
		}
		ts, err := time.Parse(time.RFC3339Nano, pl.TS)
		return err == nil && ts.After(outageEnd.Add(time.Second))
	}); err != nil {
		t.Fatalf("live data did not resume after the outage: %v", err)
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit %d", code)
	}
	time.Sleep(500 * time.Millisecond)

	replayed, during := 0, 0
	for i, m := range sub.Messages() {
		var pl payload
		if err := json.Unmarshal(m.Payload, &pl); err != nil || pl.Seq == nil {
			t.Fatalf("message %d: %s: %v", i, m.Payload, err)
		}
		s := *pl.Seq
		if s != last+1 {
			t.Fatalf("message %d has seq %d after %d: want every seq exactly once, in order", i, s, last)
		}
		last = s
		ts, _ := time.Parse(time.RFC3339Nano, pl.TS)
		if ts.After(outageStart.Add(time.Second)) && ts.Before(outageEnd.Add(-time.Second)) {
			during++
			if m.User["replay"] != "true" {
				t.Errorf("seq %d, sampled during the outage, is not marked replay=true (user properties %v)", s, m.User)
			}
		}
		if m.User["replay"] == "true" {
			replayed++
		}
	}
	// 10 Hz for 20 s: about 200 readings were sampled during the outage.
	if during < 100 {
		t.Errorf("only %d readings sampled during the 20 s outage arrived", during)
	}
	t.Logf("%d messages, %d sampled during the outage, %d marked replay", last, during, replayed)
}

// TestSecretsNotLogged: passwords never reach the log, at debug level,
// through start, reload and stop.
func TestSecretsNotLogged(t *testing.T) {
	broker := mosquittotest.Start(t)
	sim := modbustest.New(t)
	const secret = "hunter2-do-not-log"
	t.Setenv("FERRY_TEST_MQTT_PASSWORD", secret)
	path := writeConfig(t, fmt.Sprintf(`
[gateway]
id = "secrets"
state_dir = %q
log_level = "debug"
[mqtt]
url = %q
username = "gw"
password = "${FERRY_TEST_MQTT_PASSWORD}"
[metrics]
listen = ""
[[modbus]]
name = "plc1"
url = %q
interval = "100ms"
  [[modbus.tag]]
  name = "a"
  table = "holding"
  address = 0
  type = "uint16"
`, t.TempDir(), broker.URL(), sim.URL()))
	sub := mosquittotest.Subscribe(t, broker.URL(), "ferry/secrets/#", 1)
	p := startFerry(t, "run", "-config", path, "-log-level", "debug")
	if _, err := sub.WaitN(5, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit %d", code)
	}
	if out := p.stderr.String(); strings.Contains(out, secret) {
		t.Errorf("the password appears in the log:\n%s", out)
	}
}

// TestDeviceModeOPCUA: publish = "device" with an OPC UA source, one tag of
// the batch on a node the server does not have: every message carries the
// good tags and the failed one as bad with its status name.
func TestDeviceModeOPCUA(t *testing.T) {
	broker := mosquittotest.Start(t)
	ua := opcuatest.New()
	ua.Add("Speed", 1500.5)
	ua.Add("Count", int32(7))
	if err := ua.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ua.Close)
	path := writeConfig(t, fmt.Sprintf(`
[gateway]
id = "uadev"
state_dir = %q
[mqtt]
url = %q
publish = "device"
[metrics]
listen = ""
[[opcua]]
name = "cnc1"
endpoint = %q
mode = "poll"
interval = "200ms"
  [[opcua.tag]]
  name = "speed"
  node = %q
  [[opcua.tag]]
  name = "count"
  node = %q
  [[opcua.tag]]
  name = "ghost"
  node = %q
`, t.TempDir(), broker.URL(), ua.URL(), ua.NSUNodeID("Speed"), ua.NSUNodeID("Count"), ua.NodeID("NoSuchNode")))
	sub := mosquittotest.Subscribe(t, broker.URL(), "ferry/uadev/cnc1", 1)
	p := startFerry(t, "run", "-config", path)
	m, err := sub.WaitFor(30*time.Second, func(m mosquittotest.Message) bool {
		return strings.Contains(string(m.Payload), `"speed"`)
	})
	if err != nil {
		t.Fatal(err)
	}
	rs := tagReadings(t, m)
	got := map[string]tagReading{}
	for _, r := range rs {
		got[strings.TrimPrefix(r.topic, "ferry/uadev/cnc1/")] = r
	}
	if r := got["speed"]; r.Value != 1500.5 || r.Quality != "good" {
		t.Errorf("speed: %+v", r.payload)
	}
	if r := got["count"]; r.Value != 7.0 || r.Quality != "good" {
		t.Errorf("count: %+v", r.payload)
	}
	if r := got["ghost"]; r.Quality != "bad" || r.Value != nil || !strings.Contains(r.Error, "Bad") {
		t.Errorf("ghost (unknown node): %+v, want bad with the status name", r.payload)
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit %d", code)
	}
}
