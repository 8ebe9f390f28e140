package modbus

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
	mb "github.com/simonvetter/modbus"
)

// rtuMap seeds s with one value of each kind and returns tags reading them.
func rtuMap(s *modbustest.Server) []config.ModbusTag {
	const H, I = config.TableHolding, config.TableInput
	s.SetFloat32(H, 0, 21.5, "CDAB")
	s.SetInt16(H, 2, -7)
	s.SetUint64(I, 10, 1<<40+3, "DCBA")
	s.SetCoils(3, true)
	s.SetDiscrete(4, true)
	s.SetString(H, 20, "RTU", 2, "ABCD")
	f := tg("f", H, 0, "float32")
	f.Order = "CDAB"
	u := tg("u64", I, 10, "uint64")
	u.Order = "DCBA"
	str := tg("s", H, 20, "string")
	str.Length = 2
	return []config.ModbusTag{f, tg("i", H, 2, "int16"), tg("bad", H, 5, "uint16"), u,
		tg("c", config.TableCoil, 3, "bool"), tg("d", config.TableDiscrete, 4, "bool"), str}
}

func checkRTUValues(t *testing.T, m map[string]adapters.Reading) {
	t.Helper()
	want := map[string]adapters.Value{
		"f": adapters.FloatValue(21.5), "i": adapters.IntValue(-7), "u64": adapters.UintValue(1<<40 + 3),
		"c": adapters.BoolValue(true), "d": adapters.BoolValue(true), "s": adapters.StringValue("RTU"),
	}
	for tag, v := range want {
		if r := m[tag]; r.Quality != adapters.Good || !sameValue(r.Value, v) {
			t.Errorf("%s = %+v, want %v", tag, r, v)
		}
	}
	if r := m["bad"]; r.Quality != adapters.Bad || !strings.Contains(r.Err, "illegal data address") {
		t.Errorf("bad = %+v", r)
	}
}

// TestRTUOverPty polls a device over a real serial line: a pseudo-terminal
// pair made by socat, with the RTU responder of modbustest on the other
// end. Serial settings come from the config.
func TestRTUOverPty(t *testing.T) {
	client, device := modbustest.PtyPair(t)
	s := modbustest.New(t)
	if err := s.ServeRTUFile(device); err != nil {
		t.Fatal(err)
	}
	s.SetException(config.TableHolding, 5, 1, mb.ErrIllegalDataAddress)
	d := testDevice("rtu://"+client, rtuMap(s)...)
	d.Unit, d.Speed, d.DataBits, d.Parity, d.StopBits = 17, 115200, 8, "even", 1
	d.Timeout = 300 * time.Millisecond
	p := newPoller(t, d)
	m, _ := readOnce(t, s, p)
	checkRTUValues(t, m)

	// a unit that is not on the line: silence, a timeout, device down
	s.SetUnits(1)
	rs, err := p.ReadOnce(t.Context())
	if err == nil || !allBad(rs) || !strings.Contains(rs[0].Err, "timed out") {
		t.Errorf("silent unit: %v %s", err, fmtReadings(rs))
	}
	s.SetUnits()
	m, _ = readOnce(t, s, p)
	checkRTUValues(t, m)
}

// TestRTUOverTCP polls two units behind an RTU-over-TCP converter.
func TestRTUOverTCP(t *testing.T) {
	s := modbustest.New(t)
	url, err := s.ListenRTUOverTCP()
	if err != nil {
		t.Fatal(err)
	}
	s.SetException(config.TableHolding, 5, 1, mb.ErrIllegalDataAddress)
	tags := rtuMap(s)
	d1 := testDevice(url, tags...)
	d2 := testDevice(url, tags...)
	d2.Name, d2.Unit = "plc2", 2
	_, sink1 := startPoller(t, d1)
	_, sink2 := startPoller(t, d2)
	for _, sink := range []*recSink{sink1, sink2} {
		rs := sink.waitCycle(t, "read", func(rs []adapters.Reading) bool { return byTag(rs)["f"].Quality == adapters.Good })
		checkRTUValues(t, byTag(rs))
	}
}

// TestRTUPortLock: a second connection to a serial line that is open (as
// `ferry read` beside a running service) is refused at once, naming the
// port, instead of mixing its frames with the first one's on the bus; once
// the first closes, the port is free.
func TestRTUPortLock(t *testing.T) {
	client, device := modbustest.PtyPair(t)
	s := modbustest.New(t)
	if err := s.ServeRTUFile(device); err != nil {
		t.Fatal(err)
	}
	cfg := mb.ClientConfiguration{URL: "rtu://" + client, Speed: 115200}
	first := &link{key: cfg.URL, cfg: cfg, timeouts: map[*Poller]time.Duration{}}
	second := &link{key: cfg.URL, cfg: cfg, timeouts: map[*Poller]time.Duration{}}
	first.mu.Lock()
	defer first.mu.Unlock()
	second.mu.Lock()
	defer second.mu.Unlock()
	if _, err := first.ensure(true, time.Millisecond, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	_, err := second.ensure(true, time.Millisecond, time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "serial port "+client+" is in use") {
		t.Fatalf("second open: %v, want the port in use", err)
	}
	if _, _, err := first.read(1, config.TableHolding, 0, 1); err != nil {
		t.Fatalf("first link after the refused second: %v", err)
	}
	first.fail(errors.New("closed by the test"), time.Millisecond, time.Millisecond)
	if _, err := second.ensure(true, time.Millisecond, time.Millisecond); err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	second.fail(errors.New("closed by the test"), time.Millisecond, time.Millisecond)
}
