package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus"
	"github.com/ferry-gateway/ferry/adapters/opcua"
	"github.com/ferry-gateway/ferry/gateway"
)

func init() {
	register(command{"write", "write one tag through the same validation as MQTT commands", cmdWrite})
}

// cmdWrite is `ferry write [-config PATH] DEVICE/TAG VALUE`: VALUE is the
// command payload (a JSON value such as 42, true or '"text"', or
// {"value":...}); a bare word that is not JSON is taken as a string. It
// prints the result JSON and exits 1 unless the write succeeded.
func cmdWrite(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("write", "write [-config PATH] DEVICE/TAG VALUE", stderr)
	path := fs.String("config", defaultConfig, "config file")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
	pos, code := parseArgs(fs, args)
	if code >= 0 {
		return code
	}
	if len(pos) != 2 || !strings.Contains(pos[0], "/") {
		fmt.Fprintln(stderr, "ferry write: expected DEVICE/TAG VALUE")
		fs.Usage()
		return exitUsage
	}
	cfg, code := loadConfig(*path, stderr)
	if cfg == nil {
		return code
	}
	devName, tagName, _ := strings.Cut(pos[0], "/")
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	writers := map[string]gateway.TagWriter{}
	for _, d := range cfg.Modbus {
		if d.Name == devName {
			p, err := modbus.NewPoller(d, nil, logger)
			if err != nil {
				fmt.Fprintf(stderr, "ferry write: %v\n", err)
				return exitFailure
			}
			defer p.Close()
			writers[d.Name] = p
		}
	}
	for _, d := range cfg.OPCUA {
		if d.Name == devName {
			c, err := opcua.NewClient(d, cfg.Gateway.StateDir, nil, logger)
			if err != nil {
				fmt.Fprintf(stderr, "ferry write: %v\n", err)
				return exitFailure
			}
			writers[d.Name] = c
		}
	}
	wctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	res := gateway.WriteOnce(wctx, cfg, writers, devName, tagName, []byte(pos[1]), logger)
	fmt.Fprintf(stdout, "%s\n", res.JSON())
	if !res.OK {
		return exitFailure
	}
	return exitOK
}
