package modbus

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
	mb "github.com/simonvetter/modbus"
)

func wtag(typ, order string) config.ModbusTag {
	return config.ModbusTag{Name: "t", Table: config.TableHolding, Type: typ, Order: order, Bit: -1, Scale: 1, Writable: true, Length: 4}
}

// Every value written decodes to itself, for every type and order.
func TestEncodeWriteRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, order := range []string{OrderABCD, OrderCDAB, OrderBADC, OrderDCBA} {
		for _, typ := range []string{"int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string", "bool"} {
			tag := wtag(typ, order)
			dec, err := NewDecoder(tag)
			if err != nil {
				t.Fatal(err)
			}
			for range 200 {
				var v adapters.Value
				switch typ {
				case "int16":
					v = adapters.IntValue(int64(int16(rng.Uint32())))
				case "uint16":
					v = adapters.IntValue(int64(uint16(rng.Uint32())))
				case "int32":
					v = adapters.IntValue(int64(int32(rng.Uint32())))
				case "uint32":
					v = adapters.IntValue(int64(rng.Uint32()))
				case "int64":
					v = adapters.IntValue(int64(rng.Uint64()))
				case "uint64":
					v = adapters.UintValue(rng.Uint64())
				case "float32":
					v = adapters.FloatValue(widen32(float32(rng.NormFloat64() * 1e6)))
				case "float64":
					v = adapters.FloatValue(rng.NormFloat64() * 1e12)
				case "string":
					v = adapters.StringValue(strings.Repeat("x", rng.IntN(9)))
				case "bool":
					v = adapters.BoolValue(rng.IntN(2) == 1)
				}
				w, err := encodeWrite(tag, v)
				if err != nil {
					t.Fatalf("%s %s %v: %v", typ, order, v, err)
				}
				got, _ := dec.Registers(w.words)
				want := v
				if typ == "uint64" || typ == "uint16" || typ == "uint32" {
					want = adapters.UintValue(uint64(v.Float()))
					if typ == "uint64" {
						want = v
					}
				}
				if got.String() != want.String() {
					t.Fatalf("%s %s: wrote %v, decodes as %v (words %04x)", typ, order, v, got, w.words)
				}
			}
		}
	}
}

func TestEncodeWriteRefuses(t *testing.T) {
	scaled := wtag("uint16", OrderABCD)
	scaled.Scale, scaled.Offset = 0.1, -40
	cases := []struct {
		tag config.ModbusTag
		v   adapters.Value
	}{
		{wtag("uint16", ""), adapters.IntValue(70000)},
		{wtag("uint16", ""), adapters.IntValue(-1)},
		{wtag("int16", ""), adapters.IntValue(32768)},
		{wtag("int32", ""), adapters.FloatValue(1.5)},
		{wtag("uint64", ""), adapters.IntValue(-1)},
		{wtag("int64", ""), adapters.UintValue(math.MaxUint64)},
		{wtag("int64", ""), adapters.FloatValue(1e19)},
		{wtag("float32", ""), adapters.FloatValue(1e39)},
		{wtag("float64", ""), adapters.FloatValue(math.NaN())},
		{wtag("float64", ""), adapters.StringValue("1")},
		{wtag("uint16", ""), adapters.BoolValue(true)},
		{wtag("bool", ""), adapters.IntValue(1)},
		{wtag("string", ""), adapters.StringValue("123456789")},
		{wtag("string", ""), adapters.StringValue("a\x00b")},
		{wtag("string", ""), adapters.IntValue(1)},
		{scaled, adapters.FloatValue(23.45)},  // not on the 0.1 grid
		{scaled, adapters.FloatValue(-40.1)},  // raw -1
		{scaled, adapters.FloatValue(6513.6)}, // raw 65536
		{config.ModbusTag{Table: config.TableInput, Type: "uint16", Scale: 1, Bit: -1}, adapters.IntValue(1)},
	}
	for _, c := range cases {
		if err := EncodeWrite(c.tag, c.v); err == nil {
			t.Errorf("%s %v: accepted", c.tag.Type, c.v)
		} else if we, ok := err.(*adapters.WriteError); !ok || we.Code != adapters.CodeBadValue {
			t.Errorf("%s %v: %v is not bad_value", c.tag.Type, c.v, err)
		}
	}
	// Exact inverse scaling: 23.5 with scale 0.1, offset -40 is raw 635.
	w, err := encodeWrite(scaled, adapters.FloatValue(23.5))
	if err != nil || w.words[0] != 635 {
		t.Fatalf("23.5: %v %v", w.words, err)
	}
	if w, err := encodeWrite(wtag("uint16", ""), adapters.FloatValue(42)); err != nil || w.words[0] != 42 {
		t.Fatalf("42.0: %v %v", w.words, err)
	}
}

// WriteTag: one FC16 for a 32-bit value, read-modify-write of a bit,
// verify, coil, and the errors a device gives.
func TestWriteTag(t *testing.T) {
	sim := modbustest.New(t)
	dev := config.ModbusDevice{Name: "plc", URL: sim.URL(), Unit: 1, Interval: time.Hour, Timeout: 200 * time.Millisecond,
		MaxRegistersPerRequest: 125, Tags: []config.ModbusTag{
			{Name: "f", Table: config.TableHolding, Address: 10, Type: "float32", Order: OrderCDAB, Bit: -1, Scale: 1, Writable: true, Verify: true, Interval: time.Hour},
			{Name: "b3", Table: config.TableHolding, Address: 20, Type: "bool", Bit: 3, Scale: 1, Writable: true, Interval: time.Hour},
			{Name: "c", Table: config.TableCoil, Address: 5, Type: "bool", Bit: -1, Scale: 1, Writable: true, Interval: time.Hour},
			{Name: "ro", Table: config.TableHolding, Address: 30, Type: "uint16", Bit: -1, Scale: 1, Interval: time.Hour},
		}}
	p, err := NewPoller(dev, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	v, err := p.WriteTag(ctx, "f", adapters.FloatValue(123.456), true)
	if err != nil || v.Float() != 123.456 {
		t.Fatalf("float32: %v %v", v, err)
	}
	ws := sim.Writes()
	if len(ws) != 1 || len(ws[0].Regs) != 2 || ws[0].Addr != 10 || ws[0].Regs[0] != 0xE979 || ws[0].Regs[1] != 0x42F6 {
		t.Fatalf("float32 CDAB must be one FC16 of [E979 42F6]: %+v", ws)
	}
	sim.SetHolding(20, 0xA5A1)
	if _, err := p.WriteTag(ctx, "b3", adapters.BoolValue(true), false); err != nil {
		t.Fatal(err)
	}
	if got := sim.Registers(config.TableHolding, 20, 1)[0]; got != 0xA5A9 {
		t.Fatalf("bit 3 set: %04x, want A5A9", got)
	}
	if _, err := p.WriteTag(ctx, "c", adapters.BoolValue(true), true); err != nil || !sim.Bits(config.TableCoil, 5, 1)[0] {
		t.Fatalf("coil: %v", err)
	}
	if _, err := p.WriteTag(ctx, "ro", adapters.IntValue(1), false); err == nil {
		t.Fatal("read-only tag written")
	}
	sim.SetException(config.TableHolding, 10, 2, mb.ErrIllegalDataAddress)
	if _, err := p.WriteTag(ctx, "f", adapters.FloatValue(1), false); err == nil || err.(*adapters.WriteError).Code != adapters.CodeDeviceError {
		t.Fatalf("exception: %v", err)
	}
	sim.ClearExceptions()
	sim.SetDelay(400 * time.Millisecond)
	if _, err := p.WriteTag(ctx, "f", adapters.FloatValue(1), false); err == nil || err.(*adapters.WriteError).Code != adapters.CodeTimeout {
		t.Fatalf("timeout: %v", err)
	}
	sim.SetDelay(0)
}

// The edges of int64 and uint64 are compared as integers: 2^63 as a float
// is not an int64 (it was written as -2^63), a whole float just below 2^64
// is a uint64, and a value from a decimal float64 could not hold exactly
// is never written to an integer register.
func TestEncodeWriteIntegerEdges(t *testing.T) {
	const ok = ""
	cases := []struct {
		typ  string
		v    adapters.Value
		want string // the register bits written, or ok for v itself
		code string
	}{
		{"int64", adapters.IntValue(math.MaxInt64), "7fffffffffffffff", ok},
		{"int64", adapters.IntValue(math.MinInt64), "8000000000000000", ok},
		{"int64", adapters.FloatValue(0x1p63), "", adapters.CodeBadValue},
		{"int64", adapters.FloatValue(-0x1p63), "8000000000000000", ok},
		{"int64", adapters.FloatValue(math.Nextafter(-0x1p63, -1e300)), "", adapters.CodeBadValue},
		{"int64", adapters.FloatValue(1e19), "", adapters.CodeBadValue},
		{"int64", adapters.UintValue(1 << 63), "", adapters.CodeBadValue},
		{"int64", adapters.FloatValue(math.Copysign(0, -1)), "0000000000000000", ok},
		{"int64", adapters.InexactFloatValue(-0x1p63, true), "", adapters.CodeBadValue},
		{"int64", adapters.InexactFloatValue(0x1p53, false), "", adapters.CodeBadValue},
		{"uint64", adapters.UintValue(math.MaxUint64), "ffffffffffffffff", ok},
		{"uint64", adapters.FloatValue(0x1p64), "", adapters.CodeBadValue},
		{"uint64", adapters.FloatValue(math.Nextafter(0x1p64, 0)), "fffffffffffff800", ok},
		{"uint64", adapters.FloatValue(0x1p63), "8000000000000000", ok},
		{"uint64", adapters.FloatValue(1e19), "8ac7230489e80000", ok},
		{"uint64", adapters.IntValue(-1), "", adapters.CodeBadValue},
		{"uint64", adapters.FloatValue(-1), "", adapters.CodeBadValue},
		{"uint32", adapters.FloatValue(0x1p32), "", adapters.CodeBadValue},
		{"uint32", adapters.FloatValue(0x1p32 - 1), "00000000ffffffff", ok},
		{"int32", adapters.FloatValue(-0x1p31), "0000000080000000", ok},
		{"int32", adapters.FloatValue(0x1p31), "", adapters.CodeBadValue},
		{"int16", adapters.FloatValue(-32769), "", adapters.CodeBadValue},
	}
	for _, c := range cases {
		w, err := encodeWrite(wtag(c.typ, OrderABCD), c.v)
		if c.code != ok {
			var we *adapters.WriteError
			if err == nil || !errors.As(err, &we) || we.Code != c.code {
				t.Errorf("%s %v: %v (%04x), want %s", c.typ, c.v, err, w.words, c.code)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %v: %v", c.typ, c.v, err)
			continue
		}
		var x uint64
		for _, r := range w.words {
			x = x<<16 | uint64(r)
		}
		if got := fmt.Sprintf("%016x", x); got != c.want {
			t.Errorf("%s %v: wrote %s, want %s", c.typ, c.v, got, c.want)
		}
	}
}

// CheckWrite and WriteTag apply min and max exactly: 2^53 + 1 is above a
// max of 2^53 (which a float64 comparison cannot see), an integer max
// beyond 2^53 is kept exactly.
func TestWriteLimitsExact(t *testing.T) {
	p53, p53f := int64(1<<53), float64(1<<53)
	big := int64(1<<53 + 1)
	bigf := float64(big)
	tag := func(name string, addr uint16, min, max *float64, minI, maxI *int64) config.ModbusTag {
		return config.ModbusTag{Name: name, Table: config.TableHolding, Address: addr, Type: "int64", Bit: -1, Scale: 1,
			Writable: true, Interval: time.Hour, Min: min, Max: max, MinInt: minI, MaxInt: maxI}
	}
	negf, negi := -p53f, -p53
	dev := config.ModbusDevice{Name: "plc", URL: "tcp://127.0.0.1:1", Unit: 1, Interval: time.Hour, Timeout: 200 * time.Millisecond,
		MaxRegistersPerRequest: 125, Tags: []config.ModbusTag{
			tag("f", 0, &negf, &p53f, nil, nil), // min = -9007199254740992.0, max = 9007199254740992.0
			tag("i", 4, nil, &bigf, nil, &big),  // max = 9007199254740993
			tag("n", 8, &negf, nil, &negi, nil), // min = -9007199254740992
		}}
	p, err := NewPoller(dev, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		tag  string
		v    adapters.Value
		code string
	}{
		{"f", adapters.IntValue(p53), ""},
		{"f", adapters.IntValue(p53 + 1), adapters.CodeOutOfRange},
		{"f", adapters.UintValue(uint64(p53) + 1), adapters.CodeOutOfRange},
		{"f", adapters.IntValue(-p53 - 1), adapters.CodeOutOfRange},
		{"f", adapters.IntValue(math.MaxInt64), adapters.CodeOutOfRange},
		{"i", adapters.IntValue(big), ""},
		{"i", adapters.IntValue(big + 1), adapters.CodeOutOfRange},
		{"n", adapters.IntValue(-p53), ""},
		{"n", adapters.IntValue(-p53 - 1), adapters.CodeOutOfRange},
	}
	for _, c := range cases {
		err := p.CheckWrite(c.tag, c.v)
		var we *adapters.WriteError
		switch {
		case c.code == "" && err != nil:
			t.Errorf("%s %v: %v", c.tag, c.v, err)
		case c.code != "" && (err == nil || !errors.As(err, &we) || we.Code != c.code):
			t.Errorf("%s %v: %v, want %s", c.tag, c.v, err, c.code)
		}
		if c.code != "" {
			// WriteTag refuses it too, before any I/O (the address
			// refuses connections).
			if _, err := p.WriteTag(context.Background(), c.tag, c.v, false); !errors.As(err, &we) || we.Code != c.code {
				t.Errorf("WriteTag %s %v: %v, want %s", c.tag, c.v, err, c.code)
			}
		}
	}
}

// A write to a device that stopped answering is answered timeout with a
// message about the write (device, tag, value, what happened to it), not
// with the text of the last failed poll (issue 21).
func TestWriteToHungDevice(t *testing.T) {
	writable := func(d config.ModbusDevice) config.ModbusDevice {
		d.Tags[0].Writable = true
		d.Timeout = 50 * time.Millisecond
		return d
	}
	check := func(t *testing.T, err error, wantSub ...string) {
		t.Helper()
		var we *adapters.WriteError
		if !errors.As(err, &we) || we.Code != adapters.CodeTimeout {
			t.Fatalf("write: %v, want a timeout", err)
		}
		msg := err.Error()
		for _, s := range append([]string{"write of 7 to plc/a"}, wantSub...) {
			if !strings.Contains(msg, s) {
				t.Errorf("message %q does not say %q", msg, s)
			}
		}
		if strings.Contains(msg, "read holding") {
			t.Errorf("message %q echoes the poll", msg)
		}
	}
	t.Run("link down after polls timed out", func(t *testing.T) {
		s := modbustest.New(t)
		d := writable(testDevice(s.URL(), tg("a", config.TableHolding, 0, "uint16")))
		sink := newRecSink()
		p, err := NewPoller(d, sink, nil)
		if err != nil {
			t.Fatal(err)
		}
		// A long backoff: the write finds the link down, not reconnecting.
		p.minBackoff, p.maxBackoff, p.backoff = time.Hour, time.Hour, time.Hour
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		defer func() { cancel(); <-done; p.Close() }()
		sink.waitCycle(t, "all good", allGood)
		s.SetDelay(400 * time.Millisecond)
		sink.waitState(t, false)
		_, err = p.WriteTag(context.Background(), "a", adapters.IntValue(7), false)
		check(t, err, "not sent", "stopped answering")
		if w := s.Writes(); len(w) != 0 {
			t.Errorf("writes %+v", w)
		}
	})
	t.Run("the write itself times out", func(t *testing.T) {
		s := modbustest.New(t)
		d := writable(testDevice(s.URL(), tg("a", config.TableHolding, 0, "uint16")))
		d.Interval = time.Hour
		p, err := NewPoller(d, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		s.SetDelay(400 * time.Millisecond)
		_, err = p.WriteTag(context.Background(), "a", adapters.IntValue(7), false)
		check(t, err, "no answer within 50ms", "may have been carried out")
	})
}

// A URL with credentials (ferry probe passes one straight from the command
// line) is refused without showing the password, so no later message or
// log can show it either (issue 21).
func TestURLCredentialsNeverShown(t *testing.T) {
	d := testDevice("tcp://user:s3cret@127.0.0.1:1", tg("a", config.TableHolding, 0, "uint16"))
	p, err := NewPoller(d, nil, nil)
	if err == nil {
		p.Close()
		t.Fatal("a URL with credentials was accepted")
	}
	if strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "user:xxxxx@") {
		t.Fatalf("error %q", err)
	}
}
