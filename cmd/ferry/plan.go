package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/ferry-gateway/ferry/adapters/modbus"
	"github.com/ferry-gateway/ferry/config"
)

func init() {
	register(command{"plan", "print the Modbus requests each device gets per cycle (no I/O)", cmdPlan})
}

func cmdPlan(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("plan", "plan [-config PATH]", stderr)
	path := fs.String("config", defaultConfig, "config file")
	if code := parseFlags(fs, args, 0); code >= 0 {
		return code
	}
	cfg, code := loadConfig(*path, stderr)
	if cfg == nil {
		return code
	}
	if err := writePlan(stdout, cfg); err != nil {
		fmt.Fprintf(stderr, "ferry plan: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// writePlan prints, per device, the read requests of one cycle of each
// scan class: table, start+count, and the tags covered (name@address, with
// .bit for a bit of a register). Devices sharing a url are noted: they
// share one connection and take turns, one request at a time.
func writePlan(w io.Writer, cfg *config.Config) error {
	byURL := map[string][]string{}
	for _, d := range cfg.Modbus {
		byURL[d.URL] = append(byURL[d.URL], d.Name)
	}
	total, perTag := 0, 0
	for _, d := range cfg.Modbus {
		p, err := modbus.Compile(d)
		if err != nil {
			return err
		}
		one := d
		one.OneRequestPerTag = true
		q, err := modbus.Compile(one)
		if err != nil {
			return err
		}
		total += p.NumRequests()
		perTag += q.NumRequests()
		fmt.Fprintf(w, "modbus %s: %s unit %d, %s per cycle (%d with one request per tag)\n",
			d.Name, d.URL, d.Unit, requests(p.NumRequests()), q.NumRequests())
		if others := without(byURL[d.URL], d.Name); len(others) > 0 {
			fmt.Fprintf(w, "  shares its connection with %s: one request at a time\n", strings.Join(others, ", "))
		}
		for _, sc := range p.ScanClasses() {
			fmt.Fprintf(w, "  every %s:\n", sc.Interval)
			for _, r := range sc.Requests {
				fmt.Fprintf(w, "    %-8s %5d+%-4d", r.Table, r.Start, r.Count)
				for _, t := range r.Tags {
					fmt.Fprintf(w, " %s@%d", t.Name, int(r.Start)+int(t.Offset))
					if t.Bit >= 0 {
						fmt.Fprintf(w, ".%d", t.Bit)
					}
				}
				fmt.Fprintln(w)
			}
		}
	}
	for _, d := range cfg.OPCUA {
		tags := fmt.Sprintf("%d tags", len(d.Tags))
		if len(d.Tags) == 1 {
			tags = "1 tag"
		}
		fmt.Fprintf(w, "opcua %s: %s, %s (opcua: not planned by this build)\n", d.Name, d.Endpoint, tags)
	}
	if len(cfg.Modbus) > 0 {
		fmt.Fprintf(w, "total: %s per cycle of every scan class (%d with one request per tag)\n", requests(total), perTag)
	}
	return nil
}

func requests(n int) string {
	if n == 1 {
		return "1 request"
	}
	return fmt.Sprintf("%d requests", n)
}

func without(names []string, name string) []string {
	var out []string
	for _, n := range names {
		if n != name {
			out = append(out, n)
		}
	}
	return out
}
