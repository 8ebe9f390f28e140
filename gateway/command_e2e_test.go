package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/adapters/opcua"
	"github.com/ferry-gateway/ferry/adapters/opcua/opcuatest"
	"github.com/ferry-gateway/ferry/buffer"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway/mqtt"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// commander is an MQTT 5 client that sends commands and collects results.
type commander struct {
	cli *paho.Client
	mu  sync.Mutex
	got map[string]commanderResult // by correlation data
	ch  chan struct{}
}

type commanderResult struct {
	topic   string
	payload []byte
	at      time.Time
}

func newCommander(t testing.TB, addr string) *commander {
	t.Helper()
	c := &commander{got: map[string]commanderResult{}, ch: make(chan struct{}, 1)}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.cli = paho.NewClient(paho.ClientConfig{ClientID: fmt.Sprintf("commander-%d", time.Now().UnixNano()), Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			key := pr.Packet.Topic
			if pr.Packet.Properties != nil && pr.Packet.Properties.CorrelationData != nil {
				key = string(pr.Packet.Properties.CorrelationData)
			}
			c.mu.Lock()
			if _, dup := c.got[key]; dup {
				key += "#dup"
			}
			c.got[key] = commanderResult{pr.Packet.Topic, pr.Packet.Payload, time.Now()}
			c.mu.Unlock()
			select {
			case c.ch <- struct{}{}:
			default:
			}
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.cli.Connect(ctx, &paho.Connect{ClientID: "", CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "reply/#", QoS: 1}, {Topic: "ferry/gw/+/+/set/result", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.cli.Disconnect(&paho.Disconnect{}); <-c.cli.Done() })
	return c
}

// send publishes a command with a response topic and correlation id.
func (c *commander) send(t testing.TB, topic, payload, corr string, expiry uint32) {
	t.Helper()
	props := &paho.PublishProperties{ResponseTopic: "reply/" + corr, CorrelationData: []byte(corr),
		User: paho.UserProperties{{Key: "operator", Value: "test"}}}
	if expiry > 0 {
		props.MessageExpiry = &expiry
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.cli.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload), Properties: props}); err != nil {
		t.Fatal(err)
	}
}

func (c *commander) wait(t testing.TB, key string, timeout time.Duration) commanderResult {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		r, ok := c.got[key]
		c.mu.Unlock()
		if ok {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("no result for %s after %v", key, timeout)
		}
		select {
		case <-c.ch:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// e2e is a gateway's command path: publisher + router on mosquitto.
type e2e struct {
	pub    *mqtt.Publisher
	router *commandRouter
	stop   func()
}

func startE2E(t testing.TB, brokerURL, stateDir string, cfgWriters func() (map[string]TagWriter, []func(context.Context) error), cfgFn func() *commandRouterConfig) *e2e {
	t.Helper()
	blog, err := buffer.Open(stateDir+"/buffer", buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	pub, err := mqtt.New(mqtt.Config{URL: brokerURL, ClientID: "ferry-gw", SessionDir: stateDir + "/mqtt", Logger: logger}, blog)
	if err != nil {
		t.Fatal(err)
	}
	rc := cfgFn()
	writers, runs := cfgWriters()
	r := newCommandRouter(rc.cfg, pub, writers, logger)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = pub.Run(ctx) })
	pctx, pcancel := context.WithCancel(context.Background())
	for _, run := range runs {
		wg.Go(func() { _ = run(pctx) })
	}
	deadline := time.Now().Add(10 * time.Second)
	for pub.Stats().Subscribes == 0 {
		if time.Now().After(deadline) {
			t.Fatal("not subscribed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	e := &e2e{pub: pub, router: r}
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			pcancel()
			r.Close()
			cancel()
			wg.Wait()
			blog.Close()
		})
	}
	t.Cleanup(e.stop)
	return e
}

type commandRouterConfig struct{ cfg *config.Config }

func percentile(d []time.Duration, p float64) time.Duration {
	slices.Sort(d)
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// End to end through mosquitto to the Modbus and OPC UA simulators: every
// result code, response topic with correlation data, the default result
// topic, a batch of random commands, and the write round-trip latency.
func TestCommandsEndToEnd(t *testing.T) {
	// mosquitto's default (set_tcp_nodelay false) delays small packets by
	// the 40 ms delayed-ACK timer; a broker for commands should set it.
	broker := mosquittotest.Start(t, mosquittotest.WithConfig("set_tcp_nodelay true"))
	sim := modbustest.New(t)
	osim := opcuatest.New()
	osim.Add("speed", float64(0))
	osim.Add("count", int32(0))
	osim.Add("mode", "auto")
	osim.Add("locked", int16(0))
	osim.Add("state", int32(1))
	if err := osim.Start(); err != nil {
		t.Fatal(err)
	}
	defer osim.Close()
	osim.SetReadOnly("locked", true)
	cfg := commandConfig(t, sim.URL(), osim.URL(), "")
	var oc *opcua.Client
	writers := func() (map[string]TagWriter, []func(context.Context) error) {
		p := startModbus(t, cfg)
		var err error
		oc, err = opcua.NewClient(cfg.OPCUA[0], cfg.Gateway.StateDir, nopSink{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return map[string]TagWriter{"plc": p, "cnc": oc}, []func(context.Context) error{oc.Run}
	}
	e := startE2E(t, broker.URL(), t.TempDir(), writers, func() *commandRouterConfig { return &commandRouterConfig{cfg} })
	for !oc.Stats().Up {
		time.Sleep(10 * time.Millisecond)
	}
	c := newCommander(t, broker.Addr())
	P := "ferry/gw/"
	cases := []struct{ topic, payload, code string }{
		{"plc/sp/set", "42", "ok"},
		{"plc/f32/set", `{"value":1.25}`, "ok"},
		{"cnc/speed/set", "1500.5", "ok"},
		{"cnc/count/set", "7", "ok"},
		{"cnc/mode/set", `"manual"`, "ok"},
		{"plc/nope/set", "1", CodeUnknownTag},
		{"plc/ro/set", "1", CodeNotWritable},
		{"cnc/state/set", "1", CodeNotWritable},
		{"plc/sp/set", `"x"`, CodeBadValue},
		{"cnc/count/set", "1.5", CodeBadValue},
		{"cnc/count/set", "3000000000", CodeBadValue},
		{"cnc/mode/set", "1", CodeBadValue},
		{"plc/sp/set", "1001", CodeOutOfRange},
		{"cnc/speed/set", "10001", CodeOutOfRange},
		{"plc/sp/set", `{"value":1,"ts":"2001-01-01T00:00:00Z"}`, CodeExpired},
		{"plc/slow/set", "1", "ok"},
		{"plc/slow/set", "2", CodeRateLimited},
		{"cnc/locked/set", "1", CodeDeviceError},
	}
	for i, cs := range cases {
		corr := fmt.Sprint("c", i)
		c.send(t, P+cs.topic, cs.payload, corr, 60)
		res := c.wait(t, corr, 10*time.Second)
		got := parseResult(t, res.payload)
		code := got.Error
		if got.OK {
			code = "ok"
		}
		if code != cs.code || res.topic != "reply/"+corr {
			t.Errorf("%s %s: %s %q on %s, want %s", cs.topic, cs.payload, code, got.Message, res.topic, cs.code)
		}
	}
	if v := sim.Registers("holding", 0, 1)[0]; v != 42 {
		t.Errorf("sp = %d", v)
	}
	if w := osim.Writes(); len(w) != 3 || w[0].Value != float64(1500.5) || w[1].Value != int32(7) || w[2].Value != "manual" {
		t.Errorf("opcua writes %+v", w)
	}
	// Without a response topic: P/DEVICE/TAG/set/result.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if _, err := c.cli.Publish(ctx, &paho.Publish{Topic: P + "plc/sp/set", QoS: 1, Payload: []byte("43")}); err != nil {
		t.Fatal(err)
	}
	cancel()
	if r := c.wait(t, P+"plc/sp/set/result", 10*time.Second); !parseResult(t, r.payload).OK {
		t.Errorf("default result topic: %s", r.payload)
	}
	// Timeout: a device that does not answer in time.
	sim.SetDelay(time.Second)
	c.send(t, P+"plc/sp/set", "44", "tmo", 60)
	if got := parseResult(t, c.wait(t, "tmo", 10*time.Second).payload); got.Error != CodeTimeout {
		t.Errorf("timeout: %+v", got)
	}
	sim.SetDelay(0)
	time.Sleep(300 * time.Millisecond)

	// Latency: command publish to result receipt.
	for _, dev := range []string{"plc/sp", "cnc/speed"} {
		var lat []time.Duration
		for i := range 200 {
			corr := fmt.Sprintf("lat-%s-%d", dev, i)
			t0 := time.Now()
			c.send(t, P+dev+"/set", fmt.Sprint(i%900), corr, 60)
			r := c.wait(t, corr, 10*time.Second)
			if !parseResult(t, r.payload).OK {
				t.Fatalf("%s: %s", corr, r.payload)
			}
			lat = append(lat, r.at.Sub(t0))
		}
		t.Logf("write round trip %s (command publish -> result receipt, mosquitto, %d writes): p50 %v p99 %v",
			dev, len(lat), percentile(lat, 0.5).Round(10*time.Microsecond), percentile(lat, 0.99).Round(10*time.Microsecond))
	}
	// Each command got exactly one result.
	c.mu.Lock()
	for k := range c.got {
		if strings.HasSuffix(k, "#dup") {
			t.Errorf("duplicate result %s", k)
		}
	}
	c.mu.Unlock()
	e.stop()
}

// A command sent while ferry is away, expiring before ferry comes back, is
// not carried out.
func TestCommandExpiredWhileDown(t *testing.T) {
	broker := mosquittotest.Start(t)
	sim := modbustest.New(t)
	cfg := commandConfig(t, sim.URL(), "", "")
	state := t.TempDir()
	writers := func() (map[string]TagWriter, []func(context.Context) error) {
		return map[string]TagWriter{"plc": startModbus(t, cfg)}, nil
	}
	rc := func() *commandRouterConfig { return &commandRouterConfig{cfg} }
	e := startE2E(t, broker.URL(), state, writers, rc)
	e.stop() // the broker keeps ferry's session and subscription
	c := newCommander(t, broker.Addr())
	c.send(t, "ferry/gw/plc/sp/set", "99", "late", 1)                                                                                // Message Expiry 1 s
	c.send(t, "ferry/gw/plc/sp/set", `{"value":98,"ts":"`+time.Now().Add(-31*time.Second).UTC().Format(time.RFC3339)+`"}`, "old", 0) // older than command_max_age
	c.send(t, "ferry/gw/plc/sp/set", "97", "fresh", 60)
	time.Sleep(2100 * time.Millisecond)
	sim.ClearWrites()
	startE2E(t, broker.URL(), state, writers, rc)
	if got := parseResult(t, c.wait(t, "fresh", 10*time.Second).payload); !got.OK {
		t.Fatalf("fresh: %+v", got)
	}
	if got := parseResult(t, c.wait(t, "old", 10*time.Second).payload); got.Error != CodeExpired {
		t.Fatalf("old: %+v", got)
	}
	ws := sim.Writes()
	if len(ws) != 1 || ws[0].Regs[0] != 97 {
		t.Fatalf("writes %+v: only the fresh command may be carried out", ws)
	}
	c.mu.Lock()
	_, late := c.got["late"]
	c.mu.Unlock()
	if late {
		t.Log("the expired command reached ferry and was answered") // mosquitto normally drops it
	}
}
