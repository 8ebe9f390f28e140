package opcua

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/adapters/opcua/opcuatest"
	"github.com/ferry-gateway/ferry/config"
)

// scaleSetup starts a simulator with n Double variables and a client
// subscribed to all of them; it returns when every tag has its first value.
func scaleSetup(tb testing.TB, n int, perSub uint32, batch int) (*opcuatest.Server, *Client, *recSink, time.Duration) {
	sim := opcuatest.New()
	tags := make([]config.OPCUATag, n)
	for i := range n {
		name := fmt.Sprintf("v%05d", i)
		sim.Add(name, float64(i))
		tags[i] = config.OPCUATag{Name: name, Node: sim.NSUNodeID(name)}
	}
	sim.SetMaxItemsPerSubscription(perSub)
	if err := sim.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(sim.Close)
	dev := device("scale", sim.URL(), tags...)
	dev.PublishingInterval = 100 * time.Millisecond
	dev.MaxItemsPerRequest = batch
	sink := newRecSink()
	c, err := NewClient(dev, tb.TempDir(), sink, nil)
	if err != nil {
		tb.Fatal(err)
	}
	start := time.Now()
	runClient(tb, c)
	sink.wait(tb, fmt.Sprintf("first values of %d items", n), func(s *recSink) bool {
		if len(s.last) < n {
			return false
		}
		for _, r := range s.last {
			if r.Quality != adapters.Good {
				return false
			}
		}
		return true
	})
	return sim, c, sink, time.Since(start)
}

// TestScale subscribes 3000 items in batches of 500 on a server that allows
// 1000 items per subscription.
func TestScale(t *testing.T) {
	_, c, _, ttfv := scaleSetup(t, 3000, 1000, 500)
	st := c.Stats()
	t.Logf("3000 items: all first values after %v (connect %v); stats %+v", ttfv.Round(time.Millisecond), st.LastConnectTime.Round(time.Millisecond), st)
	if st.MonitoredItems != 3000 || st.Subscriptions != 3 || st.FailedItems != 0 {
		t.Errorf("want 3000 items in 3 subscriptions, got %+v", st)
	}
	// what `ferry plan` prints for this device and server is what ran
	if p := NewPlan(c.dev, Limits{ItemsPerSubscription: 1000}); len(p.Subscriptions) != int(st.Subscriptions) {
		t.Errorf("plan has %d subscriptions, the client made %d", len(p.Subscriptions), st.Subscriptions)
	}
}

// BenchmarkSubscribe10k subscribes 10,000 items on one connection, reports
// the time to the first value of every item, then changes every value
// once a second and reports CPU and peak RSS of the process (client and
// in-process server together).
//
//	go test -run '^$' -bench Subscribe10k -benchtime 1x ./adapters/opcua/
func BenchmarkSubscribe10k(b *testing.B) {
	const n = 10000
	for range b.N {
		sim, c, sink, ttfv := scaleSetup(b, n, 0, 500)
		b.ReportMetric(ttfv.Seconds(), "s-to-first-value")
		var ru0 syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
		t0 := time.Now()
		const secs = 5
		for k := 1; k <= secs; k++ {
			for i := range n {
				sim.Set(fmt.Sprintf("v%05d", i), float64(i+k*n))
			}
			want := strconv.Itoa(n - 1 + k*n)
			sink.wait(b, "round "+strconv.Itoa(k), func(s *recSink) bool { return s.last["v09999"].Value.String() == want })
			time.Sleep(time.Until(t0.Add(time.Duration(k) * time.Second)))
		}
		var ru1 syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) / time.Duration(1)
		b.ReportMetric(100*cpu.Seconds()/time.Since(t0).Seconds(), "%cpu")
		b.ReportMetric(float64(peakRSSKiB())/1024, "MiB-peak-rss")
		b.Logf("%d items: first values after %v; %+v", n, ttfv.Round(time.Millisecond), c.Stats())
	}
}

func peakRSSKiB() int {
	data, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb
		}
	}
	return 0
}
