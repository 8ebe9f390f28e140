package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// TestSessionLogDiskFull runs the ferry binary at QoS 2 with its state_dir
// on a small tmpfs, fills that file system for a while (the MQTT session
// log's writes fail with ENOSPC, short writes included), frees it, and then
// kills ferry with SIGKILL a few times. A persistent subscriber must see
// every seq exactly once: a failed write must not leave a torn record in
// the middle of <state_dir>/mqtt/session.log that cuts off, at the next
// start, what was written after it (issue 21 item 4: 132–139 duplicates).
func TestSessionLogDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (a real full disk)")
	}
	stateDir := t.TempDir()
	if err := syscall.Mount("tmpfs", stateDir, "tmpfs", 0, "size=32m"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(stateDir, 0); err != nil {
			_ = syscall.Unmount(stateDir, syscall.MNT_DETACH)
		}
	})
	broker := mosquittotest.Start(t, mosquittotest.WithPersistence(), mosquittotest.WithLogTypes("error", "warning"))
	sim := modbustest.New(t)
	const tags = 20
	var tagConf strings.Builder
	for i := range tags {
		sim.SetHolding(uint16(i), uint16(i))
		fmt.Fprintf(&tagConf, "  [[modbus.tag]]\n  name = \"t%d\"\n  table = \"holding\"\n  address = %d\n  type = \"uint16\"\n", i, i)
	}
	path := writeConfig(t, fmt.Sprintf(`
[gateway]
id = "enospc"
state_dir = %q
log_level = "warn"

[mqtt]
url = %q
topic_prefix = "plant/enospc"
qos = 2
reconnect_min = "20ms"
reconnect_max = "200ms"

[metrics]
listen = ""

[[modbus]]
name = "plc1"
url = %q
interval = "10ms"
timeout = "500ms"
%s`, filepath.Join(stateDir, "state"), broker.URL(), sim.URL(), tagConf.String()))

	sub := mosquittotest.Subscribe(t, broker.URL(), "plant/enospc/plc1/#", 2)
	p := startFerry(t, "run", "-config", path)
	time.Sleep(700 * time.Millisecond)

	// The disk is full for a while: the session log's writes fail.
	filler := filepath.Join(stateDir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()
	time.Sleep(1500 * time.Millisecond)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	// Space is back; ferry goes on writing after the failed records.
	time.Sleep(700 * time.Millisecond)
	if !strings.Contains(p.stderr.String(), "session store: write failed") {
		t.Logf("ferry output:\n%s", p.stderr.String())
		t.Fatal("the disk-full episode did not make a session log write fail; the test proves nothing")
	}
	for range 3 {
		p.kill9(t)
		p = startFerry(t, "run", "-config", path)
		waitPublishing(t, sub)
		time.Sleep(400 * time.Millisecond)
	}
	if code := p.stop(t); code != 0 {
		t.Fatalf("last run exited with %d", code)
	}

	counts, top := awaitSeqs(t, sub)
	missing, dups := tallySeqs(t, counts, top, true)
	t.Logf("QoS 2, disk full for 1.5 s, then 3 kills: seqs 1..%d, %d missing, %d duplicates", top, missing, dups)
	if top < 1000 {
		t.Fatalf("only %d readings published; the test proves little", top)
	}
	if missing > 0 || dups > 0 {
		t.Errorf("%d missing, %d duplicates", missing, dups)
	}
}
