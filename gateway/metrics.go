package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferry-gateway/ferry/adapters/modbus"
	"github.com/ferry-gateway/ferry/buffer"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway/status"
)

// metricsServer serves /metrics, /healthz, /debug/pprof and the status
// page (/ and /api/status) on metrics.listen.
type metricsServer struct {
	srv  *http.Server
	addr string // listening on (the port chosen when metrics.listen said :0)
	done chan struct{}
}

// startMetrics listens on m.Listen and serves the gateway's metrics, health
// and status page. It takes no lock: Reload calls it with g.mu held.
func (g *Gateway) startMetrics(mcfg config.Metrics) (*metricsServer, error) {
	addr := mcfg.Listen
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		(*gatewayCollector)(g),
		(*commandCollector)(g),
	)
	auth := statusAuth(mcfg)
	if !mcfg.Loopback() && !auth.Configured() {
		return nil, fmt.Errorf("metrics.listen %s is not loopback: set metrics.username and metrics.password_file, or metrics.token_file", addr)
	}
	mux := http.NewServeMux()
	var scrape, health http.Handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), http.HandlerFunc(g.serveHealth)
	if mcfg.ProtectMetrics {
		scrape, health = auth.Wrap(scrape), auth.Wrap(health)
	}
	mux.Handle("/metrics", scrape)
	mux.Handle("/healthz", health)
	// The status page and its JSON (gateway/status), read-only.
	mux.Handle("/", auth.Wrap(status.Handler((*statusProvider)(g))))
	// Profiles of the running gateway (go tool pprof http://ADDR/debug/pprof/heap),
	// on the same listener, which defaults to loopback.
	mux.Handle("/debug/pprof/", auth.Wrap(http.HandlerFunc(pprof.Index)))
	mux.Handle("/debug/pprof/cmdline", auth.Wrap(http.HandlerFunc(pprof.Cmdline)))
	mux.Handle("/debug/pprof/profile", auth.Wrap(http.HandlerFunc(pprof.Profile)))
	mux.Handle("/debug/pprof/symbol", auth.Wrap(http.HandlerFunc(pprof.Symbol)))
	mux.Handle("/debug/pprof/trace", auth.Wrap(http.HandlerFunc(pprof.Trace)))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics.listen %s: %w", addr, err)
	}
	m := &metricsServer{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		addr: ln.Addr().String(),
		done: make(chan struct{}),
	}
	go func() {
		defer close(m.done)
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.logger.Error("metrics endpoint stopped", "listen", addr, "err", err)
		}
	}()
	base := "http://" + ln.Addr().String()
	g.logger.Info("metrics endpoint", "url", base+"/metrics")
	if mcfg.Loopback() {
		g.logger.Info("status page", "url", base+"/", "json", base+"/api/status", "auth", auth.Describe())
	} else {
		open := "/metrics and /healthz are open"
		if mcfg.ProtectMetrics {
			open = "/metrics and /healthz need them too"
		}
		g.logger.Warn("status page on a non-loopback address: /, /api/* and /debug/pprof need credentials; "+open,
			"url", base+"/", "json", base+"/api/status", "auth", auth.Describe())
	}
	return m, nil
}

func (m *metricsServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = m.srv.Shutdown(ctx)
	<-m.done
}

// serveHealth answers 200 when Health is OK, 503 otherwise, with the
// Health as JSON either way.
func (g *Gateway) serveHealth(w http.ResponseWriter, _ *http.Request) {
	h := g.Health()
	w.Header().Set("Content-Type", "application/json")
	if !h.OK {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(h)
}

// gatewayCollector reads every part's Stats at scrape time.
type gatewayCollector Gateway

var (
	descBufRecords   = prometheus.NewDesc("ferry_buffer_records", "Records appended and not yet acknowledged by the broker.", nil, nil)
	descBufBytes     = prometheus.NewDesc("ferry_buffer_bytes", "Bytes of the buffer's segment files.", nil, nil)
	descBufSegments  = prometheus.NewDesc("ferry_buffer_segments", "Segment files of the buffer.", nil, nil)
	descBufOldest    = prometheus.NewDesc("ferry_buffer_oldest_record_age_seconds", "Age of the oldest unacknowledged record (0 when none).", nil, nil)
	descBufAppended  = prometheus.NewDesc("ferry_buffer_appended_total", "Records appended since start.", nil, nil)
	descBufCommitted = prometheus.NewDesc("ferry_buffer_committed_total", "Records acknowledged and committed since start.", nil, nil)
	descBufDropped   = prometheus.NewDesc("ferry_buffer_dropped_total", "Unacknowledged records dropped by max_bytes or max_age since start.", nil, nil)
	descBufCorrupt   = prometheus.NewDesc("ferry_buffer_corrupt_records_total", "Records lost to corruption over the life of the buffer.", nil, nil)
	descBufWriteErrs = prometheus.NewDesc("ferry_buffer_write_errors_total", "Failed buffer writes, fsyncs, segment creations and cursor writes since start.", nil, nil)
	descBufDiskFull  = prometheus.NewDesc("ferry_buffer_disk_full", "1 while buffer writes fail because the disk is full (ENOSPC).", nil, nil)
	descBufFailing   = prometheus.NewDesc("ferry_buffer_appends_failing", "1 while readings cannot be appended to the buffer (held in memory, then lost).", nil, nil)
	descBufSkipped   = prometheus.NewDesc("ferry_buffer_skipped_seqs_total", "Seqs given to readings that could not be stored (consumers see them as gaps) since start.", nil, nil)
	descBufFsync     = prometheus.NewDesc("ferry_buffer_fsync_duration_seconds", "Buffer fsync latency.", nil, nil)
	descAppendErrs   = prometheus.NewDesc("ferry_readings_append_errors_total", "Failed appends of readings to the buffer (the records are held in memory and retried).", nil, nil)
	descLost         = prometheus.NewDesc("ferry_readings_lost_total", "Buffer records given up after failed appends (retry queue overflow, record too large); each consumes a seq, so consumers see a gap.", nil, nil)
	descRetryQueued  = prometheus.NewDesc("ferry_readings_retry_queued", "Records waiting in memory for a failed append to be retried.", nil, nil)

	descMQTTConnected = prometheus.NewDesc("ferry_mqtt_connected", "1 while connected to the broker.", nil, nil)
	descMQTTConnects  = prometheus.NewDesc("ferry_mqtt_connects_total", "Successful connections to the broker.", nil, nil)
	descMQTTConnFails = prometheus.NewDesc("ferry_mqtt_connect_failures_total", "Failed connection attempts.", nil, nil)
	descMQTTDisc      = prometheus.NewDesc("ferry_mqtt_disconnects_total", "Lost or closed connections by reason.", []string{"reason"}, nil)
	descMQTTPublished = prometheus.NewDesc("ferry_mqtt_published_total", "Telemetry PUBLISH packets sent, by QoS (re-sends included).", []string{"qos"}, nil)
	descMQTTAcked     = prometheus.NewDesc("ferry_mqtt_acked_total", "Records acknowledged by the broker.", nil, nil)
	descMQTTRefused   = prometheus.NewDesc("ferry_mqtt_refused_total", "Publishes refused by the broker, by reason code.", []string{"code"}, nil)
	descMQTTInflight  = prometheus.NewDesc("ferry_mqtt_inflight", "Records sent and not yet acknowledged.", nil, nil)
	descMQTTReplayed  = prometheus.NewDesc("ferry_mqtt_replayed_total", "Records published from backlog (replay=true).", nil, nil)
	descMQTTBytes     = prometheus.NewDesc("ferry_mqtt_bytes_out_total", "Topic and payload bytes of telemetry publishes.", nil, nil)
	descMQTTDead      = prometheus.NewDesc("ferry_mqtt_dead_lettered_total", "Records moved to the dead-letter file.", nil, nil)
	descMQTTLost      = prometheus.NewDesc("ferry_mqtt_session_lost_total", "Connections where the broker had lost our session (in-flight records re-sent).", nil, nil)

	descDevUp        = prometheus.NewDesc("ferry_device_up", "1 while the device answers.", []string{"device", "protocol"}, nil)
	descDevReadings  = prometheus.NewDesc("ferry_device_readings_total", "Readings delivered to the buffer.", []string{"device"}, nil)
	descDevRequests  = prometheus.NewDesc("ferry_modbus_requests_total", "Modbus read requests sent (retries and split parts included).", []string{"device"}, nil)
	descDevErrors    = prometheus.NewDesc("ferry_modbus_errors_total", "Failed Modbus requests by kind.", []string{"device", "kind"}, nil)
	descDevRetries   = prometheus.NewDesc("ferry_modbus_retries_total", "Modbus requests sent again.", []string{"device"}, nil)
	descDevSplits    = prometheus.NewDesc("ferry_modbus_splits_total", "Modbus requests split after an exception.", []string{"device"}, nil)
	descDevReconn    = prometheus.NewDesc("ferry_device_reconnects_total", "Connections re-opened after a failure.", []string{"device"}, nil)
	descDevCycle     = prometheus.NewDesc("ferry_modbus_poll_duration_seconds", "Duration of a poll cycle.", []string{"device"}, nil)
	descDevJitter    = prometheus.NewDesc("ferry_modbus_poll_jitter_seconds", "How late a poll cycle started after its tick.", []string{"device"}, nil)
	descOPCNotif     = prometheus.NewDesc("ferry_opcua_notifications_total", "OPC UA data change notifications received.", []string{"device"}, nil)
	descOPCItems     = prometheus.NewDesc("ferry_opcua_monitored_items", "Monitored items of the current session.", []string{"device"}, nil)
	descOPCFailItems = prometheus.NewDesc("ferry_opcua_failed_items", "Tags that could not be monitored or resolved in the current session.", []string{"device"}, nil)
)

func (c *gatewayCollector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

func (c *gatewayCollector) Collect(ch chan<- prometheus.Metric) {
	g := (*Gateway)(c)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}

	b := g.blog.Stats()
	gauge(descBufRecords, float64(b.Records))
	gauge(descBufBytes, float64(b.Bytes))
	gauge(descBufSegments, float64(b.Segments))
	age := 0.0
	if !b.OldestTime.IsZero() && b.Records > 0 {
		age = time.Since(b.OldestTime).Seconds()
	}
	gauge(descBufOldest, age)
	counter(descBufAppended, b.Appended)
	counter(descBufCommitted, b.Committed)
	counter(descBufDropped, b.Dropped)
	counter(descBufCorrupt, b.Corrupt)
	counter(descBufWriteErrs, b.WriteErrors)
	gauge(descBufDiskFull, boolFloat(b.DiskFull))
	gauge(descBufFailing, boolFloat(b.WriteFailing || g.sink.failingSince.Load() != 0))
	counter(descBufSkipped, b.Skipped)
	ch <- fsyncHistogram(b.Fsync)
	counter(descAppendErrs, g.sink.appendErrors.Load())
	counter(descLost, g.sink.lost.Load())
	gauge(descRetryQueued, float64(g.sink.queued.Load()))

	g.mu.Lock()
	devs := make([]*device, 0, len(g.devices))
	for _, d := range g.devices {
		devs = append(devs, d)
	}
	g.mu.Unlock()
	pub := g.pub.Load()
	up := make(map[string]bool, len(devs))
	for _, d := range devs {
		up[d.name] = g.deviceUp(d.name)
	}
	sort.Slice(devs, func(i, j int) bool { return devs[i].name < devs[j].name })

	if pub != nil {
		s := pub.Stats()
		gauge(descMQTTConnected, boolFloat(s.Connected))
		counter(descMQTTConnects, s.Connects)
		counter(descMQTTConnFails, s.ConnectFails)
		for reason, n := range s.Disconnects {
			counter(descMQTTDisc, n, reason)
		}
		for qos, n := range s.Published {
			counter(descMQTTPublished, n, strconv.Itoa(qos))
		}
		counter(descMQTTAcked, s.Acked)
		for code, n := range s.ReasonCodes {
			counter(descMQTTRefused, n, fmt.Sprintf("0x%02x", code))
		}
		gauge(descMQTTInflight, float64(s.InFlight))
		counter(descMQTTReplayed, s.Replayed)
		counter(descMQTTBytes, s.BytesOut)
		counter(descMQTTDead, s.DeadLettered)
		counter(descMQTTLost, s.SessionLost)
	}

	for _, d := range devs {
		if d.poller != nil {
			s := d.poller.Stats()
			gauge(descDevUp, boolFloat(up[d.name]), d.name, "modbus")
			counter(descDevReadings, s.Delivered, d.name)
			counter(descDevRequests, s.Requests, d.name)
			for kind, n := range s.Errors {
				counter(descDevErrors, n, d.name, kind)
			}
			counter(descDevRetries, s.Retries, d.name)
			counter(descDevSplits, s.Splits, d.name)
			counter(descDevReconn, s.Reconnects, d.name)
			ch <- durationHistogram(descDevCycle, s.CycleTime, d.name)
			ch <- durationHistogram(descDevJitter, s.PollJitter, d.name)
			continue
		}
		s := d.client.Stats()
		gauge(descDevUp, boolFloat(up[d.name]), d.name, "opcua")
		counter(descDevReadings, s.Readings, d.name)
		counter(descDevReconn, s.Connects-min(s.Connects, 1), d.name)
		counter(descOPCNotif, s.Notifications, d.name)
		gauge(descOPCItems, float64(s.MonitoredItems), d.name)
		gauge(descOPCFailItems, float64(s.FailedItems), d.name)
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func durationHistogram(d *prometheus.Desc, h modbus.Histogram, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(modbus.HistogramBounds))
	for i, b := range modbus.HistogramBounds {
		if i < len(h.Buckets) {
			buckets[b.Seconds()] = h.Buckets[i]
		} else {
			buckets[b.Seconds()] = 0
		}
	}
	return prometheus.MustNewConstHistogram(d, h.Count, h.Sum.Seconds(), buckets, labels...)
}

func fsyncHistogram(f buffer.FsyncStats) prometheus.Metric {
	buckets := make(map[float64]uint64, len(buffer.FsyncBuckets))
	for i, b := range buffer.FsyncBuckets {
		buckets[b.Seconds()] = f.Buckets[i]
	}
	return prometheus.MustNewConstHistogram(descBufFsync, f.Count, f.Sum.Seconds(), buckets)
}
