package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// freeAddr returns a loopback address nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// opsConfig is a small gateway: one Modbus device with the given tags
// (name=address pairs of uint16 holding registers), metrics on metrics.
func opsConfig(state, broker, modbusURL, metrics string, tags ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `
[gateway]
id = "ops"
state_dir = %q

[mqtt]
url = %q
topic_prefix = "plant/ops"

[metrics]
listen = %q

[[modbus]]
name = "plc1"
url = %q
interval = "100ms"
timeout = "500ms"
`, state, broker, metrics, modbusURL)
	for _, t := range tags {
		name, addr, _ := strings.Cut(t, "=")
		fmt.Fprintf(&b, "\n  [[modbus.tag]]\n  name = %q\n  table = \"holding\"\n  address = %s\n  type = \"uint16\"\n", name, addr)
	}
	return b.String()
}

// scrape returns the samples of /metrics as "name{labels}" -> value.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	m, err := tryScrape(t, addr)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	return m
}

func tryScrape(t *testing.T, addr string) (map[string]float64, error) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

func waitFor(t *testing.T, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !ok(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSystemdNotify runs the ferry binary with NOTIFY_SOCKET pointing at a
// datagram socket the test owns, as systemd would: READY=1 once the
// pipeline is up (the metrics endpoint answers then), WATCHDOG=1 at half
// of WATCHDOG_USEC, STATUS= lines, STOPPING=1 on SIGTERM and exit 0.
func TestSystemdNotify(t *testing.T) {
	broker := mosquittotest.Start(t)
	sim := modbustest.New(t)
	metrics := freeAddr(t)
	path := writeConfig(t, opsConfig(t.TempDir(), broker.URL(), sim.URL(), metrics, "a=0"))

	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "400000") // pings every 200 ms
	p := startFerry(t, "run", "-config", path)

	type msg struct {
		text string
		at   time.Time
	}
	msgs := make(chan msg, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- msg{string(buf[:n]), time.Now()}
		}
	}()
	next := func(what string) msg {
		t.Helper()
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatalf("socket closed waiting for %s", what)
			}
			return m
		case <-time.After(30 * time.Second):
			t.Fatalf("no %s within 30s", what)
		}
		return msg{}
	}

	if m := next("READY=1"); m.text != "READY=1" {
		t.Fatalf("first message %q, want READY=1 before anything else", m.text)
	}
	if resp, err := http.Get("http://" + metrics + "/healthz"); err != nil {
		t.Errorf("READY=1 came before the pipeline was up: /healthz: %v", err)
	} else {
		resp.Body.Close()
	}

	var pings []time.Time
	status := ""
	for len(pings) < 6 {
		m := next("WATCHDOG=1")
		switch {
		case m.text == "WATCHDOG=1":
			pings = append(pings, m.at)
		case strings.HasPrefix(m.text, "STATUS="):
			status = m.text
		}
	}
	// Cadence: half of WATCHDOG_USEC. Bounds are loose (a shared machine);
	// what matters is pings neither flood nor stall.
	span := pings[len(pings)-1].Sub(pings[0])
	if per := span / time.Duration(len(pings)-1); per < 100*time.Millisecond || per > 2*time.Second {
		t.Errorf("watchdog every %v on average, want about 200ms", per)
	}
	if !strings.Contains(status, "devices up") || !strings.Contains(status, "buffer") {
		t.Errorf("STATUS line %q lacks the summary", status)
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for {
		m := next("STOPPING=1")
		if m.text == "STOPPING=1" {
			break
		}
	}
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Errorf("ferry exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("ferry did not exit after SIGTERM")
	}
}

// TestMetricsAndReload: /metrics has the main series and they move;
// /healthz says ok; SIGHUP with an invalid file keeps the running config;
// SIGHUP with a new tag adds it while the untouched tag keeps its cadence
// and the MQTT session is not re-established.
func TestMetricsAndReload(t *testing.T) {
	broker := mosquittotest.Start(t)
	sim := modbustest.New(t)
	sim.SetHolding(0, 10, 20, 30)
	metrics := freeAddr(t)
	state := t.TempDir()
	path := writeConfig(t, opsConfig(state, broker.URL(), sim.URL(), metrics, "a=0", "b=1"))
	sub := mosquittotest.Subscribe(t, broker.URL(), "plant/ops/#", 1)
	p := startFerry(t, "run", "-config", path)

	waitFor(t, "acked readings", 30*time.Second, func() bool {
		m, err := tryScrape(t, metrics)
		return err == nil && m["ferry_mqtt_acked_total"] >= 20
	})
	m1 := scrape(t, metrics)
	for _, name := range []string{
		"ferry_buffer_records", "ferry_buffer_bytes", "ferry_buffer_appended_total", "ferry_buffer_fsync_duration_seconds_count",
		"ferry_mqtt_connected", "ferry_mqtt_acked_total", `ferry_mqtt_published_total{qos="1"}`,
		`ferry_device_up{device="plc1",protocol="modbus"}`, `ferry_modbus_requests_total{device="plc1"}`,
		`ferry_modbus_poll_duration_seconds_count{device="plc1"}`, "go_goroutines", "process_resident_memory_bytes",
	} {
		if _, ok := m1[name]; !ok {
			t.Errorf("metric %s missing", name)
		}
	}
	if m1[`ferry_device_up{device="plc1",protocol="modbus"}`] != 1 || m1["ferry_mqtt_connected"] != 1 {
		t.Errorf("device up %v, mqtt connected %v; want 1 and 1", m1[`ferry_device_up{device="plc1",protocol="modbus"}`], m1["ferry_mqtt_connected"])
	}
	time.Sleep(500 * time.Millisecond)
	m2 := scrape(t, metrics)
	for _, name := range []string{"ferry_buffer_appended_total", "ferry_mqtt_acked_total", `ferry_modbus_requests_total{device="plc1"}`} {
		if m2[name] <= m1[name] {
			t.Errorf("%s did not move: %v then %v", name, m1[name], m2[name])
		}
	}
	if r, err := http.Get("http://" + metrics + "/debug/pprof/heap?debug=1"); err != nil || r.StatusCode != 200 {
		t.Errorf("pprof heap profile: %v", err)
	} else {
		r.Body.Close()
	}
	resp, err := http.Get("http://" + metrics + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var h struct {
		OK        bool `json:"ok"`
		DevicesUp int  `json:"devices_up"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &h) != nil || !h.OK || h.DevicesUp != 1 {
		t.Errorf("/healthz %d %s, want 200 with ok and one device up", resp.StatusCode, body)
	}
	connects := m2["ferry_mqtt_connects_total"]

	// An invalid file: logged, the running config stays.
	valid, _ := os.ReadFile(path)
	if err := os.WriteFile(path, []byte(string(valid)+"\n[nonsense]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the invalid config to be reported", 10*time.Second, func() bool {
		return strings.Contains(p.stderr.String(), "reload: invalid config")
	})

	// A new tag: added without a gap for tag a and without a new session.
	reloadAt := time.Now()
	if err := os.WriteFile(path, []byte(opsConfig(state, broker.URL(), sim.URL(), metrics, "a=0", "b=1", "c=2")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.WaitFor(20*time.Second, func(m mosquittotest.Message) bool { return m.Topic == "plant/ops/plc1/c" }); err != nil {
		t.Fatalf("the new tag never published: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	var aTimes []time.Time
	for _, m := range sub.Messages() {
		if m.Topic != "plant/ops/plc1/a" {
			continue
		}
		var pl payload
		if err := json.Unmarshal(m.Payload, &pl); err != nil {
			t.Fatal(err)
		}
		ts, err := time.Parse(time.RFC3339Nano, pl.TS)
		if err != nil {
			t.Fatal(err)
		}
		aTimes = append(aTimes, ts)
	}
	// Tag a's samples around the reload keep their cadence: no gap beyond
	// one extra interval (100 ms), with generous slack for a loaded machine.
	for i := 1; i < len(aTimes); i++ {
		if aTimes[i].After(reloadAt.Add(-time.Second)) && aTimes[i].Sub(aTimes[i-1]) > 600*time.Millisecond {
			t.Errorf("tag a: %v between samples at %v and %v, around the reload", aTimes[i].Sub(aTimes[i-1]), aTimes[i-1], aTimes[i])
		}
	}
	if got := scrape(t, metrics)["ferry_mqtt_connects_total"]; got != connects {
		t.Errorf("mqtt connects went from %v to %v: the reload made a new session", connects, got)
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
}

// TestCommandThroughBinary: a command published to the broker reaches the
// device through the running ferry binary (one FC6 write), its result
// comes back on the Response Topic with the Correlation Data, a command to
// a read-only tag is refused without touching the device, and commands
// still work after a reload.
func TestCommandThroughBinary(t *testing.T) {
	broker := mosquittotest.Start(t)
	sim := modbustest.New(t)
	state := t.TempDir()
	cfgText := func(extra ...string) string {
		return opsConfig(state, broker.URL(), sim.URL(), "", append([]string{"ro=1"}, extra...)...) + `
  [[modbus.tag]]
  name = "sp"
  table = "holding"
  address = 0
  type = "uint16"
  writable = true
  max = 1000.0
`
	}
	path := writeConfig(t, cfgText())
	replies := mosquittotest.Subscribe(t, broker.URL(), "replies/#", 1)
	results := mosquittotest.Subscribe(t, broker.URL(), "plant/ops/+/+/set/result", 1)
	p := startFerry(t, "run", "-config", path)
	// "accepting commands" is logged when the router starts; a command
	// published before the broker has ferry's subscription goes nowhere
	// (PUBACK 0x10, no matching subscribers), so wait for the SUBACK.
	waitFor(t, "ferry's command subscription", 30*time.Second, func() bool {
		out := p.stderr.String()
		return strings.Contains(out, "accepting commands") && strings.Contains(out, "msg=subscribed")
	})

	send := func(tag, payload, corr string) {
		mosquittotest.Publish(t, broker.URL(), "plant/ops/plc1/"+tag+"/set", []byte(payload),
			&paho.PublishProperties{ResponseTopic: "replies/" + corr, CorrelationData: []byte(corr)})
	}
	reply := func(corr string) map[string]any {
		t.Helper()
		m, err := replies.WaitFor(20*time.Second, func(m mosquittotest.Message) bool { return m.Topic == "replies/"+corr })
		if err != nil {
			t.Fatalf("no result for %s: %v", corr, err)
		}
		var r map[string]any
		if err := json.Unmarshal(m.Payload, &r); err != nil {
			t.Fatalf("result %s: %v", m.Payload, err)
		}
		return r
	}

	send("sp", "42", "c1")
	if r := reply("c1"); r["ok"] != true || r["value"] != 42.0 {
		t.Errorf("write 42: %v", r)
	}
	if got := sim.Registers("holding", 0, 1)[0]; got != 42 {
		t.Errorf("register 0 is %d after the write, want 42", got)
	}
	writes := len(sim.Writes())
	send("ro", "7", "c2")
	if r := reply("c2"); r["ok"] != false || r["error"] != "not_writable" {
		t.Errorf("write to a read-only tag: %v", r)
	}
	send("sp", "70000", "c3")
	if r := reply("c3"); r["ok"] != false || (r["error"] != "out_of_range" && r["error"] != "bad_value") {
		t.Errorf("70000 into a uint16 with max 1000: %v", r)
	}
	if n := len(sim.Writes()); n != writes {
		t.Errorf("refused commands reached the device: %d writes, want %d", n, writes)
	}

	// Without a response topic the result goes to P/DEVICE/TAG/set/result.
	mosquittotest.Publish(t, broker.URL(), "plant/ops/plc1/sp/set", []byte(`{"value":7}`), nil)
	if _, err := results.WaitFor(20*time.Second, func(m mosquittotest.Message) bool {
		return m.Topic == "plant/ops/plc1/sp/set/result" && strings.Contains(string(m.Payload), `"ok":true`)
	}); err != nil {
		t.Errorf("no result on the default topic: %v", err)
	}

	// After a reload (a new read-only tag), commands still work.
	if err := os.WriteFile(path, []byte(cfgText("ro2=2")), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the reload", 20*time.Second, func() bool { return strings.Contains(p.stderr.String(), "reload: config applied") })
	send("sp", "43", "c4")
	if r := reply("c4"); r["ok"] != true {
		t.Errorf("write after reload: %v", r)
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit %d", code)
	}
}
