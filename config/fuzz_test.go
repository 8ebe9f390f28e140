package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
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
		c, err := parse(path, data, testEnv, memFiles{}) // FuzzParseInclude gives included files
		if err == nil {
			if d, err := Parse(path, data, testEnv); err != nil || !reflect.DeepEqual(c, d) {
				t.Fatalf("no include, but Parse differs: %v", err)
			}
		}
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

// memFiles is a fileSystem of files in memory.
type memFiles map[string][]byte

func (m memFiles) Glob(pattern string) ([]string, error) {
	if _, err := filepath.Match(pattern, ""); err != nil {
		return nil, err
	}
	var out []string
	for name := range m {
		if ok, _ := filepath.Match(pattern, name); ok {
			out = append(out, name)
		}
	}
	return out, nil
}

func (m memFiles) ReadFile(name string) ([]byte, error) {
	if data, ok := m[name]; ok {
		return data, nil
	}
	return nil, os.ErrNotExist
}

// FuzzParseInclude is FuzzParse for a main file and two files it may
// include (as /cfg/inc/a.toml and /cfg/inc/b.toml): templates, their
// use across files, and the checks of included files.
func FuzzParseInclude(f *testing.F) {
	main := []byte("include = [\"inc/*.toml\"]\n[gateway]\nid = \"gw\"\n[[modbus]]\nname = \"m1\"\ntemplate = \"meter\"\nurl = \"tcp://h:502\"\nvars = { line = \"1\" }\n")
	tmpl, _ := os.ReadFile("testdata/good/templates.toml")
	bad, _ := os.ReadFile("testdata/bad/template_use.toml")
	inc := []byte("[[template]]\nname = \"meter\"\nvars = [\"line\"]\n  [[template.tag]]\n  name = \"e\"\n  table = \"holding\"\n  address = 0\n  type = \"uint32\"\n")
	f.Add(main, inc, []byte("[[modbus]]\nname = \"m2\"\ntemplate = \"meter\"\nurl = \"tcp://h:502\"\n"))
	f.Add(main, bad, tmpl)
	f.Add(tmpl, inc, bad)
	const path = "/cfg/ferry.toml"
	f.Fuzz(func(t *testing.T, main, a, b []byte) {
		files := memFiles{"/cfg/inc/a.toml": a, "/cfg/inc/b.toml": b}
		c, err := parse(path, main, testEnv, files)
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
		rank := map[string]int{path: 0, "/cfg/inc/a.toml": 1, "/cfg/inc/b.toml": 2}
		for i, e := range errs {
			if _, ok := rank[e.File]; !ok || e.Msg == "" || e.Line < 0 || e.Col < 0 || (e.Line > 0) != (e.Col > 0) {
				t.Fatalf("bad error %#v", e)
			}
			if i == 0 {
				continue
			}
			p := errs[i-1]
			if rank[p.File] > rank[e.File] || p.File == e.File && (p.Line > e.Line || p.Line == e.Line && p.Col > e.Col) {
				t.Fatalf("errors not sorted: %v", err)
			}
		}
	})
}
