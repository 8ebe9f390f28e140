package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ferry-gateway/ferry/adapters/opcua"
	"github.com/ferry-gateway/ferry/config"
)

func init() {
	register(command{"init", "print a small commented starter config that passes check", cmdInit})
}

// Loopback defaults of `ferry init` without flags.
const (
	initBroker = "mqtt://127.0.0.1:1883"
	initModbus = "tcp://127.0.0.1:502"
	initOPCUA  = "opc.tcp://127.0.0.1:4840"
)

// initOptions are the flags of `ferry init`.
type initOptions struct {
	broker, modbus, opcua string // "" for the loopback default
	node                  string // where to browse (-opcua only); "" is the Objects folder
	depth, maxTags        int
	timeout               time.Duration
}

func cmdInit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("init", "init [-modbus URL] [-opcua ENDPOINT] [-broker URL] [-node ID] [-depth N] > ferry.toml", stderr)
	var o initOptions
	fs.StringVar(&o.modbus, "modbus", "", "Modbus device URL (tcp://HOST:502, rtu:///dev/ttyUSB0); default "+initModbus)
	fs.StringVar(&o.opcua, "opcua", "", "OPC UA endpoint, browsed for its variables (security None, anonymous); default "+initOPCUA+", not browsed")
	fs.StringVar(&o.broker, "broker", "", "MQTT broker URL (mqtt://HOST:1883, mqtts://HOST:8883); default "+initBroker)
	fs.StringVar(&o.node, "node", "", "with -opcua: the node whose variables become tags (default: the Objects folder, without namespace 0)")
	fs.IntVar(&o.depth, "depth", 3, "with -opcua: levels to browse below -node")
	fs.IntVar(&o.maxTags, "max-tags", 100, "with -opcua: at most this many tags")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "with -opcua: connect and request timeout")
	if code := parseFlags(fs, args, 0); code >= 0 {
		return code
	}
	for _, u := range []struct {
		flag, value string
		schemes     []string
	}{
		{"-broker", o.broker, config.MQTTSchemes},
		{"-modbus", o.modbus, config.ModbusSchemes},
		{"-opcua", o.opcua, config.OPCUASchemes},
	} {
		if u.value == "" {
			continue
		}
		if err := config.CheckURL(u.value, u.schemes...); err != nil {
			fmt.Fprintf(stderr, "ferry init: %s: %v\n", u.flag, err)
			return exitUsage
		}
	}
	if o.depth < 1 || o.maxTags < 1 {
		fmt.Fprintln(stderr, "ferry init: -depth and -max-tags must be at least 1")
		return exitUsage
	}
	var browsed []initTag
	if o.opcua != "" {
		var err error
		if browsed, err = browseTags(ctx, o); err != nil {
			fmt.Fprintf(stderr, "ferry init: browse %s: %v\n", o.opcua, err)
			fmt.Fprintln(stderr, "ferry init browses anonymously and without security; for a server that needs either, run ferry init without -opcua, set the endpoint, security and login in the file, and list the variables with: ferry browse -config ferry.toml cnc1")
			return exitFailure
		}
	}
	text := starterConfig(o, browsed)
	// What is printed must pass check as printed: a starter config that
	// does not would be a bug of this command, never the user's.
	if _, err := config.Parse("ferry.toml", []byte(text), func(string) string { return "" }); err != nil {
		fmt.Fprintf(stderr, "ferry init: the generated config is invalid (a bug; please report it):\n%v\n", err)
		return exitFailure
	}
	fmt.Fprint(stdout, text)
	return exitOK
}

// initTag is one OPC UA variable found by browsing.
type initTag struct {
	name, node, browseName, dataType string
	writable                         bool // the server lets this user write it
	more                             int  // on the last tag: variables left out by -max-tags
}

// browseTags returns the readable variables under o.node, named after
// their browse names (made valid tag names and unique).
func browseTags(ctx context.Context, o initOptions) ([]initTag, error) {
	dev := config.OPCUADevice{Name: "init", Endpoint: o.opcua, SecurityPolicy: "None", SecurityMode: "None", Timeout: o.timeout}
	prevLog := log.Writer() // gopcua logs through the standard logger
	log.SetOutput(io.Discard)
	defer log.SetOutput(prevLog)
	var out []initTag
	used := map[string]bool{}
	more := 0
	err := opcua.Browse(ctx, dev, "", o.node, o.depth, func(e opcua.BrowseEntry) {
		if e.Class != "Variable" || !strings.Contains(e.Access, "r") {
			return
		}
		// From the Objects folder, the server's own variables (namespace
		// 0: ServerStatus, capabilities) are not what a user is after.
		if o.node == "" && !strings.HasPrefix(e.NodeID, "nsu=") && !strings.HasPrefix(e.NodeID, "ns=") {
			return
		}
		if len(out) >= o.maxTags {
			more++
			return
		}
		name := uniqueName(tagName(e.BrowseName), used)
		out = append(out, initTag{name: name, node: e.NodeID, browseName: e.BrowseName, dataType: e.DataType, writable: strings.Contains(e.Access, "w")})
	})
	if err != nil {
		return nil, err
	}
	if len(out) > 0 {
		out[len(out)-1].more = more
	}
	return out, nil
}

// tagName makes a browse name a valid tag name: letters and digits of any
// script, '_' and '-'; anything else becomes '_'.
func tagName(s string) string {
	var b strings.Builder
	under := false
	for _, r := range s {
		ok := r == '_' || r == '-' || r != utf8.RuneError && (unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.Mark, r))
		if !ok {
			r = '_'
		}
		if r == '_' && under {
			continue
		}
		under = r == '_'
		b.WriteRune(r)
	}
	name := strings.Trim(b.String(), "_")
	for len(name) > 100 {
		_, size := utf8.DecodeLastRuneInString(name)
		name = name[:len(name)-size]
	}
	switch name {
	case "":
		return "tag"
	case "status": // reserved: P/DEVICE/status
		return "status_"
	}
	return name
}

// uniqueName returns name, or name_2, name_3, ... when taken, and marks
// it used.
func uniqueName(name string, used map[string]bool) string {
	n := name
	for i := 2; used[n]; i++ {
		n = name + "_" + strconv.Itoa(i)
	}
	used[n] = true
	return n
}

// starterConfig is the text `ferry init` prints.
func starterConfig(o initOptions, browsed []initTag) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p(`# ferry starter config, printed by 'ferry init'. Save it as ferry.toml, then:
#   ferry check -config ferry.toml      validate it (no device or broker is touched)
#   ferry plan -config ferry.toml       the requests and monitored items it will use
#   ferry read -config ferry.toml plc1  read a device's tags once
#   ferry run -config ferry.toml        run the gateway
# Every key and its default: README.md, "Config reference".

[gateway]
id = "line1"               # this gateway's name in topics: A-Z a-z 0-9 _ -
# The disk buffer, the MQTT session and OPC UA certificates live here. A
# relative path is taken from the directory ferry runs in; for the service
# use an absolute one, e.g. "/var/lib/ferry", writable by the user ferry
# runs as.
state_dir = "ferry-state"

[mqtt]
`)
	if o.broker == "" {
		p("url = %q   # the default: a broker on this machine; ferry init -broker URL for another\n", initBroker)
	} else {
		p("url = %q\n", o.broker)
	}
	p(`# Telemetry is published on ferry/line1/DEVICE/TAG, commands are taken on
# ferry/line1/DEVICE/TAG/set (for tags with writable = true only).
qos = 1

[[modbus]]
name = "plc1"
`)
	if o.modbus == "" {
		p("url = %q   # the default: a device on this machine; ferry init -modbus URL for yours\n", initModbus)
	} else {
		p("url = %q\n", o.modbus)
	}
	p(`unit = 1                   # Modbus unit (slave) id
interval = "1s"            # how often every tag is read
timeout = "1s"
`)
	if o.modbus == "" {
		p(`
  # Example tags: replace them with your device's register map. To find
  # the type and byte order of a register from real data, run
  #   ferry probe modbus %s -unit 1 -table holding -address 0 -count 4
  [[modbus.tag]]
  name = "temperature"
  table = "holding"          # holding | input | coil | discrete
  address = 0                # 0-based register address
  type = "float32"           # two registers
  # order = "CDAB"           # if the device swaps words (ABCD is the default)

  [[modbus.tag]]
  name = "counter"
  table = "input"
  address = 10
  type = "uint32"

  [[modbus.tag]]
  name = "pump_on"
  table = "coil"
  address = 0
  type = "bool"
  # writable = true          # lets MQTT commands switch it: only if that is safe
`, initModbus)
	} else {
		p(`
  # One example tag: nothing here is guessed from the device. Replace it
  # with your register map; to see what a register holds, in every type
  # and byte order, run
  #   ferry probe modbus %s -unit 1 -table holding -address 0 -count 4
  [[modbus.tag]]
  name = "register0"
  table = "holding"          # holding | input | coil | discrete
  address = 0                # 0-based register address
  type = "uint16"            # int16, uint16, int32, uint32, float32, ... string
  # scale = 0.1              # value = raw * scale + offset
  # writable = true          # lets MQTT commands write it: only if that is safe
`, o.modbus)
	}
	p(`
[[opcua]]
name = "cnc1"
`)
	if o.opcua == "" {
		p("endpoint = %q   # the default: a server on this machine; ferry init -opcua ENDPOINT browses yours\n", initOPCUA)
	} else {
		p("endpoint = %q\n", o.opcua)
	}
	p(`# security_policy = "Basic256Sha256"   # None by default; with security, pin
# server_thumbprint = "..."             # the server: ferry browse tells the thumbprint
# username = "operator"                 # anonymous by default
# password_file = "/etc/ferry/opcua.pass"
publishing_interval = "1s"
`)
	switch {
	case o.opcua == "":
		p(`
  # An example tag every OPC UA server has (its clock). Find your variables
  # with
  #   ferry browse %s
  # or let ferry init -opcua ENDPOINT list them here.
  [[opcua.tag]]
  name = "server_time"
  node = "i=2258"
`, initOPCUA)
	case len(browsed) == 0:
		where := "the Objects folder"
		if o.node != "" {
			where = o.node
		}
		p(`
  # No readable variable was found under %s within %d levels:
  # look with ferry browse %s -depth 5, then put them here. Meanwhile an
  # example tag every OPC UA server has (its clock):
  [[opcua.tag]]
  name = "server_time"
  node = "i=2258"
`, where, o.depth, o.opcua)
	default:
		p(`
  # The readable variables found by browsing. None is writable: to let MQTT
  # commands write one, add writable = true to it (hinted where the server
  # allows writing), only where that is safe.
`)
		for _, t := range browsed {
			p("  [[opcua.tag]]\n  name = %q\n  node = %q", t.name, t.node)
			if t.dataType != "" && t.dataType != "?" {
				p("   # %s", t.dataType)
			}
			p("\n")
			if t.writable {
				p("  # writable = true\n")
			}
			if t.more > 0 {
				p("  # ... and %d more readable variables (ferry init -max-tags N, or ferry browse)\n", t.more)
			}
			p("\n")
		}
	}
	return strings.TrimRight(b.String(), "\n") + "\n"
}
