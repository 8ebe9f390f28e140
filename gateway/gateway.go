// Package gateway wires ferry together: it opens the disk buffer, starts a
// runner per device that appends every reading to the buffer, and runs the
// MQTT publisher that drains the buffer to the broker. A Gateway owns the
// lifecycle; the order of shutdown is what makes the guarantees of
// CONTRACT.md hold (stop polling, sync the buffer, publish what can be
// published within a grace period, say offline, close). Reload applies a
// new config device by device without a gap for the untouched ones, and
// Health, Progress and Status feed /healthz, the systemd watchdog and
// `systemctl status`.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-gateway/ferry/buffer"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway/mqtt"
)

// DefaultShutdownGrace is how long Run keeps publishing the backlog after
// polling stopped, when Options.ShutdownGrace is zero.
const DefaultShutdownGrace = 5 * time.Second

// Options are the parts of a run that do not come from the config file.
type Options struct {
	Logger  *slog.Logger // nil discards
	Version string       // reported in P/status
	// ShutdownGrace bounds how long the backlog is published after ctx is
	// cancelled; what is left stays in the buffer for the next start.
	// Zero means DefaultShutdownGrace.
	ShutdownGrace time.Duration
	// OnReady, if set, is called once the buffer is open and every device
	// runner and the publisher have been started.
	OnReady func()
}

// Gateway is one running ferry. Create it with New, then call Run once.
type Gateway struct {
	opts   Options
	logger *slog.Logger
	blog   *buffer.Log
	bufDir string
	sink   *sink

	// mu guards the fields below. Lock order: mu, then statesMu. Nothing
	// that a device runner calls (the sink, deviceState) takes mu, so mu
	// may be held while a device is stopped; and no adapter method (Stats)
	// is called with mu held, since adapters hold their own locks while
	// calling the sink.
	mu       sync.Mutex
	cfg      *config.Config
	devices  map[string]*device
	metrics  *metricsServer
	running  context.Context // set by Run: the context device runners live in
	progress progressState
	commands *commandRouter // rebuilt on reload

	// statesMu guards states and the switch of pub, so that every device
	// state reaches the publisher in force (see deviceState).
	statesMu sync.Mutex
	states   map[string]deviceState // latest P/DEVICE/status per device
	pub      atomic.Pointer[publisher]
	// cmdStats is g.commands for CommandStats, which must not wait for mu
	// (a Reload holds it while a write ends).
	cmdStats atomic.Pointer[commandRouter]

	// failed receives the error of a publisher that ended on its own (it
	// only does when it cannot go on).
	failed chan error
}

type deviceState struct {
	up      bool
	topic   string
	payload []byte
}

// publisher is the running MQTT publisher with its own lifetime: it
// outlives polling at shutdown and is replaced when a reload changes
// [mqtt].
type publisher struct {
	*mqtt.Publisher
	stopping atomic.Bool // set before cancel: its end is not a failure
	cancel   context.CancelFunc
	done     chan error // receives Run's result once
}

// stop ends the publisher and returns what its Run returned.
func (h *publisher) stop() error {
	h.stopping.Store(true)
	h.cancel()
	return <-h.done
}

// Run runs the gateway described by cfg until ctx is cancelled: New, then
// (*Gateway).Run.
func Run(ctx context.Context, cfg *config.Config, opts Options) error {
	g, err := New(cfg, opts)
	if err != nil {
		return err
	}
	return g.Run(ctx)
}

// New opens the buffer and builds every part of the gateway without
// starting any I/O to devices or the broker.
func New(cfg *config.Config, opts Options) (*Gateway, error) {
	g := &Gateway{
		opts:    opts,
		logger:  opts.Logger,
		cfg:     cfg,
		devices: make(map[string]*device),
		states:  make(map[string]deviceState),
		failed:  make(chan error, 1),
	}
	if g.logger == nil {
		g.logger = slog.New(slog.DiscardHandler)
	}
	if g.opts.ShutdownGrace <= 0 {
		g.opts.ShutdownGrace = DefaultShutdownGrace
	}
	g.bufDir = filepath.Join(cfg.Gateway.StateDir, "buffer")
	blog, err := buffer.Open(g.bufDir, bufferOptions(cfg.Buffer, g.logger))
	if err != nil {
		return nil, fmt.Errorf("open buffer %s: %w", g.bufDir, err)
	}
	g.blog = blog
	g.sink = newSink(cfg, blog, g, g.logger)
	for _, d := range deviceConfigs(cfg) {
		dev, err := g.newDevice(d)
		if err != nil {
			blog.Close()
			return nil, err
		}
		g.devices[d.name] = dev
	}
	if _, err := publisherConfig(cfg, opts.Version, g.logger); err != nil {
		blog.Close()
		return nil, err
	}
	return g, nil
}

// Run runs the gateway until ctx is cancelled. It returns nil after a
// clean shutdown and an error when the publisher fails for good.
func (g *Gateway) Run(ctx context.Context) error {
	defer func() {
		if err := g.blog.Close(); err != nil {
			g.logger.Error("close buffer", "dir", g.bufDir, "err", err)
		}
	}()
	pollCtx, stopPolling := context.WithCancel(ctx)
	defer stopPolling()

	g.mu.Lock()
	g.running = pollCtx
	cfg := g.cfg
	if err := g.startPublisher(ctx, cfg); err != nil {
		g.mu.Unlock()
		return err
	}
	for _, d := range g.devices {
		g.startDevice(d)
	}
	if err := g.startCommands(); err != nil {
		g.mu.Unlock()
		g.stopDevicesAndPublisher(stopPolling, false)
		return fmt.Errorf("commands: %w", err)
	}
	metricsCfg := cfg.Metrics
	g.mu.Unlock()

	// The metrics collector reads the gateway under its locks: start the
	// endpoint with none held.
	if metricsCfg.Listen != "" {
		m, err := g.startMetrics(metricsCfg)
		if err != nil {
			g.stopDevicesAndPublisher(stopPolling, false)
			return err
		}
		g.mu.Lock()
		g.metrics = m
		g.mu.Unlock()
	}

	g.logger.Info("gateway started", "buffer", g.bufDir, "broker", cfg.MQTT.URL,
		"topic_prefix", cfg.MQTT.TopicPrefix, "devices", len(g.devices), "pending", g.blog.NextSeq()-g.blog.Acked())
	if g.opts.OnReady != nil {
		g.opts.OnReady()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-g.failed:
		runErr = fmt.Errorf("mqtt publisher: %w", err)
	}
	g.stopDevicesAndPublisher(stopPolling, runErr == nil)
	return runErr
}

// stopDevicesAndPublisher is the shutdown: stop polling, sync the buffer,
// publish the backlog within the grace period (when drain), stop the
// publisher (which says offline) and the metrics endpoint.
func (g *Gateway) stopDevicesAndPublisher(stopPolling context.CancelFunc, drainBacklog bool) {
	// Commands first: running writes finish on live pollers and their
	// results go out while the publisher still runs.
	g.mu.Lock()
	g.stopCommands()
	g.mu.Unlock()
	stopPolling()
	g.mu.Lock()
	devs := make([]*device, 0, len(g.devices))
	for _, d := range g.devices {
		devs = append(devs, d)
	}
	m := g.metrics
	g.metrics = nil
	g.mu.Unlock()
	pub := g.pub.Load()
	for _, d := range devs {
		d.wait()
	}
	if err := g.blog.Sync(); err != nil {
		g.logger.Error("sync buffer", "dir", g.bufDir, "err", err)
	}
	if pub != nil {
		if drainBacklog {
			drain(g.blog, pub.Publisher, g.opts.ShutdownGrace, g.logger)
			g.statesStopped()
		}
		if err := pub.stop(); err != nil && !errors.Is(err, context.Canceled) {
			g.logger.Error("mqtt publisher", "err", err)
		}
	}
	if m != nil {
		m.close()
	}
}

// startPublisher starts a publisher for cfg, replacing none; g.mu held.
func (g *Gateway) startPublisher(parent context.Context, cfg *config.Config) error {
	pubCfg, err := publisherConfig(cfg, g.opts.Version, g.logger)
	if err != nil {
		return err
	}
	pubCfg.ShutdownGrace = g.opts.ShutdownGrace // demo and tests pass a shorter one
	p, err := mqtt.New(pubCfg, g.blog)
	if err != nil {
		return fmt.Errorf("mqtt publisher: %w", err)
	}
	// The publisher outlives polling: its context is cancelled only after
	// the grace period of the shutdown (or when a reload replaces it).
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	h := &publisher{Publisher: p, cancel: cancel, done: make(chan error, 1)}
	g.statesMu.Lock()
	for _, st := range g.states {
		p.PublishState(st.topic, st.payload)
	}
	// The command router subscribes before Run: commands the broker kept
	// for our session reach it.
	if g.commands != nil {
		if err := g.commands.attach(p); err != nil {
			g.statesMu.Unlock()
			cancel()
			return fmt.Errorf("mqtt publisher: %w", err)
		}
	}
	g.pub.Store(h)
	g.statesMu.Unlock()
	go func() {
		err := p.Run(ctx)
		h.done <- err
		if !h.stopping.Load() {
			select {
			case g.failed <- err:
			default:
			}
		}
	}()
	return nil
}

// deviceState records a device's state and publishes its retained status.
// It implements stater for the sink.
func (g *Gateway) deviceState(device string, up bool, topic string, payload []byte) {
	g.statesMu.Lock()
	defer g.statesMu.Unlock()
	g.states[device] = deviceState{up: up, topic: topic, payload: payload}
	if pub := g.pub.Load(); pub != nil {
		pub.PublishState(topic, payload) // does not block
	}
}

// statesStopped sets every device's retained status to "stopped" at a
// clean shutdown, once polling has ended: the publisher publishes them
// before its offline status, so a dashboard tells a device behind a
// stopped gateway from one that is down. (A kill -9 leaves the last state;
// the Will then says the gateway is offline.)
func (g *Gateway) statesStopped() {
	payload := stoppedPayload(time.Now())
	g.statesMu.Lock()
	defer g.statesMu.Unlock()
	pub := g.pub.Load()
	for name, st := range g.states {
		if st.topic == "" {
			continue
		}
		st.up, st.payload = false, payload
		g.states[name] = st
		if pub != nil {
			pub.PublishState(st.topic, payload)
		}
	}
}

// stoppedPayload is the retained P/DEVICE/status of a clean stop:
// {"state":"stopped","ts":"..."}.
func stoppedPayload(ts time.Time) []byte {
	b := append(make([]byte, 0, 64), `{"state":"stopped","ts":"`...)
	b = ts.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z")
	return append(b, `"}`...)
}

// deviceUp reports the last state a device reported.
func (g *Gateway) deviceUp(name string) bool {
	g.statesMu.Lock()
	defer g.statesMu.Unlock()
	return g.states[name].up
}

// drain waits until everything buffered is acknowledged by the broker, the
// publisher is disconnected, or grace has passed, whichever comes first.
func drain(blog *buffer.Log, pub *mqtt.Publisher, grace time.Duration, logger *slog.Logger) {
	deadline := time.Now().Add(grace)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for blog.Acked() < blog.NextSeq() {
		if !pub.Connected() || time.Now().After(deadline) {
			logger.Info("shutdown: backlog kept in the buffer for the next start",
				"pending", blog.NextSeq()-blog.Acked(), "connected", pub.Connected())
			return
		}
		<-tick.C
	}
}

func bufferOptions(b config.Buffer, logger *slog.Logger) buffer.Options {
	o := buffer.Options{
		SegmentBytes: b.SegmentBytes,
		MaxBytes:     b.MaxBytes,
		MaxAge:       b.MaxAge,
		SyncInterval: b.SyncInterval,
		Logger:       logger.With("component", "buffer"),
	}
	switch b.Sync {
	case config.SyncAlways:
		o.Sync = buffer.SyncAlways
	case config.SyncNone:
		o.Sync = buffer.SyncNone
	default:
		o.Sync = buffer.SyncBatch
	}
	return o
}
