package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/bad/*.golden from the current output")

// testEnv is the environment the testdata files are parsed with.
func testEnv(name string) string {
	switch name {
	case "FERRY_TEST_SET":
		return "set"
	case "FERRY_BROKER_HOST":
		return "broker.local"
	}
	return ""
}

// TestGoldenBad checks the exact error output for every bad config.
func TestGoldenBad(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no bad configs: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".toml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.ToSlash(file)
			c, err := Parse(file, data, testEnv)
			if err == nil {
				t.Fatalf("Parse succeeded, want errors: %s", c.Summary())
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is %T %v, want non-empty Errors", err, err)
			}
			for _, e := range errs {
				inFile := e.File == file || strings.HasPrefix(e.File, strings.TrimSuffix(file, ".toml")+"/") // or a file it includes
				if !inFile || e.Path == "" || e.Msg == "" {
					t.Errorf("incomplete error %#v", e)
				}
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(file, ".toml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./config -update)", err)
			}
			if got != string(want) {
				t.Errorf("errors differ from %s\ngot:\n%s\nwant:\n%s", golden, got, want)
			}
		})
	}
}

// TestGoodConfigs loads every good config.
func TestGoodConfigs(t *testing.T) {
	files, err := filepath.Glob("testdata/good/*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no good configs: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			c, err := Parse(file, data, testEnv)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !strings.HasPrefix(c.Summary(), file+": valid: ") {
				t.Errorf("Summary() = %q", c.Summary())
			}
		})
	}
}
