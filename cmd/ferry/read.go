package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus"
	"github.com/ferry-gateway/ferry/adapters/opcua"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway/record"
)

func init() {
	register(command{"read", "read tags once from a live device and print them", cmdRead})
}

// parseArgs parses flags that may come before, between or after the
// positional arguments (ferry read DEVICE -config X). It returns the
// positional arguments, or an exit code >= 0.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, int) {
	var pos []string
	for {
		if code := parseFlags(fs, args, len(args)); code >= 0 {
			return nil, code
		}
		if fs.NArg() == 0 {
			return pos, -1
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func cmdRead(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("read", "read [-config PATH] DEVICE[/TAG]", stderr)
	path := fs.String("config", defaultConfig, "config file")
	pos, code := parseArgs(fs, args)
	if code >= 0 {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "ferry read: expected one DEVICE or DEVICE/TAG")
		fs.Usage()
		return exitUsage
	}
	cfg, code := loadConfig(*path, stderr)
	if cfg == nil {
		return code
	}
	devName, tagName, oneTag := strings.Cut(pos[0], "/")
	for _, d := range cfg.OPCUA {
		if d.Name == devName {
			return readOPCUA(ctx, cfg, d, tagName, oneTag, stdout, stderr)
		}
	}
	var found bool
	for _, d := range cfg.Modbus {
		if d.Name != devName {
			continue
		}
		found = true
		if oneTag {
			var keep = d.Tags[:0:0]
			for _, t := range d.Tags {
				if t.Name == tagName {
					keep = append(keep, t)
				}
			}
			if len(keep) == 0 {
				fmt.Fprintf(stderr, "ferry read: device %s has no tag %q\n", devName, tagName)
				return exitUsage
			}
			d.Tags = keep
		}
		p, err := modbus.NewPoller(d, nil, nil)
		if err != nil {
			fmt.Fprintf(stderr, "ferry read: %v\n", err)
			return exitFailure
		}
		defer p.Close()
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		rs, err := p.ReadOnce(rctx)
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		for _, r := range rs {
			fmt.Fprintf(tw, "%s/%s\t%s\t%s", r.Device, r.Tag, r.Value, r.Quality)
			if r.Err != "" {
				fmt.Fprintf(tw, "\t%s", r.Err)
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
		if err != nil {
			fmt.Fprintf(stderr, "ferry read: %s unreachable: %v\n", devName, err)
			return exitFailure
		}
		return exitOK
	}
	if !found {
		fmt.Fprintf(stderr, "ferry read: no device %q in %s\n", devName, *path)
	}
	return exitUsage
}

// readOPCUA reads every tag of d (or the one named) once, in the read
// groups of the device's plan, and prints value, quality and the source
// time (the server time when the server gives no source time).
func readOPCUA(ctx context.Context, cfg *config.Config, d config.OPCUADevice, tagName string, oneTag bool, stdout, stderr io.Writer) int {
	if oneTag {
		keep := d.Tags[:0:0]
		for _, t := range d.Tags {
			if t.Name == tagName {
				keep = append(keep, t)
			}
		}
		if len(keep) == 0 {
			fmt.Fprintf(stderr, "ferry read: device %s has no tag %q\n", d.Name, tagName)
			return exitUsage
		}
		d.Tags = keep
	}
	prevLog := log.Writer() // gopcua logs through the standard logger
	log.SetOutput(io.Discard)
	defer log.SetOutput(prevLog)
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rs, err := opcua.ReadOnce(rctx, d, cfg.Gateway.StateDir)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	for _, r := range rs {
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s", r.Device, r.Tag, r.Value, r.Quality, r.Time.UTC().Format(record.TimeLayout))
		if r.Err != "" {
			fmt.Fprintf(tw, "\t%s", r.Err)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	if err != nil {
		fmt.Fprintf(stderr, "ferry read: %s unreachable: %v\n", d.Name, err)
		return exitFailure
	}
	return exitOK
}
