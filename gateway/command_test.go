package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/adapters/modbus"
	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway/mqtt"
)

// commandConfig is a gateway with one Modbus device (url) and, when
// opcURL is set, one OPC UA device.
func commandConfig(t testing.TB, url, opcURL string, extra string) *config.Config {
	t.Helper()
	toml := fmt.Sprintf(`
[gateway]
id = "gw"
state_dir = %q
[mqtt]
url = "mqtt://127.0.0.1:1"
command_max_age = "30s"
[[modbus]]
name = "plc"
url = %q
interval = "100ms"
timeout = "300ms"
  [[modbus.tag]]
  name = "sp"
  table = "holding"
  address = 0
  type = "uint16"
  writable = true
  min = 0.0
  max = 1000.0
  [[modbus.tag]]
  name = "temp"
  table = "holding"
  address = 2
  type = "int16"
  scale = 0.1
  offset = -40.0
  writable = true
  min = -40.0
  max = 150.0
  [[modbus.tag]]
  name = "f32"
  table = "holding"
  address = 4
  type = "float32"
  order = "CDAB"
  writable = true
  verify = true
  [[modbus.tag]]
  name = "bit"
  table = "holding"
  address = 8
  type = "bool"
  bit = 5
  writable = true
  [[modbus.tag]]
  name = "recipe"
  table = "holding"
  address = 10
  type = "string"
  length = 4
  writable = true
  [[modbus.tag]]
  name = "pump"
  table = "coil"
  address = 0
  type = "bool"
  writable = true
  [[modbus.tag]]
  name = "slow"
  table = "holding"
  address = 20
  type = "uint32"
  writable = true
  min_write_interval = "1h"
  [[modbus.tag]]
  name = "ro"
  table = "holding"
  address = 30
  type = "uint16"
  [[modbus.tag]]
  name = "in"
  table = "input"
  address = 0
  type = "uint16"
%s`, t.TempDir(), url, extra)
	if opcURL != "" {
		toml += fmt.Sprintf(`
[[opcua]]
name = "cnc"
endpoint = %q
mode = "poll"
interval = "100ms"
  [[opcua.tag]]
  name = "speed"
  node = "nsu=urn:ferry:opcuatest;s=speed"
  writable = true
  max = 10000.0
  [[opcua.tag]]
  name = "count"
  node = "nsu=urn:ferry:opcuatest;s=count"
  writable = true
  verify = true
  [[opcua.tag]]
  name = "mode"
  node = "nsu=urn:ferry:opcuatest;s=mode"
  writable = true
  [[opcua.tag]]
  name = "locked"
  node = "nsu=urn:ferry:opcuatest;s=locked"
  writable = true
  [[opcua.tag]]
  name = "state"
  node = "nsu=urn:ferry:opcuatest;s=state"
`, opcURL)
	}
	cfg, err := config.Parse("test.toml", []byte(toml), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// fakeMQ is a commandTransport that records results.
type fakeMQ struct {
	mu      sync.Mutex
	h       func(mqtt.Message)
	results []fakeResult
	cleared []string
	notify  chan struct{}
}

type fakeResult struct {
	topic       string
	payload     []byte
	correlation []byte
}

func newFakeMQ() *fakeMQ { return &fakeMQ{notify: make(chan struct{}, 1)} }

func (f *fakeMQ) Subscribe(filter string, qos byte, h func(mqtt.Message)) error {
	f.h = h
	return nil
}

func (f *fakeMQ) Respond(ctx context.Context, topic string, payload, corr []byte) error {
	f.mu.Lock()
	f.results = append(f.results, fakeResult{topic, payload, corr})
	f.mu.Unlock()
	select {
	case f.notify <- struct{}{}:
	default:
	}
	return nil
}

func (f *fakeMQ) ClearRetained(ctx context.Context, topic string) error {
	f.mu.Lock()
	f.cleared = append(f.cleared, topic)
	f.mu.Unlock()
	return nil
}

func (f *fakeMQ) waitN(t testing.TB, n int, timeout time.Duration) []fakeResult {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		f.mu.Lock()
		got := len(f.results)
		out := append([]fakeResult(nil), f.results...)
		f.mu.Unlock()
		if got >= n {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d results after %v, want %d", got, timeout, n)
		}
		select {
		case <-f.notify:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

type resultJSON struct {
	OK      bool            `json:"ok"`
	Error   string          `json:"error"`
	Message string          `json:"message"`
	Value   json.RawMessage `json:"value"`
	TS      string          `json:"ts"`
}

func parseResult(t testing.TB, b []byte) resultJSON {
	t.Helper()
	var r resultJSON
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("result %s: %v", b, err)
	}
	if r.TS == "" || (!r.OK && (r.Error == "" || r.Message == "")) {
		t.Fatalf("incomplete result %s", b)
	}
	return r
}

// startModbus runs a poller of cfg's device against sim.
func startModbus(t testing.TB, cfg *config.Config) *modbus.Poller {
	t.Helper()
	p, err := modbus.NewPoller(cfg.Modbus[0], nopSink{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

type nopSink struct{}

func (nopSink) Readings([]adapters.Reading)     {}
func (nopSink) DeviceState(string, bool, error) {}

func msg(topic, payload string) mqtt.Message {
	return mqtt.Message{Topic: topic, Payload: []byte(payload), QoS: 1, Received: time.Now()}
}

// Every result code through the router, with a polling device.
func TestCommandResultCodes(t *testing.T) {
	sim := modbustest.New(t)
	cfg := commandConfig(t, sim.URL(), "", "")
	p := startModbus(t, cfg)
	mq := newFakeMQ()
	r := newCommandRouter(cfg, mq, map[string]TagWriter{"plc": p}, nil)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	P := "ferry/gw"
	exp0 := uint32(0)
	expired := msg(P+"/plc/sp/set", "1")
	expired.MessageExpiry = &exp0
	rt := msg(P+"/plc/sp/set", `{"value":7}`)
	rt.ResponseTopic, rt.CorrelationData = "reply/here", []byte{1, 2, 3}
	cases := []struct {
		m    mqtt.Message
		code string
	}{
		{msg(P+"/plc/sp/set", "42"), "ok"},
		{msg(P+"/plc/temp/set", `{"value":23.5,"ts":"`+time.Now().UTC().Format(time.RFC3339Nano)+`"}`), "ok"},
		{msg(P+"/plc/f32/set", "123.456"), "ok"},
		{msg(P+"/plc/bit/set", "true"), "ok"},
		{msg(P+"/plc/recipe/set", `"ABCDEFGH"`), "ok"},
		{msg(P+"/plc/pump/set", "true"), "ok"},
		{msg(P+"/plc/slow/set", "1"), "ok"},
		{rt, "ok"},
		{msg(P+"/plc/nope/set", "1"), CodeUnknownTag},
		{msg(P+"/other/sp/set", "1"), CodeUnknownTag},
		{msg(P+"/plc/ro/set", "1"), CodeNotWritable},
		{msg(P+"/plc/in/set", "1"), CodeNotWritable},
		{msg(P+"/plc/sp/set", "70000"), CodeOutOfRange},
		{msg(P+"/plc/f32/set", "1e39"), CodeBadValue},
		{msg(P+"/plc/sp/set", "4.5"), CodeBadValue},
		{msg(P+"/plc/sp/set", `"42"`), CodeBadValue},
		{msg(P+"/plc/sp/set", "{"), CodeBadValue},
		{msg(P+"/plc/sp/set", "\xff"), CodeBadValue},
		{msg(P+"/plc/recipe/set", `"ABCDEFGHI"`), CodeBadValue},
		{msg(P+"/plc/temp/set", "23.45"), CodeBadValue},
		{msg(P+"/plc/temp/set", "151"), CodeOutOfRange},
		{msg(P+"/plc/sp/set", `{"value":1,"ts":"2000-01-01T00:00:00Z"}`), CodeExpired},
		{expired, CodeExpired},
		{msg(P+"/plc/slow/set", "2"), CodeRateLimited},
	}
	for _, c := range cases {
		mq.h(c.m)
		res := mq.waitN(t, 1, 5*time.Second)
		mq.mu.Lock()
		mq.results = nil
		mq.mu.Unlock()
		got := parseResult(t, res[0].payload)
		code := got.Error
		if got.OK {
			code = "ok"
		}
		if code != c.code {
			t.Errorf("%s %q: %s (%s), want %s", c.m.Topic, c.m.Payload, code, got.Message, c.code)
		}
		want := c.m.Topic + "/result"
		if c.m.ResponseTopic != "" {
			want = c.m.ResponseTopic
		}
		if res[0].topic != want || string(res[0].correlation) != string(c.m.CorrelationData) {
			t.Errorf("%s: result on %s corr %x", c.m.Topic, res[0].topic, res[0].correlation)
		}
	}
	if v := sim.Registers(config.TableHolding, 0, 3); v[0] != 7 || v[2] != 635 {
		t.Errorf("registers %v", v)
	}
	if s := r.Stats(); s.Results["ok"] != 8 || s.Results[CodeExpired] != 2 {
		t.Errorf("stats %+v", s.Results)
	}
	// The device errors: an exception and a timeout.
	sim.SetException(config.TableHolding, 0, 1, modbusIllegalAddress)
	mq.h(msg(P+"/plc/sp/set", "5"))
	if got := parseResult(t, mq.waitN(t, 1, 5*time.Second)[0].payload); got.Error != CodeDeviceError {
		t.Errorf("exception: %+v", got)
	}
}

// SAFETY: random commands; the device is written only for valid ones and
// every command gets exactly one result.
func TestCommandSafetyProperty(t *testing.T) {
	sim := modbustest.New(t)
	cfg := commandConfig(t, sim.URL(), "", "")
	p := startModbus(t, cfg)
	mq := newFakeMQ()
	r := newCommandRouter(cfg, mq, map[string]TagWriter{"plc": p}, nil)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rng := rand.New(rand.NewPCG(7, 7))
	tags := []string{"sp", "temp", "f32", "bit", "recipe", "pump", "slow", "ro", "in", "nope", "", "sp/x"}
	devs := []string{"plc", "plc", "plc", "other", "", "+"}
	payloads := func() string {
		switch rng.IntN(16) {
		case 0:
			return fmt.Sprint(rng.IntN(200000) - 100000)
		case 1:
			return fmt.Sprint(rng.NormFloat64() * 1000)
		case 2:
			return `"` + strings.Repeat("A", rng.IntN(12)) + `"`
		case 3:
			return []string{"true", "false", "null", "[]", "{}", `{"value":null}`}[rng.IntN(6)]
		case 4:
			return strings.Repeat("9", rng.IntN(400))
		case 5:
			return string([]byte{byte(rng.IntN(256)), byte(rng.IntN(256)), '1'})
		case 6:
			return `{"value":` + fmt.Sprint(rng.IntN(2000)-500) + `}`
		case 7:
			return `{"value":1,"extra":2}`
		case 8:
			return "1e400"
		case 9:
			return `"` + strings.Repeat("é", rng.IntN(100000)) + `"`
		case 10:
			return `{"value":1,"value":2}`
		case 11:
			return "0x10"
		case 12:
			return `{"value":` + fmt.Sprint(rng.IntN(1000)) + `,"ts":"1999-01-01T00:00:00Z"}`
		case 13:
			return "-0"
		case 14:
			return fmt.Sprint(rng.IntN(1000)) + ".0"
		}
		b := make([]byte, rng.IntN(20))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return string(b)
	}
	const n = 3000
	sim.ClearWrites()
	valid := 0
	for i := range n {
		topic := "ferry/gw/" + devs[rng.IntN(len(devs))] + "/" + tags[rng.IntN(len(tags))] + "/set"
		pl := payloads()
		m := msg(topic, pl)
		m.CorrelationData = []byte(fmt.Sprint(i))
		m.ResponseTopic = "r/" + fmt.Sprint(i)
		mq.h(m)
		if i%200 == 0 {
			time.Sleep(time.Millisecond) // let the device queue drain now and then
		}
	}
	res := mq.waitN(t, n, 30*time.Second)
	time.Sleep(100 * time.Millisecond)
	mq.mu.Lock()
	if len(mq.results) != n {
		t.Fatalf("%d results for %d commands", len(mq.results), n)
	}
	mq.mu.Unlock()
	seen := map[string]bool{}
	for _, x := range res {
		if seen[string(x.correlation)] {
			t.Fatalf("two results for command %s", x.correlation)
		}
		seen[string(x.correlation)] = true
		if x.topic != "r/"+string(x.correlation) {
			t.Fatalf("result of %s on %s", x.correlation, x.topic)
		}
		if parseResult(t, x.payload).OK {
			valid++
		}
	}
	// Every write the device saw belongs to a successful command, and no
	// register outside the writable tags was touched.
	ws := sim.Writes()
	if len(ws) != valid {
		t.Fatalf("%d writes at the device, %d successful commands", len(ws), valid)
	}
	allowed := map[string]bool{"holding/0": true, "holding/2": true, "holding/4": true, "holding/8": true, "holding/10": true, "coil/0": true, "holding/20": true}
	for _, w := range ws {
		if !allowed[fmt.Sprintf("%s/%d", w.Table, w.Addr)] {
			t.Fatalf("write outside the writable tags: %+v", w)
		}
	}
	if sp := sim.Registers(config.TableHolding, 0, 1)[0]; sp > 1000 {
		t.Fatalf("sp = %d beyond max 1000", sp)
	}
	s := r.Stats()
	t.Logf("%d commands, %d written; results %v", n, valid, s.Results)
	if valid < 50 {
		t.Fatalf("only %d valid commands: the generator is too strict", valid)
	}
}

// Commands at 50/s while the device is polled at 10 Hz: no errors, no lost
// results.
func TestCommandConcurrentWithPolling(t *testing.T) {
	sim := modbustest.New(t)
	cfg := commandConfig(t, sim.URL(), "", "")
	p := startModbus(t, cfg)
	mq := newFakeMQ()
	r := newCommandRouter(cfg, mq, map[string]TagWriter{"plc": p}, nil)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const n = 100
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := range n {
		<-tick.C
		switch i % 3 {
		case 0:
			mq.h(msg("ferry/gw/plc/sp/set", fmt.Sprint(i)))
		case 1:
			mq.h(msg("ferry/gw/plc/f32/set", fmt.Sprint(float64(i)+0.5)))
		case 2:
			mq.h(msg("ferry/gw/plc/bit/set", fmt.Sprint(i%2 == 0)))
		}
	}
	res := mq.waitN(t, n, 10*time.Second)
	for _, x := range res {
		if got := parseResult(t, x.payload); !got.OK {
			t.Fatalf("%s: %s %s", x.topic, got.Error, got.Message)
		}
	}
	st := p.Stats()
	if st.Cycles < 15 || st.Errors["protocol"]+st.Errors["timeout"]+st.Errors["connection"] > 0 {
		t.Fatalf("polling: %d cycles, errors %v", st.Cycles, st.Errors)
	}
	if st.Writes != n || st.WriteErrors != 0 {
		t.Fatalf("writes %d errors %d", st.Writes, st.WriteErrors)
	}
}

func FuzzDecodeCommand(f *testing.F) {
	for _, s := range []string{"42", "true", `"x"`, `{"value":1}`, `{"value":1.5,"ts":"2026-01-01T00:00:00Z"}`, "1e400", "\xff", `{"value":[1]}`, "18446744073709551615", "-9223372036854775808"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodeCommand(b)
		if err != nil {
			return
		}
		switch p.value.Kind() {
		case adapters.BoolKind, adapters.IntKind, adapters.UintKind, adapters.StringKind:
		case adapters.FloatKind:
			if !floatOK(p.value.Float()) {
				t.Fatalf("%q: non-finite %v", b, p.value)
			}
		default:
			t.Fatalf("%q: kind %v", b, p.value.Kind())
		}
		// What was accepted is valid JSON.
		if !json.Valid(b) {
			t.Fatalf("%q accepted but not valid JSON", b)
		}
	})
}

var modbusIllegalAddress = mbErrIllegalAddress

func floatOK(f float64) bool { return f == f && f-f == 0 }
