package opcua

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
)

func writeCode(err error) string {
	var we *adapters.WriteError
	if errors.As(err, &we) {
		return we.Code
	}
	if err == nil {
		return "ok"
	}
	return "?"
}

// Type mapping and status codes against node-opcua, through a one-shot
// connection (as ferry write does) and through a running client.
func TestNodeOPCUAWrite(t *testing.T) {
	srv, state := sharedNode(t)
	var tags []config.OPCUATag
	for _, n := range []string{"WInt16", "WUInt32", "WFloat", "WBool", "WString", "Setpoint", "ReadOnly"} {
		tags = append(tags, config.OPCUATag{Name: n, Node: "nsu=" + nodeNS + ";s=" + n, Writable: true, Verify: true})
	}
	dev := device("node", srv.url(), tags...)
	dev.Mode = ModePoll
	dev.Interval = 100 * time.Millisecond
	for _, running := range []bool{false, true} {
		c, err := NewClient(dev, state, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		var stop func()
		if running {
			stop = runClientStoppable(t, c)
			for deadline := time.Now().Add(20 * time.Second); !c.Stats().Up; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("not up")
				}
			}
		}
		cases := []struct {
			tag  string
			v    adapters.Value
			code string
			want string
		}{
			{"WInt16", adapters.IntValue(-1234), "ok", "-1234"},
			{"WInt16", adapters.IntValue(40000), adapters.CodeBadValue, ""},
			{"WInt16", adapters.FloatValue(1.5), adapters.CodeBadValue, ""},
			{"WUInt32", adapters.IntValue(4000000000), "ok", "4000000000"},
			{"WUInt32", adapters.IntValue(-1), adapters.CodeBadValue, ""},
			{"WFloat", adapters.FloatValue(123.456), "ok", "123.456"},
			{"WFloat", adapters.FloatValue(1e39), adapters.CodeBadValue, ""},
			{"WBool", adapters.BoolValue(true), "ok", "true"},
			{"WBool", adapters.IntValue(1), adapters.CodeBadValue, ""},
			{"WString", adapters.StringValue("héllo"), "ok", `"héllo"`},
			{"Setpoint", adapters.IntValue(17), "ok", "17"},
			{"ReadOnly", adapters.FloatValue(1), adapters.CodeDeviceError, ""},
		}
		for _, cs := range cases {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			got, err := c.WriteTag(ctx, cs.tag, cs.v, true)
			cancel()
			if writeCode(err) != cs.code || (cs.want != "" && got.String() != cs.want) {
				t.Errorf("running=%v %s <- %v: %v %v, want %s %s", running, cs.tag, cs.v, got, err, cs.code, cs.want)
			}
			if cs.tag == "ReadOnly" && err != nil {
				t.Logf("read-only node: %v", err)
			}
		}
		if stop != nil {
			stop()
		}
	}
}

// The in-process server: type checks, a read-only variable, the write log.
func TestSimWrite(t *testing.T) {
	sim := startSim(t)
	sim.Add("w", float64(1))
	sim.Add("ro", int32(1))
	sim.SetReadOnly("ro", true)
	tags := []config.OPCUATag{{Name: "w", Node: sim.NSUNodeID("w"), Writable: true}, {Name: "ro", Node: sim.NSUNodeID("ro"), Writable: true}}
	c, err := NewClient(device("sim", sim.URL(), tags...), "", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if v, err := c.WriteTag(ctx, "w", adapters.IntValue(5), true); err != nil || v.Float() != 5 {
		t.Fatalf("w: %v %v", v, err)
	}
	if _, err := c.WriteTag(ctx, "ro", adapters.IntValue(5), false); writeCode(err) != adapters.CodeDeviceError {
		t.Fatalf("ro: %v", err)
	}
	if w := sim.Writes(); len(w) != 1 || w[0].Value != float64(5) {
		t.Fatalf("writes %+v", w)
	}
}
