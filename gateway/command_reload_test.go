package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// reloadSoak is how long TestCommandsDuringReloads runs: a few seconds in
// the ordinary suite, the minute with FERRY_RELOAD_SOAK=1.
func reloadSoak() time.Duration {
	if os.Getenv("FERRY_RELOAD_SOAK") == "1" {
		return time.Minute
	}
	return 5 * time.Second
}

// Commands keep arriving while the config is reloaded every 0.3 s
// (issue 21): ferry does not crash (it used to panic with "send on closed
// channel"), every command gets exactly one answer, commands to a device
// the reloads keep are all carried out (a no-op reload used to answer
// queued ones "gateway shutting down"), and commands to a device the
// reloads change get one answer each, ok or device_error.
func TestCommandsDuringReloads(t *testing.T) {
	broker := mosquittotest.Start(t, mosquittotest.WithConfig("set_tcp_nodelay true"), mosquittotest.WithLogTypes("error"))
	kept, changed := modbustest.New(t), modbustest.New(t)
	cfg := loadConfig(t, fmt.Sprintf(`
[gateway]
id = "gw"
state_dir = %q
[mqtt]
url = %q
[metrics]
listen = ""
[[modbus]]
name = "kept"
url = %q
interval = "50ms"
  [[modbus.tag]]
  name = "sp"
  table = "holding"
  address = 0
  type = "uint16"
  writable = true
[[modbus]]
name = "changed"
url = %q
interval = "50ms"
  [[modbus.tag]]
  name = "sp"
  table = "holding"
  address = 0
  type = "uint16"
  writable = true
`, t.TempDir(), broker.URL(), kept.URL(), changed.URL()))
	other := *cfg
	other.Modbus = append([]config.ModbusDevice(nil), cfg.Modbus...)
	other.Modbus[1].Interval = 70 * time.Millisecond

	var opts Options
	if testing.Verbose() {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	g, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer func() { cancel(); <-done }()

	c := newCommander(t, broker.Addr())
	for i := 0; ; i++ { // until ferry has subscribed
		corr := fmt.Sprint("probe", i)
		c.send(t, "ferry/gw/kept/sp/set", "1", corr, 0)
		if waitAnswers(c, 1, 500*time.Millisecond) > 0 {
			break
		}
		if i == 40 {
			t.Fatal("ferry did not answer a command")
		}
	}
	c.mu.Lock()
	clear(c.got)
	c.mu.Unlock()
	kept.ClearWrites()

	stop := make(chan struct{})
	var reloads sync.WaitGroup
	nReloads := 0
	reloads.Go(func() {
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			next := cfg // a no-op reload, then one that changes "changed"
			if i%2 == 1 {
				next = &other
			}
			if err := g.Reload(next); err != nil {
				t.Errorf("reload: %v", err)
				return
			}
			nReloads++
		}
	})
	var keptCorrs, changedCorrs []string
	tick := time.NewTicker(5 * time.Millisecond) // 200 commands/s to "kept"
	end := time.Now().Add(reloadSoak())
	for i := 0; time.Now().Before(end); i++ {
		<-tick.C
		corr := fmt.Sprint("k", i)
		keptCorrs = append(keptCorrs, corr)
		c.send(t, "ferry/gw/kept/sp/set", fmt.Sprint(i%1000), corr, 0)
		if i%10 == 0 {
			corr := fmt.Sprint("c", i)
			changedCorrs = append(changedCorrs, corr)
			c.send(t, "ferry/gw/changed/sp/set", fmt.Sprint(i%1000), corr, 0)
		}
	}
	tick.Stop()
	close(stop)
	reloads.Wait()
	all := append(append([]string(nil), keptCorrs...), changedCorrs...)
	got := waitAnswers(c, len(all), time.Minute)
	t.Logf("%d commands, %d reloads, %d answers", len(all), nReloads, got)
	if ok := checkOneAnswerEach(t, c, keptCorrs); ok != len(keptCorrs) {
		c.mu.Lock()
		for _, corr := range keptCorrs {
			if r, found := c.got[corr]; found && !strings.Contains(string(r.payload), `"ok":true`) {
				t.Errorf("command %s to the kept device: %s", corr, r.payload)
				break
			}
		}
		c.mu.Unlock()
		t.Errorf("%d of %d commands to the kept device carried out", ok, len(keptCorrs))
	}
	if w := len(kept.Writes()); w != len(keptCorrs) {
		t.Errorf("%d writes to the kept device for %d commands", w, len(keptCorrs))
	}
	checkOneAnswerEach(t, c, changedCorrs)
	c.mu.Lock()
	for _, corr := range changedCorrs {
		if r, found := c.got[corr]; found {
			res := parseResult(t, r.payload)
			if !res.OK && res.Error != CodeDeviceError {
				t.Errorf("command %s to the changed device: %s", corr, r.payload)
			}
		}
	}
	c.mu.Unlock()
	if nReloads < 2 {
		t.Errorf("only %d reloads", nReloads)
	}
}
