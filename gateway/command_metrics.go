package gateway

import "github.com/prometheus/client_golang/prometheus"

// The command router's counters as Prometheus metrics. collectCommands
// reads them without the gateway's lock (CommandStats), so a scrape never
// waits for a reload that waits for a write.
var (
	descCmdResults     = prometheus.NewDesc("ferry_commands_total", "Commands answered, by result code (ok for carried out).", []string{"result"}, nil)
	descCmdRetained    = prometheus.NewDesc("ferry_commands_retained_refused_total", "Commands refused because they were published with the retain flag (also counted under result expired).", nil, nil)
	descCmdClearFailed = prometheus.NewDesc("ferry_commands_retained_clear_failures_total", "Retained commands whose deletion at the broker failed.", nil, nil)
	descCmdQueued      = prometheus.NewDesc("ferry_commands_queued_refused_total", "Commands the broker held for ferry while it was away, refused for carrying no age (command_accept_queued = false; also counted under expired).", nil, nil)
	descCmdDropped     = prometheus.NewDesc("ferry_command_results_dropped_total", "Refused commands whose answer found no room in the result queue and was not published.", nil, nil)
	descCmdFailed      = prometheus.NewDesc("ferry_command_results_failed_total", "Command answers the broker refused or that were not published before shutdown.", nil, nil)
)

// collectCommands sends the command metrics to ch; none before Run
// started the router or after shutdown.
func (g *Gateway) collectCommands(ch chan<- prometheus.Metric) {
	s, ok := g.CommandStats()
	if !ok {
		return
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for _, code := range ResultCodes {
		counter(descCmdResults, s.Results[code], code)
	}
	counter(descCmdRetained, s.Retained)
	counter(descCmdClearFailed, s.ClearFailed)
	counter(descCmdQueued, s.Queued)
	counter(descCmdDropped, s.Dropped)
	counter(descCmdFailed, s.Failed)
}

// commandCollector is the command metrics as a prometheus.Collector.
type commandCollector Gateway

func (c *commandCollector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

func (c *commandCollector) Collect(ch chan<- prometheus.Metric) {
	(*Gateway)(c).collectCommands(ch)
}
