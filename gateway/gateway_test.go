package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

func loadConfig(t *testing.T, text string) *config.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ferry.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("config:\n%v", err)
	}
	return cfg
}

func twoDevices(t *testing.T, broker string, a, b *modbustest.Server) *config.Config {
	return loadConfig(t, fmt.Sprintf(`
[gateway]
id = "gw"
state_dir = %q
[mqtt]
url = %q
[metrics]
listen = ""
[[modbus]]
name = "good"
url = %q
interval = "50ms"
  [[modbus.tag]]
  name = "t"
  table = "holding"
  address = 0
  type = "uint16"
[[modbus]]
name = "hung"
url = %q
interval = "50ms"
  [[modbus.tag]]
  name = "t"
  table = "holding"
  address = 0
  type = "uint16"
`, t.TempDir(), broker, a.URL(), b.URL()))
}

// hangRunner is a device loop that hangs until the gateway stops.
type hangRunner struct{}

func (hangRunner) Run(ctx context.Context) error { <-ctx.Done(); return nil }

// TestProgressDetectsHungDevice: a device loop that stops making progress
// makes Progress fail (so the watchdog stops pinging); a working device and
// a working publisher do not.
func TestProgressDetectsHungDevice(t *testing.T) {
	broker := mosquittotest.Start(t)
	g, err := New(twoDevices(t, broker.URL(), modbustest.New(t), modbustest.New(t)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	g.devices["hung"].run = hangRunner{}
	for _, d := range g.devices {
		d.stallFor = 500 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var err2 error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err2 = g.Progress(); err2 != nil {
			break
		}
	}
	if err2 == nil || !strings.Contains(err2.Error(), "device hung made no progress") {
		t.Fatalf("Progress = %v, want the hung device named", err2)
	}
	if strings.Contains(err2.Error(), "device good") || strings.Contains(err2.Error(), "mqtt") {
		t.Errorf("Progress blames a working part: %v", err2)
	}
	if h := g.Health(); h.Devices != 2 || h.DevicesUp != 1 {
		t.Errorf("health %+v, want 1 of 2 devices up", h)
	}
	if s := g.Status(); !strings.HasPrefix(s, "1/2 devices up, mqtt ") {
		t.Errorf("status %q", s)
	}
}

// TestReloadDevices: a changed device restarts, a removed one stops and
// its retained status is cleared, an untouched one keeps running, and a
// config whose new device cannot be built changes nothing.
func TestReloadDevices(t *testing.T) {
	broker := mosquittotest.Start(t)
	a, b := modbustest.New(t), modbustest.New(t)
	cfg := twoDevices(t, broker.URL(), a, b)
	sub := mosquittotest.Subscribe(t, broker.URL(), "ferry/gw/+/status", 1)
	g, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if _, err := sub.WaitFor(20*time.Second, func(m mosquittotest.Message) bool { return m.Topic == "ferry/gw/hung/status" }); err != nil {
		t.Fatal(err)
	}
	good := g.devices["good"]

	next := *cfg
	next.Modbus = []config.ModbusDevice{cfg.Modbus[0]} // "hung" removed
	if err := g.Reload(&next); err != nil {
		t.Fatal(err)
	}
	if g.devices["good"] != good {
		t.Error("the unchanged device was restarted")
	}
	if _, ok := g.devices["hung"]; ok {
		t.Error("the removed device still runs")
	}
	if _, err := sub.WaitFor(20*time.Second, func(m mosquittotest.Message) bool {
		return m.Topic == "ferry/gw/hung/status" && len(m.Payload) == 0 && m.Retain
	}); err != nil {
		t.Errorf("the removed device's retained status was not cleared: %v", err)
	}

	changed := next
	changed.Modbus = []config.ModbusDevice{next.Modbus[0]}
	changed.Modbus[0].Interval = 80 * time.Millisecond
	if err := g.Reload(&changed); err != nil {
		t.Fatal(err)
	}
	if g.devices["good"] == good {
		t.Error("the changed device kept running with its old config")
	}

	bad := changed
	bad.Modbus = append([]config.ModbusDevice{}, changed.Modbus...)
	bad.Modbus = append(bad.Modbus, config.ModbusDevice{Name: "broken", URL: "tcp://127.0.0.1:1", Tags: []config.ModbusTag{{Name: "x", Table: "holding", Type: "nonsense"}}})
	before := g.devices["good"]
	if err := g.Reload(&bad); err == nil {
		t.Error("a device that cannot be built was accepted")
	}
	if g.devices["good"] != before || len(g.devices) != 1 {
		t.Error("a failed reload changed the running devices")
	}
}

// TestReloadMQTT: a changed [mqtt] replaces the publisher; readings keep
// flowing and no seq is lost across the switch.
func TestReloadMQTT(t *testing.T) {
	broker := mosquittotest.Start(t)
	sim := modbustest.New(t)
	cfg := twoDevices(t, broker.URL(), sim, sim)
	cfg.Modbus = cfg.Modbus[:1]
	sub := mosquittotest.Subscribe(t, broker.URL(), "ferry/gw/good/t", 1)
	g, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	if _, err := sub.WaitN(10, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	old := g.pub.Load()
	next := *cfg
	next.MQTT.KeepAlive = 20 * time.Second
	if err := g.Reload(&next); err != nil {
		t.Fatal(err)
	}
	if g.pub.Load() == old {
		t.Fatal("the publisher was not replaced")
	}
	n := len(sub.Messages())
	if _, err := sub.WaitN(n+10, 20*time.Second); err != nil {
		t.Logf("publisher %+v buffer %+v", g.pub.Load().Stats(), g.blog.Stats())
		t.Fatalf("no readings after the switch: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	seen := map[float64]bool{}
	top := 0.0
	for _, m := range sub.Messages() {
		var p struct {
			Seq float64 `json:"seq"`
		}
		if err := json.Unmarshal(m.Payload, &p); err != nil {
			t.Fatal(err)
		}
		seen[p.Seq] = true
		top = max(top, p.Seq)
	}
	for s := 1.0; s <= top; s++ {
		if !seen[s] {
			t.Errorf("seq %v lost across the publisher switch", s)
		}
	}
}

// TestMetricsListenBusy: a metrics address that cannot be bound stops the
// start with an error naming the key, and leaves nothing running (goleak).
func TestMetricsListenBusy(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	broker := mosquittotest.Start(t)
	cfg := twoDevices(t, broker.URL(), modbustest.New(t), modbustest.New(t))
	cfg.Metrics.Listen = busy.Addr().String()
	g, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = g.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "metrics.listen") {
		t.Fatalf("Run = %v, want an error naming metrics.listen", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Run waited for the context instead of failing at start")
	}
}

// TestCleanStopStatus: after a clean stop, a fresh subscriber finds every
// device's retained status "stopped" (not "up" behind a stopped gateway)
// and the gateway's status offline.
func TestCleanStopStatus(t *testing.T) {
	broker := mosquittotest.Start(t)
	g, err := New(twoDevices(t, broker.URL(), modbustest.New(t), modbustest.New(t)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	sub := mosquittotest.Subscribe(t, broker.URL(), "ferry/gw/+/status", 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	for _, dev := range []string{"good", "hung"} {
		if _, err := sub.WaitFor(20*time.Second, func(m mosquittotest.Message) bool {
			return m.Topic == "ferry/gw/"+dev+"/status" && strings.Contains(string(m.Payload), `"state":"up"`)
		}); err != nil {
			cancel()
			<-done
			t.Fatalf("device %s never up: %v", dev, err)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}

	fresh := mosquittotest.Subscribe(t, broker.URL(), "ferry/gw/#", 1)
	msgs, err := fresh.WaitN(3, 10*time.Second)
	if err != nil {
		t.Fatalf("retained messages: %v (got %d)", err, len(msgs))
	}
	got := map[string]map[string]any{}
	for _, m := range msgs {
		var v map[string]any
		if err := json.Unmarshal(m.Payload, &v); err != nil {
			t.Fatalf("%s: %q: %v", m.Topic, m.Payload, err)
		}
		got[m.Topic] = v
	}
	for _, dev := range []string{"good", "hung"} {
		v := got["ferry/gw/"+dev+"/status"]
		if v["state"] != "stopped" || v["ts"] == nil {
			t.Errorf("retained status of %s after a clean stop: %v, want state stopped with ts", dev, v)
		}
	}
	if v := got["ferry/gw/status"]; v["online"] != false {
		t.Errorf("retained gateway status after a clean stop: %v, want online false", v)
	}
}
