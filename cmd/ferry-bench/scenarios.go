package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/adapters/opcua/opcuatest"
)

// bench runs the scenarios of one invocation.
type bench struct {
	opts options
	tmp  string
	log  io.Writer
	seq  int
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "ferry-bench: "+format+"\n", args...)
}

func (b *bench) dir(name string) string {
	b.seq++
	d := filepath.Join(b.tmp, fmt.Sprintf("%02d-%s", b.seq, name))
	_ = os.MkdirAll(d, 0o755)
	return d
}

// pick returns full, or short under -short: the waits around the
// measuring windows.
func (b *bench) pick(full, short time.Duration) time.Duration {
	if b.opts.Short {
		return short
	}
	return full
}

// warmup is the time between ferry's first complete cycle and the window.
func (b *bench) warmup() time.Duration { return b.pick(5*time.Second, time.Second) }

// quiet is how long the subscriber must hear nothing after ferry stopped
// before the run's counts are final.
func (b *bench) quiet() time.Duration { return b.pick(time.Second, 300*time.Millisecond) }

// modes are the publish modes to run scenario in: -modes, else both; under
// -short only device mode, but for the pair issue 9's ratio compares.
func (b *bench) modes(scenario string) []string {
	switch {
	case len(b.opts.Modes) > 0:
		return b.opts.Modes
	case b.opts.Short && scenario != "modbus-1k-100ms":
		return []string{"device"}
	default:
		return []string{"device", "tag"}
	}
}

// runAll runs the selected scenarios in a fixed order, baseline last (it
// publishes messages of the sizes the other rows measured), then applies
// the targets that compare rows.
func (b *bench) runAll() []result {
	var rs []result
	n := b.opts.N
	add := func(r result) {
		if r.Error != "" {
			b.logf("%s (%s): ERROR %s", r.Scenario, r.Mode, r.Error)
		} else {
			b.logf("%s (%s): cpu %.2f%%, rss %.1f MiB (peak %.1f), %.0f readings/s, %.0f msgs/s, lost %d, p99 %.1f ms",
				r.Scenario, r.Mode, r.CPUPct, r.RSSMiB, r.PeakRSSMiB, r.ReadingsPerS, r.MsgsPerS, r.Lost, r.Latency.P99)
		}
		rs = append(rs, r)
	}
	for _, s := range b.opts.Scenarios {
		switch s {
		case "modbus-10k-1s":
			for _, m := range b.modes(s) {
				add(b.modbus(pollSpec{name: s, mode: m, devices: 20, tags: n, interval: time.Second}))
			}
		case "modbus-1k-100ms":
			for _, m := range b.modes(s) {
				add(b.modbus(pollSpec{name: s, mode: m, devices: 10, tags: n / 10, interval: 100 * time.Millisecond}))
			}
		case "opcua-10k-1hz":
			for _, m := range b.modes(s) {
				add(b.opcua(s, m, n))
			}
		case "latency":
			for _, m := range b.modes(s) {
				add(b.modbus(pollSpec{name: s, mode: m, devices: 10, tags: n / 10, interval: time.Second}))
			}
		case "outage-drain":
			add(b.outage(s, "device", 10, n/10, 100*time.Millisecond))
		}
	}
	if contains(b.opts.Scenarios, "baseline") {
		for _, spec := range baselineSpecs(rs) {
			add(b.baseline(spec))
		}
	}
	applyTargets(rs)
	return rs
}

// baselineSpec is one baseline row to run: a message size and, when a
// ferry row of that size delivered one, a sample of its payloads, which the
// plain client then sends with fresh ts and seq, so that both sides cost
// the broker and the subscriber the same per message.
type baselineSpec struct {
	size        int
	sample      []byte
	persistence bool // the broker config of the compared row (the outage drain's has persistence on)
}

// baselineSpecs are the distinct message sizes (2 significant digits) of
// the rows that compare with the baseline: the tag-mode rows and the
// outage drain. Without any, a typical tag-mode and a 100-reading device
// message.
func baselineSpecs(rs []result) []baselineSpec {
	var specs []baselineSpec
	var sizes []int
	for _, r := range rs {
		if r.Error != "" || r.AvgMsgBytes == 0 || (r.Mode != "tag" && r.OutageS == 0) {
			continue
		}
		s := round2(int(r.AvgMsgBytes))
		if !nearSize(sizes, s) {
			sizes = append(sizes, s)
			specs = append(specs, baselineSpec{size: s, sample: r.sample, persistence: r.OutageS > 0})
		}
	}
	if len(specs) == 0 {
		specs = []baselineSpec{{size: 80}, {size: 7000}}
	}
	return specs
}

func round2(n int) int {
	if n < 100 {
		return n
	}
	p := int(math.Pow(10, math.Floor(math.Log10(float64(n)))-1))
	return (n + p/2) / p * p
}

// nearSize reports whether a size within 30 % of n is in list.
func nearSize(list []int, n int) bool {
	for _, x := range list {
		if math.Abs(math.Log(float64(n)/float64(x))) < math.Log(1.3) {
			return true
		}
	}
	return false
}

// applyTargets attaches the targets (issue 10, and issue 9's
// device/tag ratio) to the rows they judge.
func applyTargets(rs []result) {
	find := func(scen, mode string) *result {
		for i := range rs {
			if rs[i].Scenario == scen && rs[i].Mode == mode && rs[i].Error == "" {
				return &rs[i]
			}
		}
		return nil
	}
	var base []result
	for _, r := range rs {
		if r.Source == "paho" && r.Error == "" {
			base = append(base, r)
		}
	}
	nearest := func(size float64) float64 {
		best, bestD := 0.0, math.Inf(1)
		for _, r := range base {
			if d := math.Abs(math.Log(r.AvgMsgBytes / size)); d < bestD {
				best, bestD = r.MsgsPerS, d
			}
		}
		return best
	}
	for i := range rs {
		r := &rs[i]
		if r.Error != "" || r.Source == "paho" {
			continue
		}
		if bl := nearest(r.AvgMsgBytes); bl > 0 {
			r.BaselineMsgsPerS = bl
			if r.OutageS > 0 {
				r.VsBaseline = r.DrainMsgsPerS / bl
			} else if r.Mode == "tag" {
				r.VsBaseline = r.MsgsPerS / bl
			}
		}
		r.Checks = append(r.Checks, newCheck("lost", float64(r.Lost), 0, true))
		switch {
		case r.Scenario == "modbus-10k-1s" && r.Mode == "device":
			r.Checks = append(r.Checks, newCheck("CPU %", r.CPUPct, 5, true), newCheck("peak RSS MiB", r.PeakRSSMiB, 40, true))
		case r.Scenario == "opcua-10k-1hz" && r.Mode == "device":
			r.Checks = append(r.Checks, newCheck("CPU %", r.CPUPct, 8, true), newCheck("peak RSS MiB", r.PeakRSSMiB, 60, true))
		case r.Scenario == "latency":
			r.Checks = append(r.Checks, newCheck("p99 ms", r.Latency.P99, 50, true))
		case r.Scenario == "outage-drain":
			v := math.NaN()
			if r.BaselineMsgsPerS > 0 {
				v = r.VsBaseline
			}
			r.Checks = append(r.Checks, newCheck("drain × baseline", v, 0.8, false))
		}
	}
	if d, t := find("modbus-1k-100ms", "device"), find("modbus-1k-100ms", "tag"); d != nil && t != nil && t.CPUPerReadingUS > 0 {
		ratio := d.CPUPerReadingUS / t.CPUPerReadingUS
		d.Notes = strings.TrimPrefix(d.Notes+fmt.Sprintf("; CPU per reading device/tag = %.3f (1/%.1f)", ratio, 1/ratio), "; ")
		d.Checks = append(d.Checks, newCheck("CPU/reading device÷tag", ratio, 0.1, true))
	}
}

// pollSpec is a Modbus scenario: devices simulated devices sharing tags
// tags, polled every interval.
type pollSpec struct {
	name, mode string
	devices    int
	tags       int
	interval   time.Duration
}

// modbus runs one Modbus row.
func (b *bench) modbus(sp pollSpec) (r result) {
	r = result{Scenario: sp.name, Mode: sp.mode, Source: "modbus", Tags: sp.tags, Devices: sp.devices, Interval: sp.interval.String(), QoS: b.opts.QoS}
	b.logf("%s (%s): %d tags on %d devices every %v", sp.name, sp.mode, sp.tags, sp.devices, sp.interval)
	dir := b.dir(sp.name + "-" + sp.mode)
	br, err := startBroker(filepath.Join(dir, "broker"), false)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer br.Close()
	sims, cfgDevices, err := startModbusSims(sp.devices, sp.tags, sp.interval)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer func() {
		for _, s := range sims {
			s.Close()
		}
	}()
	sub, err := startSubscriber(br.Addr(), "bench/#", byte(b.opts.QoS))
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer sub.close()
	cfg := configHeader(filepath.Join(dir, "state"), mqttSettings{URL: br.URL(), QoS: b.opts.QoS, Publish: sp.mode}) + cfgDevices
	fp, err := startFerry(b.opts.ferry, dir, cfg)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer fp.stop()
	if !sub.waitFor(30*time.Second, func(s *subscriber) bool { return s.readings >= int64(sp.tags) }) {
		r.Error = "no complete first cycle within 30 s; ferry log: " + tail(fp.log.String())
		return r
	}
	time.Sleep(b.warmup())

	requests := func() int64 {
		var n int64
		for _, s := range sims {
			n += s.Requests()
		}
		return n
	}
	req0 := requests()
	m := measureWindow(b, fp, sub, b.opts.Duration, &r)
	if r.Error != "" {
		return r
	}
	cycles := m.Seconds() / sp.interval.Seconds()
	r.ReqPerCycle = float64(requests()-req0) / cycles
	r.ExpectedPerS = float64(sp.tags) / sp.interval.Seconds()
	b.finish(fp, sub, &r)
	return r
}

// measureWindow measures ferry's CPU, memory and the subscriber's counts
// over d; it returns the wall time of the window.
func measureWindow(b *bench, fp *ferryProc, sub *subscriber, d time.Duration, r *result) time.Duration {
	u, err := beginUsage(fp.pid())
	if err != nil {
		r.Error = err.Error()
		return 0
	}
	c0 := sub.snapshot()
	sub.setRecordLatency(true)
	u.sleepSampling(d, fp)
	cpu, wall, mem, err := u.end()
	c1 := sub.snapshot()
	sub.setRecordLatency(false)
	if err != nil || fp.exited() {
		r.Error = fmt.Sprintf("ferry exited during the window (%v); log: %s", err, tail(fp.log.String()))
		return 0
	}
	w := c1.at.Sub(c0.at).Seconds()
	r.WindowS = wall.Seconds()
	r.CPUPct = cpuPercent(cpu, wall)
	rd := c1.readings - c0.readings
	if rd > 0 {
		r.CPUPerReadingUS = float64(cpu.Microseconds()) / float64(rd)
	}
	r.ReadingsPerS = float64(rd) / w
	r.MsgsPerS = float64(c1.msgs-c0.msgs) / w
	if c1.msgs > c0.msgs {
		r.AvgMsgBytes = float64(c1.bytes-c0.bytes) / float64(c1.msgs-c0.msgs)
	}
	r.RSSMiB = float64(mem.RSSKiB) / 1024
	r.MaxRSSMiB = float64(u.maxKB) / 1024
	r.PeakRSSMiB = float64(mem.PeakKiB) / 1024
	r.AnonMiB, r.FileMiB = float64(mem.AnonKiB)/1024, float64(mem.FileKiB)/1024
	r.Latency = summarize(sub.latencies())
	return wall
}

// finish stops ferry (it publishes its backlog), waits for the subscriber
// to go quiet and counts lost and repeated messages over the whole run.
func (b *bench) finish(fp *ferryProc, sub *subscriber, r *result) {
	fp.stop()
	sub.quiesce(b.quiet(), 15*time.Second)
	sub.mu.Lock()
	defer sub.mu.Unlock()
	r.Messages = sub.seqs.distinct
	r.Lost = sub.seqs.lost()
	r.Dups = sub.seqs.dups
	r.Bad = sub.bad
	r.sample = sub.sample
	if sub.parseErrs > 0 {
		r.Notes = strings.TrimPrefix(r.Notes+fmt.Sprintf("; %d unparsable payloads", sub.parseErrs), "; ")
	}
	if sub.seqs.distinct > 0 && sub.seqs.min != 1 {
		r.Notes = strings.TrimPrefix(r.Notes+fmt.Sprintf("; first seq seen %d", sub.seqs.min), "; ")
	}
}

// startModbusSims starts one modbustest server per device, seeds its
// holding registers and returns the [[modbus]] tables for them.
func startModbusSims(devices, tags int, interval time.Duration) ([]*modbustest.Server, string, error) {
	per := tags / devices
	layout := modbusLayout(per)
	var sims []*modbustest.Server
	var cfg strings.Builder
	for d := range devices {
		s, err := modbustest.Start()
		if err != nil {
			for _, s := range sims {
				s.Close()
			}
			return nil, "", fmt.Errorf("modbus simulator: %w", err)
		}
		sims = append(sims, s)
		for i, t := range layout {
			if t.Type == "float32" {
				s.SetFloat32("holding", t.Address, float32(d*1000+i)/4, "ABCD")
			} else {
				s.SetHolding(t.Address, uint16(d*1000+i))
			}
		}
		cfg.WriteString(modbusDeviceConfig(fmt.Sprintf("dev%02d", d), s.Addr(), interval, layout))
	}
	return sims, cfg.String(), nil
}

// opcua runs one OPC UA row: n Double variables on one opcuatest server,
// all changed once a second by the bench, subscribed by ferry.
func (b *bench) opcua(name, mode string, n int) (r result) {
	r = result{Scenario: name, Mode: mode, Source: "opcua", Tags: n, Devices: 1, Interval: "1s", QoS: b.opts.QoS}
	b.logf("%s (%s): %d monitored items changing at 1 Hz", name, mode, n)
	dir := b.dir(name + "-" + mode)
	br, err := startBroker(filepath.Join(dir, "broker"), false)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer br.Close()
	sim := opcuatest.New()
	names := make([]string, n)
	nodes := make([]string, n)
	for i := range n {
		names[i] = fmt.Sprintf("v%05d", i)
		nodes[i] = sim.NSUNodeID(names[i])
		sim.Add(names[i], float64(i))
	}
	if err := sim.Start(); err != nil {
		r.Error = err.Error()
		return r
	}
	defer sim.Close()
	sub, err := startSubscriber(br.Addr(), "bench/#", byte(b.opts.QoS))
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer sub.close()
	sub.mu.Lock()
	sub.wantTags, sub.tags = n, make(map[string]struct{}, n)
	sub.mu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // every value changes once a second
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for k := 1; ; k++ {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			for i, nm := range names {
				sim.Set(nm, float64(k*n+i))
			}
		}
	}()
	defer func() { cancel(); wg.Wait() }()

	cfg := configHeader(filepath.Join(dir, "state"), mqttSettings{URL: br.URL(), QoS: b.opts.QoS, Publish: mode}) +
		opcuaDeviceConfig("cnc", sim.URL(), time.Second, names, nodes)
	fp, err := startFerry(b.opts.ferry, dir, cfg)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer fp.stop()
	if !sub.waitFor(120*time.Second, func(s *subscriber) bool { return !s.allTagsAt.IsZero() }) {
		sub.mu.Lock()
		seen := len(sub.tags)
		sub.mu.Unlock()
		r.Error = fmt.Sprintf("only %d of %d items reported within 120 s; ferry log: %s", seen, n, tail(fp.log.String()))
		return r
	}
	sub.mu.Lock()
	r.AllReportedS = sub.allTagsAt.Sub(fp.start).Seconds()
	sub.tags = nil
	sub.mu.Unlock()
	time.Sleep(b.warmup())
	measureWindow(b, fp, sub, b.opts.Duration, &r)
	if r.Error != "" {
		return r
	}
	r.ExpectedPerS = float64(n)
	cancel()
	wg.Wait()
	b.finish(fp, sub, &r)
	return r
}

// outage polls tags at interval, stops the broker (SIGTERM, persistence
// on) for the outage, starts it again and measures how long ferry takes
// to drain its backlog while it keeps polling.
func (b *bench) outage(name, mode string, devices, tags int, interval time.Duration) (r result) {
	r = result{Scenario: name, Mode: mode, Source: "modbus", Tags: tags, Devices: devices, Interval: interval.String(), QoS: b.opts.QoS, OutageS: b.opts.Outage.Seconds()}
	b.logf("%s (%s): %d tags on %d devices every %v, broker down for %v", name, mode, tags, devices, interval, b.opts.Outage)
	dir := b.dir(name + "-" + mode)
	br, err := startBroker(filepath.Join(dir, "broker"), true)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer br.Close()
	sims, cfgDevices, err := startModbusSims(devices, tags, interval)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer func() {
		for _, s := range sims {
			s.Close()
		}
	}()
	sub, err := startSubscriber(br.Addr(), "bench/#", byte(b.opts.QoS))
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer sub.close()
	// reconnect_max 1s: ferry's default backoff (up to 30 s) would make
	// the reconnect, not the drain, dominate; the reconnect is reported apart.
	cfg := configHeader(filepath.Join(dir, "state"), mqttSettings{URL: br.URL(), QoS: b.opts.QoS, Publish: mode, ReconnectMax: "1s"}) + cfgDevices
	fp, err := startFerry(b.opts.ferry, dir, cfg)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer fp.stop()
	if !sub.waitFor(30*time.Second, func(s *subscriber) bool { return s.readings >= int64(tags) }) {
		r.Error = "no complete first cycle within 30 s; ferry log: " + tail(fp.log.String())
		return r
	}
	time.Sleep(b.warmup())
	u, err := beginUsage(fp.pid())
	if err != nil {
		r.Error = err.Error()
		return r
	}
	stopAt := time.Now()
	sub.mu.Lock()
	sub.sampledIn = [2]time.Time{stopAt, stopAt.Add(b.opts.Outage)}
	sub.mu.Unlock()
	if err := br.StopWith(syscall.SIGTERM); err != nil {
		r.Error = "broker stop: " + err.Error()
		return r
	}
	u.sleepSampling(b.opts.Outage, fp)
	restartAt := time.Now()
	r.OutageS = restartAt.Sub(stopAt).Seconds()
	sub.mu.Lock()
	sub.sampledIn[1] = restartAt
	sub.afterMark, sub.markAt = true, restartAt
	sub.mu.Unlock()
	prof := profileCPU(dir, "drain", 3*time.Second)
	if err := br.Relaunch(); err != nil {
		r.Error = "broker restart: " + err.Error()
		return r
	}
	defer prof()
	timeout := max(120*time.Second, 4*b.opts.Outage)
	drained := sub.waitFor(timeout, func(s *subscriber) bool { return s.liveAfter })
	u.sleepSampling(b.pick(2*time.Second, time.Second), fp) // live data after the drain
	cpu, wall, mem, err := u.end()
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.WindowS = wall.Seconds()
	r.CPUPct = cpuPercent(cpu, wall)
	r.RSSMiB, r.MaxRSSMiB, r.PeakRSSMiB = float64(mem.RSSKiB)/1024, float64(u.maxKB)/1024, float64(mem.PeakKiB)/1024
	r.AnonMiB, r.FileMiB = float64(mem.AnonKiB)/1024, float64(mem.FileKiB)/1024
	r.ExpectedPerS = float64(tags) / interval.Seconds()
	b.finish(fp, sub, &r)
	sub.mu.Lock()
	defer sub.mu.Unlock()
	r.BacklogMsgs = sub.replayMsgs
	r.LiveDuringDrain = sub.liveAfter
	r.OutageReadings = sub.sampledRds
	r.OutageExpected = int64(float64(tags) * math.Round(r.OutageS/interval.Seconds()))
	if !sub.firstAfter.IsZero() {
		r.ReconnectS = sub.firstAfter.Sub(restartAt).Seconds()
	}
	if sub.replayMsgs > 0 {
		r.DrainS = sub.lastReplay.Sub(sub.firstAfter).Seconds()
		if r.DrainS > 0 {
			r.DrainMsgsPerS = float64(sub.replayMsgs) / r.DrainS
			r.DrainRdsPerS = float64(sub.replayRds) / r.DrainS
		}
	}
	if sub.seqs.distinct > 0 {
		r.AvgMsgBytes = float64(sub.bytes) / float64(sub.msgs)
	}
	r.Messages = sub.seqs.distinct
	if !drained {
		r.Notes = fmt.Sprintf("backlog not drained within %v", timeout)
	}
	return r
}

func tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 600 {
		s = "…" + s[len(s)-600:]
	}
	return s
}
