package modbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
	mb "github.com/simonvetter/modbus"
)

// waitLimit bounds every wait; tests never assert durations.
const waitLimit = 10 * time.Second

type stateChange struct {
	up  bool
	err string
}

// recSink records what a Poller delivers.
type recSink struct {
	mu     sync.Mutex
	cycles [][]adapters.Reading
	states []stateChange
	notify chan struct{}
}

func newRecSink() *recSink { return &recSink{notify: make(chan struct{}, 1)} }

func (s *recSink) Readings(rs []adapters.Reading) {
	s.mu.Lock()
	s.cycles = append(s.cycles, append([]adapters.Reading(nil), rs...))
	s.mu.Unlock()
	s.poke()
}

func (s *recSink) DeviceState(device string, up bool, err error) {
	c := stateChange{up: up}
	if err != nil {
		c.err = err.Error()
	}
	s.mu.Lock()
	s.states = append(s.states, c)
	s.mu.Unlock()
	s.poke()
}

func (s *recSink) poke() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// waitCycle waits for a cycle delivered after the call that satisfies ok,
// and returns it.
func (s *recSink) waitCycle(t *testing.T, what string, ok func(rs []adapters.Reading) bool) []adapters.Reading {
	t.Helper()
	s.mu.Lock()
	seen := len(s.cycles)
	s.mu.Unlock()
	deadline := time.After(waitLimit)
	for {
		s.mu.Lock()
		for ; seen < len(s.cycles); seen++ {
			if rs := s.cycles[seen]; ok(rs) {
				s.mu.Unlock()
				return rs
			}
		}
		last := s.cycles
		s.mu.Unlock()
		select {
		case <-s.notify:
		case <-deadline:
			if len(last) > 0 {
				t.Fatalf("no cycle with %s; last: %s", what, fmtReadings(last[len(last)-1]))
			}
			t.Fatalf("no cycle with %s; none at all", what)
		}
	}
}

// waitState waits until the last reported state is up.
func (s *recSink) waitState(t *testing.T, up bool) {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		s.mu.Lock()
		n := len(s.states)
		ok := n > 0 && s.states[n-1].up == up
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-s.notify:
		case <-deadline:
			t.Fatalf("device never reported up=%v; states %+v", up, s.statesCopy())
		}
	}
}

func (s *recSink) statesCopy() []stateChange {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]stateChange(nil), s.states...)
}

func fmtReadings(rs []adapters.Reading) string {
	var b strings.Builder
	for _, r := range rs {
		fmt.Fprintf(&b, "%s=%v(%v %q) ", r.Tag, r.Value, r.Quality, r.Err)
	}
	return b.String()
}

func allGood(rs []adapters.Reading) bool {
	for _, r := range rs {
		if r.Quality != adapters.Good {
			return false
		}
	}
	return len(rs) > 0
}

func allBad(rs []adapters.Reading) bool {
	for _, r := range rs {
		if r.Quality != adapters.Bad || r.Value.Kind() != adapters.Null || r.Err == "" {
			return false
		}
	}
	return len(rs) > 0
}

func byTag(rs []adapters.Reading) map[string]adapters.Reading {
	m := map[string]adapters.Reading{}
	for _, r := range rs {
		m[r.Tag] = r
	}
	return m
}

func testDevice(url string, tags ...config.ModbusTag) config.ModbusDevice {
	for i := range tags {
		tags[i].Interval = 0
	}
	return config.ModbusDevice{Name: "plc", URL: url, Unit: 1, Interval: 20 * time.Millisecond,
		Timeout: 500 * time.Millisecond, MaxGap: 10, MaxRegistersPerRequest: 125, Tags: tags}
}

// startPoller runs a poller (fast backoff) until the test ends.
func startPoller(t *testing.T, d config.ModbusDevice) (*Poller, *recSink) {
	t.Helper()
	sink := newRecSink()
	p, err := NewPoller(d, sink, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	p.minBackoff, p.maxBackoff, p.backoff = 5*time.Millisecond, 50*time.Millisecond, 5*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return p, sink
}

func TestPollerValues(t *testing.T) {
	s := modbustest.New(t)
	const H, I = config.TableHolding, config.TableInput
	s.SetHolding(0, 65000)
	s.SetInt16(H, 1, -1234)
	s.SetFloat32(H, 10, 123.456, "CDAB")
	s.SetBit(H, 20, 3, true)
	s.SetUint32(I, 0, 0xDEADBEEF, "ABCD")
	s.SetInt64(I, 4, -5, "DCBA")
	s.SetString(H, 30, "PUMP-A", 4, "BADC")
	s.SetCoils(5, true)
	s.SetDiscrete(9, true)
	s.SetHolding(40, 1013)

	f := tg("f", H, 10, "float32")
	f.Order = "CDAB"
	door := tg("door", H, 20, "bool")
	door.Bit = 3
	idle := tg("idle", H, 20, "bool")
	idle.Bit = 2
	str := tg("recipe", H, 30, "string")
	str.Order = "BADC"
	i64 := tg("i64", I, 4, "int64")
	i64.Order = "DCBA"
	kpa := tg("kpa", H, 40, "uint16")
	kpa.Scale = 0.1
	d := testDevice(s.URL(), tg("u", H, 0, "uint16"), tg("i", H, 1, "int16"), f, door, idle, str, kpa,
		tg("u32", I, 0, "uint32"), i64, tg("coil", config.TableCoil, 5, "bool"), tg("di", config.TableDiscrete, 9, "bool"))

	_, sink := startPoller(t, d)
	rs := sink.waitCycle(t, "all good", allGood)
	want := map[string]adapters.Value{
		"u": adapters.UintValue(65000), "i": adapters.IntValue(-1234), "f": adapters.FloatValue(123.456),
		"door": adapters.BoolValue(true), "idle": adapters.BoolValue(false), "recipe": adapters.StringValue("PUMP-A"),
		"kpa": adapters.FloatValue(101.3), "u32": adapters.UintValue(0xDEADBEEF), "i64": adapters.IntValue(-5),
		"coil": adapters.BoolValue(true), "di": adapters.BoolValue(true),
	}
	if len(rs) != len(want) {
		t.Fatalf("%d readings, want %d", len(rs), len(want))
	}
	for i, r := range rs {
		if r.Tag != d.Tags[i].Name {
			t.Errorf("reading %d is %s, want config order %s", i, r.Tag, d.Tags[i].Name)
		}
		if r.Device != "plc" || r.Time.IsZero() || r.Err != "" {
			t.Errorf("%s: %+v", r.Tag, r)
		}
		if !sameValue(r.Value, want[r.Tag]) {
			t.Errorf("%s = %v, want %v", r.Tag, r.Value, want[r.Tag])
		}
	}
	if st := sink.statesCopy(); len(st) != 1 || !st[0].up {
		t.Errorf("states %+v, want one up", st)
	}

	// values follow the device
	s.SetHolding(0, 7)
	sink.waitCycle(t, "u=7", func(rs []adapters.Reading) bool { return byTag(rs)["u"].Value.Uint() == 7 })
}

func TestPollerExceptionMarksOnlyItsRequest(t *testing.T) {
	s := modbustest.New(t)
	const H = config.TableHolding
	s.SetHolding(0, 1)
	s.SetHolding(200, 2)
	d := testDevice(s.URL(), tg("a", H, 0, "uint16"), tg("a2", H, 1, "uint16"), tg("b", H, 200, "uint16"))
	s.SetException(H, 200, 1, mb.ErrIllegalDataAddress)

	_, sink := startPoller(t, d)
	rs := sink.waitCycle(t, "a good, b bad", func(rs []adapters.Reading) bool {
		m := byTag(rs)
		return m["a"].Quality == adapters.Good && m["b"].Quality == adapters.Bad
	})
	m := byTag(rs)
	if m["a"].Value.Uint() != 1 || m["a2"].Quality != adapters.Good {
		t.Errorf("a = %+v, a2 = %+v", m["a"], m["a2"])
	}
	if b := m["b"]; b.Value.Kind() != adapters.Null || !strings.Contains(b.Err, "illegal data address") || b.Time.IsZero() {
		t.Errorf("b = %+v", b)
	}

	// the exception is not a transport error: device stays up, connection kept
	s.SetException(H, 200, 1, nil)
	sink.waitCycle(t, "all good", allGood)
	if st := sink.statesCopy(); len(st) != 1 || !st[0].up {
		t.Errorf("states %+v, want only up", st)
	}
}

func TestPollerDownAtStart(t *testing.T) {
	s := modbustest.New(t)
	s.SetHolding(0, 42)
	if err := s.SetDown(true); err != nil {
		t.Fatal(err)
	}
	d := testDevice(s.URL(), tg("a", config.TableHolding, 0, "uint16"), tg("c", config.TableCoil, 0, "bool"))
	_, sink := startPoller(t, d)
	sink.waitState(t, false)
	rs := sink.waitCycle(t, "all bad", allBad)
	if !strings.Contains(rs[0].Err, "connect") {
		t.Errorf("err = %q", rs[0].Err)
	}
	if st := sink.statesCopy(); st[0].up || st[0].err == "" {
		t.Errorf("first state %+v, want down with an error", st[0])
	}

	if err := s.SetDown(false); err != nil {
		t.Fatal(err)
	}
	sink.waitState(t, true)
	rs = sink.waitCycle(t, "all good", allGood)
	if rs[0].Value.Uint() != 42 {
		t.Errorf("a = %v", rs[0].Value)
	}
}

func TestPollerReconnects(t *testing.T) {
	s := modbustest.New(t)
	s.SetHolding(0, 1)
	d := testDevice(s.URL(), tg("a", config.TableHolding, 0, "uint16"))
	_, sink := startPoller(t, d)
	sink.waitCycle(t, "all good", allGood)

	for round := range 2 {
		if err := s.SetDown(true); err != nil {
			t.Fatal(err)
		}
		sink.waitState(t, false)
		sink.waitCycle(t, "all bad", allBad)
		s.SetHolding(0, uint16(10+round))
		if err := s.SetDown(false); err != nil {
			t.Fatal(err)
		}
		sink.waitState(t, true)
		sink.waitCycle(t, "new value", func(rs []adapters.Reading) bool {
			return allGood(rs) && rs[0].Value.Uint() == uint64(10+round)
		})
	}
	st := sink.statesCopy()
	want := []bool{true, false, true, false, true}
	if len(st) != len(want) {
		t.Fatalf("states %+v, want up/down alternating %v", st, want)
	}
	for i := range st {
		if st[i].up != want[i] {
			t.Fatalf("states %+v, want %v", st, want)
		}
	}
}

func TestPollerTimeout(t *testing.T) {
	s := modbustest.New(t)
	s.SetHolding(0, 5)
	d := testDevice(s.URL(), tg("a", config.TableHolding, 0, "uint16"))
	d.Timeout = 50 * time.Millisecond
	_, sink := startPoller(t, d)
	sink.waitCycle(t, "all good", allGood)

	s.SetDelay(400 * time.Millisecond)
	rs := sink.waitCycle(t, "timed out", func(rs []adapters.Reading) bool {
		return allBad(rs) && strings.Contains(rs[0].Err, "timed out")
	})
	_ = rs
	sink.waitState(t, false)

	s.SetDelay(0)
	sink.waitState(t, true)
	sink.waitCycle(t, "all good", allGood)
}

func TestRequestsPerCycle(t *testing.T) {
	s := modbustest.New(t)
	const H = config.TableHolding
	d := testDevice(s.URL(), tg("a", H, 0, "uint16"), tg("b", H, 5, "uint32"), tg("c", H, 100, "uint16"),
		tg("d", config.TableInput, 0, "uint16"), tg("e", config.TableCoil, 3, "bool"), tg("f", config.TableCoil, 4, "bool"))
	sink := newRecSink()
	p, err := NewPoller(d, sink, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Plan().NumRequests() != 4 {
		t.Fatalf("plan has %d requests:\n%s", p.Plan().NumRequests(), p.Plan())
	}
	for range 3 {
		before := s.Requests()
		rs, err := p.ReadOnce(context.Background())
		if err != nil || !allGood(rs) || len(rs) != 6 {
			t.Fatalf("ReadOnce: %v %s", err, fmtReadings(rs))
		}
		if got := s.Requests() - before; got != int64(p.Plan().NumRequests()) {
			t.Errorf("%d requests for one read, plan has %d", got, p.Plan().NumRequests())
		}
	}

	// the same under Run: requests = cycles × plan, give or take the cycle
	// cut short by the cancel
	before := s.Requests()
	p2, sink2 := startPoller(t, d)
	sink2.waitCycle(t, "good", allGood)
	sink2.waitCycle(t, "good", allGood)
	sink2.mu.Lock()
	n := int64(len(sink2.cycles))
	got := s.Requests() - before
	sink2.mu.Unlock()
	per := int64(p2.Plan().NumRequests())
	if got < n*per || got > (n+1)*per {
		t.Errorf("%d requests for %d cycles of %d", got, n, per)
	}
}

func TestScanClasses(t *testing.T) {
	s := modbustest.New(t)
	const H = config.TableHolding
	fast := tg("fast", H, 0, "uint16")
	slow := tg("slow", H, 1, "uint16")
	d := testDevice(s.URL(), fast, slow)
	d.Tags[0].Interval = 10 * time.Millisecond
	d.Tags[1].Interval = 40 * time.Millisecond
	_, sink := startPoller(t, d)
	sink.waitCycle(t, "slow", func(rs []adapters.Reading) bool { return len(rs) == 1 && rs[0].Tag == "slow" })
	sink.waitCycle(t, "fast", func(rs []adapters.Reading) bool { return len(rs) == 1 && rs[0].Tag == "fast" })
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for _, c := range sink.cycles {
		if len(c) != 1 {
			t.Fatalf("a cycle mixes scan classes: %s", fmtReadings(c))
		}
	}
}

func TestReadOnceDown(t *testing.T) {
	s := modbustest.New(t)
	url := s.URL()
	s.Close()
	p, err := NewPoller(testDevice(url, tg("a", config.TableHolding, 0, "uint16")), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := p.ReadOnce(context.Background())
	if err == nil || !allBad(rs) {
		t.Errorf("ReadOnce on a dead device: %v %s", err, fmtReadings(rs))
	}
	if err := p.Close(); err != nil {
		t.Error(err)
	}
}

func TestRunTwice(t *testing.T) {
	s := modbustest.New(t)
	p, sink := startPoller(t, testDevice(s.URL(), tg("a", config.TableHolding, 0, "uint16")))
	sink.waitCycle(t, "good", allGood)
	if err := p.Run(context.Background()); err == nil {
		t.Error("second Run did not fail")
	}
}

func TestNewPollerErrors(t *testing.T) {
	if _, err := NewPoller(testDevice("bogus://x", tg("a", config.TableHolding, 0, "uint16")), nil, nil); err == nil {
		t.Error("bogus URL accepted")
	}
	d := testDevice("rtu:///dev/null", tg("a", config.TableHolding, 0, "uint16"))
	d.Parity = "mark"
	if _, err := NewPoller(d, nil, nil); err == nil {
		t.Error("bad parity accepted")
	}
	if _, err := NewPoller(testDevice("tcp://x:1"), nil, nil); err == nil {
		t.Error("no tags accepted")
	}
}

func TestNextTick(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	iv := time.Second
	tests := []struct {
		now, want time.Duration // since start
	}{
		{0, time.Second},
		{10 * time.Millisecond, time.Second},                    // a short cycle: next tick
		{999 * time.Millisecond, time.Second},                   // late in the period
		{time.Second, 2 * time.Second},                          // exactly on a tick: the next one
		{3500 * time.Millisecond, 4 * time.Second},              // overran: ticks 1..3 skipped, no burst
		{100*time.Second + time.Millisecond, 101 * time.Second}, // no drift after many cycles
	}
	for _, tc := range tests {
		if got := nextTick(start, start.Add(tc.now), iv).Sub(start); got != tc.want {
			t.Errorf("now +%v: next +%v, want +%v", tc.now, got, tc.want)
		}
	}
}

func TestIsException(t *testing.T) {
	for _, err := range []error{mb.ErrIllegalDataAddress, mb.ErrServerDeviceBusy, mb.ErrGWTargetFailedToRespond,
		fmt.Errorf("read: %w", mb.ErrIllegalFunction), errors.New("unknown exception code (12)")} {
		if !isException(err) {
			t.Errorf("%v: not an exception", err)
		}
	}
	for _, err := range []error{mb.ErrRequestTimedOut, mb.ErrProtocolError, mb.ErrBadTransactionId, errors.New("EOF")} {
		if isException(err) {
			t.Errorf("%v: an exception", err)
		}
	}
}
