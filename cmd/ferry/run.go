package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway"
	"github.com/ferry-gateway/ferry/systemd"
)

func cmdCheck(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check", "check [-config PATH]", stderr)
	path := fs.String("config", defaultConfig, "config file to validate")
	if code := parseFlags(fs, args, 0); code >= 0 {
		return code
	}
	cfg, code := loadConfig(*path, stderr)
	if cfg == nil {
		return code
	}
	fmt.Fprintln(stdout, cfg.Summary())
	if len(cfg.Modbus)+len(cfg.OPCUA) == 0 {
		fmt.Fprintf(stderr, "warning: %s\n", noDevices(*path))
	}
	if err := stateDirUsable(cfg.Gateway.StateDir, false); err != nil {
		fmt.Fprintf(stderr, "warning: %v\n", err)
	}
	return exitOK
}

// noDevices is the warning of check and run for a config without devices.
func noDevices(path string) string {
	return fmt.Sprintf("%s has no devices: nothing will be polled (add a [[modbus]] or [[opcua]] table; ferry init prints a starter config)", path)
}

// stateDirUsable checks that the user running ferry can use dir as
// gateway.state_dir: it exists and is writable, or can be created. With
// create (ferry run), it is created; without (ferry check), nothing is
// changed and only permissions are looked at. The error says which key to
// set and who needs which permission.
func stateDirUsable(dir string, create bool) error {
	who := "the user ferry runs as"
	if u, err := user.Current(); err == nil {
		who = fmt.Sprintf("user %s (uid %s)", u.Username, u.Uid)
	}
	fix := fmt.Sprintf("set gateway.state_dir to a directory %s can write, or let it write %s (e.g. install -d -o USER -m 0750 %s)", who, dir, dir)
	if create {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return fmt.Errorf("gateway.state_dir %q cannot be created: %w: %s", dir, err, fix)
		}
		f, err := os.CreateTemp(dir, ".ferry-write-test-")
		if err != nil {
			return fmt.Errorf("gateway.state_dir %q is not writable: %w: %s", dir, err, fix)
		}
		f.Close()
		os.Remove(f.Name())
		return nil
	}
	// check: the directory, or the nearest parent that exists, must be
	// writable (and searchable) by this user.
	p := filepath.Clean(dir)
	for {
		st, err := os.Stat(p)
		if err == nil {
			if !st.IsDir() {
				return fmt.Errorf("gateway.state_dir %q cannot be used: %s is not a directory: %s", dir, p, fix)
			}
			if err := syscall.Access(p, 0o3); err != nil { // W_OK|X_OK
				if p == filepath.Clean(dir) {
					return fmt.Errorf("gateway.state_dir %q is not writable by %s: %s", dir, who, fix)
				}
				return fmt.Errorf("gateway.state_dir %q does not exist and %s cannot create it in %s: %s", dir, who, p, fix)
			}
			return nil
		}
		parent := filepath.Dir(p)
		if parent == p {
			return nil
		}
		p = parent
	}
}

// loadConfig loads path and prints every error in the contract's
// FILE:LINE:COL: KEY.PATH: message form. It returns nil and the exit code
// when the config cannot be used.
func loadConfig(path string, stderr io.Writer) (*config.Config, int) {
	cfg, err := config.Load(path)
	if err == nil {
		return cfg, exitOK
	}
	var errs config.Errors
	if errors.As(err, &errs) {
		for _, e := range errs {
			fmt.Fprintln(stderr, e.Error())
		}
		fmt.Fprintf(stderr, "%s: %d error(s)\n", path, len(errs))
	} else {
		fmt.Fprintf(stderr, "ferry: %v\n", err)
	}
	return nil, exitUsage
}

func cmdRun(ctx context.Context, args []string, _, stderr io.Writer) int {
	fs := newFlagSet("run", "run [-config PATH] [-log-format auto|text|json] [-log-level LEVEL]", stderr)
	path := fs.String("config", defaultConfig, "config file")
	logFormat := fs.String("log-format", logAuto, "log format: auto (text; under journald with priorities, no timestamps), text or json")
	logLevel := fs.String("log-level", "", "log level: debug, info, warn or error (default: gateway.log_level)")
	if code := parseFlags(fs, args, 0); code >= 0 {
		return code
	}
	// Edge boxes are short of memory, not of CPU at ferry's rates: collect
	// more often than Go's default (an explicit GOGC wins), and much more
	// often while the config is parsed, whose garbage would otherwise set
	// the process's peak RSS.
	gcPercent := runtimeGCPercent
	if os.Getenv("GOGC") != "" {
		gcPercent = debug.SetGCPercent(-1)
	}
	debug.SetGCPercent(startupGCPercent)
	cfg, code := loadConfig(*path, stderr)
	debug.SetGCPercent(gcPercent)
	if cfg == nil {
		return code
	}
	level := cfg.Gateway.LogLevel
	if *logLevel != "" {
		level = *logLevel
	}
	logger, err := newLogger(stderr, *logFormat, level)
	if err != nil {
		fmt.Fprintf(stderr, "ferry run: %v\n", err)
		return exitUsage
	}
	logger.Info("ferry starting", "version", version, "config", *path,
		"modbus_devices", len(cfg.Modbus), "opcua_devices", len(cfg.OPCUA))
	if len(cfg.Modbus)+len(cfg.OPCUA) == 0 {
		logger.Warn(noDevices(*path))
	}
	if err := stateDirUsable(cfg.Gateway.StateDir, true); err != nil {
		logger.Error("ferry cannot start", "err", err)
		return exitFailure
	}
	notify := systemd.NewNotifier(logger)
	// SIGHUP is caught from the start (its default action would kill the
	// gateway) and handled once the gateway is ready.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// What the service manager wants runs beside the gateway once it is
	// ready, and ends with it: reload on SIGHUP, STATUS= every few
	// seconds, the watchdog.
	sideCtx, stopSide := context.WithCancel(ctx)
	var side sync.WaitGroup
	var g *gateway.Gateway
	ready := func() {
		notify.Ready()
		side.Go(func() { watchHangup(sideCtx, hup, *path, g, notify, logger) })
		side.Go(func() { reportStatus(sideCtx, g, notify) })
		side.Go(func() { notify.Watchdog(sideCtx, g.Progress) })
	}
	g, err = gateway.New(cfg, gateway.Options{Logger: logger, Version: version, OnReady: ready})
	if err != nil {
		stopSide()
		logger.Error("ferry cannot start", "err", err)
		return exitFailure
	}
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			notify.Stopping()
		case <-stopped:
		}
	}()

	err = g.Run(ctx)
	close(stopped)
	stopSide()
	side.Wait()
	if err != nil {
		logger.Error("ferry stopped", "err", err)
		return exitFailure
	}
	logger.Info("ferry stopped")
	return exitOK
}

// GC targets of `ferry run` unless GOGC is set: see cmdRun.
const (
	runtimeGCPercent = 50
	startupGCPercent = 10
)

// statusEvery is how often STATUS= is sent to the service manager.
const statusEvery = 5 * time.Second

func reportStatus(ctx context.Context, g *gateway.Gateway, notify *systemd.Notifier) {
	t := time.NewTicker(statusEvery)
	defer t.Stop()
	for {
		notify.Status(g.Status())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// watchHangup reloads the config file on SIGHUP: an invalid file is logged
// error by error and the running config stays in force; a valid one is
// applied device by device.
func watchHangup(ctx context.Context, hup <-chan os.Signal, path string, g *gateway.Gateway, notify *systemd.Notifier, logger *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		notify.Reloading()
		cfg, err := config.Load(path)
		switch {
		case err != nil:
			var errs config.Errors
			if errors.As(err, &errs) {
				for _, e := range errs {
					logger.Error("reload: invalid config, keeping the running one", "error", e.Error())
				}
			} else {
				logger.Error("reload: keeping the running config", "err", err)
			}
		default:
			if err := g.Reload(cfg); err != nil {
				logger.Error("reload: keeping the running config", "err", err)
			}
		}
		notify.Ready()
	}
}
