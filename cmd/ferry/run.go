package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway"
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
	cfg, code := loadConfig(*path, stderr)
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
	go watchHangup(ctx, *path, logger)

	logger.Info("ferry starting", "version", version, "config", *path,
		"modbus_devices", len(cfg.Modbus), "opcua_devices", len(cfg.OPCUA))
	if err := gateway.Run(ctx, cfg, gateway.Options{Logger: logger, Version: version}); err != nil {
		logger.Error("ferry stopped", "err", err)
		return exitFailure
	}
	logger.Info("ferry stopped")
	return exitOK
}

// watchHangup validates the config file on SIGHUP. Without a handler the
// default action of SIGHUP would kill the gateway; until live reload lands,
// a valid new file is reported as needing a restart.
func watchHangup(ctx context.Context, path string, logger *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if _, err := config.Load(path); err != nil {
			var errs config.Errors
			if errors.As(err, &errs) {
				for _, e := range errs {
					logger.Error("reload: invalid config, keeping the running one", "error", e.Error())
				}
				continue
			}
			logger.Error("reload: keeping the running config", "err", err)
			continue
		}
		logger.Warn("reload: the new config is valid; restart ferry to apply it (live reload is not supported yet)", "config", path)
	}
}
