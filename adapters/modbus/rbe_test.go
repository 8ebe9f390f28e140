package modbus

import (
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
)

// TestReportByException drives the delivery filter with a fake clock.
func TestReportByException(t *testing.T) {
	const H = config.TableHolding
	lvl := tg("level", H, 0, "int16")
	lvl.OnChange, lvl.Deadband, lvl.Heartbeat = true, 1, time.Minute
	mode := tg("mode", H, 1, "uint16")
	mode.OnChange = true // any change, no heartbeat
	always := tg("always", H, 2, "uint16")
	p := newPoller(t, testDevice("tcp://127.0.0.1:1", lvl, mode, always))
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p.now = func() time.Time { return now }

	good := func(v int64) adapters.Reading {
		return adapters.Reading{Value: adapters.IntValue(v), Quality: adapters.Good}
	}
	bad := adapters.Reading{Quality: adapters.Bad, Err: "timeout"}
	step := func(what string, level, mode adapters.Reading, want ...string) {
		t.Helper()
		level.Tag, mode.Tag = "level", "mode"
		rs := []adapters.Reading{level, mode, {Tag: "always", Value: adapters.UintValue(1)}}
		var got []string
		for _, r := range p.filter(0, rs) {
			got = append(got, r.Tag)
		}
		want = append(want, "always")
		if len(got) != len(want) {
			t.Fatalf("%s: delivered %v, want %v", what, got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s: delivered %v, want %v", what, got, want)
			}
		}
	}
	step("first", good(10), good(1), "level", "mode")
	now = now.Add(time.Second)
	step("same", good(10), good(1))
	step("within deadband", good(11), good(1))
	step("beyond deadband", good(12), good(2), "level", "mode")
	step("drift within deadband of the last delivered", good(11), good(2))
	step("bad", bad, bad, "level", "mode")
	step("still bad", bad, bad)
	step("good again, same value", good(12), good(2), "level", "mode")
	now = now.Add(59 * time.Second)
	step("before the heartbeat", good(12), good(2))
	now = now.Add(time.Second)
	step("heartbeat (level only)", good(12), good(2), "level")
	step("uncertain", adapters.Reading{Value: adapters.IntValue(12), Quality: adapters.Uncertain}, good(2), "level")
}

// TestReportByExceptionRun: a constant value is delivered once.
func TestReportByExceptionRun(t *testing.T) {
	s := modbustest.New(t)
	s.SetHolding(0, 5)
	a := tg("a", config.TableHolding, 0, "uint16")
	a.OnChange = true
	p, sink := startPoller(t, testDevice(s.URL(), a))
	// with publish = "change" a cycle may be the only one: look at every
	// delivery, not just those after the call
	waitDelivered := func(n int) {
		t.Helper()
		deadline := time.Now().Add(waitLimit)
		for {
			sink.mu.Lock()
			got := len(sink.cycles)
			sink.mu.Unlock()
			if got >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d deliveries, want %d", got, n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitDelivered(1)
	s.SetHolding(0, 6)
	waitDelivered(2)
	deadline := time.Now().Add(waitLimit)
	for p.Stats().Suppressed < 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	sink.mu.Lock()
	n := len(sink.cycles)
	sink.mu.Unlock()
	sink.mu.Lock()
	v0, v1 := sink.cycles[0][0].Value.Uint(), sink.cycles[1][0].Value.Uint()
	sink.mu.Unlock()
	if v0 != 5 || v1 != 6 {
		t.Errorf("delivered %d then %d", v0, v1)
	}
	if st := p.Stats(); n != 2 || st.Suppressed < 5 || st.Delivered != 2 {
		t.Errorf("%d deliveries, stats %+v", n, st)
	}
}
