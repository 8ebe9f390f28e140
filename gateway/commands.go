package gateway

import (
	"github.com/ferry-gateway/ferry/config"
)

// One command router lives as long as the gateway: a reload swaps its
// devices, tags and limits (commandRouter.update) while commands keep
// flowing, so none is ever routed to a router that is closed. The router
// subscribes and answers through the publisher in force directly; a
// publisher that replaces it is handed to the router (attach) before it
// connects.

// commandWriters are the TagWriters of the devices in force; g.mu held.
func (g *Gateway) commandWriters() map[string]TagWriter {
	writers := make(map[string]TagWriter, len(g.devices))
	for name, d := range g.devices {
		writers[name] = d.writer()
	}
	return writers
}

// startCommands builds and starts the command router for the current
// config and devices; g.mu held.
func (g *Gateway) startCommands() error {
	var mq commandTransport
	if pub := g.pub.Load(); pub != nil {
		mq = pub.Publisher
	}
	r := newCommandRouter(g.cfg, mq, g.commandWriters(), g.logger)
	if err := r.Start(); err != nil {
		return err
	}
	g.commands = r
	g.cmdStats.Store(r)
	return nil
}

// reloadCommands hands cfg to the router in force before the devices are
// switched: it returns once no write is running on a device that a reload
// changes or removes (their queued commands are answered device_error).
// Commands to kept devices stay queued; commands to changed devices wait
// until startCommandWorkers. The writers after the reload are those of
// the running devices that keep says stay and fresh does not replace,
// and those of fresh. g.mu held.
func (g *Gateway) reloadCommands(cfg *config.Config, keep map[string]bool, fresh map[string]*device) error {
	if g.commands == nil {
		return nil
	}
	writers := g.commandWriters()
	for name := range writers {
		if !keep[name] || fresh[name] != nil {
			delete(writers, name)
		}
	}
	for name, d := range fresh {
		writers[name] = d.writer()
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
		g.cmdStats.Store(nil)
	}
}

// CommandStats returns the command router's counters; false before Run
// started it or after shutdown. It does not wait for a reload.
func (g *Gateway) CommandStats() (CommandStats, bool) {
	r := g.cmdStats.Load()
	if r == nil {
		return CommandStats{}, false
	}
	return r.Stats(), true
}

// writer is the device's adapter as the command router sees it.
func (d *device) writer() TagWriter {
	if d.poller != nil {
		return d.poller
	}
	return d.client
}
