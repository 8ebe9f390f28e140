package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	mb "github.com/simonvetter/modbus"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"

	"github.com/ferry-gateway/ferry/internal/lockedbuf"
)

// ferryProc is the ferry binary running as a subprocess.
type ferryProc struct {
	cmd    *exec.Cmd
	stderr *lockedbuf.Buffer
	done   chan error
}

// startFerry runs `ferry ARGS...` as a subprocess (the test binary itself,
// see TestMain) and kills it when the test ends.
func startFerry(t *testing.T, args ...string) *ferryProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), execEnv+"=1")
	p := &ferryProc{cmd: cmd, stderr: new(lockedbuf.Buffer), done: make(chan error, 1)}
	cmd.Stdout = p.stderr
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ferry: %v", err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("ferry %v output:\n%s", args, p.stderr.String())
		}
	})
	return p
}

// kill9 ends ferry the hard way and waits until it is gone.
func (p *ferryProc) kill9(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 ferry: %v", err)
	}
	<-p.done
	p.done <- nil // for the cleanup
}

// tagReading is one reading as a consumer sees it, whatever the publish
// mode: topic is P/DEVICE/TAG, Seq the seq of the message that carried it.
type tagReading struct {
	topic string
	payload
}

// tagReadings returns the readings carried by a telemetry message (none for
// status messages): one for P/DEVICE/TAG, one per tag for P/DEVICE.
func tagReadings(t *testing.T, m mosquittotest.Message) []tagReading {
	t.Helper()
	if strings.HasSuffix(m.Topic, "/status") {
		return nil
	}
	if strings.Count(m.Topic, "/") == 3 { // plant/e2e/DEVICE/TAG
		var p payload
		if err := json.Unmarshal(m.Payload, &p); err != nil || p.Seq == nil {
			t.Errorf("%s: bad payload %s: %v", m.Topic, m.Payload, err)
			return nil
		}
		return []tagReading{{m.Topic, p}}
	}
	var d struct {
		TS     string             `json:"ts"`
		Seq    *uint64            `json:"seq"`
		Values map[string]payload `json:"values"`
	}
	if err := json.Unmarshal(m.Payload, &d); err != nil || d.Seq == nil || d.TS == "" || len(d.Values) == 0 {
		t.Errorf("%s: bad device payload %s: %v", m.Topic, m.Payload, err)
		return nil
	}
	var out []tagReading
	for tag, p := range d.Values {
		p.Seq = d.Seq
		out = append(out, tagReading{m.Topic + "/" + tag, p})
	}
	return out
}

// payload is the telemetry JSON of CONTRACT.md.
type payload struct {
	Value   any     `json:"value"`
	Quality string  `json:"quality"`
	TS      string  `json:"ts"`
	Seq     *uint64 `json:"seq"`
	Error   string  `json:"error"`
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ferry.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load(path); err != nil {
		t.Fatalf("test config is invalid:\n%v", err)
	}
	return path
}

// TestEndToEnd runs the first real path: a Modbus TCP device, the ferry
// binary with its disk buffer, and a real mosquitto. It checks decoded
// values and seq numbering, then kills ferry with SIGKILL, restarts it, and
// checks that seq continues: consecutive, never reused for a different
// reading, and no reading lost. It runs in both publish modes: per tag
// (P/DEVICE/TAG) and per device (P/DEVICE, one message per cycle).
func TestEndToEnd(t *testing.T) {
	for _, mode := range []string{"tag", "device"} {
		t.Run(mode, func(t *testing.T) { testEndToEnd(t, mode) })
	}
}

func testEndToEnd(t *testing.T, mode string) {
	broker := mosquittotest.Start(t)
	sim := modbustest.New(t)
	sim.SetHolding(0, 1234)                                      // uint16
	sim.SetInt16("holding", 1, -42)                              // int16
	sim.SetFloat32("holding", 10, 123.456, "ABCD")               // float32, big-endian
	sim.SetFloat32("holding", 20, -0.5, "CDAB")                  // float32, word-swapped
	sim.SetInput(5, 3000)                                        // uint16 scaled by 0.1
	sim.SetException("holding", 40, 1, mb.ErrIllegalDataAddress) // a register the device does not have

	state := t.TempDir()
	path := writeConfig(t, fmt.Sprintf(`
[gateway]
id = "e2e"
state_dir = %q

[mqtt]
url = %q
topic_prefix = "plant/e2e"
qos = 1
publish = %q

[buffer]
sync = "batch"

[metrics]
listen = ""

[[modbus]]
name = "plc1"
url = %q
interval = "100ms"
timeout = "500ms"
max_gap = 0

  [[modbus.tag]]
  name = "count"
  table = "holding"
  address = 0
  type = "uint16"

  [[modbus.tag]]
  name = "delta"
  table = "holding"
  address = 1
  type = "int16"

  [[modbus.tag]]
  name = "temperature"
  table = "holding"
  address = 10
  type = "float32"

  [[modbus.tag]]
  name = "flow"
  table = "holding"
  address = 20
  type = "float32"
  order = "CDAB"

  [[modbus.tag]]
  name = "level"
  table = "input"
  address = 5
  type = "uint16"
  scale = 0.1

  [[modbus.tag]]
  name = "missing"
  table = "holding"
  address = 40
  type = "uint16"
`, state, broker.URL(), mode, sim.URL()))

	sub := mosquittotest.Subscribe(t, broker.URL(), "plant/e2e/#", 1)
	first := startFerry(t, "run", "-config", path)

	want := map[string]any{
		"plant/e2e/plc1/count":       1234.0,
		"plant/e2e/plc1/delta":       -42.0,
		"plant/e2e/plc1/temperature": 123.456,
		"plant/e2e/plc1/flow":        -0.5,
		"plant/e2e/plc1/level":       300.0,
	}
	seen := map[string]bool{}
	_, err := sub.WaitFor(30*time.Second, func(m mosquittotest.Message) bool {
		for _, r := range tagReadings(t, m) {
			if w, ok := want[r.topic]; ok {
				if r.Value != w || r.Quality != "good" {
					t.Errorf("%s: got %+v, want value %v and quality good", r.topic, r.payload, w)
				}
				seen[r.topic] = true
			}
		}
		return len(seen) == len(want)
	})
	if err != nil {
		t.Fatalf("not every tag arrived: %v (seen %v)", err, seen)
	}
	var missing *tagReading
	if _, err := sub.WaitFor(10*time.Second, func(m mosquittotest.Message) bool {
		for _, r := range tagReadings(t, m) {
			if r.topic == "plant/e2e/plc1/missing" {
				missing = &r
				return true
			}
		}
		return false
	}); err != nil {
		t.Errorf("the tag at an illegal address published nothing: %v", err)
	} else if missing.Quality != "bad" || missing.Value != nil || missing.Error == "" {
		t.Errorf("illegal address: got %+v, want quality bad, value null and an error", missing.payload)
	}
	if m, err := sub.WaitFor(10*time.Second, func(m mosquittotest.Message) bool { return m.Topic == "plant/e2e/status" }); err != nil {
		t.Errorf("no gateway status: %v", err)
	} else if !strings.Contains(string(m.Payload), `"online":true`) || !m.Retain {
		t.Errorf("status %s (retain %v), want retained online:true", m.Payload, m.Retain)
	}

	// Let some readings pile up, then kill -9 mid-stream.
	before := len(sub.Messages())
	if _, err := sub.WaitN(before+30, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	first.kill9(t)
	maxBefore := maxSeq(t, sub.Messages())

	sim.SetHolding(0, 4321) // readings after the restart are new readings
	second := startFerry(t, "run", "-config", path)
	if _, err := sub.WaitFor(30*time.Second, func(m mosquittotest.Message) bool {
		for _, r := range tagReadings(t, m) {
			if r.topic == "plant/e2e/plc1/count" && r.Value == 4321.0 {
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatalf("no reading after the restart: %v", err)
	}
	// A few more cycles so the backlog of the first run is flushed too.
	n := len(sub.Messages())
	if _, err := sub.WaitN(n+30, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	// A clean stop (SIGTERM) publishes the backlog and says offline.
	if code := second.stop(t); code != 0 {
		t.Fatalf("ferry exited with %d after SIGTERM, want 0", code)
	}
	if _, err := sub.WaitFor(10*time.Second, func(m mosquittotest.Message) bool {
		return m.Topic == "plant/e2e/status" && strings.Contains(string(m.Payload), `"online":false`)
	}); err != nil {
		t.Errorf("no offline status after a clean stop: %v", err)
	}
	// Acknowledged by the broker is not yet delivered to the subscriber:
	// give the broker a moment to hand over the last of them.
	top := maxSeq(t, sub.Messages())
	for deadline := time.Now().Add(10 * time.Second); len(seqs(t, sub.Messages())) < int(top) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}

	// Every seq from 1 to the highest arrived (nothing lost across kill -9
	// with sync = "batch": the kernel still had the data), a seq seen twice
	// is the same reading (a redelivery of what was in flight, never a
	// reuse), and readings taken after the restart got seqs above every
	// seq of the first run.
	bySeq := map[uint64]string{}
	for _, m := range sub.Messages() {
		rs := tagReadings(t, m)
		if len(rs) == 0 {
			continue // status
		}
		s := *rs[0].Seq
		key := m.Topic + " " + string(m.Payload)
		if prev, ok := bySeq[s]; ok && prev != key {
			t.Errorf("seq %d reused:\n  %s\n  %s", s, prev, key)
		}
		bySeq[s] = key
		for _, r := range rs {
			if r.topic == "plant/e2e/plc1/count" && r.Value == 4321.0 && s <= maxBefore {
				t.Errorf("a reading taken after the restart got seq %d, not above %d", s, maxBefore)
			}
		}
	}
	for s := uint64(1); s <= top; s++ {
		if _, ok := bySeq[s]; !ok {
			t.Errorf("seq %d never arrived (highest %d): a reading was lost", s, top)
		}
	}
	if top <= maxBefore {
		t.Errorf("highest seq %d after the restart, %d before", top, maxBefore)
	}
}

// stop sends SIGTERM and returns ferry's exit code.
func (p *ferryProc) stop(t *testing.T) int {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM ferry: %v", err)
	}
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		} else if err != nil {
			t.Fatalf("wait for ferry: %v", err)
		}
		return 0
	case <-time.After(30 * time.Second):
		t.Fatal("ferry did not stop within 30s of SIGTERM")
		return -1
	}
}

// seqs returns the distinct seq numbers of the telemetry messages.
func seqs(t *testing.T, msgs []mosquittotest.Message) map[uint64]bool {
	t.Helper()
	out := map[uint64]bool{}
	for _, m := range msgs {
		var p payload
		if json.Unmarshal(m.Payload, &p) == nil && p.Seq != nil {
			out[*p.Seq] = true
		}
	}
	return out
}

func maxSeq(t *testing.T, msgs []mosquittotest.Message) uint64 {
	t.Helper()
	var top uint64
	for _, m := range msgs {
		var p payload
		if json.Unmarshal(m.Payload, &p) == nil && p.Seq != nil {
			top = max(top, *p.Seq)
		}
	}
	return top
}
