package gateway

import (
	"context"
	"errors"

	"github.com/ferry-gateway/ferry/gateway/mqtt"
)

// The command router is rebuilt on every reload (its tags and writers
// follow the devices) while the MQTT subscription stays with the
// publisher. cmdTransport sits between them: the router subscribes
// through it once per router, the gateway subscribes each publisher once
// with dispatchCommand, which hands every message to the router in force.

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

// dispatchCommand hands a command message to the router in force. It runs
// on the MQTT reader goroutine and must not block; the router's handle
// only validates and queues.
func (g *Gateway) dispatchCommand(m mqtt.Message) {
	if h := g.cmdHandler.Load(); h != nil {
		(*h)(m)
	}
}

// startCommands builds and starts the command router for the current
// config and devices; g.mu held.
func (g *Gateway) startCommands() error {
	writers := make(map[string]TagWriter, len(g.devices))
	for name, d := range g.devices {
		if d.poller != nil {
			writers[name] = d.poller
		} else {
			writers[name] = d.client
		}
	}
	r := newCommandRouter(g.cfg, cmdTransport{g}, writers, g.logger)
	if err := r.Start(); err != nil {
		return err
	}
	g.commands = r
	return nil
}

// stopCommands closes the router in force: running writes end, queued
// commands are answered; g.mu held.
func (g *Gateway) stopCommands() {
	if g.commands != nil {
		g.commands.Close()
		g.commands = nil
	}
}
