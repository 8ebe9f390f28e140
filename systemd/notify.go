// Package systemd speaks the service manager's protocols for ferry: the
// sd_notify readiness, reload, stopping and status messages, and a watchdog
// that pings only while the gateway reports that it is making progress.
// Outside systemd (no NOTIFY_SOCKET) everything here is a no-op. The unit
// file, ferry.service, lives next to this code.
package systemd

import (
	"context"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends sd_notify messages to the service manager.
type Notifier struct {
	logger *slog.Logger
}

// NewNotifier returns a Notifier; logger may be nil.
func NewNotifier(logger *slog.Logger) *Notifier {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Notifier{logger: logger}
}

func (n *Notifier) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.logger.Warn("sd_notify failed", "state", state, "err", err)
	}
}

// Ready tells the service manager that start-up is complete.
func (n *Notifier) Ready() { n.send(daemon.SdNotifyReady) }

// Reloading tells the service manager that a reload started; call Ready
// when it is done. MONOTONIC_USEC is included for Type=notify-reload.
func (n *Notifier) Reloading() {
	n.send(daemon.SdNotifyReloading + "\n" + daemon.SdNotifyMonotonicUsec())
}

// Stopping tells the service manager that shutdown started.
func (n *Notifier) Stopping() { n.send(daemon.SdNotifyStopping) }

// Status sets the one-line status `systemctl status` shows.
func (n *Notifier) Status(line string) { n.send("STATUS=" + line) }

// Watchdog pings the service manager at half the WatchdogSec interval for
// as long as healthy returns nil, until ctx is done. When healthy reports
// an error the pings stop (so systemd restarts a hung gateway) and the
// reason is logged once per episode. Without WATCHDOG_USEC it returns at
// once.
func (n *Notifier) Watchdog(ctx context.Context, healthy func() error) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		n.logger.Warn("watchdog settings unusable", "err", err)
		return
	}
	if interval <= 0 {
		return
	}
	tick := time.NewTicker(interval / 2)
	defer tick.Stop()
	failing := false
	for {
		if err := healthy(); err != nil {
			if !failing {
				n.logger.Error("watchdog: not making progress; withholding pings so systemd can restart ferry", "err", err)
			}
			failing = true
		} else {
			if failing {
				n.logger.Info("watchdog: progress again; pings resume")
			}
			failing = false
			n.send(daemon.SdNotifyWatchdog)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
