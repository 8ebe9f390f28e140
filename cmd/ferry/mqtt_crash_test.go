package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// TestCrashLoop kills the real ferry binary with SIGKILL at random moments
// while it publishes a steady stream (20 tags every 10 ms) to a broker with
// persistence, then lets a last run drain the buffer. A persistent
// subscriber must see every seq; at QoS 2 none twice, at QoS 1 duplicates
// only for what was in flight at a kill.
func TestCrashLoop(t *testing.T) {
	for _, tc := range []struct {
		qos    int
		rounds int
	}{{2, 30}, {1, 10}} {
		t.Run(fmt.Sprintf("qos%d", tc.qos), func(t *testing.T) {
			t.Parallel()
			crashLoop(t, tc.qos, tc.rounds)
		})
	}
}

func crashLoop(t *testing.T, qos, rounds int) {
	broker := mosquittotest.Start(t, mosquittotest.WithPersistence())
	sim := modbustest.New(t)
	const tags = 20
	var tagConf strings.Builder
	for i := range tags {
		sim.SetHolding(uint16(i), uint16(i))
		fmt.Fprintf(&tagConf, "  [[modbus.tag]]\n  name = \"t%d\"\n  table = \"holding\"\n  address = %d\n  type = \"uint16\"\n", i, i)
	}
	path := writeConfig(t, fmt.Sprintf(`
[gateway]
id = "crash"
state_dir = %q
log_level = "warn"

[mqtt]
url = %q
topic_prefix = "plant/crash"
qos = %d
reconnect_min = "20ms"
reconnect_max = "200ms"

[metrics]
listen = ""

[[modbus]]
name = "plc1"
url = %q
interval = "10ms"
timeout = "500ms"
%s`, t.TempDir(), broker.URL(), qos, sim.URL(), tagConf.String()))

	sub := mosquittotest.Subscribe(t, broker.URL(), "plant/crash/plc1/#", byte(qos))
	publishing := func() { waitPublishing(t, sub) }
	for range rounds {
		p := startFerry(t, "run", "-config", path)
		publishing()
		time.Sleep(time.Duration(200+rand.IntN(300)) * time.Millisecond)
		p.kill9(t)
	}
	last := startFerry(t, "run", "-config", path)
	publishing()
	time.Sleep(500 * time.Millisecond)
	if code := last.stop(t); code != 0 {
		t.Fatalf("last run exited with %d", code)
	}

	counts, top := awaitSeqs(t, sub)
	if top < 1000 {
		t.Fatalf("only %d readings published over %d rounds; the test proves little", top, rounds)
	}
	missing, dups := tallySeqs(t, counts, top, qos == 2)
	t.Logf("qos %d, %d kills: seqs 1..%d, %d missing, %d duplicates", qos, rounds, top, missing, dups)
	if missing > 0 {
		t.Errorf("%d seqs missing", missing)
	}
	// mosquitto's Receive Maximum (20) bounds what is in flight at a kill.
	if qos == 1 && dups > rounds*20 {
		t.Errorf("%d duplicates at QoS 1 over %d kills: more than the in-flight window", dups, rounds)
	}
}

// awaitSeqs waits (up to 20 s) until the subscriber has every seq up to
// the highest it saw, and returns how often each arrived and the highest.
func awaitSeqs(t *testing.T, sub *mosquittotest.Subscription) (counts map[uint64]int, top uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		counts, top = map[uint64]int{}, 0
		for _, m := range sub.Messages() {
			if strings.HasSuffix(m.Topic, "/status") {
				continue
			}
			var p payload
			if err := json.Unmarshal(m.Payload, &p); err != nil || p.Seq == nil {
				t.Fatalf("%s: bad payload %s", m.Topic, m.Payload)
			}
			counts[*p.Seq]++
			top = max(top, *p.Seq)
		}
		if uint64(len(counts)) == top || time.Now().After(deadline) {
			return counts, top
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tallySeqs counts the seqs 1..top that never arrived and the repeats,
// reporting the first ten missing (and, with exactlyOnce, the first ten
// repeats) as test errors.
func tallySeqs(t *testing.T, counts map[uint64]int, top uint64, exactlyOnce bool) (missing, dups int) {
	t.Helper()
	for s := uint64(1); s <= top; s++ {
		switch n := counts[s]; {
		case n == 0:
			missing++
			if missing <= 10 {
				t.Errorf("seq %d never arrived", s)
			}
		case n > 1:
			dups += n - 1
			if exactlyOnce && dups <= 10 {
				t.Errorf("seq %d arrived %d times at QoS 2", s, n)
			}
		}
	}
	return missing, dups
}

// waitPublishing waits until the subscriber receives another message,
// that is until the ferry just started publishes: a race-built binary on
// a loaded machine can take longer to start than a test's round lasts,
// and a kill (or a SIGTERM before its handler is installed) before it
// connects tests nothing.
func waitPublishing(t *testing.T, sub *mosquittotest.Subscription) {
	t.Helper()
	before := len(sub.Messages())
	waitFor(t, "ferry to publish", 60*time.Second, func() bool { return len(sub.Messages()) > before })
}
