package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that Parse never panics and returns either a config or
// a non-empty, sorted Errors whose every entry names the file and has a
// message.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*/*.toml")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	const path = "testdata/good/fuzz.toml"
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(path, data, testEnv)
		if err == nil {
			if c == nil {
				t.Fatal("nil config without error")
			}
			_ = c.Summary()
			return
		}
		if c != nil {
			t.Fatal("config returned with an error")
		}
		var errs Errors
		if !errors.As(err, &errs) || len(errs) == 0 {
			t.Fatalf("error %T %v is not a non-empty Errors", err, err)
		}
		for i, e := range errs {
			if e.File != path || e.Msg == "" || e.Line < 0 || e.Col < 0 || (e.Line > 0) != (e.Col > 0) {
				t.Fatalf("bad error %#v", e)
			}
			if i > 0 && (errs[i-1].Line > e.Line || errs[i-1].Line == e.Line && errs[i-1].Col > e.Col) {
				t.Fatalf("errors not sorted: %v", err)
			}
		}
		_ = err.Error()
	})
}
