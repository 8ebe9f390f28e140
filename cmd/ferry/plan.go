package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/ferry-gateway/ferry/adapters/modbus"
	"github.com/ferry-gateway/ferry/adapters/opcua"
	"github.com/ferry-gateway/ferry/config"
)

func init() {
	register(command{"plan", "print the Modbus requests and OPC UA monitored items or reads of each device (no I/O)", cmdPlan})
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
			fmt.Fprintf(w, "  shares its connection with %s: one request at a time\n", nameList(others))
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
		writeOPCUAPlan(w, d)
	}
	if len(cfg.Modbus) > 0 {
		fmt.Fprintf(w, "total: %s per cycle of every scan class (%d with one request per tag)\n", requests(total), perTag)
	}
	return nil
}

// writeOPCUAPlan prints the plan the OPC UA client follows (opcua.NewPlan,
// for a server that publishes no lower limits): in subscribe mode the
// subscriptions, their CreateMonitoredItems requests and every monitored
// item's node, sampling interval, queue size and deadband; in poll mode
// the Read requests of a cycle and the interval.
func writeOPCUAPlan(w io.Writer, d config.OPCUADevice) {
	p := opcua.NewPlan(d, opcua.Limits{})
	tagW, nodeW, sampW := 0, 0, 0
	for _, it := range p.Items {
		tagW, nodeW, sampW = max(tagW, len(it.Tag)), max(nodeW, len(it.Node)), max(sampW, len(it.Sampling.String()))
	}
	if p.Mode == opcua.ModePoll {
		fmt.Fprintf(w, "opcua %s: %s, poll every %s: %s in %s per cycle (at most %d nodes per Read)\n",
			d.Name, d.Endpoint, p.Interval, plural(len(p.Items), "tag"), plural(len(p.Reads), "Read request"), p.NodesPerRead)
		for k, r := range p.Reads {
			fmt.Fprintf(w, "  read %d: %s\n", k+1, plural(len(r), "node"))
			for _, i := range r {
				fmt.Fprintf(w, "    %-*s  %s\n", tagW, p.Items[i].Tag, p.Items[i].Node)
			}
		}
		fmt.Fprintln(w, "  a server publishing a lower MaxNodesPerRead gets smaller Reads")
		return
	}
	nreq := 0
	for _, s := range p.Subscriptions {
		nreq += len(s.Requests)
	}
	fmt.Fprintf(w, "opcua %s: %s, subscribe: %s in %s, %s (at most %d items per request, %d per subscription)\n",
		d.Name, d.Endpoint, plural(len(p.Items), "monitored item"), plural(len(p.Subscriptions), "subscription"),
		plural(nreq, "CreateMonitoredItems request"), p.ItemsPerRequest, p.ItemsPerSub)
	for k, s := range p.Subscriptions {
		fmt.Fprintf(w, "  subscription %d: publishing every %s, keep-alive count %d, lifetime count %d\n",
			k+1, p.PublishingInterval, p.KeepAliveCount, p.LifetimeCount)
		for j, r := range s.Requests {
			fmt.Fprintf(w, "    request %d: %s\n", j+1, plural(len(r), "item"))
			for _, i := range r {
				it := p.Items[i]
				db := "no deadband"
				if it.DeadbandType != "" {
					db = fmt.Sprintf("deadband %s %g", it.DeadbandType, it.DeadbandValue)
				}
				fmt.Fprintf(w, "      %-*s  %-*s  sampling %-*s  queue %d  %s\n", tagW, it.Tag, nodeW, it.Node, sampW, it.Sampling, it.QueueSize, db)
			}
		}
	}
	fmt.Fprintln(w, "  a server publishing lower MaxMonitoredItemsPerCall or MaxMonitoredItemsPerSubscription gets smaller requests or more subscriptions")
}

// plural returns "1 noun" or "N nouns".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func requests(n int) string {
	if n == 1 {
		return "1 request"
	}
	return fmt.Sprintf("%d requests", n)
}

// nameList lists names, the first three and how many more when there
// are more than four (fifty meters behind two gateways).
func nameList(names []string) string {
	if len(names) <= 4 {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:3], ", "), len(names)-3)
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
