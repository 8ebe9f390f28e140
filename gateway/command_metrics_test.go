package gateway

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The router's counters scraped in the Prometheus text format: results by
// code, retained and queued refusals, dropped and failed answers.
func TestCommandMetrics(t *testing.T) {
	sim := modbustest.New(t)
	cfg := commandConfig(t, sim.URL(), "", "")
	mq := newFakeMQ()
	r := newCommandRouter(cfg, mq, map[string]TagWriter{"plc": startModbus(t, cfg)}, nil)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	g := &Gateway{}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister((*commandCollector)(g))
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	scrape := func() string {
		t.Helper()
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if s := scrape(); strings.Contains(s, "ferry_command") {
		t.Fatalf("command metrics before the router runs:\n%s", s)
	}
	g.cmdStats.Store(r)

	mq.h(msg("ferry/gw/plc/sp/set", "5"))
	mq.h(msg("ferry/gw/plc/sp/set", "1001"))
	mq.h(msg("ferry/gw/plc/nope/set", "1"))
	retained := msg("ferry/gw/plc/sp/set", "6")
	retained.Retain = true
	mq.h(retained)
	queued := msg("ferry/gw/plc/sp/set", "7")
	queued.Queued, queued.Received = true, time.Now()
	mq.h(queued)
	mq.waitN(t, 5, 10*time.Second)

	s := scrape()
	for _, want := range []string{
		`ferry_commands_total{result="ok"} 1`,
		`ferry_commands_total{result="out_of_range"} 1`,
		`ferry_commands_total{result="unknown_tag"} 1`,
		`ferry_commands_total{result="expired"} 2`,
		`ferry_commands_total{result="timeout"} 0`,
		`ferry_commands_retained_refused_total 1`,
		`ferry_commands_retained_clear_failures_total 0`,
		`ferry_commands_queued_refused_total 1`,
		`ferry_command_results_dropped_total 0`,
		`ferry_command_results_failed_total 0`,
	} {
		if !strings.Contains(s, want+"\n") {
			t.Errorf("no %s in\n%s", want, s)
		}
	}
}

// A running gateway's /metrics has the command metrics.
func TestCommandMetricsScraped(t *testing.T) {
	broker := mosquittotest.Start(t, mosquittotest.WithLogTypes("error"))
	sim := modbustest.New(t)
	_, base := statusGateway(t, broker.URL(), sim, `listen = "127.0.0.1:0"`)
	c := newCommander(t, broker.Addr())
	for i := 0; ; i++ { // until ferry has subscribed
		c.send(t, "ferry/line3/press/setpoint/set", "5", fmt.Sprint("probe", i), 60)
		if waitAnswers(c, 1, 500*time.Millisecond) > 0 {
			break
		}
		if i == 40 {
			t.Fatal("ferry did not answer a command")
		}
	}
	c.send(t, "ferry/line3/press/speed/set", "5", "ro", 60)
	c.wait(t, "ro", 10*time.Second)
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{
		`ferry_commands_total{result="not_writable"} 1` + "\n",
		`ferry_commands_retained_refused_total 0` + "\n",
		`ferry_command_results_dropped_total 0` + "\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("no %q in /metrics", want)
		}
	}
	if !strings.Contains(s, `ferry_commands_total{result="ok"} `) || strings.Contains(s, `ferry_commands_total{result="ok"} 0`+"\n") {
		t.Errorf("no ok command counted in /metrics:\n%s", s)
	}
}
