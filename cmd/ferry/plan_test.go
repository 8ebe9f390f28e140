package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updatePlan = flag.Bool("update-plan", false, "rewrite testdata/plan/*.golden from the current output")

// TestPlanGolden runs `ferry plan` on every config in testdata/plan and
// compares the output with its .golden file.
func TestPlanGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/plan/*.toml")
	if err != nil || len(files) < 2 {
		t.Fatalf("plan configs: %v (%d)", err, len(files))
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			code, stdout, stderr := run(t, "plan", "-config", file)
			if code != exitOK || stderr != "" {
				t.Fatalf("exit %d, stderr %q", code, stderr)
			}
			golden := strings.TrimSuffix(file, ".toml") + ".golden"
			if *updatePlan {
				if err := os.WriteFile(golden, []byte(stdout), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (go test ./cmd/ferry -run TestPlanGolden -update-plan)", err)
			}
			if stdout != string(want) {
				t.Errorf("ferry plan output differs from %s\ngot:\n%s\nwant:\n%s", golden, stdout, want)
			}
		})
	}
}

func TestPlanErrors(t *testing.T) {
	if code, _, stderr := run(t, "plan", "-config", "/nonexistent/ferry.toml"); code != exitUsage || !strings.Contains(stderr, "nonexistent") {
		t.Errorf("missing config: exit %d, %q", code, stderr)
	}
	if code, _, stderr := run(t, "plan", "-h"); code != exitOK || !strings.Contains(stderr, "Usage: ferry plan") {
		t.Errorf("-h: exit %d, %q", code, stderr)
	}
}
