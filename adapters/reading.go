package adapters

import (
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// Quality of a reading, as published in the "quality" field.
type Quality uint8

// Qualities.
const (
	Good Quality = iota
	Uncertain
	Bad
)

func (q Quality) String() string {
	switch q {
	case Good:
		return "good"
	case Uncertain:
		return "uncertain"
	default:
		return "bad"
	}
}

// Reading is one sampled tag value.
type Reading struct {
	Device  string
	Tag     string
	Value   Value
	Quality Quality
	Time    time.Time // when sampled (device source time where the protocol has one)
	Err     string    // why the read failed, for Quality Bad
}

// Kind is the type held by a Value.
type Kind uint8

// Kinds of Value.
const (
	Null Kind = iota
	BoolKind
	IntKind
	UintKind
	FloatKind
	StringKind
	// JSONKind holds a pre-encoded JSON text, for values that are neither
	// a number, a bool nor a string (OPC UA arrays and structures).
	JSONKind
)

// Value is a decoded tag value. It holds a bool, int64, uint64, float64 or
// string without allocating; the zero Value is JSON null.
type Value struct {
	kind Kind
	// inexact: FloatKind from a decimal number that bits does not hold
	// exactly; whole: that number is a whole number (see InexactFloatValue).
	inexact, whole bool
	bits           uint64
	str            string
}

// BoolValue returns a Value holding b.
func BoolValue(b bool) Value {
	v := Value{kind: BoolKind}
	if b {
		v.bits = 1
	}
	return v
}

// IntValue returns a Value holding i.
func IntValue(i int64) Value { return Value{kind: IntKind, bits: uint64(i)} }

// UintValue returns a Value holding u.
func UintValue(u uint64) Value { return Value{kind: UintKind, bits: u} }

// FloatValue returns a Value holding f.
func FloatValue(f float64) Value { return Value{kind: FloatKind, bits: math.Float64bits(f)} }

// InexactFloatValue returns a Value holding f, the float64 nearest to a
// decimal number d that f does not hold exactly, such as 2^53 + 0.5 or
// -2^63 - 1 (both round to a whole float64 that an integer tag could
// hold). whole tells whether d is a whole number: Whole reports it, and
// ExactInt and ExactUint refuse the value, so that d is never written to
// an integer tag as f.
func InexactFloatValue(f float64, whole bool) Value {
	v := FloatValue(f)
	v.inexact, v.whole = true, whole
	return v
}

// StringValue returns a Value holding s.
func StringValue(s string) Value { return Value{kind: StringKind, str: s} }

// JSONValue returns a Value holding raw, which must be one valid JSON
// value (an array, an object, ...). It is written out verbatim.
func JSONValue(raw string) Value { return Value{kind: JSONKind, str: raw} }

// Kind reports what v holds.
func (v Value) Kind() Kind { return v.kind }

// Bool returns the bool held by v (false unless Kind is BoolKind).
func (v Value) Bool() bool { return v.kind == BoolKind && v.bits == 1 }

// Int returns the int64 held by v (0 unless Kind is IntKind).
func (v Value) Int() int64 {
	if v.kind != IntKind {
		return 0
	}
	return int64(v.bits)
}

// Uint returns the uint64 held by v (0 unless Kind is UintKind).
func (v Value) Uint() uint64 {
	if v.kind != UintKind {
		return 0
	}
	return v.bits
}

// Float returns v as a float64 for any numeric kind, 0 otherwise.
func (v Value) Float() float64 {
	switch v.kind {
	case FloatKind:
		return math.Float64frombits(v.bits)
	case IntKind:
		return float64(int64(v.bits))
	case UintKind:
		return float64(v.bits)
	}
	return 0
}

// Whole reports whether v is a whole number: any IntKind or UintKind, and
// a finite FloatKind with no fraction (for an InexactFloatValue, whether
// the decimal number it came from is whole).
func (v Value) Whole() bool {
	switch v.kind {
	case IntKind, UintKind:
		return true
	case FloatKind:
		if v.inexact {
			return v.whole
		}
		f := math.Float64frombits(v.bits)
		return !math.IsInf(f, 0) && f == math.Trunc(f)
	}
	return false
}

// ExactInt returns v as an int64 when v is a whole number in the range of
// int64, without rounding.
func (v Value) ExactInt() (int64, bool) {
	if !v.Whole() || v.inexact {
		return 0, false
	}
	switch v.kind {
	case IntKind:
		return int64(v.bits), true
	case UintKind:
		if v.bits > math.MaxInt64 {
			return 0, false
		}
		return int64(v.bits), true
	}
	f := math.Float64frombits(v.bits)
	if f < -0x1p63 || f >= 0x1p63 { // both bounds exact: -2^63 is an int64, 2^63 is not
		return 0, false
	}
	return int64(f), true
}

// ExactUint returns v as a uint64 when v is a whole number in the range of
// uint64, without rounding.
func (v Value) ExactUint() (uint64, bool) {
	if !v.Whole() || v.inexact {
		return 0, false
	}
	switch v.kind {
	case IntKind:
		if int64(v.bits) < 0 {
			return 0, false
		}
		return v.bits, true
	case UintKind:
		return v.bits, true
	}
	f := math.Float64frombits(v.bits)
	if f < 0 || f >= 0x1p64 {
		return 0, false
	}
	return uint64(f), true
}

// Str returns the string held by v ("" unless Kind is StringKind).
func (v Value) Str() string {
	if v.kind != StringKind {
		return ""
	}
	return v.str
}

// JSON returns the raw JSON text held by v ("" unless Kind is JSONKind).
func (v Value) JSON() string {
	if v.kind != JSONKind {
		return ""
	}
	return v.str
}

// AppendJSON appends v as a JSON value. NaN and ±Inf, which JSON cannot
// represent, are written as null.
func (v Value) AppendJSON(b []byte) []byte {
	switch v.kind {
	case BoolKind:
		return strconv.AppendBool(b, v.bits == 1)
	case IntKind:
		return strconv.AppendInt(b, int64(v.bits), 10)
	case UintKind:
		return strconv.AppendUint(b, v.bits, 10)
	case FloatKind:
		f := math.Float64frombits(v.bits)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return append(b, "null"...)
		}
		return strconv.AppendFloat(b, f, 'g', -1, 64)
	case StringKind:
		return AppendJSONString(b, v.str)
	case JSONKind:
		return append(b, v.str...)
	}
	return append(b, "null"...)
}

// String formats v for humans (logs, ferry read).
func (v Value) String() string { return string(v.AppendJSON(nil)) }

const hexDigits = "0123456789abcdef"

// AppendJSONString appends s as a quoted JSON string, escaping what JSON
// requires and replacing invalid UTF-8 with U+FFFD.
func AppendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r == '\n':
			b = append(b, '\\', 'n')
		case r == '\r':
			b = append(b, '\\', 'r')
		case r == '\t':
			b = append(b, '\\', 't')
		case r < 0x20 || r == 0x2028 || r == 0x2029:
			b = append(b, '\\', 'u', hexDigits[r>>12&0xf], hexDigits[r>>8&0xf], hexDigits[r>>4&0xf], hexDigits[r&0xf])
		default:
			b = utf8.AppendRune(b, r)
		}
	}
	return append(b, '"')
}

// Sink receives what an adapter produces. The gateway implements it; an
// adapter calls it from its own goroutines. Implementations must not block
// for long (they append to the disk buffer) and must not retain rs after
// returning.
type Sink interface {
	// Readings delivers the readings of one poll cycle or one notification
	// batch of one device.
	Readings(rs []Reading)
	// DeviceState reports a change of a device's connection state; err is
	// nil when up.
	DeviceState(device string, up bool, err error)
}
