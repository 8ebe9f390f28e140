package gateway

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// countingWriter counts what the router asks of a device's adapter.
type countingWriter struct {
	w adapters.Writer

	mu                      sync.Mutex
	compiles, checks, wrote map[string]int // by tag
}

func newCountingWriter(w adapters.Writer) *countingWriter {
	return &countingWriter{w: w, compiles: map[string]int{}, checks: map[string]int{}, wrote: map[string]int{}}
}

func (c *countingWriter) CompileWrite(tag string) (adapters.TagWrite, error) {
	c.mu.Lock()
	c.compiles[tag]++
	c.mu.Unlock()
	tw, err := c.w.CompileWrite(tag)
	if err != nil {
		return nil, err
	}
	return countingTagWrite{c, tag, tw}, nil
}

func (c *countingWriter) counts() (compiles, checks, wrote map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cp := func(m map[string]int) map[string]int {
		out := map[string]int{}
		for k, v := range m {
			out[k] = v
		}
		return out
	}
	return cp(c.compiles), cp(c.checks), cp(c.wrote)
}

type countingTagWrite struct {
	c   *countingWriter
	tag string
	tw  adapters.TagWrite
}

func (t countingTagWrite) Check(v adapters.Value) (any, error) {
	t.c.mu.Lock()
	t.c.checks[t.tag]++
	t.c.mu.Unlock()
	return t.tw.Check(v)
}

func (t countingTagWrite) Write(ctx context.Context, raw any, verify bool) (adapters.Value, error) {
	t.c.mu.Lock()
	t.c.wrote[t.tag]++
	t.c.mu.Unlock()
	return t.tw.Write(ctx, raw, verify)
}

// Writable tags are compiled once, when the tables are built, and each
// command is checked once: not per command, and not again by the write
// (issue 16). A reload that keeps the device keeps its compiled tags; one
// with a new writer (a changed device) compiles them again.
func TestCommandTagsCompiledOnce(t *testing.T) {
	sim := modbustest.New(t)
	cfg := commandConfig(t, sim.URL(), "", "")
	cw := newCountingWriter(startModbus(t, cfg))
	mq := newFakeMQ()
	r := newCommandRouter(cfg, mq, map[string]TagWriter{"plc": cw}, nil)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	writable := 0
	for _, tg := range cfg.Modbus[0].Tags {
		if tg.Writable {
			writable++
		}
	}
	compiles, _, _ := cw.counts()
	if len(compiles) != writable {
		t.Fatalf("compiled %v, want each of the %d writable tags", compiles, writable)
	}
	const n = 20
	for i := range n {
		mq.h(msg("ferry/gw/plc/sp/set", fmt.Sprint(i)))
	}
	mq.h(msg("ferry/gw/plc/sp/set", "1001")) // out_of_range: checked, not written
	res := mq.waitN(t, n+1, 30*time.Second)
	ok, outOfRange := 0, 0
	for _, rs := range res {
		switch got := parseResult(t, rs.payload); {
		case got.OK:
			ok++
		case got.Error == CodeOutOfRange:
			outOfRange++
		default:
			t.Errorf("result %s", rs.payload)
		}
	}
	if ok != n || outOfRange != 1 {
		t.Errorf("%d ok and %d out_of_range, want %d and 1", ok, outOfRange, n)
	}
	compiles, checks, wrote := cw.counts()
	for tag, k := range compiles {
		if k != 1 {
			t.Errorf("tag %s compiled %d times", tag, k)
		}
	}
	if checks["sp"] != n+1 || wrote["sp"] != n {
		t.Errorf("sp: %d checks and %d writes for %d commands (%d valid)", checks["sp"], wrote["sp"], n+1, n)
	}

	// A reload with the same writer keeps the compiled tags.
	if err := r.update(cfg, map[string]TagWriter{"plc": cw}); err != nil {
		t.Fatal(err)
	}
	if c, _, _ := cw.counts(); c["sp"] != 1 {
		t.Errorf("sp compiled %d times after a reload that kept the device", c["sp"])
	}
	// A new writer (the device changed) compiles them again.
	cw2 := newCountingWriter(startModbus(t, cfg))
	if err := r.update(cfg, map[string]TagWriter{"plc": cw2}); err != nil {
		t.Fatal(err)
	}
	r.startWorkers()
	if c, _, _ := cw2.counts(); len(c) != writable {
		t.Errorf("the changed device compiled %v", c)
	}
	mq.h(msg("ferry/gw/plc/sp/set", "7"))
	if got := parseResult(t, mq.waitN(t, n+2, 30*time.Second)[n+1].payload); !got.OK {
		t.Errorf("after the reload: %+v", got)
	}
	if _, _, w := cw2.counts(); w["sp"] != 1 {
		t.Errorf("the new writer wrote %d times", w["sp"])
	}
}

// A tag the adapter refuses to compile (here a byte order that cannot be
// written) is answered bad_value with the adapter's reason, for every
// command, without any I/O.
func TestCommandTagNotCompiled(t *testing.T) {
	sim := modbustest.New(t)
	cfg := commandConfig(t, sim.URL(), "", "")
	cfg.Modbus[0].Tags[0].Table = config.TableInput // sp: an input register cannot be written
	cw := newCountingWriter(startModbus(t, cfg))
	mq := newFakeMQ()
	r := newCommandRouter(cfg, mq, map[string]TagWriter{"plc": cw}, nil)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sim.ClearWrites()
	mq.h(msg("ferry/gw/plc/sp/set", "5"))
	got := parseResult(t, mq.waitN(t, 1, 10*time.Second)[0].payload)
	if got.OK || got.Error != CodeBadValue {
		t.Fatalf("%+v, want bad_value", got)
	}
	if _, checks, _ := cw.counts(); checks["sp"] != 0 {
		t.Errorf("%d checks of a tag that did not compile", checks["sp"])
	}
	if w := sim.Writes(); len(w) != 0 {
		t.Errorf("writes %+v", w)
	}
}

// CommandStats (and so /metrics) does not wait for a reload that waits
// for a write in progress on a device it changes: it used to take the
// gateway's lock, which Reload holds meanwhile.
func TestCommandStatsDuringReload(t *testing.T) {
	broker := mosquittotest.Start(t, mosquittotest.WithLogTypes("error"))
	sim := modbustest.New(t)
	cfg := loadConfig(t, fmt.Sprintf(`
[gateway]
id = "gw"
state_dir = %q
[mqtt]
url = %q
[metrics]
listen = ""
[[modbus]]
name = "plc"
url = %q
interval = "1h"
timeout = "20s"
  [[modbus.tag]]
  name = "sp"
  table = "holding"
  address = 0
  type = "uint16"
  writable = true
`, t.TempDir(), broker.URL(), sim.URL()))
	changed := *cfg
	changed.Modbus = append([]config.ModbusDevice(nil), cfg.Modbus...)
	changed.Modbus[0].Interval = 2 * time.Hour

	g, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer func() { cancel(); <-done }()

	c := newCommander(t, broker.Addr())
	for i := 0; ; i++ { // until ferry has subscribed
		c.send(t, "ferry/gw/plc/sp/set", "1", fmt.Sprint("probe", i), 0)
		if waitAnswers(c, 1, 500*time.Millisecond) > 0 {
			break
		}
		if i == 40 {
			t.Fatal("ferry did not answer a command")
		}
	}
	// The next write hangs in the device for a while.
	sim.SetDelay(3 * time.Second)
	before := sim.Requests()
	c.send(t, "ferry/gw/plc/sp/set", "2", "slow", 0)
	for sim.Requests() == before {
		time.Sleep(5 * time.Millisecond)
	}
	reloaded := make(chan error, 1)
	go func() { reloaded <- g.Reload(&changed) }()
	for g.mu.TryLock() { // until Reload holds the gateway
		g.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	stats := make(chan CommandStats, 1)
	go func() {
		s, _ := g.CommandStats()
		stats <- s
	}()
	select {
	case s := <-stats:
		if g.mu.TryLock() {
			g.mu.Unlock()
			t.Error("CommandStats returned only once the reload let go of the gateway")
		}
		if s.Results["ok"] < 1 {
			t.Errorf("stats %+v", s.Results)
		}
	case err := <-reloaded:
		reloaded <- err
		t.Errorf("CommandStats waited for the reload")
		<-stats
	}
	sim.SetDelay(0)
	if err := <-reloaded; err != nil {
		t.Fatal(err)
	}
}

// The rate limit of a tag (min_write_interval) survives a reload that
// keeps its device, and starts afresh on a device the reload changed.
func TestCommandRateAcrossReload(t *testing.T) {
	sim := modbustest.New(t)
	cfg := commandConfig(t, sim.URL(), "", "")
	p := startModbus(t, cfg)
	mq := newFakeMQ()
	r := newCommandRouter(cfg, mq, map[string]TagWriter{"plc": p}, nil)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	send := func(n int) resultJSON {
		t.Helper()
		mq.h(msg("ferry/gw/plc/slow/set", fmt.Sprint(n)))
		return parseResult(t, mq.waitN(t, n, 10*time.Second)[n-1].payload)
	}
	if got := send(1); !got.OK {
		t.Fatalf("first write: %+v", got)
	}
	if err := r.update(cfg, map[string]TagWriter{"plc": p}); err != nil {
		t.Fatal(err)
	}
	if got := send(2); got.OK || got.Error != CodeRateLimited {
		t.Fatalf("second write after a reload that kept the device: %+v, want rate_limited", got)
	}
	if err := r.update(cfg, map[string]TagWriter{"plc": startModbus(t, cfg)}); err != nil {
		t.Fatal(err)
	}
	r.startWorkers()
	if got := send(3); !got.OK {
		t.Fatalf("write to the changed device: %+v", got)
	}
}

// A changed [mqtt] replaces the publisher: the router subscribes through
// the new one before it connects (attach), so commands are answered after
// the switch, on the same topics and on a new topic prefix.
func TestCommandsAfterPublisherReplaced(t *testing.T) {
	broker := mosquittotest.Start(t, mosquittotest.WithLogTypes("error"))
	sim := modbustest.New(t)
	cfg := loadConfig(t, fmt.Sprintf(`
[gateway]
id = "gw"
state_dir = %q
[mqtt]
url = %q
[metrics]
listen = ""
[[modbus]]
name = "plc"
url = %q
interval = "1h"
  [[modbus.tag]]
  name = "sp"
  table = "holding"
  address = 0
  type = "uint16"
  writable = true
`, t.TempDir(), broker.URL(), sim.URL()))
	g, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer func() { cancel(); <-done }()

	c := newCommander(t, broker.Addr())
	answered := func(topic, value string) {
		t.Helper()
		c.mu.Lock()
		clear(c.got)
		c.mu.Unlock()
		for i := 0; ; i++ {
			// With a Message Expiry: a command the broker held for ferry
			// during the switch has a known age and is carried out.
			c.send(t, topic, value, fmt.Sprint(topic, i), 60)
			if waitAnswers(c, 1, 500*time.Millisecond) > 0 {
				break
			}
			if i == 40 {
				t.Fatalf("no answer on %s", topic)
			}
		}
		c.mu.Lock()
		for _, r := range c.got {
			if !strings.Contains(string(r.payload), `"ok":true`) {
				t.Errorf("command on %s: %s", topic, r.payload)
			}
		}
		c.mu.Unlock()
		if w := sim.Registers(config.TableHolding, 0, 1); fmt.Sprint(w[0]) != value {
			t.Errorf("after a command on %s the register holds %d, want %s", topic, w[0], value)
		}
	}
	answered("ferry/gw/plc/sp/set", "11")

	same := *cfg
	same.MQTT.KeepAlive = cfg.MQTT.KeepAlive + time.Second
	old := g.pub.Load()
	if err := g.Reload(&same); err != nil {
		t.Fatal(err)
	}
	if g.pub.Load() == old {
		t.Fatal("the publisher was not replaced")
	}
	answered("ferry/gw/plc/sp/set", "12")

	moved := same
	moved.MQTT.TopicPrefix = "plant/ops"
	if err := g.Reload(&moved); err != nil {
		t.Fatal(err)
	}
	answered("plant/ops/plc/sp/set", "13")
}
