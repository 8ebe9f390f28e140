package main

import (
	"regexp"
	"strings"
	"testing"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
)

func TestProbe(t *testing.T) {
	s := modbustest.New(t)
	const H = config.TableHolding
	s.SetFloat32(H, 100, 123.456, "CDAB")
	s.SetInt16(H, 102, -2)
	s.SetHolding(103, 0x4142)
	code, stdout, stderr := run(t, "probe", "modbus", s.URL(), "-unit", "1", "-table", "holding", "-address", "100", "-count", "4")
	if code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	for _, re := range []string{
		`(?m)^\s+100\s+0xe979\s+59769\s+-5767\s`,        // raw register
		`(?m)^\s+102\s+0xfffe\s+65534\s+-2\s`,           // u16 and i16 side by side
		`(?m)^\s+100\s+CDAB\s+0x42f6e979\s.*\s123\.456`, // the right order decodes the float
		`(?m)^\s+100\s+ABCD\s+0xe97942f6\s`,             // the other orders are shown too
		`(?m)^\s+100\s+DCBA\s.*$`,
		`(?m)^\s+100\s+BADC\s+0x[0-9a-f]{16}\s`, // 64-bit
		`high byte first \(ABCD, CDAB\): ".*AB"`,
	} {
		if !regexp.MustCompile(re).MatchString(stdout) {
			t.Errorf("output does not match %s:\n%s", re, stdout)
		}
	}

	s.SetCoils(7, true)
	code, stdout, _ = run(t, "probe", "modbus", s.URL(), "-table", "coil", "-address", "6", "-count", "2")
	if code != exitOK || !regexp.MustCompile(`(?m)^7\s+1$`).MatchString(stdout) {
		t.Errorf("coils: exit %d\n%s", code, stdout)
	}

	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"probe", "modbus"}, exitUsage, "expected: probe modbus URL"},
		{[]string{"probe", "opcua", s.URL()}, exitUsage, "expected: probe modbus URL"},
		{[]string{"probe", "modbus", s.URL(), "-table", "nope"}, exitUsage, "unknown -table"},
		{[]string{"probe", "modbus", s.URL(), "-count", "126"}, exitFailure, "out of range"},
		{[]string{"probe", "modbus", "bogus://x"}, exitUsage, `ferry probe: unsupported scheme "bogus"`},
		{[]string{"probe", "-h"}, exitOK, "Usage: ferry probe modbus URL"},
	} {
		code, stdout, stderr := run(t, tc.args...)
		if code != tc.code || !strings.Contains(stdout+stderr, tc.out) {
			t.Errorf("%v: exit %d, output %q; want %d and %q", tc.args, code, stdout+stderr, tc.code, tc.out)
		}
	}
}
