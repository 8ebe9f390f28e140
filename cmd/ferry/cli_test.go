package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ferry-gateway/ferry/internal/lockedbuf"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	// Locked: goroutines of a command (the demo's embedded broker) may
	// still write a log line while the command returns.
	var out, errb lockedbuf.Buffer
	code = dispatch(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestCheckGolden runs `ferry check` on every bad config of the config
// package's golden set: exit 2, and stderr is exactly the golden error
// lines (FILE:LINE:COL: KEY.PATH: message) plus the count.
func TestCheckGolden(t *testing.T) {
	t.Chdir("../../config")
	t.Setenv("FERRY_TEST_SET", "set") // the environment config's golden test uses
	t.Setenv("FERRY_BROKER_HOST", "broker.local")
	bad, err := filepath.Glob("testdata/bad/*.toml")
	if err != nil || len(bad) < 9 {
		t.Fatalf("golden configs: %v (%d found)", err, len(bad))
	}
	for _, path := range bad {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".toml"), func(t *testing.T) {
			golden, err := os.ReadFile(strings.TrimSuffix(path, ".toml") + ".golden")
			if err != nil {
				t.Fatal(err)
			}
			code, stdout, stderr := run(t, "check", "-config", path)
			if code != exitUsage {
				t.Errorf("exit code %d, want %d", code, exitUsage)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
			lines := strings.Count(string(golden), "\n")
			want := string(golden) + path + ": " + strconv.Itoa(lines) + " error(s)\n"
			if stderr != want {
				t.Errorf("stderr:\n%s\nwant:\n%s", stderr, want)
			}
		})
	}
}

func TestCheckValid(t *testing.T) {
	t.Chdir("../../config")
	t.Setenv("FERRY_BROKER_HOST", "broker.test")
	good, _ := filepath.Glob("testdata/good/*.toml")
	if len(good) == 0 {
		t.Fatal("no good configs")
	}
	for _, path := range good {
		code, stdout, stderr := run(t, "check", "-config", path)
		if code != exitOK || !strings.Contains(stdout, "valid") || strings.Count(stdout, "\n") != 1 {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want 0 and a one-line summary", path, code, stdout, stderr)
		}
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		out  string // expected in stdout or stderr
	}{
		{nil, exitUsage, "Usage: ferry COMMAND"},
		{[]string{"-h"}, exitOK, "Commands:"},
		{[]string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"check", "-h"}, exitOK, "Usage: ferry check [-config PATH]"},
		{[]string{"run", "-h"}, exitOK, "-config"},
		{[]string{"demo", "-h"}, exitOK, "-duration"},
		{[]string{"version", "-h"}, exitOK, "Usage: ferry version"},
		{[]string{"check", "-nope"}, exitUsage, "flag provided but not defined"},
		{[]string{"check", "-config", "x", "extra"}, exitUsage, `unexpected argument "extra"`},
		{[]string{"check", "-config", "/nonexistent/ferry.toml"}, exitUsage, "/nonexistent/ferry.toml"},
		{[]string{"run", "-config", "/nonexistent/ferry.toml"}, exitUsage, "/nonexistent/ferry.toml"},
		{[]string{"version"}, exitOK, "ferry dev (commit "},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, "_"), func(t *testing.T) {
			code, stdout, stderr := run(t, tt.args...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d", code, tt.code)
			}
			if !strings.Contains(stdout+stderr, tt.out) {
				t.Errorf("output %q, want it to contain %q", stdout+stderr, tt.out)
			}
		})
	}
}

// TestDemo runs `ferry demo` as a user would, for a few seconds: telemetry
// from the simulator must reach the embedded broker's subscriber, and the
// command must stop cleanly.
func TestDemo(t *testing.T) {
	code, stdout, stderr := run(t, "demo", "-duration", "3s")
	if code != exitOK {
		t.Fatalf("exit code %d, stderr:\n%s", code, stderr)
	}
	for _, want := range []string{
		`ferry/demo/plc1/temperature`,
		`ferry/demo/plc1/recipe`,
		`"value":"PUMP-A","quality":"good"`,
		`ferry/demo/status`,
		`"online":true`,
		`ferry/demo/cnc1/status`,
		`ferry/demo/cnc1/spindle_speed`,
		`"value":"O1000-BRACKET","quality":"good"`,
		`"seq":1}`,
		`ferry/demo/plc1/setpoint/set/result`,
		`{"ok":true,"value":42.5,`,
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("demo output lacks %q:\n%s", want, stdout)
		}
	}
}
