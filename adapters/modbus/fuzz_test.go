package modbus

import (
	"testing"
	"unicode/utf8"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
)

var fuzzTypes = []string{"bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"}
var fuzzOrders = []string{OrderABCD, OrderCDAB, OrderBADC, OrderDCBA}

// FuzzDecode feeds random register words (and bits) to every decoder
// selectable by type, order, bit, length and scale: decoding must never
// panic, must report Good/Uncertain only for a value and must produce
// valid UTF-8 strings.
func FuzzDecode(f *testing.F) {
	f.Add([]byte{0x42, 0xF6, 0xE9, 0x79}, uint8(7), uint8(1), int8(-1), uint8(2), 1.0, 0.0)
	f.Add([]byte{0xFF, 0xFF, 0x7F, 0xC0, 0, 0, 0, 0}, uint8(8), uint8(3), int8(3), uint8(4), 0.1, -40.0)
	f.Add([]byte{0xC3, 0x28, 0x00}, uint8(9), uint8(2), int8(15), uint8(9), 2.5, 1.0)
	f.Fuzz(func(t *testing.T, raw []byte, typ, order uint8, bit int8, length uint8, scale, offset float64) {
		tag := config.ModbusTag{
			Name: "f", Table: config.TableHolding,
			Type:  fuzzTypes[int(typ)%len(fuzzTypes)],
			Order: fuzzOrders[int(order)%len(fuzzOrders)],
			Bit:   int(bit) % 16, Length: int(length)%maxRegisters + 1,
			Scale: scale, Offset: offset,
		}
		words := make([]uint16, len(raw)/2)
		for i := range words {
			words[i] = uint16(raw[2*i])<<8 | uint16(raw[2*i+1])
		}
		bits := make([]bool, len(raw))
		for i, b := range raw {
			bits[i] = b&1 == 1
		}
		d, err := NewDecoder(tag)
		if err != nil {
			return // e.g. a negative bit
		}
		check := func(v adapters.Value, q adapters.Quality) {
			if q != adapters.Bad && v.Kind() == adapters.Null {
				t.Fatalf("quality %v without a value", q)
			}
			if v.Kind() == adapters.StringKind && !utf8.ValidString(v.Str()) {
				t.Fatalf("invalid UTF-8 %q", v.Str())
			}
			_ = v.AppendJSON(nil)
		}
		check(d.Registers(words))
		check(d.Bits(bits))
		if len(words) > 0 {
			check(d.Registers(words[1:]))
		}
		for _, table := range []string{config.TableCoil, config.TableDiscrete} {
			tag.Table = table
			if d, err := NewDecoder(tag); err == nil {
				check(d.Bits(bits))
				check(d.Registers(words))
			}
		}
	})
}
