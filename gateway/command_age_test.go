package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// A command's age (issue 21): a ts in the future beyond command_max_skew
// is refused, and so is a command the broker held in ferry's session
// without ts or Message Expiry unless command_accept_queued.
func TestCommandAge(t *testing.T) {
	now := time.Now()
	ts := func(d time.Duration) string {
		return `{"value":5,"ts":"` + now.Add(d).UTC().Format(time.RFC3339Nano) + `"}`
	}
	expiry := uint32(60)
	cases := []struct {
		name, payload   string
		skew            *time.Duration // nil: the default
		acceptQueued    bool
		queued          bool
		expiry          *uint32
		code, inMessage string
	}{
		{name: "ts now", payload: ts(0), code: "ok"},
		{name: "ts 2s ahead (within the default skew)", payload: ts(2 * time.Second), code: "ok"},
		{name: "ts 1h ahead", payload: ts(time.Hour), code: CodeExpired, inMessage: "command_max_skew"},
		{name: "ts 30 years ahead", payload: ts(30 * 365 * 24 * time.Hour), code: CodeExpired, inMessage: "in the future"},
		{name: "ts 10s ahead, skew 1m", skew: ptrDur(time.Minute), payload: ts(10 * time.Second), code: "ok"},
		{name: "ts 10s ahead, skew check off", skew: ptrDur(0), payload: ts(10 * time.Second), code: "ok"},
		{name: "ts 31s old", payload: ts(-31 * time.Second), code: CodeExpired, inMessage: "command_max_age"},
		{name: "live bare command", payload: "5", code: "ok"},
		{name: "queued bare command", payload: "5", queued: true, code: CodeExpired, inMessage: "command_accept_queued"},
		{name: "queued with ts", payload: ts(-time.Second), queued: true, code: "ok"},
		{name: "queued with old ts", payload: ts(-time.Minute), queued: true, code: CodeExpired, inMessage: "command_max_age"},
		{name: "queued with Message Expiry", payload: "5", queued: true, expiry: &expiry, code: "ok"},
		{name: "queued bare, accepted by config", acceptQueued: true, payload: "5", queued: true, code: "ok"},
	}
	sim := modbustest.New(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := commandConfig(t, sim.URL(), "", "")
			if cfg.MQTT.CommandMaxSkew != 5*time.Second || cfg.MQTT.CommandAcceptQueued {
				t.Fatalf("defaults: command_max_skew %v, command_accept_queued %v", cfg.MQTT.CommandMaxSkew, cfg.MQTT.CommandAcceptQueued)
			}
			if tc.skew != nil {
				cfg.MQTT.CommandMaxSkew = *tc.skew
			}
			cfg.MQTT.CommandAcceptQueued = tc.acceptQueued
			mq := newFakeMQ()
			r := newCommandRouter(cfg, mq, map[string]TagWriter{"plc": startModbus(t, cfg)}, nil)
			if err := r.Start(); err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			sim.ClearWrites()
			m := msg("ferry/gw/plc/sp/set", tc.payload)
			m.Queued, m.MessageExpiry = tc.queued, tc.expiry
			mq.h(m)
			got := parseResult(t, mq.waitN(t, 1, 10*time.Second)[0].payload)
			code := got.Error
			if got.OK {
				code = "ok"
			}
			if code != tc.code || !strings.Contains(got.Message, tc.inMessage) {
				t.Errorf("%s %q, want %s with %q", code, got.Message, tc.code, tc.inMessage)
			}
			if w := len(sim.Writes()); (w == 1) != (tc.code == "ok") || w > 1 {
				t.Errorf("%d device writes for %s", w, code)
			}
		})
	}
}

func ptrDur(d time.Duration) *time.Duration { return &d }

// The [mqtt] keys of command age parse and are validated.
func TestCommandAgeConfig(t *testing.T) {
	cases := []struct {
		keys    string
		skew    time.Duration
		queued  bool
		wantErr string
	}{
		{keys: "", skew: 5 * time.Second},
		{keys: "command_max_skew = \"1m\"\ncommand_accept_queued = true", skew: time.Minute, queued: true},
		{keys: "command_max_skew = \"0s\"", skew: 0},
		{keys: "command_max_skew = \"-1s\"", wantErr: "mqtt.command_max_skew"},
		{keys: "command_max_skew = 5", wantErr: "mqtt.command_max_skew"},
		{keys: "command_accept_queued = \"yes\"", wantErr: "mqtt.command_accept_queued"},
	}
	for _, tc := range cases {
		cfg, err := config.Parse("t.toml", []byte("[gateway]\nid = \"gw\"\n[mqtt]\n"+tc.keys+"\n[[modbus]]\nname = \"d\"\nurl = \"tcp://127.0.0.1:1\"\n  [[modbus.tag]]\n  name = \"t\"\n  table = \"holding\"\n  address = 0\n  type = \"uint16\"\n"), func(string) string { return "" })
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want one naming %s", tc.keys, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.keys, err)
			continue
		}
		if cfg.MQTT.CommandMaxSkew != tc.skew || cfg.MQTT.CommandAcceptQueued != tc.queued {
			t.Errorf("%q: skew %v, accept queued %v", tc.keys, cfg.MQTT.CommandMaxSkew, cfg.MQTT.CommandAcceptQueued)
		}
	}
}

// A bare command published while ferry is away waits in ferry's session at
// mosquitto: after the restart it is refused (its age is unknown), while
// one with a Message Expiry or a ts is judged by those, and a bare command
// published once ferry is back is carried out.
func TestCommandQueuedInSession(t *testing.T) {
	broker := mosquittotest.Start(t)
	sim := modbustest.New(t)
	cfg := commandConfig(t, sim.URL(), "", "")
	state := t.TempDir()
	writers := func() (map[string]TagWriter, []func(context.Context) error) {
		return map[string]TagWriter{"plc": startModbus(t, cfg)}, nil
	}
	rc := func() *commandRouterConfig { return &commandRouterConfig{cfg} }
	e := startE2E(t, broker.URL(), state, writers, rc)
	c := newCommander(t, broker.Addr())
	c.send(t, "ferry/gw/plc/sp/set", "10", "before", 0) // live: carried out
	if got := parseResult(t, c.wait(t, "before", 10*time.Second).payload); !got.OK {
		t.Fatalf("live command: %+v", got)
	}
	e.stop() // the broker keeps ferry's session and subscription
	sim.ClearWrites()
	c.send(t, "ferry/gw/plc/sp/set", "11", "bare", 0)
	c.send(t, "ferry/gw/plc/sp/set", "12", "expiry", 60)
	c.send(t, "ferry/gw/plc/sp/set", `{"value":13,"ts":"`+time.Now().UTC().Format(time.RFC3339Nano)+`"}`, "ts", 0)
	e2 := startE2E(t, broker.URL(), state, writers, rc)
	for corr, want := range map[string]string{"bare": CodeExpired, "expiry": "ok", "ts": "ok"} {
		got := parseResult(t, c.wait(t, corr, 10*time.Second).payload)
		if code := map[bool]string{true: "ok", false: got.Error}[got.OK]; code != want {
			t.Errorf("%s: %s %q, want %s", corr, code, got.Message, want)
		}
	}
	c.send(t, "ferry/gw/plc/sp/set", "14", "after", 0) // live again
	if got := parseResult(t, c.wait(t, "after", 10*time.Second).payload); !got.OK {
		t.Errorf("live command after the restart: %+v", got)
	}
	var vals []uint16
	for _, w := range sim.Writes() {
		vals = append(vals, w.Regs[0])
	}
	if len(vals) != 3 || vals[0] == 11 || vals[1] == 11 || vals[2] != 14 {
		t.Errorf("device writes %v, want 12 and 13 (either order), then 14; never the bare queued 11", vals)
	}
	if st := e2.router.Stats(); st.Queued != 1 {
		t.Errorf("stats: %d queued commands refused, want 1", st.Queued)
	}
}
