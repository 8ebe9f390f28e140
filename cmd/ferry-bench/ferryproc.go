package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-gateway/ferry/internal/lockedbuf"
)

// buildFerry builds ./cmd/ferry of the module that contains the working
// directory into dir.
func buildFerry(dir string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("run ferry-bench inside the ferry module (or pass -ferry PATH)")
	}
	bin := filepath.Join(dir, "ferry")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/ferry")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/ferry: %v\n%s", err, out)
	}
	return bin, nil
}

// mqttSettings are the [mqtt] and [buffer] keys a scenario sets.
type mqttSettings struct {
	URL          string
	QoS          int
	Publish      string // "tag" or "device"
	ReconnectMax string // "" for ferry's default
}

// configHeader renders [gateway], [mqtt], [buffer] and [metrics].
func configHeader(stateDir string, m mqttSettings) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[gateway]\nid = \"bench\"\nstate_dir = %q\nlog_level = \"warn\"\n\n", stateDir)
	fmt.Fprintf(&b, "[mqtt]\nurl = %q\nqos = %d\ntopic_prefix = \"bench\"\nclient_id = \"ferry-bench-gw\"\npublish = %q\n", m.URL, m.QoS, m.Publish)
	if m.ReconnectMax != "" {
		fmt.Fprintf(&b, "reconnect_max = %q\n", m.ReconnectMax)
	}
	// FERRY_BENCH_METRICS=127.0.0.1:PORT serves ferry's /metrics and
	// /debug/pprof during the run, for profiling a scenario.
	fmt.Fprintf(&b, "\n[buffer]\nsync = \"batch\"\nsync_interval = \"10ms\"\n\n[metrics]\nlisten = %q\n", os.Getenv("FERRY_BENCH_METRICS"))
	return b.String()
}

// modbusTag is one register-mapped tag of a simulated device.
type modbusTag struct {
	Name    string
	Address uint16
	Type    string // "uint16" or "float32"
}

// modbusLayout lays out n tags from register 0: every fourth one a float32
// (two registers), the others uint16, packed without gaps.
func modbusLayout(n int) []modbusTag {
	tags := make([]modbusTag, n)
	addr := uint16(0)
	for i := range tags {
		t := modbusTag{Name: fmt.Sprintf("t%04d", i), Address: addr, Type: "uint16"}
		addr++
		if i%4 == 3 {
			t.Type = "float32"
			addr++
		}
		tags[i] = t
	}
	return tags
}

// modbusDeviceConfig renders one [[modbus]] table.
func modbusDeviceConfig(name, addr string, interval time.Duration, tags []modbusTag) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n[[modbus]]\nname = %q\nurl = \"tcp://%s\"\ninterval = %q\ntimeout = \"1s\"\n", name, addr, interval.String())
	for _, t := range tags {
		fmt.Fprintf(&b, "  [[modbus.tag]]\n  name = %q\n  table = \"holding\"\n  address = %d\n  type = %q\n", t.Name, t.Address, t.Type)
	}
	return b.String()
}

// opcuaDeviceConfig renders one [[opcua]] table subscribing to nodes.
func opcuaDeviceConfig(name, endpoint string, publishing time.Duration, tags, nodes []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n[[opcua]]\nname = %q\nendpoint = %q\nsecurity_policy = \"None\"\nmode = \"subscribe\"\npublishing_interval = %q\n", name, endpoint, publishing.String())
	for i, t := range tags {
		fmt.Fprintf(&b, "  [[opcua.tag]]\n  name = %q\n  node = %q\n", t, nodes[i])
	}
	return b.String()
}

// ferryProc is a running `ferry run`.
type ferryProc struct {
	cmd   *exec.Cmd
	done  chan struct{}
	log   *lockedbuf.Buffer
	start time.Time
	dir   string
}

func startFerry(bin, dir, config string) (*ferryProc, error) {
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "ferry.toml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		return nil, err
	}
	if out, err := exec.Command(bin, "check", "-config", path).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ferry check: %v\n%s", err, firstLines(out, 10))
	}
	cmd := exec.Command(bin, "run", "-config", path, "-log-format", "text")
	p := &ferryProc{cmd: cmd, done: make(chan struct{}), log: &lockedbuf.Buffer{Max: 1 << 20}, dir: dir}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p.start = time.Now()
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *ferryProc) pid() int { return p.cmd.Process.Pid }

func (p *ferryProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM (ferry publishes its backlog for up to 5 s) and waits
// up to 15 s before SIGKILL; ferry's output is then saved as ferry.log in
// the row's directory (kept with -keep).
func (p *ferryProc) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	_ = os.WriteFile(filepath.Join(p.dir, "ferry.log"), []byte(p.log.String()), 0o644)
}

func firstLines(b []byte, n int) string {
	lines := strings.SplitN(string(bytes.TrimSpace(b)), "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

// usage samples ferry's CPU and memory over a window.
type usage struct {
	cpu0  time.Duration
	t0    time.Time
	pid   int
	maxKB int64
}

func beginUsage(pid int) (*usage, error) {
	c, err := procCPU(pid)
	if err != nil {
		return nil, err
	}
	return &usage{cpu0: c, t0: time.Now(), pid: pid}, nil
}

// sample records the current RSS (call it periodically).
func (u *usage) sample() {
	if m, err := procMem(u.pid); err == nil && m.RSSKiB > u.maxKB {
		u.maxKB = m.RSSKiB
	}
}

// end returns CPU time and wall time of the window and the memory now.
func (u *usage) end() (cpu, wall time.Duration, mem memInfo, err error) {
	c, err := procCPU(u.pid)
	if err != nil {
		return 0, 0, memInfo{}, err
	}
	wall = time.Since(u.t0)
	mem, err = procMem(u.pid)
	return c - u.cpu0, wall, mem, err
}

// sleepSampling sleeps d, sampling RSS every 250 ms; it returns early if
// ferry exits.
func (u *usage) sleepSampling(d time.Duration, p *ferryProc) {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		u.sample()
		select {
		case <-p.done:
			return
		case <-time.After(min(250*time.Millisecond, time.Until(end))):
		}
	}
	u.sample()
}

// profileCPU fetches a CPU profile of the ferry under test over the next d
// into dir/NAME.pprof when FERRY_BENCH_METRICS serves its /debug/pprof;
// the returned func waits for it. Without the variable it does nothing.
func profileCPU(dir, name string, d time.Duration) (wait func()) {
	addr := os.Getenv("FERRY_BENCH_METRICS")
	if addr == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(d.Seconds()))
		resp, err := http.Get(url)
		if err != nil {
			fmt.Fprintf(os.Stderr, "ferry-bench: profile %s: %v\n", name, err)
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode == http.StatusOK {
			err = os.WriteFile(filepath.Join(dir, name+".pprof"), body, 0o644)
		}
		if err != nil || resp.StatusCode != http.StatusOK {
			fmt.Fprintf(os.Stderr, "ferry-bench: profile %s: %v %s\n", name, err, resp.Status)
		}
	}()
	return func() { <-done }
}
