package adapters

import (
	"errors"
	"math"
	"testing"
)

func i64(i int64) *int64 { return &i }

// Limits compare exactly at the edges where float64 cannot tell numbers
// apart (2^53 + 1, 2^63 - 1, 2^64 - 1).
func TestCheckLimits(t *testing.T) {
	p53 := float64(1 << 53)
	cases := []struct {
		v        Value
		min, max *Limit
		ok       bool
	}{
		{IntValue(1<<53 + 1), nil, &Limit{Float: p53}, false},
		{IntValue(1 << 53), nil, &Limit{Float: p53}, true},
		{UintValue(1<<53 + 1), nil, &Limit{Float: p53}, false},
		{FloatValue(p53), nil, &Limit{Float: p53}, true},
		{IntValue(1<<53 + 1), nil, &Limit{Float: p53, Int: i64(1<<53 + 1)}, true},
		{IntValue(1<<53 + 2), nil, &Limit{Float: p53 + 2, Int: i64(1<<53 + 1)}, false},
		{FloatValue(p53 + 2), nil, &Limit{Float: p53, Int: i64(1<<53 + 1)}, false},
		{IntValue(-(1 << 53) - 1), &Limit{Float: -p53}, nil, false},
		{IntValue(-(1 << 53) - 1), &Limit{Float: -p53, Int: i64(-(1 << 53) - 1)}, nil, true},
		{IntValue(math.MaxInt64), nil, &Limit{Float: 0x1p63}, true},
		{UintValue(1 << 63), nil, &Limit{Float: 0x1p63}, true},
		{UintValue(1<<63 + 1), nil, &Limit{Float: 0x1p63}, false},
		{UintValue(1 << 63), nil, &Limit{Float: 0x1p63, Int: i64(math.MaxInt64)}, false},
		{UintValue(math.MaxUint64), nil, &Limit{Float: 0x1p64}, true},
		{UintValue(math.MaxUint64), nil, &Limit{Float: 1e19}, false},
		{IntValue(math.MinInt64), &Limit{Float: -0x1p63}, nil, true},
		{IntValue(math.MinInt64), &Limit{Float: -0x1p63, Int: i64(math.MinInt64 + 1)}, nil, false},
		{IntValue(0), &Limit{Float: 0.5}, nil, false},
		{IntValue(1), &Limit{Float: 0.5}, &Limit{Float: 1.5}, true},
		{IntValue(2), nil, &Limit{Float: 1.5}, false},
		{FloatValue(1.5), &Limit{Float: 1, Int: i64(1)}, &Limit{Float: 2, Int: i64(2)}, true},
		{FloatValue(2.5), nil, &Limit{Float: 2, Int: i64(2)}, false},
		{FloatValue(-0.0), &Limit{Float: 0, Int: i64(0)}, nil, true},
		{StringValue("x"), nil, &Limit{Float: 0}, true},
		{BoolValue(true), nil, &Limit{Float: 0}, true},
	}
	for _, c := range cases {
		err := CheckLimits(c.v, c.min, c.max)
		if (err == nil) != c.ok {
			t.Errorf("%v in [%v, %v]: %v, want ok %v", c.v, c.min, c.max, err, c.ok)
		}
		var we *WriteError
		if err != nil && (!errors.As(err, &we) || we.Code != CodeOutOfRange) {
			t.Errorf("%v: %v is not out_of_range", c.v, err)
		}
	}
}

func TestExactIntUint(t *testing.T) {
	cases := []struct {
		v     Value
		i     int64
		iok   bool
		u     uint64
		uok   bool
		whole bool
	}{
		{FloatValue(0x1p63), 0, false, 1 << 63, true, true},
		{FloatValue(-0x1p63), math.MinInt64, true, 0, false, true},
		{FloatValue(0x1p64), 0, false, 0, false, true},
		{FloatValue(math.Nextafter(0x1p64, 0)), 0, false, 1<<64 - 2048, true, true},
		{FloatValue(math.Copysign(0, -1)), 0, true, 0, true, true},
		{FloatValue(0.5), 0, false, 0, false, false},
		{FloatValue(math.Inf(1)), 0, false, 0, false, false},
		{InexactFloatValue(0x1p53, false), 0, false, 0, false, false},
		{InexactFloatValue(-0x1p63, true), 0, false, 0, false, true},
		{IntValue(-1), -1, true, 0, false, true},
		{UintValue(math.MaxUint64), 0, false, math.MaxUint64, true, true},
		{UintValue(math.MaxInt64), math.MaxInt64, true, math.MaxInt64, true, true},
	}
	for _, c := range cases {
		i, iok := c.v.ExactInt()
		u, uok := c.v.ExactUint()
		if i != c.i || iok != c.iok || u != c.u || uok != c.uok || c.v.Whole() != c.whole {
			t.Errorf("%v: ExactInt %d %v, ExactUint %d %v, Whole %v; want %d %v, %d %v, %v", c.v, i, iok, u, uok, c.v.Whole(), c.i, c.iok, c.u, c.uok, c.whole)
		}
	}
}
