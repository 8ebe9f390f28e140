package modbus

import (
	"context"
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
