package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestLogger(t *testing.T) {
	tests := []struct {
		name, format, level, journal string
		check                        func(t *testing.T, out string)
	}{
		{"text", "text", "info", "", func(t *testing.T, out string) {
			if !strings.Contains(out, "time=") || !strings.Contains(out, `level=WARN msg="device down" device=plc1`) || strings.Contains(out, "debug line") {
				t.Errorf("text output:\n%s", out)
			}
		}},
		{"json", "json", "debug", "", func(t *testing.T, out string) {
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 3 {
				t.Fatalf("want 3 lines at debug level, got:\n%s", out)
			}
			for _, l := range lines {
				var m map[string]any
				if err := json.Unmarshal([]byte(l), &m); err != nil || m["msg"] == nil {
					t.Errorf("not a JSON log line: %s", l)
				}
			}
		}},
		{"journald", "auto", "info", "8:1234", func(t *testing.T, out string) {
			want := "<4>level=WARN msg=\"device down\" device=plc1\n<3>level=ERROR msg=\"buffer append failed\" device=plc1\n"
			if out != want {
				t.Errorf("journald output:\n%q\nwant\n%q", out, want)
			}
		}},
		{"auto outside journald", "auto", "warn", "", func(t *testing.T, out string) {
			if !strings.HasPrefix(out, "time=") || strings.Count(out, "\n") != 2 {
				t.Errorf("auto output:\n%s", out)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("JOURNAL_STREAM", tt.journal)
			var buf bytes.Buffer
			l, err := newLogger(&buf, tt.format, tt.level)
			if err != nil {
				t.Fatal(err)
			}
			l = l.With("device", "plc1")
			l.Debug("debug line")
			l.Warn("device down")
			l.Error("buffer append failed")
			tt.check(t, buf.String())
		})
	}
	for _, bad := range [][2]string{{"xml", "info"}, {"text", "loud"}} {
		if _, err := newLogger(&bytes.Buffer{}, bad[0], bad[1]); err == nil {
			t.Errorf("newLogger(%q, %q) accepted", bad[0], bad[1])
		}
	}
}
