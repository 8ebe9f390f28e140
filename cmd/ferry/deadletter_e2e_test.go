package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// TestDeadLetterNoticesAndCleanStop runs the binary against a broker whose
// ACL denies one tag's topic. The consumer's seq rule holds: every seq gap
// in the telemetry is announced on P/deadletter (and nothing else is), and
// the other tags keep flowing. Then a clean stop (SIGTERM) leaves the
// device's retained status "stopped" and P/status online:false.
func TestDeadLetterNoticesAndCleanStop(t *testing.T) {
	broker := mosquittotest.Start(t, mosquittotest.WithACL("topic readwrite #\ntopic deny plant/dl/plc1/t3\n"),
		mosquittotest.WithLogTypes("error", "warning"))
	sim := modbustest.New(t)
	const tags = 5
	var tagConf strings.Builder
	for i := range tags {
		sim.SetHolding(uint16(i), uint16(i))
		fmt.Fprintf(&tagConf, "  [[modbus.tag]]\n  name = \"t%d\"\n  table = \"holding\"\n  address = %d\n  type = \"uint16\"\n", i, i)
	}
	path := writeConfig(t, fmt.Sprintf(`
[gateway]
id = "dl"
state_dir = %q
log_level = "warn"

[mqtt]
url = %q
topic_prefix = "plant/dl"
qos = 1
reconnect_min = "20ms"
reconnect_max = "200ms"

[metrics]
listen = ""

[[modbus]]
name = "plc1"
url = %q
interval = "20ms"
timeout = "500ms"
%s`, t.TempDir(), broker.URL(), sim.URL(), tagConf.String()))

	sub := mosquittotest.Subscribe(t, broker.URL(), "plant/dl/#", 1)
	p := startFerry(t, "run", "-config", path)
	// Run until several notices (a hold lasts 4-8 s, so most of the denied
	// tag's records are dead-lettered unsent) and plenty of telemetry: at
	// least 2 s, longer where a loaded machine makes ferry slow to start.
	time.Sleep(2 * time.Second)
	waitFor(t, "a dead-letter notice and 100 telemetry messages", 60*time.Second, func() bool {
		notices, telemetry := 0, 0
		for _, m := range sub.Messages() {
			switch {
			case strings.HasSuffix(m.Topic, "/status"):
			case m.Topic == "plant/dl/deadletter":
				notices++
			default:
				telemetry++
			}
		}
		return notices > 0 && telemetry >= 100
	})
	if code := p.stop(t); code != 0 {
		t.Fatalf("ferry exited with %d", code)
	}

	telemetry, announced := map[uint64]bool{}, map[uint64]bool{}
	var top uint64
	var notices int
	for _, m := range sub.Messages() {
		switch {
		case strings.HasSuffix(m.Topic, "/status"):
		case m.Topic == "plant/dl/deadletter":
			notices++
			var n struct {
				Topic      string      `json:"topic"`
				ReasonCode string      `json:"reason_code"`
				Seqs       [][2]uint64 `json:"seqs"`
				Count      int         `json:"count"`
			}
			if err := json.Unmarshal(m.Payload, &n); err != nil || n.Topic != "plant/dl/plc1/t3" || n.ReasonCode != "0x87" || m.Retain {
				t.Errorf("notice %s (retain %v): %v", m.Payload, m.Retain, err)
			}
			for _, r := range n.Seqs {
				for s := r[0]; s <= r[1]; s++ {
					announced[s] = true
				}
			}
		default:
			if m.Topic == "plant/dl/plc1/t3" {
				t.Errorf("the denied topic reached the subscriber: %s", m.Payload)
			}
			var v payload
			if err := json.Unmarshal(m.Payload, &v); err != nil || v.Seq == nil {
				t.Fatalf("%s: bad payload %s", m.Topic, m.Payload)
			}
			telemetry[*v.Seq] = true
			top = max(top, *v.Seq)
		}
	}
	if notices == 0 || len(telemetry) < 100 {
		t.Fatalf("%d notices, %d telemetry messages: the test proves little", notices, len(telemetry))
	}
	gaps := 0
	for s := uint64(1); s <= top; s++ {
		switch {
		case !telemetry[s] && !announced[s]:
			t.Errorf("seq %d is a gap that no dead-letter notice explains", s)
		case telemetry[s] && announced[s]:
			t.Errorf("seq %d was delivered and announced as dead-lettered", s)
		case !telemetry[s]:
			gaps++
		}
	}
	t.Logf("seqs 1..%d: %d delivered, %d dead-lettered and announced in %d notices", top, len(telemetry), gaps, notices)

	fresh := mosquittotest.Subscribe(t, broker.URL(), "plant/dl/+/status", 1)
	if _, err := fresh.WaitFor(10*time.Second, func(m mosquittotest.Message) bool {
		return m.Topic == "plant/dl/plc1/status" && strings.Contains(string(m.Payload), `"state":"stopped"`) && m.Retain
	}); err != nil {
		t.Errorf("retained device status after SIGTERM: %v (%d messages)", err, len(fresh.Messages()))
	}
	gw := mosquittotest.Subscribe(t, broker.URL(), "plant/dl/status", 1)
	if _, err := gw.WaitFor(10*time.Second, func(m mosquittotest.Message) bool {
		return strings.Contains(string(m.Payload), `"online":false`)
	}); err != nil {
		t.Errorf("retained gateway status after SIGTERM: %v", err)
	}
}
