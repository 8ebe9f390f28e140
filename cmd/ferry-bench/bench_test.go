package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/config"
)

func TestPercentile(t *testing.T) {
	s := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tc := range []struct {
		p    float64
		want float64
	}{{0, 1}, {10, 1}, {11, 2}, {50, 5}, {90, 9}, {99, 10}, {100, 10}} {
		if got := percentile(s, tc.p); got != tc.want {
			t.Errorf("percentile(%v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := percentile([]float64{7}, 99); got != 7 {
		t.Errorf("single: %v", got)
	}
	l := summarize([]float64{5, 1, 3, 2, 4})
	if l.N != 5 || l.P50 != 3 || l.Max != 5 || l.P99 != 5 {
		t.Errorf("summarize = %+v", l)
	}
	if l := summarize(nil); l.N != 0 {
		t.Errorf("empty summarize = %+v", l)
	}
}

func TestSeqTracker(t *testing.T) {
	for _, tc := range []struct {
		name       string
		seqs       []uint64
		lost, dups int64
		contigTo   uint64
		contig     bool
	}{
		{"none", nil, 0, 0, 0, true},
		{"consecutive", []uint64{1, 2, 3, 4}, 0, 0, 4, true},
		{"out of order", []uint64{3, 1, 2}, 0, 0, 3, true},
		{"gap", []uint64{1, 2, 5}, 2, 0, 5, false},
		{"missing first", []uint64{2, 3}, 1, 0, 3, false},
		{"repeat", []uint64{1, 2, 2, 3, 1}, 0, 2, 3, true},
		{"large", []uint64{1, 100000}, 99998, 0, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tr seqTracker
			for _, s := range tc.seqs {
				tr.add(s)
			}
			if tr.lost() != tc.lost || tr.dups != tc.dups {
				t.Errorf("lost %d dups %d, want %d %d", tr.lost(), tr.dups, tc.lost, tc.dups)
			}
			if got := tr.contiguousTo(tc.contigTo); got != tc.contig {
				t.Errorf("contiguousTo(%d) = %v", tc.contigTo, got)
			}
		})
	}
}

func TestParsePayload(t *testing.T) {
	ts := "2026-11-25T21:00:00.123Z"
	want, _ := time.Parse(time.RFC3339Nano, ts)
	for _, tc := range []struct {
		name     string
		in       string
		device   bool
		seq      uint64
		readings int
		bad      int
		err      bool
	}{
		{"tag", `{"value":23.5,"quality":"good","ts":"` + ts + `","seq":1234}`, false, 1234, 1, 0, false},
		{"tag bad", `{"value":null,"quality":"bad","error":"x","ts":"` + ts + `","seq":7}`, false, 7, 1, 1, false},
		{"device", `{"ts":"` + ts + `","values":{"a":{"value":1,"quality":"good","ts":"` + ts + `"},"b":{"value":null,"quality":"bad","ts":"` + ts + `"},"c":{"value":"s","quality":"uncertain","ts":"` + ts + `"}},"seq":9}`, true, 9, 3, 1, false},
		{"status", `{"online":true,"ts":"` + ts + `"}`, false, 0, 0, 0, true},
		{"garbage", `{"seq":`, false, 0, 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, dev, err := parsePayload([]byte(tc.in), true)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v", err)
			}
			if tc.err {
				return
			}
			if dev != tc.device || p.Seq != tc.seq || p.Readings != tc.readings || p.Bad != tc.bad || !p.TS.Equal(want) {
				t.Errorf("got %+v device=%v", p, dev)
			}
			if dev && len(p.Tags) != tc.readings {
				t.Errorf("tags %v", p.Tags)
			}
		})
	}
}

func TestParseStatCPU(t *testing.T) {
	// Fields 14 and 15 are utime and stime in clock ticks (100 Hz).
	line := "4242 (ferry run) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 12345 1000000 2000 18446744073709551615\n"
	for _, tc := range []struct {
		name string
		in   string
		want time.Duration
		err  bool
	}{
		{"plain", line, 3 * time.Second, false},
		{"paren in comm", strings.Replace(line, "(ferry run)", "(a) b) c)", 1), 3 * time.Second, false},
		{"short", "1 (x) S 1 2 3", 0, true},
		{"no comm", "garbage", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tc.in))
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("got %v, %v; want %v (err %v)", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestParseStatusMem(t *testing.T) {
	status := "Name:\tferry\nVmPeak:\t  900000 kB\nVmHWM:\t   49152 kB\nVmRSS:\t   40960 kB\nRssAnon:\t   30720 kB\nRssFile:\t   10240 kB\nThreads:\t9\n"
	m, err := parseStatusMem([]byte(status))
	if err != nil || m != (memInfo{RSSKiB: 40960, PeakKiB: 49152, AnonKiB: 30720, FileKiB: 10240}) {
		t.Errorf("got %+v, %v", m, err)
	}
	if _, err := parseStatusMem([]byte("Name:\tx\n")); err == nil {
		t.Error("missing fields: no error")
	}
	if _, err := parseStatusMem([]byte("VmRSS:\t1 MB\nVmHWM:\t1 kB\n")); err == nil {
		t.Error("bad unit: no error")
	}
}

func TestCPUHelpers(t *testing.T) {
	if got := cpuPercent(500*time.Millisecond, 10*time.Second); got != 5 {
		t.Errorf("cpuPercent = %v", got)
	}
	if got := cpuPercent(time.Second, 0); got != 0 {
		t.Errorf("cpuPercent zero wall = %v", got)
	}
	if got := cpuModel([]byte("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: x\n")); got != "AMD EPYC 7B13" {
		t.Errorf("cpuModel = %q", got)
	}
}

func TestFormatting(t *testing.T) {
	for _, tc := range []struct {
		f    float64
		want string
	}{{0, "0"}, {5.5, "5.5"}, {999, "999"}, {1000, "1,000"}, {1234567.8, "1,234,568"}, {-12345, "-12,345"}} {
		if got := num(tc.f); got != tc.want {
			t.Errorf("num(%v) = %q, want %q", tc.f, got, tc.want)
		}
	}
	for _, tc := range []struct {
		f    float64
		want string
	}{{1.5, "1.5"}, {2, "2"}, {0.1234, "0.123"}, {12.345, "12.35"}} {
		if got := trimFloat(tc.f); got != tc.want {
			t.Errorf("trimFloat(%v) = %q, want %q", tc.f, got, tc.want)
		}
	}
	for _, tc := range []struct{ in, want int }{{76, 76}, {7345, 7300}, {35120, 35000}, {150, 150}} {
		if got := round2(tc.in); got != tc.want {
			t.Errorf("round2(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
	if !nearSize([]int{76}, 74) || nearSize([]int{76}, 7300) {
		t.Error("nearSize")
	}
	if got := cell("a|b\nc"); got != `a\|b c` {
		t.Errorf("cell = %q", got)
	}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		c    check
		pass bool
		str  string
	}{
		{newCheck("CPU %", 3.2, 5, true), true, "PASS CPU % ≤ 5 (3.2)"},
		{newCheck("peak RSS MiB", 48.04, 40, true), false, "MISS peak RSS MiB ≤ 40 (48.04)"},
		{newCheck("drain × baseline", 0.85, 0.8, false), true, "PASS drain × baseline ≥ 0.8 (0.85)"},
		{newCheck("p99 ms", nanValue(), 50, true), false, "MISS p99 ms ≤ 50 (no data)"},
	} {
		if tc.c.Pass != tc.pass || tc.c.String() != tc.str {
			t.Errorf("%+v: %q", tc.c, tc.c.String())
		}
	}
}

func nanValue() float64 { var z float64; return z / z }

func TestMarkdownTable(t *testing.T) {
	rs := []result{
		{Scenario: "modbus-10k-1s", Mode: "device", Source: "modbus", Tags: 10000, Devices: 20, Interval: "1s", CPUPct: 1.8, RSSMiB: 45, PeakRSSMiB: 48,
			ReadingsPerS: 9999, ExpectedPerS: 10000, MsgsPerS: 20, ReqPerCycle: 100, Latency: latencySummary{N: 10, P50: 10.9, P99: 21.1, Max: 22.3},
			Checks: []check{newCheck("CPU %", 1.8, 5, true)}},
		{Scenario: "modbus-10k-1s", Mode: "tag", Source: "modbus", Tags: 10000, Devices: 20, Interval: "1s", MsgsPerS: 9998, VsBaseline: 0.77},
		{Scenario: "opcua-10k-1hz", Mode: "device", Error: "boom | bang"},
		{Scenario: "baseline-76B", Source: "paho", AvgMsgBytes: 76, QoS: 1, MsgsPerS: 13046},
	}
	md := markdownTable(rs)
	lines := strings.Split(strings.TrimSpace(md), "\n")
	if len(lines) != 2+len(rs) {
		t.Fatalf("%d lines:\n%s", len(lines), md)
	}
	cols := strings.Count(lines[0], "|")
	for i, l := range lines {
		if n := strings.Count(l, "|") - strings.Count(l, `\|`); n != cols {
			t.Errorf("line %d has %d separators, header %d: %s", i, n, cols, l)
		}
	}
	for _, want := range []string{"10,000 on 20 dev / 1s", "9,999 (10,000)", "9,998 (0.77)", "PASS CPU % ≤ 5 (1.8)", `ERROR: boom \| bang`, "13,046", "10.9 / 21.1 / 22.3"} {
		if !strings.Contains(md, want) {
			t.Errorf("table lacks %q:\n%s", want, md)
		}
	}
	if _, err := json.Marshal(rs); err != nil {
		t.Errorf("results do not marshal: %v", err)
	}
}

func TestModbusLayout(t *testing.T) {
	tags := modbusLayout(500)
	regs, floats := 0, 0
	for i, tg := range tags {
		if i > 0 {
			prev := tags[i-1]
			width := uint16(1)
			if prev.Type == "float32" {
				width = 2
			}
			if tg.Address != prev.Address+width {
				t.Fatalf("tag %d at %d, previous ends at %d", i, tg.Address, prev.Address+width)
			}
		}
		if tg.Type == "float32" {
			floats++
			regs += 2
		} else {
			regs++
		}
	}
	if floats != 125 || regs != 625 {
		t.Errorf("floats %d regs %d, want 125 625", floats, regs)
	}
}

func TestBaselinePayload(t *testing.T) {
	ts := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)
	for _, size := range []int{10, 200, 7300} {
		b := baselinePayload(42, ts, size)
		if size > 100 && len(b) != size {
			t.Errorf("size %d: got %d bytes", size, len(b))
		}
		p, dev, err := parsePayload(b, false)
		if err != nil || dev || p.Seq != 42 || !p.TS.Equal(ts) {
			t.Errorf("size %d: %+v %v %v", size, p, dev, err)
		}
	}
}

func TestBaselineSizes(t *testing.T) {
	rs := []result{
		{Mode: "device", AvgMsgBytes: 35000},
		{Mode: "tag", AvgMsgBytes: 76},
		{Mode: "tag", AvgMsgBytes: 74},
		{Mode: "device", OutageS: 10, AvgMsgBytes: 7345},
		{Mode: "tag", Error: "x", AvgMsgBytes: 500},
	}
	rs[1].sample = []byte("tag sample")
	got := baselineSpecs(rs)
	if len(got) != 2 || got[0].size != 76 || got[1].size != 7300 || string(got[0].sample) != "tag sample" || got[1].sample != nil {
		t.Errorf("baselineSpecs = %+v", got)
	}
	if got := baselineSpecs(nil); len(got) != 2 {
		t.Errorf("default specs = %+v", got)
	}
}

// TestSamplePayloads: the baseline sends ferry's payload with its own ts
// and seq, which the subscriber reads back.
func TestSamplePayloads(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	ts := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)
	for i, sample := range [][]byte{ferryPayload(rng, false, 1, 99), ferryPayload(rng, true, 100, 12345678), []byte(`{"seq":5,"ts":"2026-01-01T00:00:00Z"}`)} {
		gen := samplePayloads(sample)
		for _, seq := range []uint64{1, 42, 1 << 40} {
			out := gen(seq, ts)
			p, dev, err := parsePayload(out, false)
			if err != nil || p.Seq != seq || !p.TS.Equal(ts) {
				t.Fatalf("sample %d seq %d: %+v %v\n%s", i, seq, p, err, out)
			}
			want, wantDev, _ := parsePayload(sample, false)
			if dev != wantDev || p.Readings != want.Readings || p.Bad != want.Bad || (i < 2 && len(out) > len(sample)+12) {
				t.Errorf("sample %d: %+v device=%v, from %+v device=%v (%d vs %d bytes)", i, p, dev, want, wantDev, len(out), len(sample))
			}
		}
	}
}

// TestGeneratedConfigLoads checks that the configs the bench writes are
// valid for ferry (config.Load, no I/O beyond the file).
func TestGeneratedConfigLoads(t *testing.T) {
	dir := t.TempDir()
	cfg := configHeader(filepath.Join(dir, "state"), mqttSettings{URL: "mqtt://127.0.0.1:1", QoS: 1, Publish: "device", ReconnectMax: "1s"}) +
		modbusDeviceConfig("dev00", "127.0.0.1:1502", 100*time.Millisecond, modbusLayout(8)) +
		opcuaDeviceConfig("cnc", "opc.tcp://127.0.0.1:4840", time.Second, []string{"v00000", "v00001"},
			[]string{"nsu=urn:ferry:opcuatest;s=v00000", "nsu=urn:ferry:opcuatest;s=v00001"})
	path := filepath.Join(dir, "ferry.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load(path); err != nil {
		t.Fatalf("generated config invalid: %v\n%s", err, cfg)
	}
}

// TestBroker checks the broker the scenarios get: its config, and that
// the outage scenario's stop (SIGTERM) and relaunch keep the port and save
// the database.
func TestBroker(t *testing.T) {
	for _, persistence := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "broker")
		br, err := startBroker(dir, persistence)
		if err != nil {
			t.Fatal(err)
		}
		defer br.Close()
		data, err := os.ReadFile(filepath.Join(dir, "mosquitto.conf"))
		if err != nil {
			t.Fatal(err)
		}
		c := string(data)
		want := []string{"listener " + strconv.Itoa(br.Port()) + " 127.0.0.1\n", "allow_anonymous true\n", "max_queued_messages 0\n",
			"log_dest stderr\n", "log_type error\nlog_type warning\n"}
		if persistence {
			want = append(want, "persistence true\n", "persistence_location "+dir+"/\n", "autosave_interval 0\n")
		} else {
			want = append(want, "persistence false\n")
		}
		if os.Geteuid() == 0 {
			want = append(want, "user root\n")
		}
		for _, w := range want {
			if !strings.Contains(c, w) {
				t.Errorf("conf lacks %q:\n%s", w, c)
			}
		}
		if strings.Contains(c, "log_type all") || br.Port() == 1883 {
			t.Errorf("conf:\n%s", c)
		}
		if !persistence {
			continue
		}
		addr := br.Addr()
		if err := br.StopWith(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, "mosquitto.db")); err != nil {
			t.Errorf("no database after SIGTERM: %v", err)
		}
		if err := br.Relaunch(); err != nil {
			t.Fatal(err)
		}
		if br.Addr() != addr {
			t.Errorf("relaunched on %s, was %s", br.Addr(), addr)
		}
		if err := br.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestModes(t *testing.T) {
	for _, tc := range []struct {
		short    bool
		flag     []string
		scenario string
		want     string
	}{
		{false, nil, "modbus-10k-1s", "[device tag]"},
		{true, nil, "modbus-10k-1s", "[device]"},
		{true, nil, "opcua-10k-1hz", "[device]"},
		{true, nil, "modbus-1k-100ms", "[device tag]"}, // issue 9's ratio
		{true, []string{"tag"}, "modbus-10k-1s", "[tag]"},
		{false, []string{"device"}, "modbus-1k-100ms", "[device]"},
	} {
		b := &bench{opts: options{Short: tc.short, Modes: tc.flag}}
		if got := fmt.Sprint(b.modes(tc.scenario)); got != tc.want {
			t.Errorf("short=%v -modes %v %s: %s, want %s", tc.short, tc.flag, tc.scenario, got, tc.want)
		}
	}
}
