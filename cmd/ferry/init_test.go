package main

import (
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/adapters/opcua/opcuatest"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/internal/lockedbuf"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

var updateInit = flag.Bool("update-init", false, "rewrite testdata/init/*.toml from the current output")

// TestInitGolden: `ferry init` without flags prints the golden starter
// config, which is valid as printed with no environment variable set.
func TestInitGolden(t *testing.T) {
	code, stdout, stderr := run(t, "init")
	if code != exitOK || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	const golden = "testdata/init/default.toml"
	if *updateInit {
		if err := os.WriteFile(golden, []byte(stdout), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (go test ./cmd/ferry -run TestInitGolden -update-init)", err)
	}
	if stdout != string(want) {
		t.Errorf("ferry init output differs from %s\ngot:\n%s", golden, stdout)
	}
	cfg, err := config.Parse("ferry.toml", []byte(stdout), func(string) string { return "" })
	if err != nil {
		t.Fatalf("the starter config is invalid:\n%v", err)
	}
	if !filepath.IsAbs(cfg.Gateway.StateDir) == false || len(cfg.Modbus) != 1 || len(cfg.OPCUA) != 1 || len(cfg.Modbus[0].Tags) < 2 {
		t.Errorf("want a relative state_dir, one Modbus device with a few tags and one OPC UA device: %s", cfg.Summary())
	}
	for _, want := range []string{initBroker, initModbus, initOPCUA} {
		if !strings.Contains(stdout, want+`"   # the default: `) {
			t.Errorf("%s is not said to be a default", want)
		}
	}
	path := filepath.Join(t.TempDir(), "ferry.toml")
	if err := os.WriteFile(path, []byte(stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, stdout, stderr := run(t, "check", "-config", path); code != exitOK || !strings.Contains(stdout, "valid: 2 devices (1 modbus, 1 opcua), 4 tags") {
		t.Errorf("check: exit %d, %q %q", code, stdout, stderr)
	}
}

func TestInitErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"init", "-broker", "127.0.0.1:1883"}, exitUsage,
			`ferry init: -broker: "127.0.0.1:1883" has no scheme: write "mqtt://127.0.0.1:1883" (one of mqtt://, mqtts://, tcp://, ssl://, tls://, ws://, wss://)` + "\n"},
		{[]string{"init", "-modbus", "10.0.0.5:502"}, exitUsage,
			`ferry init: -modbus: "10.0.0.5:502" has no scheme: write "tcp://10.0.0.5:502" (one of tcp://, tcp+tls://, udp://, rtu://, rtuovertcp://, rtuoverudp://)` + "\n"},
		{[]string{"init", "-opcua", "10.0.0.6:4840"}, exitUsage,
			`ferry init: -opcua: "10.0.0.6:4840" has no scheme: write "opc.tcp://10.0.0.6:4840" (one of opc.tcp://)` + "\n"},
		{[]string{"init", "extra"}, exitUsage, `unexpected argument "extra"`},
		{[]string{"init", "-opcua", "opc.tcp://127.0.0.1:1", "-timeout", "2s"}, exitFailure,
			"ferry init browses anonymously and without security; for a server that needs either, run ferry init without -opcua, set the endpoint, security and login in the file, and list the variables with: ferry browse -config ferry.toml cnc1\n"},
	} {
		code, _, stderr := run(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
}

func TestTagName(t *testing.T) {
	for in, want := range map[string]string{
		"Temperature":      "Temperature",
		"Spindle Speed":    "Spindle_Speed",
		"a/b+c#d":          "a_b_c_d",
		"  x  ":            "x",
		"Температура":      "Температура",
		"status":           "status_",
		"///":              "tag",
		"":                 "tag",
		"Feed.Override(%)": "Feed_Override",
	} {
		if got := tagName(in); got != want {
			t.Errorf("tagName(%q) = %q, want %q", in, got, want)
		}
	}
	used := map[string]bool{}
	var got []string
	for _, n := range []string{"x", "x", "x_2", "x"} {
		got = append(got, uniqueName(n, used))
	}
	if strings.Join(got, " ") != "x x_2 x_2_2 x_3" {
		t.Errorf("uniqueName: %v", got)
	}
}

// TestInitRuns runs what `ferry init -modbus URL -opcua ENDPOINT -broker
// URL` prints, as printed, through check and run against the in-process
// simulators and mosquitto: readings of both devices arrive at a
// subscriber, and the relative state_dir is made where ferry runs. (The
// gopcua simulator's own variables cannot be browsed: its server lists no
// reference without a type definition. So init falls back to the server's
// clock, and TestInitBrowse tests the browsing against node-opcua.)
func TestInitRuns(t *testing.T) {
	mb := modbustest.New(t)
	mb.SetHolding(0, 42)
	sim := opcuatest.New()
	sim.Add("Speed", 1234.5)
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	broker := mosquittotest.Start(t)

	code, text, stderr := run(t, "init", "-modbus", mb.URL(), "-opcua", sim.URL(), "-broker", broker.URL())
	if code != exitOK {
		t.Fatalf("init: exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{
		`url = "` + mb.URL() + `"`, `endpoint = "` + sim.URL() + `"`, `url = "` + broker.URL() + `"`,
		"# No readable variable was found under the Objects folder within 3 levels", `node = "i=2258"`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("init output lacks %q:\n%s", want, text)
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "ferry.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, stdout, stderr := run(t, "check", "-config", path); code != exitOK {
		t.Fatalf("check: exit %d, %q %q\n%s", code, stdout, stderr, text)
	}

	sub := mosquittotest.Subscribe(t, broker.URL(), "ferry/line1/#", 1)
	cmd := exec.Command(os.Args[0], "run", "-config", "ferry.toml")
	cmd.Dir = dir // the relative state_dir is taken from here
	cmd.Env = append(os.Environ(), execEnv+"=1")
	out := new(lockedbuf.Buffer)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("ferry run output:\n%s", out.String())
		}
	})
	got := map[string]bool{}
	_, err := sub.WaitFor(60*time.Second, func(m mosquittotest.Message) bool {
		var p payload
		if json.Unmarshal(m.Payload, &p) != nil || p.Quality != "good" {
			return false
		}
		switch m.Topic {
		case "ferry/line1/plc1/register0":
			got[m.Topic] = p.Value == 42.0
		case "ferry/line1/cnc1/server_time":
			s, _ := p.Value.(string)
			_, err := time.Parse(time.RFC3339, s)
			got[m.Topic] = err == nil
		}
		return got["ferry/line1/plc1/register0"] && got["ferry/line1/cnc1/server_time"]
	})
	if err != nil {
		t.Fatalf("readings of both devices did not arrive (got %v): %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ferry-state", "buffer")); err != nil {
		t.Errorf("the relative state_dir is not where ferry runs: %v", err)
	}
}

// TestInitBrowse: with -opcua, the tags are the readable variables under
// the chosen node (node-opcua's Machine object here), named after their
// browse names; none is writable, and those the server lets ferry write
// carry a commented hint. The output passes check, and `ferry read`
// reads every tag good.
func TestInitBrowse(t *testing.T) {
	endpoint := startNodeOPCUA(t)
	code, text, stderr := run(t, "init", "-opcua", endpoint)
	if code != exitOK {
		t.Fatalf("init: exit %d, stderr %q", code, stderr)
	}
	const ns = "nsu=urn:ferry:nodeopcua;s="
	for _, want := range []string{
		"  [[opcua.tag]]\n  name = \"Counter\"\n  node = \"" + ns + "Counter\"   # Int32\n  # writable = true\n",
		"  [[opcua.tag]]\n  name = \"Setpoint\"\n  node = \"" + ns + "Setpoint\"   # Double\n  # writable = true\n",
		"  [[opcua.tag]]\n  name = \"ReadOnly\"\n  node = \"" + ns + "ReadOnly\"   # Double\n\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("init output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, ns+"Secret") {
		t.Errorf("the unreadable variable Secret became a tag:\n%s", text)
	}
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "writable") {
			t.Errorf("a tag is writable by default: %q", l)
		}
	}
	path := filepath.Join(t.TempDir(), "ferry.toml")
	if err := os.WriteFile(path, []byte(strings.Replace(text, `state_dir = "ferry-state"`, `state_dir = "`+t.TempDir()+`"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, stdout, stderr := run(t, "check", "-config", path); code != exitOK {
		t.Fatalf("check: exit %d, %q %q\n%s", code, stdout, stderr, text)
	}
	code, stdout, stderr := run(t, "read", "-config", path, "cnc1")
	if code != exitOK || strings.Contains(stdout, " bad ") || !strings.Contains(stdout, "cnc1/Temperature") {
		t.Errorf("read: exit %d\n%s%s", code, stdout, stderr)
	}

	// -node (the Machine object, as browse shows it) and -max-tags
	code, stdout, _ = run(t, "browse", endpoint, "-depth", "1")
	machine := ""
	for _, l := range strings.Split(stdout, "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[1] == "Object" && f[2] == "Machine" {
			machine = f[0]
		}
	}
	if code != exitOK || machine == "" {
		t.Fatalf("browse: exit %d, no Machine object:\n%s", code, stdout)
	}
	code, text, stderr = run(t, "init", "-opcua", endpoint, "-node", machine, "-depth", "1", "-max-tags", "2")
	if code != exitOK || strings.Count(text, "[[opcua.tag]]") != 2 || !strings.Contains(text, "more readable variables (ferry init -max-tags N, or ferry browse)") {
		t.Errorf("-max-tags 2: exit %d %s\n%s", code, stderr, text)
	}
}
