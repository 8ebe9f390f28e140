// Command ferry is the industrial telemetry gateway: it polls Modbus and
// OPC UA devices, writes every reading to a disk-backed buffer and publishes
// the buffer to an MQTT 5 broker. See README.md and `ferry -h`.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
)

// Set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

// buildCommit, set at build time (-X main.buildCommit=0123456789ab), is
// reported instead of the toolchain's VCS stamp, which -buildvcs=false or a
// build outside a checkout leaves out. packaging/build-deb.sh sets it.
var buildCommit = ""

// Exit codes of the contract.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// defaultConfig is where `ferry run` and `ferry check` look without -config.
const defaultConfig = "/etc/ferry/ferry.toml"

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

// registry holds every subcommand; each registers itself from its own file
// with register, so adding one touches no other file.
var registry []command

func register(c command) { registry = append(registry, c) }

// commandOrder is the order of `ferry -h`; unlisted commands follow, by name.
var commandOrder = []string{"init", "run", "check", "plan", "read", "write", "probe", "browse", "demo", "buffer", "version"}

func commands() []command {
	rank := func(name string) int {
		if i := slices.Index(commandOrder, name); i >= 0 {
			return i
		}
		return len(commandOrder)
	}
	out := slices.Clone(registry)
	slices.SortStableFunc(out, func(a, b command) int {
		if c := cmp.Compare(rank(a.name), rank(b.name)); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	return out
}

func init() {
	register(command{"run", "run the gateway", cmdRun})
	register(command{"check", "validate the config without touching any device or broker", cmdCheck})
	register(command{"demo", "run the gateway against built-in simulators and an embedded broker", cmdDemo})
	register(command{"version", "print version, commit and Go version", cmdVersion})
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "ferry: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: ferry COMMAND [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'ferry COMMAND -h' for the flags of a command.")
}

// newFlagSet returns a flag set whose parse errors and -h output go to
// stderr, in the form every subcommand shares.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("ferry "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: ferry %s\n", synopsis)
		if hasFlags(fs) {
			fmt.Fprintln(stderr, "\nFlags:")
			fs.PrintDefaults()
		}
	}
	return fs
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// parseFlags parses args and maps the outcome to an exit code: -1 means
// go on, anything else is the code to exit with.
func parseFlags(fs *flag.FlagSet, args []string, maxArgs int) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > maxArgs {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(maxArgs))
		fs.Usage()
		return exitUsage
	}
	return -1
}

func cmdVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", "version", stderr)
	if code := parseFlags(fs, args, 0); code >= 0 {
		return code
	}
	fmt.Fprintf(stdout, "ferry %s (commit %s, %s, %s/%s)\n", version, commit(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return exitOK
}

// commit returns the revision the build stamped (buildCommit), else the
// VCS revision the toolchain recorded, if it recorded one.
func commit() string {
	if buildCommit != "" {
		return buildCommit
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "unknown", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
			if len(rev) > 12 {
				rev = rev[:12]
			}
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}
