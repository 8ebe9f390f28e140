package modbus

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/config"
)

type countSink struct{ n int }

func (s *countSink) Readings(rs []adapters.Reading) { s.n += len(rs) }
func (*countSink) DeviceState(string, bool, error)  {}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchDevice: 500 registers: 200 uint16, 100 float32 (CDAB), 25 uint64,
// i.e. 325 tags in 4 requests.
func benchDevice(name, url string) config.ModbusDevice {
	var tags []config.ModbusTag
	addr := uint16(0)
	add := func(typ, order string, n int, size uint16) {
		for i := range n {
			tg := tg(fmt.Sprintf("%s_%d", typ, i), config.TableHolding, addr, typ)
			tg.Order = order
			tags = append(tags, tg)
			addr += size
		}
	}
	add("uint16", "ABCD", 200, 1)
	add("float32", "CDAB", 100, 2)
	add("uint64", "ABCD", 25, 4)
	d := testDevice(url, tags...)
	d.Name, d.Interval = name, time.Second
	return d
}

// BenchmarkPoll10k polls 10,000 registers spread over 20 simulated devices
// (one Modbus TCP simulator each, in this process): one iteration is one
// poll cycle of every device, run concurrently as the gateway runs them,
// with decoding and the delivery filter. cpu-ms/cycle is the process CPU
// time (user+sys) per cycle, simulators included; allocs/reading counts
// every allocation of the process per reading delivered.
func BenchmarkPoll10k(b *testing.B) {
	const devices = 20
	var pollers []*Poller
	sink := &countSink{}
	for i := range devices {
		s := modbustest.New(b)
		for a := range 500 {
			s.SetHolding(uint16(a), uint16(a*7))
		}
		p, err := NewPoller(benchDevice(fmt.Sprintf("dev%d", i), s.URL()), sink, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { p.Close() })
		pollers = append(pollers, p)
	}
	readings := 0
	bufs := make([][]adapters.Reading, devices)
	for i, p := range pollers {
		bufs[i] = make([]adapters.Reading, len(p.plan.classes[0].names))
		readings += len(bufs[i])
		if !p.cycle(context.Background(), 0, bufs[i], true) || !allGood(bufs[i]) {
			b.Fatalf("device %d: %s", i, fmtReadings(bufs[i][:3]))
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	mallocs := ms.Mallocs
	cpu := cpuTime()
	b.ResetTimer()
	for range b.N {
		var wg sync.WaitGroup
		for i, p := range pollers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.cycle(context.Background(), 0, bufs[i], false)
				p.filter(0, bufs[i])
			}()
		}
		wg.Wait()
	}
	b.StopTimer()
	cpu = cpuTime() - cpu
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/cycle")
	b.ReportMetric(float64(ms.Mallocs-mallocs)/float64(b.N*readings), "allocs/reading")
	b.ReportMetric(float64(readings), "readings/cycle")
	b.ReportMetric(float64(pollers[0].plan.NumRequests()*devices), "requests/cycle")
}

// BenchmarkRequestsPerCycle counts the requests one cycle of the register
// map in testdata/registers.toml takes against the simulator: the planned
// (coalesced) way and one request per tag.
func BenchmarkRequestsPerCycle(b *testing.B) {
	cfg, err := config.Load("testdata/registers.toml")
	if err != nil {
		b.Fatal(err)
	}
	s := modbustest.New(b)
	count := func(perTag bool) (requests, tags int) {
		for _, d := range cfg.Modbus {
			d.URL, d.OneRequestPerTag = s.URL(), perTag
			p, err := NewPoller(d, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			before := s.Requests()
			rs, err := p.ReadOnce(context.Background())
			if err != nil || !allGood(rs) {
				b.Fatalf("%v %s", err, fmtReadings(rs))
			}
			requests += int(s.Requests() - before)
			tags += len(rs)
			p.Close()
		}
		return requests, tags
	}
	var planned, perTag, tags int
	for range b.N {
		planned, tags = count(false)
		perTag, _ = count(true)
	}
	b.ReportMetric(float64(planned), "requests/cycle")
	b.ReportMetric(float64(perTag), "per-tag-requests/cycle")
	b.ReportMetric(float64(tags), "tags")
}

// TestRegisterMapRequests keeps the figures of BenchmarkRequestsPerCycle
// honest: the plan of testdata/registers.toml is what a cycle sends.
func TestRegisterMapRequests(t *testing.T) {
	cfg, err := config.Load("testdata/registers.toml")
	if err != nil {
		t.Fatal(err)
	}
	planned, perTag := 0, 0
	for _, d := range cfg.Modbus {
		p, err := Compile(d)
		if err != nil {
			t.Fatal(err)
		}
		planned += p.NumRequests()
		d.OneRequestPerTag = true
		q, err := Compile(d)
		if err != nil {
			t.Fatal(err)
		}
		perTag += q.NumRequests()
	}
	if planned != 11 || perTag != 63 {
		t.Errorf("registers.toml: %d requests per cycle planned, %d one per tag", planned, perTag)
	}
}
