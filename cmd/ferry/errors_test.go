package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-gateway/ferry/adapters/opcua/opcuatest"
)

// TestErrorsSayWhatToDo pins the exact text of errors that tell a new
// user what to do.
func TestErrorsSayWhatToDo(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		env    map[string]string
		code   int
		stderr string
	}{
		{"probe without scheme", []string{"probe", "modbus", "10.0.0.5:502"}, nil, exitUsage,
			`ferry probe: "10.0.0.5:502" has no scheme: write "tcp://10.0.0.5:502" (one of tcp://, tcp+tls://, udp://, rtu://, rtuovertcp://, rtuoverudp://)` + "\n"},
		{"probe serial without scheme", []string{"probe", "modbus", "/dev/ttyUSB0"}, nil, exitUsage,
			`ferry probe: "/dev/ttyUSB0" has no scheme: write "rtu:///dev/ttyUSB0" (one of tcp://, tcp+tls://, udp://, rtu://, rtuovertcp://, rtuoverudp://)` + "\n"},
		{"browse without scheme", []string{"browse", "10.0.0.6:4840"}, nil, exitUsage,
			`ferry browse: "10.0.0.6:4840" has no scheme: write "opc.tcp://10.0.0.6:4840" (one of opc.tcp://)` + "\n"},
		{"browse username without password", []string{"browse", "opc.tcp://127.0.0.1:1", "-username", "operator"}, map[string]string{"FERRY_OPCUA_PASSWORD": ""}, exitUsage,
			"ferry browse: -username operator needs a password: give -password-file FILE (a file holding it), or set the environment variable FERRY_OPCUA_PASSWORD\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, _, stderr := run(t, tc.args...)
			if code != tc.code || stderr != tc.stderr {
				t.Errorf("exit %d, stderr\n%q\nwant %d and\n%q", code, stderr, tc.code, tc.stderr)
			}
		})
	}
}

// whoAmI is how the state_dir errors name the user.
func whoAmI(t *testing.T) string {
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("user %s (uid %s)", u.Username, u.Uid)
}

// TestStateDirUnusable: ferry run refuses a state_dir it cannot create or
// write, saying which key to set and who needs which permission; check
// warns. (Tests run as root, who may write anywhere: a path through a
// regular file is what nobody can create.)
func TestStateDirUnusable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(file, "state")
	path := writeConfig(t, "[gateway]\nid = \"t\"\nstate_dir = \""+dir+"\"\n\n[[modbus]]\nname = \"plc1\"\nurl = \"tcp://127.0.0.1:1\"\n  [[modbus.tag]]\n  name = \"x\"\n  table = \"holding\"\n  address = 0\n  type = \"uint16\"\n")
	fix := fmt.Sprintf("set gateway.state_dir to a directory %s can write, or let it write %s (e.g. install -d -o USER -m 0750 %s)", whoAmI(t), dir, dir)

	code, _, stderr := run(t, "run", "-config", path, "-log-format", "json")
	want := fmt.Sprintf(`gateway.state_dir %q cannot be created: mkdir %s: not a directory: %s`, dir, file, fix)
	var logged struct{ Msg, Err string }
	for _, l := range strings.Split(stderr, "\n") {
		if strings.Contains(l, "ferry cannot start") {
			_ = json.Unmarshal([]byte(l), &logged)
		}
	}
	if code != exitFailure || logged.Err != want {
		t.Errorf("run: exit %d, stderr\n%s\nwant the error\n%s", code, stderr, want)
	}
	code, stdout, stderr := run(t, "check", "-config", path)
	want = fmt.Sprintf("warning: gateway.state_dir %q cannot be used: %s is not a directory: %s\n", dir, file, fix)
	if code != exitOK || !strings.Contains(stdout, "valid") || stderr != want {
		t.Errorf("check: exit %d, stderr\n%q\nwant\n%q", code, stderr, want)
	}
}

// TestNoDevices: a config without devices is valid; check and run warn
// that nothing will be polled.
func TestNoDevices(t *testing.T) {
	state := t.TempDir()
	path := writeConfig(t, "[gateway]\nid = \"t\"\nstate_dir = \""+state+"\"\n\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n")
	want := path + " has no devices: nothing will be polled (add a [[modbus]] or [[opcua]] table; ferry init prints a starter config)"
	code, stdout, stderr := run(t, "check", "-config", path)
	if code != exitOK || stdout != path+": valid: 0 devices (0 modbus, 0 opcua), 0 tags\n" || stderr != "warning: "+want+"\n" {
		t.Errorf("check: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	p := startFerry(t, "run", "-config", path, "-log-format", "json")
	waitFor(t, "the warning", 30e9, func() bool { return strings.Contains(p.stderr.String(), want) })
	if !strings.Contains(p.stderr.String(), `"level":"WARN"`) {
		t.Errorf("not logged as a warning:\n%s", p.stderr.String())
	}
}

// TestBrowseConfig: ferry browse -config F DEVICE takes the endpoint and
// security of the device (and its state_dir) from the config.
func TestBrowseConfig(t *testing.T) {
	sim := opcuatest.New()
	sim.Add("Speed", 1.5)
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	path := opcuaReadConfig(t, sim.URL(), "subscribe", "speed", sim.NodeID("Speed"))
	code, stdout, stderr := run(t, "browse", "-config", path, "cnc1", "-depth", "1")
	if code != exitOK || !strings.Contains(stdout, "Server") || !strings.HasSuffix(stdout, " nodes\n") {
		t.Errorf("browse -config F cnc1: exit %d\n%s%s", code, stdout, stderr)
	}
	// the only OPC UA device needs no name
	if code, stdout, stderr := run(t, "browse", "-config", path, "-depth", "1"); code != exitOK || !strings.Contains(stdout, "Server") {
		t.Errorf("browse -config F: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"browse", "-config", path, "nope"}, `ferry browse: no OPC UA device "nope" in ` + path + " (it has: cnc1)\n"},
		{[]string{"browse", "-config", path, "cnc1", "-username", "u"}, "ferry browse: -username is taken from the config with -config; set it in the device's [[opcua]] table\n"},
	} {
		if code, _, stderr := run(t, tc.args...); code != exitUsage || stderr != tc.stderr {
			t.Errorf("%v: exit %d, stderr %q, want %q", tc.args, code, stderr, tc.stderr)
		}
	}
}
