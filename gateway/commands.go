package gateway

import (
	"context"
	"errors"

	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway/mqtt"
)

// One command router lives as long as the gateway: a reload swaps its
// devices, tags and limits (commandRouter.update) while commands keep
// flowing, so none is ever routed to a router that is closed. The MQTT
// subscription stays with the publisher; cmdTransport sits between them:
// the router subscribes through it, the gateway subscribes each publisher
// once with dispatchCommand, which hands every message to the router.

// cmdTransport is the router's view of the MQTT side.
type cmdTransport struct{ g *Gateway }

// Subscribe records the router's handler and filter and makes sure the
// current publisher carries the subscription.
func (t cmdTransport) Subscribe(filter string, qos byte, h func(mqtt.Message)) error {
	g := t.g
	g.statesMu.Lock()
	defer g.statesMu.Unlock()
	g.cmdHandler.Store(&h)
	if g.cmdFilter == filter && g.cmdQoS == qos {
		return nil
	}
	g.cmdFilter, g.cmdQoS = filter, qos
	if pub := g.pub.Load(); pub != nil {
		return pub.Subscribe(filter, qos, g.dispatchCommand)
	}
	return nil
}

// Respond publishes a command result through the current publisher.
func (t cmdTransport) Respond(ctx context.Context, topic string, payload, correlation []byte) error {
	pub := t.g.pub.Load()
	if pub == nil {
		return errors.New("no mqtt publisher")
	}
	return pub.Respond(ctx, topic, payload, correlation)
}

// ClearRetained deletes a retained command through the current publisher.
func (t cmdTransport) ClearRetained(ctx context.Context, topic string) error {
	pub := t.g.pub.Load()
	if pub == nil {
		return errors.New("no mqtt publisher")
	}
	return pub.ClearRetained(ctx, topic)
}

// dispatchCommand hands a command message to the router. It runs on the
// MQTT reader goroutine; the router's handle only validates and queues.
func (g *Gateway) dispatchCommand(m mqtt.Message) {
	if h := g.cmdHandler.Load(); h != nil {
		(*h)(m)
	}
}

// commandWriters are the TagWriters of the devices in force; g.mu held.
func (g *Gateway) commandWriters() map[string]TagWriter {
	writers := make(map[string]TagWriter, len(g.devices))
	for name, d := range g.devices {
		if d.poller != nil {
			writers[name] = d.poller
		} else {
			writers[name] = d.client
		}
	}
	return writers
}

// startCommands builds and starts the command router for the current
// config and devices; g.mu held.
func (g *Gateway) startCommands() error {
	r := newCommandRouter(g.cfg, cmdTransport{g}, g.commandWriters(), g.logger)
	if err := r.Start(); err != nil {
		return err
	}
	g.commands = r
	return nil
}

// reloadCommands hands cfg to the router in force before the devices are
// switched: it returns once no write is running on a device that a reload
// changes or removes (their queued commands are answered device_error).
// Commands to kept devices stay queued; commands to changed devices wait
// until startCommandWorkers. writers are the TagWriters after the reload:
// those of kept devices and of the fresh ones. g.mu held.
func (g *Gateway) reloadCommands(cfg *config.Config, writers map[string]TagWriter) error {
	if g.commands == nil {
		return nil
	}
	return g.commands.update(cfg, writers)
}

// startCommandWorkers starts the workers of the devices a reload added or
// changed, once their writers run; g.mu held.
func (g *Gateway) startCommandWorkers() {
	if g.commands != nil {
		g.commands.startWorkers()
	}
}

// stopCommands closes the router: running writes end, queued commands
// are answered; g.mu held. Only at shutdown.
func (g *Gateway) stopCommands() {
	if g.commands != nil {
		g.commands.Close()
		g.commands = nil
	}
}

// CommandStats returns the command router's counters; false before Run
// started it or after shutdown.
func (g *Gateway) CommandStats() (CommandStats, bool) {
	g.mu.Lock()
	r := g.commands
	g.mu.Unlock()
	if r == nil {
		return CommandStats{}, false
	}
	return r.Stats(), true
}
