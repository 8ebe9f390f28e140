// Command ferry-bench measures ferry at scale (issue 10): it starts
// mosquitto on a free loopback port, in-process Modbus and OPC UA
// simulators, and the ferry binary as a separate process with a generated
// config, then measures ferry's CPU and memory from /proc and what a paho
// subscriber receives, and prints one Markdown table (and JSON).
//
//	go run ./cmd/ferry-bench -short                # about 40 s on 2 cores
//	go run ./cmd/ferry-bench -json bench.json -md bench.md
//	go run ./cmd/ferry-bench -scenario modbus-1k-100ms,baseline
//
// Scenarios: modbus-10k-1s, modbus-1k-100ms, opcua-10k-1hz, latency,
// outage-drain, baseline (see docs/benchmarks.md for what each measures).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

type options struct {
	Short     bool          `json:"short"`
	N         int           `json:"n"`
	Duration  time.Duration `json:"duration_ns"`
	Outage    time.Duration `json:"outage_ns"`
	QoS       int           `json:"qos"`
	Modes     []string      `json:"modes"`
	Scenarios []string      `json:"scenarios"`
	ferry     string
	jsonOut   string
	mdOut     string
	keep      bool
}

var allScenarios = []string{"modbus-10k-1s", "modbus-1k-100ms", "opcua-10k-1hz", "latency", "outage-drain", "baseline"}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	log.SetOutput(io.Discard) // gopcua's server (the OPC UA simulator) logs through the standard logger
	fs := flag.NewFlagSet("ferry-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var scen, modes string
	fs.BoolVar(&o.Short, "short", false, "the quick version (under a minute): 3 s windows, a 5 s outage, tag mode only where issue 9's device÷tag ratio needs it")
	fs.IntVar(&o.N, "n", 10000, "tags of the 10k scenarios (the 1k ones use n/10)")
	fs.DurationVar(&o.Duration, "duration", 0, "measuring window per scenario (default 40s, -short 3s)")
	fs.DurationVar(&o.Outage, "outage", 0, "how long outage-drain keeps the broker down (default 60s, -short 5s)")
	fs.IntVar(&o.QoS, "qos", 1, "MQTT QoS of ferry's telemetry, the subscriber and the baseline (1 or 2; 0 cannot detect loss reliably)")
	fs.StringVar(&o.ferry, "ferry", "", "ferry binary to run (default: go build ./cmd/ferry into a temp dir)")
	fs.StringVar(&o.jsonOut, "json", "", "write the results as JSON to this file")
	fs.StringVar(&o.mdOut, "md", "", "write the Markdown table (with the machine) to this file")
	fs.StringVar(&scen, "scenario", strings.Join(allScenarios, ","), "comma-separated scenarios to run")
	fs.StringVar(&modes, "modes", "", "publish modes of the Modbus and OPC UA scenarios (default device,tag; -short: device, and tag for modbus-1k-100ms)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temp dir (configs, ferry logs, broker logs)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ferry-bench: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if o.Duration == 0 {
		o.Duration = 40 * time.Second
		if o.Short {
			o.Duration = 3 * time.Second
		}
	}
	if o.Outage == 0 {
		o.Outage = 60 * time.Second
		if o.Short {
			o.Outage = 5 * time.Second
		}
	}
	if o.QoS < 0 || o.QoS > 2 || o.N < 20 {
		fmt.Fprintln(stderr, "ferry-bench: -qos must be 0..2 and -n at least 20")
		return 2
	}
	for _, s := range splitList(scen) {
		if !contains(allScenarios, s) {
			fmt.Fprintf(stderr, "ferry-bench: unknown scenario %q (have %s)\n", s, strings.Join(allScenarios, ", "))
			return 2
		}
		o.Scenarios = append(o.Scenarios, s)
	}
	for _, m := range splitList(modes) {
		if m != "device" && m != "tag" {
			fmt.Fprintf(stderr, "ferry-bench: unknown mode %q (device, tag)\n", m)
			return 2
		}
		o.Modes = append(o.Modes, m)
	}

	tmp, err := os.MkdirTemp("", "ferry-bench-")
	if err != nil {
		fmt.Fprintln(stderr, "ferry-bench:", err)
		return 1
	}
	if o.keep {
		fmt.Fprintf(stderr, "ferry-bench: keeping %s\n", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	if o.ferry == "" {
		fmt.Fprintln(stderr, "ferry-bench: building ./cmd/ferry")
		if o.ferry, err = buildFerry(tmp); err != nil {
			fmt.Fprintln(stderr, "ferry-bench:", err)
			return 1
		}
	}
	b := &bench{opts: o, tmp: tmp, log: stderr}
	start := time.Now()
	results := b.runAll()
	mach := describeMachine()

	table := markdownTable(results)
	fmt.Fprintf(stdout, "\n%s\n%s\n", machineLine(mach, o, time.Since(start)), table)
	if o.mdOut != "" {
		md := fmt.Sprintf("%s\n\n%s", machineLine(mach, o, time.Since(start)), table)
		if err := os.WriteFile(o.mdOut, []byte(md), 0o644); err != nil {
			fmt.Fprintln(stderr, "ferry-bench:", err)
			return 1
		}
	}
	if o.jsonOut != "" {
		doc := struct {
			Time     time.Time `json:"time"`
			Machine  machine   `json:"machine"`
			Options  options   `json:"options"`
			ElapsedS float64   `json:"elapsed_s"`
			Results  []result  `json:"results"`
		}{start.UTC(), mach, o, time.Since(start).Seconds(), results}
		data, _ := json.MarshalIndent(doc, "", "  ")
		if err := os.WriteFile(o.jsonOut, append(data, '\n'), 0o644); err != nil {
			fmt.Fprintln(stderr, "ferry-bench:", err)
			return 1
		}
	}
	for _, r := range results {
		if r.Error != "" {
			return 1
		}
	}
	return 0
}

func machineLine(m machine, o options, elapsed time.Duration) string {
	kind := "full"
	if o.Short {
		kind = "short"
	}
	return fmt.Sprintf("Machine: %d × %s, %s, %s, %s. Run: %s, %v window per scenario, QoS %d, took %v.",
		m.CPUs, m.Model, m.Kernel, m.GoVersion, m.Mosquitto, kind, o.Duration, o.QoS, elapsed.Round(time.Second))
}

func describeMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), Model: "unknown"}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.Model = cpuModel(data)
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(data))
	}
	if bin, err := mosquittotest.Binary(); err == nil {
		out, _ := exec.Command(bin, "-h").CombinedOutput()
		m.Mosquitto = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	return m
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
