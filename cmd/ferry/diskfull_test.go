package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// mountTmpfs mounts a tmpfs of size at a new directory and unmounts it when
// the test ends. It skips the test where mounting is not permitted.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs (a disk that fills up) needs root")
	}
	dir := filepath.Join(t.TempDir(), "small-disk")
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
			_ = exec.Command("umount", "-l", dir).Run()
		}
	})
	return dir
}

// healthz returns the status code and body of /healthz.
func healthz(t *testing.T, addr string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("/healthz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestDiskFullRecovers runs the binary with state_dir on a 2 MiB tmpfs: the
// broker goes away until the disk is full and appends fail (healthz and
// metrics say so, and readings beyond the in-memory queue are lost), then
// comes back. The backlog is delivered, the buffer frees its space by
// itself and readings sampled after that arrive; the seqs the subscriber
// never got are exactly the readings counted as lost; a restart on that
// disk does not send the delivered backlog again. Before the fix, nothing
// was appended after the disk had filled up, for good.
func TestDiskFullRecovers(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a disk: seconds of polling")
	}
	state := mountTmpfs(t, "2m")
	broker := mosquittotest.Start(t, mosquittotest.WithPersistence(),
		mosquittotest.WithConfig("max_queued_messages 0"), mosquittotest.WithLogTypes("error", "warning"))
	sim := modbustest.New(t)
	sim.SetHolding(0, 1) // marker: 1 before the episode
	metrics := freeAddr(t)
	var cfg strings.Builder
	fmt.Fprintf(&cfg, `
[gateway]
id = "df"
state_dir = %q

[mqtt]
url = %q
topic_prefix = "plant/df"
qos = 1
max_inflight = 20

[buffer]
sync = "batch"

[metrics]
listen = %q

[[modbus]]
name = "plc1"
url = %q
interval = "20ms"
timeout = "500ms"
`, state, broker.URL(), metrics, sim.URL())
	fmt.Fprintf(&cfg, "\n  [[modbus.tag]]\n  name = \"marker\"\n  table = \"holding\"\n  address = 0\n  type = \"uint16\"\n")
	// 500 readings/s: enough to fill 2 MiB in well under a minute, and few
	// enough that a race-built ferry on a loaded 2-core machine delivers
	// faster than it polls, which recovery needs.
	for i := 1; i < 10; i++ {
		fmt.Fprintf(&cfg, "\n  [[modbus.tag]]\n  name = \"t%02d\"\n  table = \"holding\"\n  address = %d\n  type = \"uint16\"\n", i, i)
	}
	path := writeConfig(t, cfg.String())

	sub := mosquittotest.Subscribe(t, broker.URL(), "plant/df/plc1/#", 1)
	markerArrives := func(value float64, timeout time.Duration) {
		t.Helper()
		if _, err := sub.WaitFor(timeout, func(m mosquittotest.Message) bool {
			for _, r := range tagReadings(t, m) {
				if r.topic == "plant/df/plc1/marker" && r.Value == value {
					return true
				}
			}
			return false
		}); err != nil {
			t.Fatalf("no reading with marker %v arrived: %v", value, err)
		}
	}
	p := startFerry(t, "run", "-config", path)
	markerArrives(1, 30*time.Second)

	// The broker goes away: the buffer fills the disk.
	broker.Stop()
	waitFor(t, "appends to fail on the full disk", 90*time.Second, func() bool {
		m, err := tryScrape(t, metrics)
		return err == nil && m["ferry_buffer_appends_failing"] == 1
	})
	if m := scrape(t, metrics); m["ferry_buffer_disk_full"] != 1 {
		t.Errorf("ferry_buffer_disk_full = %v while appends fail with ENOSPC", m["ferry_buffer_disk_full"])
	}
	if code, body := healthz(t, metrics); code != http.StatusServiceUnavailable || !strings.Contains(body, "disk full") {
		t.Errorf("/healthz during the episode: %d %s; want 503 naming the full disk", code, body)
	}
	waitFor(t, "readings to be lost beyond the in-memory queue", 60*time.Second, func() bool {
		m, err := tryScrape(t, metrics)
		return err == nil && m["ferry_readings_lost_total"] > 0
	})

	// The broker is back: the backlog goes out, the space comes back.
	broker.Restart()
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		m, err := tryScrape(t, metrics)
		if err == nil && m["ferry_buffer_appends_failing"] == 0 && m["ferry_buffer_disk_full"] == 0 {
			break
		}
		if time.Now().After(deadline) {
			du, _ := exec.Command("du", "-ab", state).CombinedOutput()
			t.Fatalf("appends did not work again within 90s: buffer records %v, bytes %v, segments %v, mqtt acked %v, in flight %v; disk:\n%s",
				m["ferry_buffer_records"], m["ferry_buffer_bytes"], m["ferry_buffer_segments"], m["ferry_mqtt_acked_total"], m["ferry_mqtt_inflight"], du)
		}
	}
	sim.SetHolding(0, 2) // sampled after the recovery point
	markerArrives(2, 60*time.Second)
	waitFor(t, "/healthz to say ok after recovery", 60*time.Second, func() bool {
		code, _ := healthz(t, metrics)
		return code == http.StatusOK
	})
	m := scrape(t, metrics)
	lost := uint64(m["ferry_readings_lost_total"])
	if skipped := uint64(m["ferry_buffer_skipped_seqs_total"]); skipped != lost {
		t.Errorf("skipped %d seqs for %d lost readings", skipped, lost)
	}
	if code := p.stop(t); code != 0 {
		t.Fatalf("ferry exited %d", code)
	}

	got := seqs(t, sub.Messages())
	top := maxSeq(t, sub.Messages())
	var missing uint64
	for seq := uint64(1); seq <= top; seq++ {
		if !got[seq] {
			missing++
		}
	}
	if missing != lost {
		t.Errorf("the subscriber misses %d seqs up to %d; ferry counted %d readings lost", missing, top, lost)
	}

	// A restart on that disk: the delivered backlog is not sent again, and
	// new readings flow.
	before := len(sub.Messages())
	p = startFerry(t, "run", "-config", path)
	sim.SetHolding(0, 3)
	markerArrives(3, 60*time.Second)
	resent := 0
	for _, msg := range sub.Messages()[before:] {
		var pl payload
		if json.Unmarshal(msg.Payload, &pl) == nil && pl.Seq != nil && *pl.Seq <= top {
			resent++
		}
	}
	// Only what was in flight may come again (at most max_inflight);
	// before the fix the whole delivered backlog was.
	if resent > 20 {
		t.Errorf("after a restart on that disk, %d readings already delivered (seq <= %d) were sent again", resent, top)
	}
	if code := p.stop(t); code != 0 {
		t.Fatalf("ferry exited %d after the restart", code)
	}
}
