package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
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
	return exitOK
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
