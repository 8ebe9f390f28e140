package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-gateway/ferry/adapters/modbus"
	"github.com/ferry-gateway/ferry/adapters/opcua"
	"github.com/ferry-gateway/ferry/config"
)

// FuzzCheckAcceptsOnlyWhatRunAccepts: a config that `ferry check` passes
// is one `ferry run` can build its devices from (the Modbus read plan, the
// OPC UA client), so that systemd does not restart-loop after a passing
// ExecStartPre (issue 21: a Modbus device without tags passed check).
func FuzzCheckAcceptsOnlyWhatRunAccepts(f *testing.F) {
	files, _ := filepath.Glob("../../config/testdata/*/*.toml")
	files = append(files, "../../examples/ferry.toml", "../../packaging/ferry.toml")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"[gateway]\nid = \"g\"\n[[modbus]]\nname = \"plc\"\nurl = \"tcp://127.0.0.1:502\"\n",
		"[gateway]\nid = \"g\"\n[[modbus]]\nname = \"plc\"\nurl = \"tcp://127.0.0.1:502\"\ntag = []\n",
		"[gateway]\nid = \"g\"\n[[opcua]]\nname = \"cnc\"\nendpoint = \"opc.tcp://127.0.0.1:4840\"\n",
		"[gateway]\nid = \"g\"\n[[modbus]]\nname = \"plc\"\nurl = \"tcp://127.0.0.1:502\"\nmax_registers_per_request = 2\n  [[modbus.tag]]\n  name = \"e\"\n  table = \"holding\"\n  address = 0\n  type = \"uint64\"\n",
	} {
		f.Add([]byte(s))
	}
	env := func(name string) string { return "x" }
	stateDir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := config.Parse("fuzz.toml", data, env)
		if err != nil {
			return
		}
		for _, d := range cfg.Modbus {
			if _, err := modbus.Compile(d); err != nil {
				t.Fatalf("check passes, run refuses: %v\n%s", err, data)
			}
		}
		for _, d := range cfg.OPCUA {
			// Certificate files are read by run, not by check (the
			// examples name files of the edge box).
			if _, err := opcua.NewClient(d, stateDir, nil, nil); err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("check passes, run refuses: %v\n%s", err, data)
			}
		}
	})
}
