package opcua

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
	"github.com/gopcua/opcua/id"
)

// coerce compares integers as integers at the edges of Int64 and UInt64:
// 2^63 is no Int64 however it is written, -2^63 and 2^64 - 2048 as floats
// are, and a value from a decimal float64 could not hold exactly is never
// written to an integer node.
func TestCoerceIntegerEdges(t *testing.T) {
	cases := []struct {
		dt   uint32
		v    adapters.Value
		want string // "" refused (bad_value)
	}{
		{id.Int64, adapters.IntValue(math.MaxInt64), "int64 9223372036854775807"},
		{id.Int64, adapters.IntValue(math.MinInt64), "int64 -9223372036854775808"},
		{id.Int64, adapters.FloatValue(-0x1p63), "int64 -9223372036854775808"},
		{id.Int64, adapters.FloatValue(0x1p63), ""},
		{id.Int64, adapters.UintValue(1 << 63), ""},
		{id.Int64, adapters.FloatValue(1e19), ""},
		{id.Int64, adapters.InexactFloatValue(-0x1p63, true), ""},
		{id.Int64, adapters.InexactFloatValue(0x1p53, false), ""},
		{id.Int64, adapters.FloatValue(math.Copysign(0, -1)), "int64 0"},
		{id.UInt64, adapters.UintValue(math.MaxUint64), "uint64 18446744073709551615"},
		{id.UInt64, adapters.FloatValue(0x1p63), "uint64 9223372036854775808"},
		{id.UInt64, adapters.FloatValue(1e19), "uint64 10000000000000000000"},
		{id.UInt64, adapters.FloatValue(math.Nextafter(0x1p64, 0)), "uint64 18446744073709549568"},
		{id.UInt64, adapters.FloatValue(0x1p64), ""},
		{id.UInt64, adapters.IntValue(-1), ""},
		{id.UInt32, adapters.FloatValue(0x1p32 - 1), "uint32 4294967295"},
		{id.UInt32, adapters.FloatValue(0x1p32), ""},
		{id.Int32, adapters.FloatValue(-0x1p31), "int32 -2147483648"},
		{id.Int32, adapters.IntValue(math.MaxInt32 + 1), ""},
		{id.SByte, adapters.IntValue(-129), ""},
		{id.Byte, adapters.UintValue(256), ""},
		{id.Byte, adapters.FloatValue(255), "uint8 255"},
	}
	for _, c := range cases {
		v, err := coerce(c.v, c.dt)
		if c.want == "" {
			if err == nil || writeCode(err) != adapters.CodeBadValue {
				t.Errorf("%s %v: %v, want bad_value", builtinNames[c.dt], c.v, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %v: %v", builtinNames[c.dt], c.v, err)
			continue
		}
		if got := fmt.Sprintf("%T %v", v.Value(), v.Value()); got != c.want {
			t.Errorf("%s %v: %s, want %s", builtinNames[c.dt], c.v, got, c.want)
		}
	}
}

// CheckWrite applies min and max exactly, before any I/O.
func TestCheckWriteLimitsExact(t *testing.T) {
	maxf, maxi := float64(1<<53), int64(1<<53)
	bigf, bigi := float64(1<<53+1), int64(1<<53+1)
	c, err := NewClient(device("d", "opc.tcp://127.0.0.1:1",
		config.OPCUATag{Name: "f", Node: "ns=1;s=f", Writable: true, Max: &maxf},
		config.OPCUATag{Name: "i", Node: "ns=1;s=i", Writable: true, Max: &bigf, MaxInt: &bigi},
		config.OPCUATag{Name: "e", Node: "ns=1;s=e", Writable: true, Min: &maxf, MinInt: &maxi},
	), "", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		tag  string
		v    adapters.Value
		code string
	}{
		{"f", adapters.IntValue(1 << 53), "ok"},
		{"f", adapters.IntValue(1<<53 + 1), adapters.CodeOutOfRange},
		{"f", adapters.UintValue(math.MaxUint64), adapters.CodeOutOfRange},
		{"i", adapters.IntValue(1<<53 + 1), "ok"},
		{"i", adapters.IntValue(1<<53 + 2), adapters.CodeOutOfRange},
		{"e", adapters.IntValue(1 << 53), "ok"},
		{"e", adapters.FloatValue(float64(1<<53) - 1), adapters.CodeOutOfRange},
	}
	for _, cs := range cases {
		if got := writeCode(c.CheckWrite(cs.tag, cs.v)); got != cs.code {
			t.Errorf("%s %v: %s, want %s", cs.tag, cs.v, got, cs.code)
		}
	}
}

// An endpoint with credentials (ferry browse passes one straight from the
// command line) is refused without showing the password (issue 21).
func TestEndpointCredentialsNeverShown(t *testing.T) {
	_, err := NewClient(device("d", "opc.tcp://op:s3cret@127.0.0.1:1"), "", nil, nil)
	if err == nil {
		t.Fatal("an endpoint with credentials was accepted")
	}
	if strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "op:xxxxx@") {
		t.Fatalf("error %q", err)
	}
}

// A write that fails on the connection says which write it was.
func TestWriteErrorNamesTheWrite(t *testing.T) {
	c, err := NewClient(device("sim", "opc.tcp://127.0.0.1:1", config.OPCUATag{Name: "w", Node: "ns=1;s=w", Writable: true}), "", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = c.WriteTag(ctx, "w", adapters.IntValue(5), false)
	if code := writeCode(err); code != adapters.CodeDeviceError && code != adapters.CodeTimeout {
		t.Fatalf("write to a closed port: %v", err)
	}
	if !strings.Contains(err.Error(), "write of 5 to sim/w: ") {
		t.Fatalf("error %q does not name the write", err)
	}
}
