package modbus

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
	mb "github.com/simonvetter/modbus"
)

// readOnce reads p once and returns the readings by tag and the number of
// requests the simulator saw.
func readOnce(t *testing.T, s *modbustest.Server, p *Poller) (map[string]adapters.Reading, int64) {
	t.Helper()
	before := s.Requests()
	rs, err := p.ReadOnce(context.Background())
	if err != nil {
		t.Fatalf("ReadOnce: %v (%s)", err, fmtReadings(rs))
	}
	return byTag(rs), s.Requests() - before
}

func newPoller(t *testing.T, d config.ModbusDevice) *Poller {
	t.Helper()
	p, err := NewPoller(d, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// TestIllegalAddressInCoalescedBlock: one illegal address inside a
// coalesced request fails only the tag on it; the split is remembered, so
// the next cycle does not send the failing whole request again; after
// merge_retry the whole request is tried again.
func TestIllegalAddressInCoalescedBlock(t *testing.T) {
	s := modbustest.New(t)
	const H = config.TableHolding
	for a := range 20 {
		s.SetHolding(uint16(a), uint16(100+a))
	}
	d := testDevice(s.URL(), tg("a", H, 0, "uint16"), tg("b", H, 1, "uint16"), tg("bad", H, 7, "uint16"),
		tg("c", H, 9, "uint32"), tg("e", H, 15, "uint16"), tg("f", H, 19, "uint16"))
	d.MergeRetry = time.Hour
	s.SetException(H, 7, 1, mb.ErrIllegalDataAddress)
	p := newPoller(t, d)
	if n := p.Plan().NumRequests(); n != 1 {
		t.Fatalf("plan has %d requests, want 1:\n%s", n, p.Plan())
	}
	var splits atomic.Int32
	p.onSplit = func(*request, int) { splits.Add(1) }

	m, first := readOnce(t, s, p)
	for _, tag := range []string{"a", "b", "c", "e", "f"} {
		if m[tag].Quality != adapters.Good {
			t.Errorf("%s = %+v, want good", tag, m[tag])
		}
	}
	if m["a"].Value.Uint() != 100 || m["f"].Value.Uint() != 119 {
		t.Errorf("values: a=%v f=%v", m["a"].Value, m["f"].Value)
	}
	if b := m["bad"]; b.Quality != adapters.Bad || b.Value.Kind() != adapters.Null || !strings.Contains(b.Err, "illegal data address") {
		t.Errorf("bad = %+v", b)
	}
	if splits.Load() != 1 || p.Stats().Splits == 0 {
		t.Errorf("split hook %d, Stats.Splits %d", splits.Load(), p.Stats().Splits)
	}

	// the next cycle reads the remembered parts: fewer requests, and the
	// whole request is not sent again
	_, second := readOnce(t, s, p)
	p.mu.Lock()
	leaves := len(p.splits[p.plan.classes[0].reqs[0]].leaves)
	p.mu.Unlock()
	if second != int64(leaves) || second >= first {
		t.Errorf("second cycle: %d requests (first %d, parts %d)", second, first, leaves)
	}
	// binary split of 6 tags: far fewer parts than tags
	if leaves > 4 {
		t.Errorf("%d parts for 6 tags with one bad", leaves)
	}
	if st := p.Stats(); st.Errors["illegal_address"] == 0 || st.Requests != uint64(first+second) {
		t.Errorf("stats %+v", st)
	}

	// merge_retry passed and the device fixed: one request again
	s.SetException(H, 7, 1, nil)
	p.mu.Lock()
	p.dev.MergeRetry = time.Nanosecond
	p.mu.Unlock()
	readOnce(t, s, p)
	m, n := readOnce(t, s, p)
	if n != 1 || m["bad"].Quality != adapters.Good {
		t.Errorf("after merge_retry: %d requests, bad = %+v", n, m["bad"])
	}
}

// TestIllegalAddressInGap: the illegal register is in a gap no tag covers:
// every tag ends up good.
func TestIllegalAddressInGap(t *testing.T) {
	s := modbustest.New(t)
	const H = config.TableHolding
	s.SetHolding(0, 1)
	s.SetHolding(6, 2)
	s.SetException(H, 3, 1, mb.ErrIllegalDataAddress)
	p := newPoller(t, testDevice(s.URL(), tg("a", H, 0, "uint16"), tg("b", H, 6, "uint16")))
	m, _ := readOnce(t, s, p)
	if !allGood([]adapters.Reading{m["a"], m["b"]}) || m["b"].Value.Uint() != 2 {
		t.Errorf("a = %+v, b = %+v", m["a"], m["b"])
	}
	if _, n := readOnce(t, s, p); n != 2 {
		t.Errorf("%d requests after the split, want 2", n)
	}
}

// TestBitsOfOneRegisterNotSplit: tags that share the bad register fail
// together, without pointless requests.
func TestBitsOfOneRegisterNotSplit(t *testing.T) {
	s := modbustest.New(t)
	const H = config.TableHolding
	b0, b1 := tg("b0", H, 5, "bool"), tg("b1", H, 5, "bool")
	b0.Bit, b1.Bit = 0, 1
	s.SetException(H, 5, 1, mb.ErrIllegalDataAddress)
	p := newPoller(t, testDevice(s.URL(), tg("a", H, 0, "uint16"), b0, b1))
	m, n := readOnce(t, s, p)
	if m["a"].Quality != adapters.Good || m["b0"].Quality != adapters.Bad || m["b1"].Quality != adapters.Bad {
		t.Errorf("%+v", m)
	}
	if n != 3 { // whole, then {a}, {b0 b1}
		t.Errorf("%d requests, want 3", n)
	}
}

// TestBusyIsUncertain: "server device busy" is retried, then reported
// uncertain with the last good value and its time; the device stays up.
func TestBusyIsUncertain(t *testing.T) {
	s := modbustest.New(t)
	const H = config.TableHolding
	s.SetHolding(0, 42)
	d := testDevice(s.URL(), tg("a", H, 0, "uint16"), tg("x", H, 50, "uint16"))
	d.Retries = 2
	p := newPoller(t, d)
	m, _ := readOnce(t, s, p)
	goodAt := m["a"].Time

	s.SetException(H, 0, 1, mb.ErrServerDeviceBusy)
	m, n := readOnce(t, s, p)
	if a := m["a"]; a.Quality != adapters.Uncertain || a.Value.Uint() != 42 || !a.Time.Equal(goodAt) || !strings.Contains(a.Err, "busy") {
		t.Errorf("a = %+v", a)
	}
	if m["x"].Quality != adapters.Good {
		t.Errorf("x = %+v", m["x"])
	}
	if n != 1+2+1 { // a: first try and 2 retries; x
		t.Errorf("%d requests, want 4", n)
	}
	if st := p.Stats(); st.Retries != 2 || st.Errors["busy"] != 3 {
		t.Errorf("stats: retries %d, busy %d", st.Retries, st.Errors["busy"])
	}
	if p.state != 1 {
		t.Error("device not up")
	}
}

// TestSharedLink: three unit ids behind one gateway share one connection,
// polled one request at a time; a unit that stops answering goes down
// alone and comes back on its own; the gateway going away takes every unit
// down and the link is re-opened once, not once per unit.
func TestSharedLink(t *testing.T) {
	s := modbustest.New(t)
	const H = config.TableHolding
	for u := range 3 {
		s.SetHolding(uint16(10*u), uint16(u+1))
	}
	var sinks []*recSink
	var pollers []*Poller
	for u := range 3 {
		d := testDevice(s.URL(), tg("v", H, uint16(10*u), "uint16"), tg("w", H, uint16(10*u+5), "uint16"))
		d.Name, d.Unit = []string{"u1", "u2", "u3"}[u], uint8(u+1)
		d.Retries = 0
		p, sink := startPoller(t, d)
		pollers, sinks = append(pollers, p), append(sinks, sink)
	}
	for u, sink := range sinks {
		sink.waitCycle(t, "good", func(rs []adapters.Reading) bool { return allGood(rs) && rs[0].Value.Uint() == uint64(u+1) })
	}
	l, refs, n := shared.lookup(s.URL())
	if l == nil || refs != 3 || pollers[0].link != l || pollers[2].link != l {
		t.Fatalf("no shared link (%d links)", n)
	}

	// unit 2 stops answering: only u2 goes down, the link stays
	s.SetUnits(1, 3)
	sinks[1].waitState(t, false)
	rs := sinks[1].waitCycle(t, "bad", allBad)
	if !strings.Contains(rs[0].Err, "gateway target") {
		t.Errorf("u2 error %q", rs[0].Err)
	}
	sinks[0].waitCycle(t, "u1 good", allGood)
	sinks[2].waitCycle(t, "u3 good", allGood)
	s.SetUnits()
	sinks[1].waitState(t, true)
	sinks[1].waitCycle(t, "good", allGood)
	for i, sink := range []*recSink{sinks[0], sinks[2]} {
		if st := sink.statesCopy(); len(st) != 1 || !st[0].up {
			t.Errorf("device %d states %+v, want only up", i, st)
		}
	}

	// the gateway goes away and comes back: everyone down, then up, one
	// reconnect in all
	if err := s.SetDown(true); err != nil {
		t.Fatal(err)
	}
	for _, sink := range sinks {
		sink.waitState(t, false)
	}
	if err := s.SetDown(false); err != nil {
		t.Fatal(err)
	}
	for _, sink := range sinks {
		sink.waitState(t, true)
		sink.waitCycle(t, "good", allGood)
	}
	var reconnects uint64
	for _, p := range pollers {
		reconnects += p.Stats().Reconnects
	}
	if reconnects != 1 {
		t.Errorf("%d reconnects for one outage of the shared link", reconnects)
	}
	if m := s.MaxInFlight(); m != 1 {
		t.Errorf("the gateway saw %d requests at once, want 1", m)
	}
}

// TestSharedLinkTimeout: two units on one RTU line (RTU over TCP); one
// falls silent: it times out and is backed off alone, the other keeps
// being polled and the link is not reset. When every unit is silent the
// link is reset (once) and comes back.
func TestSharedLinkTimeout(t *testing.T) {
	s := modbustest.New(t)
	url, err := s.ListenRTUOverTCP()
	if err != nil {
		t.Fatal(err)
	}
	const H = config.TableHolding
	var sinks []*recSink
	var pollers []*Poller
	for u := range 2 {
		d := testDevice(url, tg("v", H, 0, "uint16"))
		d.Name, d.Unit, d.Timeout, d.Retries = []string{"u1", "u2"}[u], uint8(u+1), 100*time.Millisecond, 0
		p, sink := startPoller(t, d)
		pollers, sinks = append(pollers, p), append(sinks, sink)
	}
	sinks[0].waitCycle(t, "good", allGood)
	sinks[1].waitCycle(t, "good", allGood)
	s.SetUnits(1)
	sinks[1].waitState(t, false)
	sinks[1].waitCycle(t, "timed out", func(rs []adapters.Reading) bool { return allBad(rs) && strings.Contains(rs[0].Err, "timed out") })
	sinks[0].waitCycle(t, "u1 good", allGood)
	sinks[0].waitCycle(t, "u1 good", allGood)
	s.SetUnits()
	sinks[1].waitState(t, true)
	if st := sinks[0].statesCopy(); len(st) != 1 {
		t.Errorf("u1 states %+v, want only up", st)
	}
	if r := pollers[0].Stats().Reconnects + pollers[1].Stats().Reconnects; r != 0 {
		t.Errorf("%d reconnects; one silent unit must not reset the link", r)
	}

	// every unit silent: both down, the link is reset; both come back
	s.SetUnits(99)
	sinks[0].waitState(t, false)
	sinks[1].waitState(t, false)
	s.SetUnits()
	sinks[0].waitState(t, true)
	sinks[1].waitState(t, true)
	if r := pollers[0].Stats().Reconnects + pollers[1].Stats().Reconnects; r < 1 {
		t.Errorf("%d reconnects after every unit fell silent", r)
	}
}

// TestSlowDeviceDoesNotDelayOthers: devices on different links poll
// independently.
func TestSlowDeviceDoesNotDelayOthers(t *testing.T) {
	slow, fast := modbustest.New(t), modbustest.New(t)
	const H = config.TableHolding
	slow.SetDelay(400 * time.Millisecond)
	ds := testDevice(slow.URL(), tg("s", H, 0, "uint16"))
	ds.Name, ds.Timeout = "slow", 2*time.Second
	df := testDevice(fast.URL(), tg("f", H, 0, "uint16"))
	df.Name = "fast"
	_, sinkS := startPoller(t, ds)
	pf, sinkF := startPoller(t, df)
	sinkS.waitCycle(t, "slow good", allGood)
	sinkF.mu.Lock()
	before := len(sinkF.cycles)
	sinkF.mu.Unlock()
	sinkS.waitCycle(t, "slow good", allGood)
	sinkF.mu.Lock()
	during := len(sinkF.cycles) - before
	sinkF.mu.Unlock()
	// 400 ms of the slow device at 20 ms intervals: ~20 fast cycles
	if during < 5 {
		t.Errorf("only %d fast cycles while the slow device answered once", during)
	}
	if st := pf.Stats(); st.PollJitter.Count == 0 || st.CycleTime.Count == 0 || st.Cycles == 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestDeviceStopsAnsweringTCPGateway: a unit behind a gateway that stops
// answering goes down and comes back on its own.
func TestUnitDownAndBack(t *testing.T) {
	s := modbustest.New(t)
	s.SetHolding(0, 7)
	d := testDevice(s.URL(), tg("a", config.TableHolding, 0, "uint16"))
	_, sink := startPoller(t, d)
	sink.waitState(t, true)
	s.SetUnits(9)
	sink.waitState(t, false)
	sink.waitCycle(t, "bad", allBad)
	s.SetUnits()
	sink.waitState(t, true)
	sink.waitCycle(t, "good", allGood)
}
