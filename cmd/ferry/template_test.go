package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// TestTemplateDevices runs the ferry binary on a config whose meters come
// from one template in an included file: each device publishes on its own
// topics (with its own override applied), a command to one meter is
// written to its unit id only, and a SIGHUP re-reads the included files.
func TestTemplateDevices(t *testing.T) {
	broker := mosquittotest.Start(t)
	sim := modbustest.New(t) // one TCP gateway, the meters behind it by unit id
	sim.SetUnits(7, 8)
	sim.SetUint32("holding", 0, 123456, "CDAB")

	state := t.TempDir()
	dir := t.TempDir()
	files := map[string]string{
		"ferry.toml": fmt.Sprintf(`include = ["meters/*.toml"]

[gateway]
id = "tpl"
state_dir = %q

[mqtt]
url = %q
topic_prefix = "plant/tpl"

[metrics]
listen = ""
`, state, broker.URL()),
		"meters/meter.toml": `[[template]]
name = "meter"
  [[template.tag]]
  name = "energy"
  table = "holding"
  address = 0
  type = "uint32"
  order = "CDAB"
  scale = 0.01

  [[template.tag]]
  name = "limit"
  table = "holding"
  address = 40
  type = "uint16"
  writable = true
  max = 500
`,
		"meters/devices.toml": fmt.Sprintf(`[[modbus]]
name = "meter07"
template = "meter"
url = %[1]q
unit = 7
interval = "100ms"

[[modbus]]
name = "meter08"
template = "meter"
url = %[1]q
unit = 8
interval = "100ms"
  [[modbus.tag]]
  name = "energy"
  scale = 0.001
`, sim.URL()),
	}
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "ferry.toml")
	if _, err := config.Load(path); err != nil {
		t.Fatalf("test config is invalid:\n%v", err)
	}

	sub := mosquittotest.Subscribe(t, broker.URL(), "plant/tpl/+/+", 1) // readings and device status, not commands
	replies := mosquittotest.Subscribe(t, broker.URL(), "replies/#", 1)
	p := startFerry(t, "run", "-config", path)

	// Each meter on its own topic, with its own scale.
	want := map[string]float64{"plant/tpl/meter07/energy": 1234.56, "plant/tpl/meter08/energy": 123.456}
	waitReadings := func(want map[string]float64) {
		t.Helper()
		seen := map[string]bool{}
		if _, err := sub.WaitFor(30*time.Second, func(m mosquittotest.Message) bool {
			for _, r := range tagReadings(t, m) {
				if w, ok := want[r.topic]; ok && r.Quality == "good" {
					if v, _ := r.Value.(float64); v != w {
						t.Errorf("%s = %v, want %v", r.topic, r.Value, w)
					}
					seen[r.topic] = true
				}
			}
			return len(seen) == len(want)
		}); err != nil {
			t.Fatalf("not every meter published: %v (seen %v)", err, seen)
		}
	}
	waitReadings(want)

	// A command to meter08 is written to unit 8, and to no other unit.
	waitFor(t, "ferry's command subscription", 30*time.Second, func() bool {
		out := p.stderr.String()
		return strings.Contains(out, "accepting commands") && strings.Contains(out, "msg=subscribed")
	})
	sim.ClearWrites()
	mosquittotest.Publish(t, broker.URL(), "plant/tpl/meter08/limit/set", []byte("42"),
		&paho.PublishProperties{ResponseTopic: "replies/c1", CorrelationData: []byte("c1")})
	m, err := replies.WaitFor(20*time.Second, func(m mosquittotest.Message) bool { return m.Topic == "replies/c1" })
	if err != nil {
		t.Fatalf("no result for the command: %v", err)
	}
	var r map[string]any
	if err := json.Unmarshal(m.Payload, &r); err != nil || r["ok"] != true {
		t.Fatalf("result %s: %v", m.Payload, err)
	}
	writes := sim.Writes()
	if len(writes) != 1 || writes[0].Unit != 8 || writes[0].Addr != 40 || len(writes[0].Regs) != 1 || writes[0].Regs[0] != 42 {
		t.Fatalf("writes %+v, want one write of 42 to unit 8 register 40", writes)
	}

	// SIGHUP re-reads the included files: a new meter starts publishing.
	sim.SetUnits(7, 8, 9)
	more := fmt.Sprintf("[[modbus]]\nname = \"meter09\"\ntemplate = \"meter\"\nurl = %q\nunit = 9\ninterval = \"100ms\"\n", sim.URL())
	if err := os.WriteFile(filepath.Join(dir, "meters", "more.toml"), []byte(more), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the reload", 20*time.Second, func() bool { return strings.Contains(p.stderr.String(), "reload: config applied") })
	waitReadings(map[string]float64{"plant/tpl/meter09/energy": 1234.56})
	if code := p.stop(t); code != 0 {
		t.Errorf("exit %d", code)
	}
}

// TestTemplatesExample: examples/templates passes check as shipped, its
// fifty meters and two presses expanded from their templates.
func TestTemplatesExample(t *testing.T) {
	const path = "../../examples/templates/ferry.toml"
	code, stdout, stderr := run(t, "check", "-config", path)
	if code != exitOK || stdout != path+": valid: 52 devices (50 modbus, 2 opcua), 256 tags\n" {
		t.Fatalf("check: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	p2 := cfg.OPCUA[1]
	if p2.Name != "press2" || len(p2.Tags) != 3 || p2.Tags[2].Node != "ns=2;s=Line2.Press.Setpoint" || *p2.Tags[2].Max != 180 || *p2.Tags[2].Min != 0 {
		t.Errorf("press2: %+v", p2)
	}
	m7 := cfg.Modbus[6]
	if m7.Name != "meter07" || m7.Tags[3].Name != "current" || m7.Tags[3].Scale != 2 || cfg.Modbus[7].Tags[3].Scale != 0.01 {
		t.Errorf("meter07 current %+v, meter08 current %+v", m7.Tags[3], cfg.Modbus[7].Tags[3])
	}
}
