package gateway

import (
	"context"
	"errors"
	"reflect"
	"time"

	"github.com/ferry-gateway/ferry/config"
)

// ErrNotRunning is returned by Reload before Run started or after it ended.
var ErrNotRunning = errors.New("gateway is not running")

// Reload applies cfg to the running gateway, device by device: devices
// whose config did not change keep running without a gap, removed ones
// stop (their retained status is cleared), new and changed ones start.
// A changed [mqtt] section replaces the publisher: the new one reconnects
// and resumes from the buffer, so nothing buffered is lost (what was in
// flight completes through the same session store or is sent again).
// [gateway] and [buffer] cannot change while running: they are kept, a
// warning says so, and the rest is applied. Reload returns an error, and
// changes nothing, when a new device cannot be built.
func (g *Gateway) Reload(cfg *config.Config) error {
	metrics, err := g.reload(cfg)
	if err != nil {
		return err
	}
	if metrics != nil {
		g.restartMetrics(*metrics)
	}
	g.sink.page.reloaded(time.Now())
	return nil
}

// reload is Reload with g.mu held; it returns the [metrics] to restart
// the endpoint with, if they changed (which must happen without g.mu: the
// metrics collector takes it).
func (g *Gateway) reload(cfg *config.Config) (*config.Metrics, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.running == nil || g.running.Err() != nil {
		return nil, ErrNotRunning
	}
	old := g.cfg
	next := *cfg
	if !reflect.DeepEqual(old.Gateway, next.Gateway) || !reflect.DeepEqual(old.Buffer, next.Buffer) {
		g.logger.Warn("reload: [gateway] and [buffer] changes need a restart; keeping the running values")
		next.Gateway, next.Buffer = old.Gateway, old.Buffer
	}

	// Build every new device first: a device that cannot be built leaves
	// the running config untouched.
	wanted := deviceConfigs(&next)
	fresh := make(map[string]*device)
	for _, d := range wanted {
		if cur, ok := g.devices[d.name]; ok && cur.same(d) {
			continue
		}
		dev, err := g.newDevice(d)
		if err != nil {
			for _, f := range fresh {
				if f.poller != nil {
					_ = f.poller.Close()
				}
			}
			return nil, err
		}
		fresh[d.name] = dev
	}

	keep := make(map[string]bool, len(wanted))
	for _, d := range wanted {
		keep[d.name] = true
	}
	// The command router outlives the reload. Hand it the new tables
	// first: it returns once no write runs on a device that is about to
	// stop; commands queued for kept devices stay queued.
	if err := g.reloadCommands(&next, keep, fresh); err != nil {
		g.logger.Error("reload: command subscription not changed", "err", err)
	}
	g.cfg = &next
	g.sink.setRoutes(&next)

	var stopped, started, kept []string
	for name, d := range g.devices {
		if keep[name] && fresh[name] == nil {
			kept = append(kept, name)
			continue
		}
		d.stop()
		delete(g.devices, name)
		stopped = append(stopped, name)
		if !keep[name] {
			g.forgetDevice(name)
		}
	}
	for name, d := range fresh {
		g.devices[name] = d
		g.startDevice(d)
		started = append(started, name)
	}

	g.startCommandWorkers()
	// With a new topic prefix the router has subscribed to its new filter
	// (reloadCommands); a new publisher carries it from its start.
	if mqttChanged := !reflect.DeepEqual(old.MQTT, next.MQTT); mqttChanged {
		if err := g.replacePublisher(&next); err != nil {
			g.logger.Error("reload: mqtt settings not applied; keeping the running publisher", "err", err)
		} else {
			g.logger.Info("reload: mqtt settings applied; publisher reconnected", "broker", next.MQTT.URL)
		}
	}
	var metrics *config.Metrics
	if old.Metrics != next.Metrics { // listen or credentials
		metrics = &next.Metrics
	}
	g.logger.Info("reload: config applied", "kept", kept, "restarted_or_removed", stopped, "started", started)
	return metrics, nil
}

// restartMetrics replaces the metrics endpoint by one for m (none when
// m.Listen is empty); g.mu not held.
func (g *Gateway) restartMetrics(m config.Metrics) {
	g.mu.Lock()
	old := g.metrics
	g.metrics = nil
	g.mu.Unlock()
	if old != nil {
		old.close()
	}
	if m.Listen == "" {
		return
	}
	srv, err := g.startMetrics(m)
	if err != nil {
		g.logger.Error("reload: metrics endpoint not started", "listen", m.Listen, "err", err)
		return
	}
	g.mu.Lock()
	stopping := g.running == nil || g.running.Err() != nil
	if !stopping {
		g.metrics = srv
	}
	g.mu.Unlock()
	if stopping {
		srv.close() // the shutdown has begun and would not close it
	}
}

// replacePublisher stops the running publisher (in-flight records stay in
// the buffer and its session store) and starts one for cfg; g.mu held.
func (g *Gateway) replacePublisher(cfg *config.Config) error {
	if _, err := publisherConfig(cfg, g.opts.Version, g.logger); err != nil {
		return err
	}
	if old := g.pub.Load(); old != nil {
		if err := old.stop(); err != nil && !errors.Is(err, context.Canceled) {
			g.logger.Warn("reload: the replaced publisher ended with an error", "err", err)
		}
	}
	return g.startPublisher(g.running, cfg)
}

// forgetDevice drops a removed device's state and clears its retained
// status at the broker.
func (g *Gateway) forgetDevice(name string) {
	g.statesMu.Lock()
	defer g.statesMu.Unlock()
	st, ok := g.states[name]
	if !ok {
		return
	}
	delete(g.states, name)
	if pub := g.pub.Load(); pub != nil {
		pub.PublishState(st.topic, nil) // an empty retained message clears it
	}
}
