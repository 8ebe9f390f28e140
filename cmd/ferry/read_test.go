package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
	mb "github.com/simonvetter/modbus"
)

// readConfig writes a config reading s and returns its path.
func readConfig(t *testing.T, url string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ferry.toml")
	cfg := `[gateway]
id = "t"

[[modbus]]
name = "plc1"
url = "` + url + `"
timeout = "200ms"
retries = 0

  [[modbus.tag]]
  name = "temp"
  table = "holding"
  address = 100
  type = "float32"
  order = "CDAB"

  [[modbus.tag]]
  name = "recipe"
  table = "holding"
  address = 110
  type = "string"
  length = 4

  [[modbus.tag]]
  name = "missing"
  table = "holding"
  address = 105
  type = "uint16"

[[opcua]]
name = "cnc1"
endpoint = "opc.tcp://127.0.0.1:4840"

  [[opcua.tag]]
  name = "x"
  node = "i=1"
`
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestRead(t *testing.T) {
	s := modbustest.New(t)
	s.SetFloat32(config.TableHolding, 100, 21.5, "CDAB")
	s.SetString(config.TableHolding, 110, "PUMP", 4, "ABCD")
	s.SetException(config.TableHolding, 105, 1, mb.ErrIllegalDataAddress)
	path := readConfig(t, s.URL())

	code, stdout, stderr := run(t, "read", "-config", path, "plc1")
	if code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{"plc1/temp", "21.5", `"PUMP"`, "good", "plc1/missing", "null", "bad", "illegal data address"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	// one tag, flags after the argument
	code, stdout, _ = run(t, "read", "plc1/temp", "-config", path)
	if code != exitOK || strings.Count(stdout, "\n") != 1 || !strings.Contains(stdout, "21.5") {
		t.Errorf("one tag: exit %d\n%s", code, stdout)
	}

	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"read", "-config", path, "nope"}, exitUsage, `no device "nope"`},
		{[]string{"read", "-config", path, "plc1/nope"}, exitUsage, `no tag "nope"`},
		{[]string{"read", "-config", path}, exitUsage, "expected one DEVICE"},
		{[]string{"read", "-config", path, "cnc1"}, exitFailure, "cnc1 unreachable"},
		{[]string{"read", "-h"}, exitOK, "Usage: ferry read"},
	} {
		code, stdout, stderr := run(t, tc.args...)
		if code != tc.code || !strings.Contains(stdout+stderr, tc.out) {
			t.Errorf("%v: exit %d, output %q; want %d and %q", tc.args, code, stdout+stderr, tc.code, tc.out)
		}
	}
}

func TestReadUnreachable(t *testing.T) {
	s := modbustest.New(t)
	url := s.URL()
	s.Close()
	code, stdout, stderr := run(t, "read", "-config", readConfig(t, url), "plc1")
	if code != exitFailure || !strings.Contains(stderr, "unreachable") || !strings.Contains(stdout, "bad") {
		t.Errorf("exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
}

// TestReadSerialPortInUse: `ferry read` on a serial line that another
// process holds (the running service) fails at once, naming the port,
// instead of sending frames into the other's conversation; once the port
// is free it reads.
func TestReadSerialPortInUse(t *testing.T) {
	client, device := modbustest.PtyPair(t)
	s := modbustest.New(t)
	if err := s.ServeRTUFile(device); err != nil {
		t.Fatal(err)
	}
	s.SetFloat32(config.TableHolding, 100, 21.5, "CDAB")
	path := readConfig(t, "rtu://"+client)

	// The other process's lock: flock on its own open file description.
	fd, err := syscall.Open(client, syscall.O_RDONLY|syscall.O_NOCTTY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := run(t, "read", "-config", path, "plc1/temp")
	if code != exitFailure || !strings.Contains(stdout+stderr, "serial port "+client+" is in use") {
		t.Errorf("port held: exit %d, output %q", code, stdout+stderr)
	}
	if n := len(s.Writes()) + int(s.Requests()); n != 0 {
		t.Errorf("%d requests reached the line while another process held it", n)
	}
	syscall.Close(fd)

	code, stdout, stderr = run(t, "read", "-config", path, "plc1/temp")
	if code != exitOK || !strings.Contains(stdout, "21.5") {
		t.Errorf("port free: exit %d, output %q", code, stdout+stderr)
	}
}
