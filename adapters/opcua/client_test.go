package opcua

import (
	"math"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/adapters/opcua/opcuatest"
	"github.com/ferry-gateway/ferry/config"
	"github.com/gopcua/opcua/ua"
)

func startSim(t testing.TB) *opcuatest.Server {
	t.Helper()
	sim := opcuatest.New()
	sim.Add("Temperature", 21.5)
	sim.Add("Counter", int32(7))
	sim.Add("Big", int64(1)<<60)
	sim.Add("Small", int64(-42))
	sim.Add("UBig", uint64(math.MaxUint64))
	sim.Add("Float", float32(0.1))
	sim.Add("Flag", true)
	sim.Add("Name", "PUMP-A")
	sim.Add("When", time.Date(2026, 11, 25, 21, 0, 0, 123e6, time.UTC))
	sim.Add("Blob", []byte{0xde, 0xad, 0xbe, 0xef})
	sim.Add("Array", []float64{1.5, 2, -3})
	sim.Add("Words", []string{"a", "b"})
	sim.Add("NaN", math.NaN())
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	return sim
}

func simTags(sim *opcuatest.Server, names ...string) []config.OPCUATag {
	var tags []config.OPCUATag
	for _, n := range names {
		tags = append(tags, config.OPCUATag{Name: n, Node: sim.NSUNodeID(n)})
	}
	return tags
}

var allNames = []string{"Temperature", "Counter", "Big", "Small", "UBig", "Float", "Flag", "Name", "When", "Blob", "Array", "Words", "NaN"}

var wantValues = map[string]string{
	"Temperature": `21.5`,
	"Counter":     `7`,
	"Big":         `"1152921504606846976"`,
	"Small":       `-42`,
	"UBig":        `"18446744073709551615"`,
	"Float":       `0.1`,
	"Flag":        `true`,
	"Name":        `"PUMP-A"`,
	"When":        `"2026-11-25T21:00:00.123Z"`,
	"Blob":        `"3q2+7w=="`,
	"Array":       `[1.5,2,-3]`,
	"Words":       `["a","b"]`,
}

func testModes(t *testing.T, mode string) {
	sim := startSim(t)
	sink := newRecSink()
	dev := device("sim", sim.URL(), simTags(sim, allNames...)...)
	dev.Mode = mode
	dev.Tags = append(dev.Tags, config.OPCUATag{Name: "Missing", Node: sim.NodeID("NoSuchNode")})
	c, err := NewClient(dev, t.TempDir(), sink, nil)
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	sink.wait(t, "up", func(s *recSink) bool { return s.upCount() > 0 })
	for name, want := range wantValues {
		sink.waitValue(t, name, want, adapters.Good)
	}
	nan := sink.waitValue(t, "NaN", "null", adapters.Uncertain)
	if nan.Err == "" {
		t.Errorf("NaN reading has no error")
	}
	miss := sink.waitValue(t, "Missing", "null", adapters.Bad)
	if miss.Err != "BadNodeIdUnknown" {
		t.Errorf("missing node: err %q, want BadNodeIdUnknown", miss.Err)
	}
	// Source timestamps are used.
	when := time.Now()
	sim.Set("Temperature", 30.25)
	r := sink.waitValue(t, "Temperature", "30.25", adapters.Good)
	if r.Time.Before(when.Add(-time.Second)) || r.Time.After(time.Now().Add(time.Second)) {
		t.Errorf("ts %v not near %v", r.Time, when)
	}
	// Quality from the status code.
	sim.SetWithStatus("Counter", int32(8), ua.StatusUncertainLastUsableValue)
	r = sink.waitValue(t, "Counter", "8", adapters.Uncertain)
	if r.Err != "UncertainLastUsableValue" {
		t.Errorf("uncertain err %q", r.Err)
	}
	sim.SetWithStatus("Counter", int32(9), ua.StatusBadSensorFailure)
	r = sink.waitValue(t, "Counter", "null", adapters.Bad)
	if r.Err != "BadSensorFailure" {
		t.Errorf("bad err %q", r.Err)
	}
	st := c.Stats()
	if !st.Up || st.Readings == 0 {
		t.Errorf("stats %+v", st)
	}
	if mode == ModeSubscribe && (st.MonitoredItems != int64(len(allNames)+1) || st.Notifications == 0) {
		t.Errorf("stats %+v", st)
	}
}

func TestSubscribe(t *testing.T) { testModes(t, ModeSubscribe) }
func TestPoll(t *testing.T)      { testModes(t, ModePoll) }

// TestRestart kills the server and starts it again on the same port with
// its namespace moved to another index: values flow again without
// restarting the client, nsu= ids resolve to the new index, and the device
// goes down and up.
func TestRestart(t *testing.T) {
	for _, mode := range []string{ModeSubscribe, ModePoll} {
		t.Run(mode, func(t *testing.T) {
			sim := startSim(t)
			sink := newRecSink()
			dev := device("sim", sim.URL(), simTags(sim, "Temperature", "Counter")...)
			dev.Mode = mode
			dev.Tags = append(dev.Tags, config.OPCUATag{Name: "Pinned", Node: sim.NodeID("Name")}) // ns=1: moves away
			c, err := NewClient(dev, t.TempDir(), sink, nil)
			if err != nil {
				t.Fatal(err)
			}
			c.minBackoff, c.maxBackoff = 50*time.Millisecond, 400*time.Millisecond
			runClient(t, c)
			sink.waitValue(t, "Temperature", "21.5", adapters.Good)
			sink.waitValue(t, "Pinned", `"PUMP-A"`, adapters.Good)

			sim.Stop()
			sink.wait(t, "down", func(s *recSink) bool { return len(s.states) >= 2 && !s.states[len(s.states)-1].up })
			sink.waitValue(t, "Temperature", "null", adapters.Bad)
			time.Sleep(300 * time.Millisecond) // a few failed reconnects
			if err := sim.Restart(true); err != nil {
				t.Fatal(err)
			}
			restarted := time.Now()
			sim.Set("Temperature", 22.75)
			sink.waitValue(t, "Temperature", "22.75", adapters.Good)
			t.Logf("values again %v after the restart", time.Since(restarted).Round(time.Millisecond))
			sink.wait(t, "up again", func(s *recSink) bool { return s.upCount() >= 2 })
			// The pinned ns=1 id now points into a filler namespace.
			sink.waitValue(t, "Pinned", "null", adapters.Bad)
			sim.Set("Temperature", 23.5)
			sink.waitValue(t, "Temperature", "23.5", adapters.Good)
			if st := c.Stats(); st.Disconnects != 1 || st.Connects != 2 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}
