package gateway

import (
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/adapters/opcua"
	"github.com/ferry-gateway/ferry/adapters/opcua/opcuatest"
	"github.com/ferry-gateway/ferry/config"
)

// Numbers are decoded exactly: a whole number is the integer however it
// is written; a fraction that float64 rounding loses is remembered.
func TestDecodeCommandNumbers(t *testing.T) {
	cases := []struct {
		in    string
		kind  adapters.Kind
		want  string // Value.String()
		whole bool
	}{
		{"42", adapters.IntKind, "42", true},
		{"-0", adapters.IntKind, "0", true},
		{"0.0", adapters.IntKind, "0", true},
		{"-0.0", adapters.FloatKind, "-0", true},
		{"42.0", adapters.IntKind, "42", true},
		{"4.2e1", adapters.IntKind, "42", true},
		{"4200e-2", adapters.IntKind, "42", true},
		{"9223372036854775807", adapters.IntKind, "9223372036854775807", true},
		{"9223372036854775807.0", adapters.IntKind, "9223372036854775807", true},
		{"9223372036854775808", adapters.UintKind, "9223372036854775808", true},
		{"9223372036854775808.0", adapters.UintKind, "9223372036854775808", true},
		{"-9223372036854775808", adapters.IntKind, "-9223372036854775808", true},
		{"-9223372036854775808.0", adapters.IntKind, "-9223372036854775808", true},
		{"-9223372036854775809.0", adapters.FloatKind, "-9.223372036854776e+18", true},
		{"18446744073709551615", adapters.UintKind, "18446744073709551615", true},
		{"18446744073709551615.000", adapters.UintKind, "18446744073709551615", true},
		{"1.8446744073709551615e19", adapters.UintKind, "18446744073709551615", true},
		{"1e19", adapters.UintKind, "10000000000000000000", true},
		{"1E19", adapters.UintKind, "10000000000000000000", true},
		{"1e20", adapters.FloatKind, "1e+20", true},
		{"9007199254740993.0", adapters.IntKind, "9007199254740993", true},
		{"9007199254740992.5", adapters.FloatKind, "9.007199254740992e+15", false},
		{"1.0000000000000000001", adapters.FloatKind, "1", false},
		{"0.5", adapters.FloatKind, "0.5", false},
		{"-1.5e-3", adapters.FloatKind, "-0.0015", false},
		{"1e-400", adapters.FloatKind, "0", false},
		{"1e-99999999999999999999", adapters.FloatKind, "0", false},
		{"1e308", adapters.FloatKind, "1e+308", true},
	}
	for _, c := range cases {
		p, err := decodeCommand([]byte(c.in))
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if v := p.value; v.Kind() != c.kind || v.String() != c.want || v.Whole() != c.whole {
			t.Errorf("%s: kind %d %s whole %v, want kind %d %s whole %v", c.in, v.Kind(), v, v.Whole(), c.kind, c.want, c.whole)
		}
	}
	for _, in := range []string{"1e309", "-1e400", "1e99999999999999999999", "18446744073709551616", "-9223372036854775809"} {
		if p, err := decodeCommand([]byte(in)); err == nil {
			t.Errorf("%s: accepted as %v", in, p.value)
		}
	}
}

// A \u escape of a lone UTF-16 surrogate is refused: encoding/json would
// turn it into U+FFFD, a character nobody sent.
func TestDecodeCommandSurrogates(t *testing.T) {
	cases := []struct {
		in   string
		want string // "" refused
	}{
		{`"\ud800"`, ""},
		{`"\uDBFF"`, ""},
		{`"\udc00"`, ""},
		{`"a\ud800b"`, ""},
		{`"\ud800\u0041"`, ""},
		{`"\ud800\ud800"`, ""},
		{`"\udc00\ud800"`, ""},
		{`{"value":"\ud800"}`, ""},
		{`{"value":"x","ts":"\udfff"}`, ""},
		{`"\ud83d\ude00"`, "😀"},
		{`"\uD83D\uDE00x"`, "😀x"},
		{`"\\ud800"`, `\ud800`},
		{`"\\\ud83d\ude00"`, `\😀`},
		{`"\ufffd"`, "\uFFFD"},
		{`"пресс"`, "пресс"},
	}
	for _, c := range cases {
		p, err := decodeCommand([]byte(c.in))
		switch {
		case c.want == "" && err == nil:
			t.Errorf("%s: accepted as %q", c.in, p.value.Str())
		case c.want == "" && !strings.Contains(err.Error(), "surrogate"):
			t.Errorf("%s: %v, want a lone surrogate error", c.in, err)
		case c.want != "" && err != nil:
			t.Errorf("%s: %v", c.in, err)
		case c.want != "" && p.value.Str() != c.want:
			t.Errorf("%s: %q, want %q", c.in, p.value.Str(), c.want)
		}
	}
}

// The edges of int64 and uint64 through the router to a Modbus simulator
// and an OPC UA simulator: what is accepted is written exactly, what does
// not fit is refused before any I/O, and min/max beyond 2^53 compare as
// integers.
func TestCommandExactIntegerBounds(t *testing.T) {
	sim := modbustest.New(t)
	osim := opcuatest.New()
	osim.Add("i64", int64(0))
	osim.Add("u64", uint64(0))
	osim.Add("lim", int64(0))
	if err := osim.Start(); err != nil {
		t.Fatal(err)
	}
	defer osim.Close()
	toml := fmt.Sprintf(`
[gateway]
id = "gw"
state_dir = %q
[mqtt]
url = "mqtt://127.0.0.1:1"
[[modbus]]
name = "plc"
url = %q
interval = "1h"
timeout = "300ms"
  [[modbus.tag]]
  name = "i64"
  table = "holding"
  address = 0
  type = "int64"
  writable = true
  [[modbus.tag]]
  name = "u64"
  table = "holding"
  address = 4
  type = "uint64"
  writable = true
  [[modbus.tag]]
  name = "lim"
  table = "holding"
  address = 8
  type = "int64"
  writable = true
  min = -9007199254740992
  max = 9007199254740992
  [[modbus.tag]]
  name = "limf"
  table = "holding"
  address = 12
  type = "uint64"
  writable = true
  max = 1e19
  [[modbus.tag]]
  name = "s"
  table = "holding"
  address = 16
  type = "string"
  length = 4
  writable = true
[[opcua]]
name = "cnc"
endpoint = %q
mode = "poll"
interval = "1h"
  [[opcua.tag]]
  name = "i64"
  node = %q
  writable = true
  [[opcua.tag]]
  name = "u64"
  node = %q
  writable = true
  [[opcua.tag]]
  name = "lim"
  node = %q
  writable = true
  min = -9007199254740992
  max = 9007199254740992
`, t.TempDir(), sim.URL(), osim.URL(), osim.NSUNodeID("i64"), osim.NSUNodeID("u64"), osim.NSUNodeID("lim"))
	cfg, err := config.Parse("test.toml", []byte(toml), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	p := startModbus(t, cfg)
	oc, err := opcua.NewClient(cfg.OPCUA[0], cfg.Gateway.StateDir, nopSink{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mq := newFakeMQ()
	r := newCommandRouter(cfg, mq, map[string]TagWriter{"plc": p, "cnc": oc}, nil)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const (
		ok  = "ok"
		bad = CodeBadValue
		oor = CodeOutOfRange
	)
	cases := []struct {
		tag, payload string
		code         string
		want         string // the integer written, for ok
	}{
		{"i64", "9223372036854775807", ok, "9223372036854775807"},
		{"i64", "9223372036854775807.0", ok, "9223372036854775807"},
		{"i64", "9223372036854775808", bad, ""},
		{"i64", "9223372036854775808.0", bad, ""}, // issue 21: was written as -2^63
		{"i64", "9.223372036854775808e18", bad, ""},
		{"i64", "1e19", bad, ""},
		{"i64", "-9223372036854775808", ok, "-9223372036854775808"},
		{"i64", "-9223372036854775808.0", ok, "-9223372036854775808"},
		{"i64", "-9223372036854775809", bad, ""},
		{"i64", "-9223372036854775809.0", bad, ""},
		{"i64", "-0", ok, "0"},
		{"i64", "-0.0", ok, "0"},
		{"i64", "9007199254740993", ok, "9007199254740993"},
		{"i64", "9007199254740992.5", bad, ""},
		{"i64", "1e400", bad, ""},
		{"i64", "1e-400", bad, ""},
		{"u64", "18446744073709551615", ok, "18446744073709551615"},
		{"u64", "18446744073709551615.0", ok, "18446744073709551615"},
		{"u64", "1e19", ok, "10000000000000000000"},
		{"u64", "18446744073709551616", bad, ""},
		{"u64", "1.8446744073709551616e19", bad, ""},
		{"u64", "-1", bad, ""},
		{"u64", "-0", ok, "0"},
		{"lim", "9007199254740992", ok, "9007199254740992"},
		{"lim", "9007199254740993", oor, ""}, // issue 21: was accepted
		{"lim", "9007199254740993.0", oor, ""},
		{"lim", "9007199254740992.5", bad, ""}, // its float64 is the max, but it is no integer
		{"lim", "-9007199254740992", ok, "-9007199254740992"},
		{"lim", "-9007199254740993", oor, ""},
		{"lim", "9223372036854775808", oor, ""},
	}
	results := 0
	send := func(dev, tag, payload string) resultJSON {
		t.Helper()
		mq.h(msg("ferry/gw/"+dev+"/"+tag+"/set", payload))
		results++
		res := mq.waitN(t, results, 10*time.Second)
		return parseResult(t, res[results-1].payload)
	}
	for _, dev := range []string{"plc", "cnc"} {
		for _, c := range cases {
			got := send(dev, c.tag, c.payload)
			code := got.Error
			if got.OK {
				code = ok
			}
			if code != c.code {
				t.Errorf("%s/%s %s: %s (%s), want %s", dev, c.tag, c.payload, code, got.Message, c.code)
				continue
			}
			if !got.OK {
				continue
			}
			var written string
			switch dev {
			case "plc":
				addr := map[string]uint16{"i64": 0, "u64": 4, "lim": 8}[c.tag]
				w := sim.Registers(config.TableHolding, addr, 4)
				u := uint64(w[0])<<48 | uint64(w[1])<<32 | uint64(w[2])<<16 | uint64(w[3])
				written = fmt.Sprint(u)
				if c.tag != "u64" {
					written = fmt.Sprint(int64(u))
				}
			case "cnc":
				ws := osim.Writes()
				written = fmt.Sprint(ws[len(ws)-1].Value)
			}
			// OPC UA answers 64-bit integers beyond 2^53 as strings.
			if answered := strings.Trim(string(got.Value), `"`); written != c.want || answered != c.want {
				t.Errorf("%s/%s %s: wrote %s, answered %s, want %s", dev, c.tag, c.payload, written, got.Value, c.want)
			}
		}
	}
	// uint64 with a float max (1e19): compared exactly, not through the
	// router's float.
	for _, c := range []struct{ payload, code string }{
		{"10000000000000000000", ok}, {"10000000000000000001", oor}, {"1e19", ok}, {"1.0000000000000000001e19", oor},
	} {
		if got := send("plc", "limf", c.payload); got.OK != (c.code == ok) || !got.OK && got.Error != c.code {
			t.Errorf("limf %s: %+v, want %s", c.payload, got, c.code)
		}
	}
	// A lone surrogate never reaches the device.
	before := sim.Registers(config.TableHolding, 16, 4)
	if got := send("plc", "s", `"\ud800"`); got.OK || got.Error != bad {
		t.Errorf(`"\ud800": %+v`, got)
	}
	if got := sim.Registers(config.TableHolding, 16, 4); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Errorf("string registers changed to %04x", got)
	}
}

// FuzzCommandPayload checks decodeCommand against an exact decimal
// reading of every accepted number (math/big): integers are never
// rounded, Whole is exactly "the number is an integer", and a refused
// payload is refused for a reason (invalid JSON, or a number out of
// range, or a lone surrogate).
func FuzzCommandPayload(f *testing.F) {
	for _, s := range []string{"42", "-0", "-0.0", "9223372036854775807.0", "9223372036854775808.0",
		"18446744073709551615.0", "1e19", "9007199254740992.5", "1.0000000000000000001", "1e-400",
		`"\ud800"`, `"\ud83d\ude00"`, `{"value":"\udc00"}`, `{"value":12.5e-1,"ts":"2026-01-01T00:00:00Z"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodeCommand(b)
		if err != nil {
			return
		}
		if !json.Valid(b) {
			t.Fatalf("%q accepted but not valid JSON", b)
		}
		v := p.value
		switch v.Kind() {
		case adapters.StringKind:
			if strings.ContainsRune(v.Str(), '\uFFFD') && !strings.Contains(string(b), "\uFFFD") && !strings.Contains(strings.ToLower(string(b)), `\ufffd`) {
				t.Fatalf("%q: U+FFFD nobody sent", b)
			}
			return
		case adapters.IntKind, adapters.UintKind, adapters.FloatKind:
		default:
			return
		}
		if v.Kind() == adapters.FloatKind && (math.IsNaN(v.Float()) || math.IsInf(v.Float(), 0)) {
			t.Fatalf("%q: non-finite %v", b, v)
		}
		num := numberText(b)
		if num == "" || len(num) > 400 || strings.ContainsAny(num, "eE") && exponentLarge(num) {
			return
		}
		exact, ok := new(big.Rat).SetString(num)
		if !ok {
			t.Fatalf("%q: %q is not a number", b, num)
		}
		if v.Whole() != exact.IsInt() {
			t.Fatalf("%q: Whole %v, exact %s", b, v.Whole(), exact.RatString())
		}
		fits := exact.IsInt() && exact.Num().IsInt64() || exact.IsInt() && exact.Num().IsUint64()
		switch v.Kind() {
		case adapters.IntKind:
			if exact.Num().Cmp(big.NewInt(v.Int())) != 0 || !exact.IsInt() {
				t.Fatalf("%q: %v, exact %s", b, v, exact.RatString())
			}
		case adapters.UintKind:
			if exact.Num().Cmp(new(big.Int).SetUint64(v.Uint())) != 0 || !exact.IsInt() || v.Uint() <= math.MaxInt64 {
				t.Fatalf("%q: %v, exact %s", b, v, exact.RatString())
			}
		case adapters.FloatKind:
			if fits && !(exact.Sign() == 0 && strings.HasPrefix(num, "-")) {
				t.Fatalf("%q: float %v for the integer %s", b, v, exact.RatString())
			}
			if want, _ := exact.Float64(); want != v.Float() {
				t.Fatalf("%q: %v, nearest float64 is %v", b, v, want)
			}
		}
	})
}

// numberText is the JSON number of a bare number or of {"value": N}, or "".
func numberText(b []byte) string {
	var m map[string]json.RawMessage
	s := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &m) == nil {
		s = strings.TrimSpace(string(m["value"]))
	}
	if s == "" || !(s[0] == '-' || s[0] >= '0' && s[0] <= '9') {
		return ""
	}
	return s
}

func exponentLarge(num string) bool {
	i := strings.IndexAny(num, "eE")
	e := strings.TrimLeft(num[i+1:], "+-")
	return len(strings.TrimLeft(e, "0")) > 3
}
