package modbustest

import (
	"math"
	"math/bits"
)

// The encoders below implement the byte orders documented in package
// modbus independently of its decoders, so that tests of one check the
// other. Name the bytes of a value A, B, C, ... from the most significant:
// ABCD is big-endian with the high word first, CDAB reverses the word
// order, BADC swaps the bytes within each word, DCBA does both. An unknown
// order is taken as ABCD.

// Words32 returns the two registers of v in order.
func Words32(v uint32, order string) []uint16 {
	return orderWords([]uint16{uint16(v >> 16), uint16(v)}, order)
}

// Words64 returns the four registers of v in order.
func Words64(v uint64, order string) []uint16 {
	return orderWords([]uint16{uint16(v >> 48), uint16(v >> 32), uint16(v >> 16), uint16(v)}, order)
}

// Float32Words returns the two registers of f in order.
func Float32Words(f float32, order string) []uint16 { return Words32(math.Float32bits(f), order) }

// Float64Words returns the four registers of f in order.
func Float64Words(f float64, order string) []uint16 { return Words64(math.Float64bits(f), order) }

// StringWords returns str in length registers, NUL-padded (or truncated):
// high byte first for ABCD and CDAB, low byte first for BADC and DCBA.
func StringWords(str string, length int, order string) []uint16 {
	b := make([]byte, 2*length)
	copy(b, str)
	w := make([]uint16, length)
	for i := range w {
		hi, lo := b[2*i], b[2*i+1]
		if order == "BADC" || order == "DCBA" {
			hi, lo = lo, hi
		}
		w[i] = uint16(hi)<<8 | uint16(lo)
	}
	return w
}

// orderWords turns big-endian words (high word first) into order.
func orderWords(w []uint16, order string) []uint16 {
	swapBytes := order == "BADC" || order == "DCBA"
	swapWords := order == "CDAB" || order == "DCBA"
	if swapBytes {
		for i := range w {
			w[i] = bits.ReverseBytes16(w[i])
		}
	}
	if swapWords {
		for i, j := 0, len(w)-1; i < j; i, j = i+1, j-1 {
			w[i], w[j] = w[j], w[i]
		}
	}
	return w
}
