// Package gateway wires ferry together: it opens the disk buffer, starts a
// poller per device that appends every reading to the buffer, and runs the
// MQTT publisher that drains the buffer to the broker. Run owns the
// lifecycle; the order of shutdown is what makes the guarantees of
// CONTRACT.md hold (stop polling, sync the buffer, publish what can be
// published within a grace period, say offline, close).
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus"
	"github.com/ferry-gateway/ferry/adapters/opcua"
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
	// OnReady, if set, is called once the buffer is open and every poller
	// and the publisher have been started.
	OnReady func()
}

// Run runs the gateway described by cfg until ctx is cancelled. It returns
// nil after a clean shutdown and an error when the gateway cannot start or
// its publisher fails for good.
func Run(ctx context.Context, cfg *config.Config, opts Options) error {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	grace := opts.ShutdownGrace
	if grace <= 0 {
		grace = DefaultShutdownGrace
	}

	bufDir := filepath.Join(cfg.Gateway.StateDir, "buffer")
	blog, err := buffer.Open(bufDir, bufferOptions(cfg.Buffer, logger))
	if err != nil {
		return fmt.Errorf("open buffer %s: %w", bufDir, err)
	}
	defer func() {
		if err := blog.Close(); err != nil {
			logger.Error("close buffer", "dir", bufDir, "err", err)
		}
	}()

	pubCfg, err := publisherConfig(cfg, opts.Version, logger)
	if err != nil {
		return err
	}
	pub, err := mqtt.New(pubCfg, blog)
	if err != nil {
		return fmt.Errorf("mqtt publisher: %w", err)
	}
	sink := newSink(cfg, blog, pub, logger)

	pollers := make([]interface{ Run(context.Context) error }, 0, len(cfg.Modbus)+len(cfg.OPCUA))
	for _, dev := range cfg.Modbus {
		p, err := modbus.NewPoller(dev, sink, logger)
		if err != nil {
			return fmt.Errorf("modbus device %q: %w", dev.Name, err)
		}
		pollers = append(pollers, p)
	}
	for _, dev := range cfg.OPCUA {
		c, err := opcua.NewClient(dev, cfg.Gateway.StateDir, sink, logger)
		if err != nil {
			return fmt.Errorf("opcua device %q: %w", dev.Name, err)
		}
		pollers = append(pollers, c)
	}
	warnUnsupported(cfg, logger)

	// The publisher outlives polling: it gets its own context, cancelled
	// only after the grace period of the shutdown.
	pubCtx, stopPub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPub()
	pubDone := make(chan error, 1)
	go func() { pubDone <- pub.Run(pubCtx) }()

	pollCtx, stopPolling := context.WithCancel(ctx)
	defer stopPolling()
	var wg sync.WaitGroup
	for _, p := range pollers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Run(pollCtx); err != nil && !errors.Is(err, context.Canceled) {
				logger.Error("poller stopped", "err", err)
			}
		}()
	}
	logger.Info("gateway started", "buffer", bufDir, "broker", cfg.MQTT.URL,
		"topic_prefix", cfg.MQTT.TopicPrefix, "pending", blog.NextSeq()-blog.Acked())
	if opts.OnReady != nil {
		opts.OnReady()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-pubDone:
		// The publisher only returns on its own when it cannot go on.
		runErr = fmt.Errorf("mqtt publisher: %w", err)
		pubDone <- nil
	}

	stopPolling()
	wg.Wait()
	if err := blog.Sync(); err != nil {
		logger.Error("sync buffer", "dir", bufDir, "err", err)
	}
	if runErr == nil {
		drain(blog, pub, grace, logger)
	}
	stopPub()
	if err := <-pubDone; err != nil && runErr == nil && !errors.Is(err, context.Canceled) {
		runErr = fmt.Errorf("mqtt publisher: %w", err)
	}
	return runErr
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

// warnUnsupported logs, once at start, every configured feature this build
// accepts in the config but does not act on yet, so nobody believes a
// setting is in force when it is not.
func warnUnsupported(cfg *config.Config, logger *slog.Logger) {
	if cfg.Metrics.Listen != "" {
		logger.Warn("metrics.listen is set but this build serves no metrics endpoint yet", "listen", cfg.Metrics.Listen)
	}
	if cfg.Buffer.MaxAge > 0 {
		logger.Warn("buffer.max_age is not enforced by this build yet; only buffer.max_bytes caps the buffer", "max_age", cfg.Buffer.MaxAge)
	}
	writable := 0
	for _, d := range cfg.Modbus {
		for _, t := range d.Tags {
			if t.Writable {
				writable++
			}
		}
	}
	if writable > 0 {
		logger.Warn("writable tags are configured but this build does not accept commands yet; nothing is written to any device", "writable_tags", writable)
	}
}
