package modbus

import (
	"bytes"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
)

// Byte orders of multi-register values.
//
// Name the bytes of a value A, B, C, D, ... from the most significant to the
// least significant. Every Modbus register travels high byte first on the
// wire, so a register word is written here as two bytes, high byte first.
// An order string names the bytes as they appear over consecutive
// registers, first register first:
//
//	order  32-bit words    64-bit words            meaning
//	ABCD   [AB CD]         [AB CD EF GH]           big-endian, high word first (the Modbus norm)
//	CDAB   [CD AB]         [GH EF CD AB]           word-swapped: low word first, bytes big-endian within a word
//	BADC   [BA DC]         [BA DC FE HG]           byte-swapped within each word, high word first
//	DCBA   [DC BA]         [HG FE DC BA]           fully little-endian
//
// Example: float32 123.456 is 0x42F6E979, so ABCD reads [0x42F6 0xE979],
// CDAB [0xE979 0x42F6], BADC [0xF642 0x79E9] and DCBA [0x79E9 0xF642].
//
// Strings (Length registers) honour only the byte order within a register:
// ABCD and CDAB take the high byte of each register first, BADC and DCBA the
// low byte first. A string ends at its first NUL; trailing spaces are
// trimmed and invalid UTF-8 is replaced with U+FFFD.
const (
	OrderABCD = "ABCD"
	OrderCDAB = "CDAB"
	OrderBADC = "BADC"
	OrderDCBA = "DCBA"
)

// Decoder turns the raw registers (holding, input) or bits (coil, discrete)
// of one tag into a Value and its Quality. It is chosen once, when the plan
// is compiled; decoding never panics, whatever the input.
type Decoder struct {
	size int // registers or bits consumed
	regs func(w []uint16) (adapters.Value, adapters.Quality)
	bits func(b []bool) (adapters.Value, adapters.Quality)
}

// Size reports how many registers (or bits, for coil and discrete tags) the
// decoder consumes.
func (d Decoder) Size() int { return d.size }

// Registers decodes w, which must hold at least Size registers. It returns
// a null value of quality Bad when the decoder is not a register decoder or
// w is short.
func (d Decoder) Registers(w []uint16) (adapters.Value, adapters.Quality) {
	if d.regs == nil || len(w) < d.size {
		return adapters.Value{}, adapters.Bad
	}
	return d.regs(w[:d.size])
}

// Bits decodes b, which must hold at least Size bits. It returns a null
// value of quality Bad when the decoder is not a bit decoder or b is short.
func (d Decoder) Bits(b []bool) (adapters.Value, adapters.Quality) {
	if d.bits == nil || len(b) < d.size {
		return adapters.Value{}, adapters.Bad
	}
	return d.bits(b[:d.size])
}

// NewDecoder picks the decoder of tag from its Table, Type, Order, Bit,
// Length, Scale and Offset.
//
// Scaling: value = raw*Scale + Offset. With Scale 1 and Offset 0 integers
// stay exact (IntValue/UintValue, uint64 included); otherwise the value is a
// FloatValue. float32 values are widened through their shortest decimal
// representation (123.456 publishes as 123.456, not 123.45600128173828). A
// NaN or infinite result is a FloatValue of quality Uncertain (the JSON
// encoder writes null). bool and string values are never scaled.
func NewDecoder(tag config.ModbusTag) (Decoder, error) {
	switch tag.Table {
	case config.TableCoil, config.TableDiscrete:
		if tag.Type != "bool" {
			return Decoder{}, fmt.Errorf("type %q is not possible on table %q (only bool)", tag.Type, tag.Table)
		}
		return Decoder{size: 1, bits: decodeBit}, nil
	case config.TableHolding, config.TableInput:
	default:
		return Decoder{}, fmt.Errorf("unknown table %q", tag.Table)
	}

	order := tag.Order
	if order == "" {
		order = OrderABCD
	}
	w32, ok := words32[order]
	if !ok {
		return Decoder{}, fmt.Errorf("unknown order %q (ABCD, CDAB, BADC or DCBA)", tag.Order)
	}
	w64 := words64[order]
	sc := newScaler(tag.Scale, tag.Offset)

	switch tag.Type {
	case "bool":
		if tag.Bit > 15 {
			return Decoder{}, fmt.Errorf("bit %d out of range 0..15", tag.Bit)
		}
		if tag.Bit < 0 {
			return Decoder{size: 1, regs: func(w []uint16) (adapters.Value, adapters.Quality) {
				return adapters.BoolValue(w[0] != 0), adapters.Good
			}}, nil
		}
		bit := uint(tag.Bit)
		return Decoder{size: 1, regs: func(w []uint16) (adapters.Value, adapters.Quality) {
			return adapters.BoolValue(w[0]>>bit&1 == 1), adapters.Good
		}}, nil
	case "uint16":
		return Decoder{size: 1, regs: func(w []uint16) (adapters.Value, adapters.Quality) {
			return sc.uint(uint64(w[0]))
		}}, nil
	case "int16":
		return Decoder{size: 1, regs: func(w []uint16) (adapters.Value, adapters.Quality) {
			return sc.int(int64(int16(w[0])))
		}}, nil
	case "uint32":
		return Decoder{size: 2, regs: func(w []uint16) (adapters.Value, adapters.Quality) {
			return sc.uint(uint64(w32(w)))
		}}, nil
	case "int32":
		return Decoder{size: 2, regs: func(w []uint16) (adapters.Value, adapters.Quality) {
			return sc.int(int64(int32(w32(w))))
		}}, nil
	case "float32":
		return Decoder{size: 2, regs: func(w []uint16) (adapters.Value, adapters.Quality) {
			return sc.float(widen32(math.Float32frombits(w32(w))))
		}}, nil
	case "uint64":
		return Decoder{size: 4, regs: func(w []uint16) (adapters.Value, adapters.Quality) {
			return sc.uint(w64(w))
		}}, nil
	case "int64":
		return Decoder{size: 4, regs: func(w []uint16) (adapters.Value, adapters.Quality) {
			return sc.int(int64(w64(w)))
		}}, nil
	case "float64":
		return Decoder{size: 4, regs: func(w []uint16) (adapters.Value, adapters.Quality) {
			return sc.float(math.Float64frombits(w64(w)))
		}}, nil
	case "string":
		if tag.Length < 1 || tag.Length > maxRegisters {
			return Decoder{}, fmt.Errorf("string length %d out of range 1..%d", tag.Length, maxRegisters)
		}
		lowFirst := order == OrderBADC || order == OrderDCBA
		return Decoder{size: tag.Length, regs: func(w []uint16) (adapters.Value, adapters.Quality) {
			return adapters.StringValue(decodeString(w, lowFirst)), adapters.Good
		}}, nil
	}
	return Decoder{}, fmt.Errorf("unknown type %q", tag.Type)
}

func decodeBit(b []bool) (adapters.Value, adapters.Quality) {
	return adapters.BoolValue(b[0]), adapters.Good
}

// words32 and words64 assemble the registers of a 32- or 64-bit value, per
// order, into its big-endian bit pattern.
var (
	words32 = map[string]func(w []uint16) uint32{
		OrderABCD: func(w []uint16) uint32 { return uint32(w[0])<<16 | uint32(w[1]) },
		OrderCDAB: func(w []uint16) uint32 { return uint32(w[1])<<16 | uint32(w[0]) },
		OrderBADC: func(w []uint16) uint32 {
			return uint32(bits.ReverseBytes16(w[0]))<<16 | uint32(bits.ReverseBytes16(w[1]))
		},
		OrderDCBA: func(w []uint16) uint32 {
			return uint32(bits.ReverseBytes16(w[1]))<<16 | uint32(bits.ReverseBytes16(w[0]))
		},
	}
	words64 = map[string]func(w []uint16) uint64{
		OrderABCD: func(w []uint16) uint64 {
			return uint64(w[0])<<48 | uint64(w[1])<<32 | uint64(w[2])<<16 | uint64(w[3])
		},
		OrderCDAB: func(w []uint16) uint64 {
			return uint64(w[3])<<48 | uint64(w[2])<<32 | uint64(w[1])<<16 | uint64(w[0])
		},
		OrderBADC: func(w []uint16) uint64 {
			r := bits.ReverseBytes16
			return uint64(r(w[0]))<<48 | uint64(r(w[1]))<<32 | uint64(r(w[2]))<<16 | uint64(r(w[3]))
		},
		OrderDCBA: func(w []uint16) uint64 {
			r := bits.ReverseBytes16
			return uint64(r(w[3]))<<48 | uint64(r(w[2]))<<32 | uint64(r(w[1]))<<16 | uint64(r(w[0]))
		},
	}
)

// widen32 converts f to the float64 nearest to its shortest decimal form.
func widen32(f float32) float64 {
	if f != f || math.IsInf(float64(f), 0) {
		return float64(f)
	}
	var buf [32]byte
	s := strconv.AppendFloat(buf[:0], float64(f), 'g', -1, 32)
	d, err := strconv.ParseFloat(string(s), 64)
	if err != nil {
		return float64(f)
	}
	return d
}

func decodeString(w []uint16, lowFirst bool) string {
	b := make([]byte, 0, 2*len(w))
	for _, x := range w {
		if lowFirst {
			b = append(b, byte(x), byte(x>>8))
		} else {
			b = append(b, byte(x>>8), byte(x))
		}
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	b = bytes.TrimRight(b, " ")
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// scaler applies value = raw*scale + offset.
type scaler struct {
	identity bool
	scale    float64
	div      float64 // when scale is 1/n for an integer n: divide by n, which rounds correctly (0.1 -> /10)
	offset   float64
}

func newScaler(scale, offset float64) scaler {
	s := scaler{identity: scale == 1 && offset == 0, scale: scale, offset: offset}
	if scale != 0 && math.Abs(scale) < 1 {
		inv := 1 / scale
		if n := math.Round(inv); n != 0 && math.Abs(inv-n) <= 1e-9*math.Abs(n) {
			s.div = n
		}
	}
	return s
}

func (s scaler) apply(raw float64) float64 {
	if s.div != 0 {
		return raw/s.div + s.offset
	}
	return raw*s.scale + s.offset
}

func (s scaler) uint(u uint64) (adapters.Value, adapters.Quality) {
	if s.identity {
		return adapters.UintValue(u), adapters.Good
	}
	return floatQuality(s.apply(float64(u)))
}

func (s scaler) int(i int64) (adapters.Value, adapters.Quality) {
	if s.identity {
		return adapters.IntValue(i), adapters.Good
	}
	return floatQuality(s.apply(float64(i)))
}

func (s scaler) float(f float64) (adapters.Value, adapters.Quality) {
	if s.identity {
		return floatQuality(f)
	}
	return floatQuality(s.apply(f))
}

func floatQuality(f float64) (adapters.Value, adapters.Quality) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return adapters.FloatValue(f), adapters.Uncertain
	}
	return adapters.FloatValue(f), adapters.Good
}
