package modbus

import (
	"math"
	"testing"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
)

func regTag(typ, order string) config.ModbusTag {
	return config.ModbusTag{Name: "t", Table: config.TableHolding, Type: typ, Order: order, Bit: -1, Scale: 1}
}

func TestDecodeRegisters(t *testing.T) {
	f32 := func(f float32) adapters.Value { return adapters.FloatValue(widen32(f)) }
	tests := []struct {
		name  string
		tag   config.ModbusTag
		words []uint16
		want  adapters.Value
		q     adapters.Quality
	}{
		{"uint16", regTag("uint16", "ABCD"), []uint16{0xFFFE}, adapters.UintValue(65534), adapters.Good},
		{"int16 negative", regTag("int16", "ABCD"), []uint16{0xFFFE}, adapters.IntValue(-2), adapters.Good},
		{"int16 order ignored", regTag("int16", "DCBA"), []uint16{0x0102}, adapters.IntValue(0x0102), adapters.Good},

		// float32 123.456 = 0x42F6E979
		{"float32 ABCD", regTag("float32", "ABCD"), []uint16{0x42F6, 0xE979}, adapters.FloatValue(123.456), adapters.Good},
		{"float32 CDAB", regTag("float32", "CDAB"), []uint16{0xE979, 0x42F6}, adapters.FloatValue(123.456), adapters.Good},
		{"float32 BADC", regTag("float32", "BADC"), []uint16{0xF642, 0x79E9}, adapters.FloatValue(123.456), adapters.Good},
		{"float32 DCBA", regTag("float32", "DCBA"), []uint16{0x79E9, 0xF642}, adapters.FloatValue(123.456), adapters.Good},
		{"float32 subnormal", regTag("float32", "ABCD"), []uint16{0x0000, 0x0001}, adapters.FloatValue(1e-45), adapters.Good}, // shortest decimal of the smallest subnormal
		{"float32 max", regTag("float32", "ABCD"), []uint16{0x7F7F, 0xFFFF}, f32(math.MaxFloat32), adapters.Good},

		// 0x01020304
		{"uint32 ABCD", regTag("uint32", "ABCD"), []uint16{0x0102, 0x0304}, adapters.UintValue(0x01020304), adapters.Good},
		{"uint32 CDAB", regTag("uint32", "CDAB"), []uint16{0x0304, 0x0102}, adapters.UintValue(0x01020304), adapters.Good},
		{"uint32 BADC", regTag("uint32", "BADC"), []uint16{0x0201, 0x0403}, adapters.UintValue(0x01020304), adapters.Good},
		{"uint32 DCBA", regTag("uint32", "DCBA"), []uint16{0x0403, 0x0201}, adapters.UintValue(0x01020304), adapters.Good},
		{"int32 -2 ABCD", regTag("int32", "ABCD"), []uint16{0xFFFF, 0xFFFE}, adapters.IntValue(-2), adapters.Good},
		{"int32 -2 CDAB", regTag("int32", "CDAB"), []uint16{0xFFFE, 0xFFFF}, adapters.IntValue(-2), adapters.Good},
		{"int32 -2 BADC", regTag("int32", "BADC"), []uint16{0xFFFF, 0xFEFF}, adapters.IntValue(-2), adapters.Good},
		{"int32 -2 DCBA", regTag("int32", "DCBA"), []uint16{0xFEFF, 0xFFFF}, adapters.IntValue(-2), adapters.Good},

		// 0x0102030405060708
		{"uint64 ABCD", regTag("uint64", "ABCD"), []uint16{0x0102, 0x0304, 0x0506, 0x0708}, adapters.UintValue(0x0102030405060708), adapters.Good},
		{"uint64 CDAB", regTag("uint64", "CDAB"), []uint16{0x0708, 0x0506, 0x0304, 0x0102}, adapters.UintValue(0x0102030405060708), adapters.Good},
		{"uint64 BADC", regTag("uint64", "BADC"), []uint16{0x0201, 0x0403, 0x0605, 0x0807}, adapters.UintValue(0x0102030405060708), adapters.Good},
		{"uint64 DCBA", regTag("uint64", "DCBA"), []uint16{0x0807, 0x0605, 0x0403, 0x0201}, adapters.UintValue(0x0102030405060708), adapters.Good},
		{"uint64 max exact", regTag("uint64", "ABCD"), []uint16{0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF}, adapters.UintValue(math.MaxUint64), adapters.Good},
		{"uint64 odd exact", regTag("uint64", "ABCD"), []uint16{0xFFFF, 0xFFFF, 0xFFFF, 0xFFFD}, adapters.UintValue(math.MaxUint64 - 2), adapters.Good},
		{"int64 min", regTag("int64", "ABCD"), []uint16{0x8000, 0, 0, 0}, adapters.IntValue(math.MinInt64), adapters.Good},
		{"int64 -1 DCBA", regTag("int64", "DCBA"), []uint16{0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF}, adapters.IntValue(-1), adapters.Good},

		// float64 1.5 = 0x3FF8000000000000; -2.25 = 0xC002000000000000
		{"float64 ABCD", regTag("float64", "ABCD"), []uint16{0x3FF8, 0, 0, 0}, adapters.FloatValue(1.5), adapters.Good},
		{"float64 CDAB", regTag("float64", "CDAB"), []uint16{0, 0, 0, 0x3FF8}, adapters.FloatValue(1.5), adapters.Good},
		{"float64 BADC", regTag("float64", "BADC"), []uint16{0xF83F, 0, 0, 0}, adapters.FloatValue(1.5), adapters.Good},
		{"float64 DCBA", regTag("float64", "DCBA"), []uint16{0, 0, 0, 0x02C0}, adapters.FloatValue(-2.25), adapters.Good},

		// NaN and Inf from the device: uncertain
		{"float32 NaN", regTag("float32", "ABCD"), []uint16{0x7FC0, 0}, adapters.FloatValue(math.NaN()), adapters.Uncertain},
		{"float32 +Inf", regTag("float32", "ABCD"), []uint16{0x7F80, 0}, adapters.FloatValue(math.Inf(1)), adapters.Uncertain},
		{"float64 -Inf", regTag("float64", "ABCD"), []uint16{0xFFF0, 0, 0, 0}, adapters.FloatValue(math.Inf(-1)), adapters.Uncertain},

		// bits
		{"bool bit 0", withBit(regTag("bool", "ABCD"), 0), []uint16{0x0001}, adapters.BoolValue(true), adapters.Good},
		{"bool bit 3 off", withBit(regTag("bool", "ABCD"), 3), []uint16{0xFFF7}, adapters.BoolValue(false), adapters.Good},
		{"bool bit 15", withBit(regTag("bool", "ABCD"), 15), []uint16{0x8000}, adapters.BoolValue(true), adapters.Good},
		{"bool no bit nonzero", regTag("bool", "ABCD"), []uint16{0x0100}, adapters.BoolValue(true), adapters.Good},
		{"bool no bit zero", regTag("bool", "ABCD"), []uint16{0}, adapters.BoolValue(false), adapters.Good},

		// strings
		{"string ABCD", withLen(regTag("string", "ABCD"), 3), []uint16{0x4142, 0x4344, 0x4500}, adapters.StringValue("ABCDE"), adapters.Good},
		{"string CDAB = high byte first", withLen(regTag("string", "CDAB"), 2), []uint16{0x4142, 0x4344}, adapters.StringValue("ABCD"), adapters.Good},
		{"string BADC", withLen(regTag("string", "BADC"), 3), []uint16{0x4241, 0x4443, 0x0045}, adapters.StringValue("ABCDE"), adapters.Good},
		{"string DCBA = low byte first", withLen(regTag("string", "DCBA"), 2), []uint16{0x4241, 0x4443}, adapters.StringValue("ABCD"), adapters.Good},
		{"string trailing spaces", withLen(regTag("string", "ABCD"), 3), []uint16{0x4120, 0x2020, 0x2020}, adapters.StringValue("A"), adapters.Good},
		{"string ends at NUL", withLen(regTag("string", "ABCD"), 3), []uint16{0x4142, 0x0043, 0x4445}, adapters.StringValue("AB"), adapters.Good},
		{"string all NUL", withLen(regTag("string", "ABCD"), 2), []uint16{0, 0}, adapters.StringValue(""), adapters.Good},
		{"string invalid UTF-8", withLen(regTag("string", "ABCD"), 2), []uint16{0x41FF, 0x4200}, adapters.StringValue("A\uFFFDB"), adapters.Good},
		{"string UTF-8", withLen(regTag("string", "ABCD"), 2), []uint16{0xC3A9, 0x0000}, adapters.StringValue("é"), adapters.Good},

		// scaling
		{"uint16 scale 0.1 rounds like a decimal", scaled(regTag("uint16", "ABCD"), 0.1, 0), []uint16{1013}, adapters.FloatValue(101.3), adapters.Good},
		{"int16 scale 0.01", scaled(regTag("int16", "ABCD"), 0.01, 0), []uint16{0xFF9C}, adapters.FloatValue(-1), adapters.Good},
		{"uint16 scale 2 offset -40", scaled(regTag("uint16", "ABCD"), 2, -40), []uint16{30}, adapters.FloatValue(20), adapters.Good},
		{"uint16 offset only -> float", scaled(regTag("uint16", "ABCD"), 1, 0.5), []uint16{1}, adapters.FloatValue(1.5), adapters.Good},
		{"int32 scale 0.001", scaled(regTag("int32", "CDAB"), 0.001, 0), []uint16{0xFFFF, 0xFFFF}, adapters.FloatValue(-0.001), adapters.Good},
		{"float32 scale 10", scaled(regTag("float32", "ABCD"), 10, 1), []uint16{0x42F6, 0xE979}, adapters.FloatValue(1235.56), adapters.Good},
		{"uint64 scaled is float", scaled(regTag("uint64", "ABCD"), 0.5, 0), []uint16{0, 0, 0, 3}, adapters.FloatValue(1.5), adapters.Good},
		{"bool ignores scale", scaled(withBit(regTag("bool", "ABCD"), 1), 10, 5), []uint16{2}, adapters.BoolValue(true), adapters.Good},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := NewDecoder(tc.tag)
			if err != nil {
				t.Fatal(err)
			}
			if d.Size() != len(tc.words) {
				t.Fatalf("Size = %d, want %d", d.Size(), len(tc.words))
			}
			v, q := d.Registers(tc.words)
			if !sameValue(v, tc.want) || q != tc.q {
				t.Errorf("got %v (%v, kind %d), want %v (%v, kind %d)", v, q, v.Kind(), tc.want, tc.q, tc.want.Kind())
			}
			if q == adapters.Uncertain && v.String() != "null" {
				t.Errorf("NaN/Inf must encode as null, got %s", v)
			}
		})
	}
}

// TestEncoderDecoderAgree checks the decoders against the simulator's
// independently written encoders, for every numeric type and order.
func TestEncoderDecoderAgree(t *testing.T) {
	for _, order := range []string{OrderABCD, OrderCDAB, OrderBADC, OrderDCBA} {
		t.Run(order, func(t *testing.T) {
			check := func(typ string, words []uint16, want adapters.Value) {
				t.Helper()
				d, err := NewDecoder(regTag(typ, order))
				if err != nil {
					t.Fatal(err)
				}
				if v, _ := d.Registers(words); !sameValue(v, want) {
					t.Errorf("%s: got %v, want %v", typ, v, want)
				}
			}
			check("uint32", modbustest.Words32(0xDEADBEEF, order), adapters.UintValue(0xDEADBEEF))
			check("int32", modbustest.Words32(uint32(0x80000001), order), adapters.IntValue(math.MinInt32+1))
			check("float32", modbustest.Float32Words(-0.15625, order), adapters.FloatValue(-0.15625))
			check("float32", modbustest.Float32Words(123.456, order), adapters.FloatValue(123.456))
			check("uint64", modbustest.Words64(0x8877665544332211, order), adapters.UintValue(0x8877665544332211))
			check("int64", modbustest.Words64(uint64(1<<63+5), order), adapters.IntValue(math.MinInt64+5))
			check("float64", modbustest.Float64Words(math.Pi, order), adapters.FloatValue(math.Pi))
			st := withLen(regTag("string", order), 4)
			d, _ := NewDecoder(st)
			if v, _ := d.Registers(modbustest.StringWords("hello", 4, order)); v.Str() != "hello" {
				t.Errorf("string: got %v", v)
			}
		})
	}
}

func TestDecodeBits(t *testing.T) {
	for _, table := range []string{config.TableCoil, config.TableDiscrete} {
		d, err := NewDecoder(config.ModbusTag{Name: "b", Table: table, Type: "bool", Bit: -1, Scale: 1})
		if err != nil {
			t.Fatal(err)
		}
		if v, q := d.Bits([]bool{true, false}); !v.Bool() || q != adapters.Good {
			t.Errorf("%s: got %v %v", table, v, q)
		}
		if v, q := d.Registers([]uint16{1}); v.Kind() != adapters.Null || q != adapters.Bad {
			t.Errorf("%s: bit decoder on registers: got %v %v", table, v, q)
		}
	}
}

func TestDecoderShortInput(t *testing.T) {
	d, err := NewDecoder(regTag("float64", "ABCD"))
	if err != nil {
		t.Fatal(err)
	}
	if v, q := d.Registers([]uint16{1, 2, 3}); v.Kind() != adapters.Null || q != adapters.Bad {
		t.Errorf("got %v %v", v, q)
	}
	if v, q := d.Bits([]bool{true}); v.Kind() != adapters.Null || q != adapters.Bad {
		t.Errorf("got %v %v", v, q)
	}
}

func TestNewDecoderErrors(t *testing.T) {
	tests := []struct {
		name string
		tag  config.ModbusTag
	}{
		{"int16 on coil", config.ModbusTag{Table: config.TableCoil, Type: "int16", Bit: -1}},
		{"float32 on discrete", config.ModbusTag{Table: config.TableDiscrete, Type: "float32", Bit: -1}},
		{"unknown table", config.ModbusTag{Table: "memory", Type: "int16", Bit: -1}},
		{"unknown type", regTag("int8", "ABCD")},
		{"unknown order", regTag("int32", "BACD")},
		{"bit 16", withBit(regTag("bool", "ABCD"), 16)},
		{"string no length", regTag("string", "ABCD")},
		{"string too long", withLen(regTag("string", "ABCD"), 126)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewDecoder(tc.tag); err == nil {
				t.Error("no error")
			}
		})
	}
}

func withBit(t config.ModbusTag, bit int) config.ModbusTag { t.Bit = bit; return t }
func withLen(t config.ModbusTag, n int) config.ModbusTag   { t.Length = n; return t }
func scaled(t config.ModbusTag, scale, offset float64) config.ModbusTag {
	t.Scale, t.Offset = scale, offset
	return t
}

// sameValue compares kinds and values, NaN equal to NaN.
func sameValue(a, b adapters.Value) bool {
	if a.Kind() != b.Kind() {
		return false
	}
	if a.Kind() == adapters.FloatKind {
		x, y := a.Float(), b.Float()
		return x == y || (x != x && y != y)
	}
	return a == b
}
