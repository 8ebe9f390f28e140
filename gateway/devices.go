package gateway

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus"
	"github.com/ferry-gateway/ferry/adapters/opcua"
	"github.com/ferry-gateway/ferry/config"
)

// runner is what the gateway needs of a device adapter.
type runner interface {
	Run(ctx context.Context) error
}

// deviceConfig is one [[modbus]] or [[opcua]] table.
type deviceConfig struct {
	name   string
	modbus *config.ModbusDevice
	opcua  *config.OPCUADevice
}

func deviceConfigs(cfg *config.Config) []deviceConfig {
	out := make([]deviceConfig, 0, len(cfg.Modbus)+len(cfg.OPCUA))
	for i := range cfg.Modbus {
		out = append(out, deviceConfig{name: cfg.Modbus[i].Name, modbus: &cfg.Modbus[i]})
	}
	for i := range cfg.OPCUA {
		out = append(out, deviceConfig{name: cfg.OPCUA[i].Name, opcua: &cfg.OPCUA[i]})
	}
	return out
}

// same reports whether two device configs are identical (a reload leaves
// the device running).
func (d deviceConfig) same(o deviceConfig) bool {
	return reflect.DeepEqual(d.modbus, o.modbus) && reflect.DeepEqual(d.opcua, o.opcua)
}

// device is one device's adapter and the goroutine running it.
type device struct {
	deviceConfig
	run      runner
	poller   *modbus.Poller // one of poller, client
	client   *opcua.Client
	stallFor time.Duration // no progress for this long means hung
	cancel   context.CancelFunc
	done     chan struct{}
}

func (g *Gateway) newDevice(d deviceConfig) (*device, error) {
	dev := &device{deviceConfig: d}
	switch {
	case d.modbus != nil:
		p, err := modbus.NewPoller(*d.modbus, g.sink, g.logger)
		if err != nil {
			return nil, fmt.Errorf("modbus device %q: %w", d.name, err)
		}
		dev.run, dev.poller = p, p
		// A poll cycle, even a failing one, completes within its interval
		// plus every request timing out with its retries.
		worst := d.modbus.Interval
		for _, t := range d.modbus.Tags {
			worst = max(worst, t.Interval)
		}
		requests := p.Plan().NumRequests()
		dev.stallFor = max(3*worst+time.Duration(requests*(d.modbus.Retries+1))*d.modbus.Timeout, time.Minute)
	case d.opcua != nil:
		c, err := opcua.NewClient(*d.opcua, g.cfg.Gateway.StateDir, g.sink, g.logger)
		if err != nil {
			return nil, fmt.Errorf("opcua device %q: %w", d.name, err)
		}
		dev.run, dev.client = c, c
		// Reconnects back off to 10 s; a quiet subscription is probed about
		// every 10 s plus the request timeout.
		dev.stallFor = max(3*(10*time.Second+d.opcua.Timeout), time.Minute)
	}
	return dev, nil
}

// startDevice runs d until its own cancel or the gateway's run context;
// g.mu held.
func (g *Gateway) startDevice(d *device) {
	ctx, cancel := context.WithCancel(g.running)
	d.cancel, d.done = cancel, make(chan struct{})
	go func() {
		defer close(d.done)
		if err := d.run.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			g.logger.Error("device stopped", "device", d.name, "err", err)
		}
	}()
}

// wait waits for a started device's goroutine to return.
func (d *device) wait() {
	if d.done != nil {
		<-d.done
	}
}

// stop cancels a started device and waits for it.
func (d *device) stop() {
	if d.cancel != nil {
		d.cancel()
	}
	d.wait()
	if d.poller != nil {
		_ = d.poller.Close()
	}
}

// counter is a number that grows while a device's loop makes progress:
// poll cycles, connection attempts, notifications, liveness probes.
func (d *device) counter() uint64 {
	if d.poller != nil {
		return d.poller.Stats().Cycles
	}
	s := d.client.Stats()
	return s.Connects + s.ConnectFailures + s.Notifications + s.Reads + s.Probes
}
