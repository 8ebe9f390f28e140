package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"text/tabwriter"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/adapters/modbus"
	"github.com/ferry-gateway/ferry/config"
)

func init() {
	register(command{"probe", "read raw registers and print every decoding side by side", cmdProbe})
}

var probeOrders = []string{modbus.OrderABCD, modbus.OrderCDAB, modbus.OrderBADC, modbus.OrderDCBA}

func cmdProbe(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("probe", "probe modbus URL [-unit N] [-table holding] -address A [-count C] [serial flags]", stderr)
	unit := fs.Int("unit", 1, "unit id")
	table := fs.String("table", config.TableHolding, "holding, input, coil or discrete")
	address := fs.Int("address", 0, "first register (or bit), 0-based")
	count := fs.Int("count", 4, "registers (1..125) or bits (1..2000)")
	timeout := fs.Duration("timeout", time.Second, "request timeout")
	speed := fs.Int("speed", 19200, "rtu:// only: baud rate")
	dataBits := fs.Int("data-bits", 8, "rtu:// only: data bits")
	parity := fs.String("parity", "none", "rtu:// only: none, even or odd")
	stopBits := fs.Int("stop-bits", 1, "rtu:// only: stop bits")
	pos, code := parseArgs(fs, args)
	if code >= 0 {
		return code
	}
	if len(pos) != 2 || pos[0] != "modbus" {
		fmt.Fprintln(stderr, "ferry probe: expected: probe modbus URL (tcp://HOST:PORT, rtu:///dev/tty..., rtuovertcp://HOST:PORT)")
		fs.Usage()
		return exitUsage
	}
	if err := config.CheckURL(pos[1], config.ModbusSchemes...); err != nil {
		fmt.Fprintf(stderr, "ferry probe: %v\n", err)
		return exitUsage
	}
	switch {
	case *unit < 0 || *unit > 255:
		fmt.Fprintln(stderr, "ferry probe: -unit must be 0..255")
		return exitUsage
	case *address < 0 || *address > 65535:
		fmt.Fprintln(stderr, "ferry probe: -address must be 0..65535")
		return exitUsage
	case *count < 1 || *count > 2000:
		fmt.Fprintln(stderr, "ferry probe: -count must be 1..125 registers or 1..2000 bits")
		return exitUsage
	}
	switch *table {
	case config.TableHolding, config.TableInput, config.TableCoil, config.TableDiscrete:
	default:
		fmt.Fprintf(stderr, "ferry probe: unknown -table %q: holding, input, coil or discrete\n", *table)
		return exitUsage
	}
	dev := config.ModbusDevice{
		Name: "probe", URL: pos[1], Unit: uint8(*unit), Timeout: *timeout,
		Speed: *speed, DataBits: *dataBits, Parity: *parity, StopBits: *stopBits,
	}
	words, bits, err := modbus.ReadRaw(dev, *table, uint16(*address), uint16(*count))
	if err != nil {
		fmt.Fprintf(stderr, "ferry probe: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "%s unit %d, %s %d+%d\n", dev.URL, dev.Unit, *table, *address, *count)
	if bits != nil {
		writeBits(stdout, uint16(*address), bits)
	} else {
		writeDecodings(stdout, uint16(*address), words)
	}
	return exitOK
}

func writeBits(w io.Writer, start uint16, bits []bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\naddress\tvalue")
	for i, b := range bits {
		v := 0
		if b {
			v = 1
		}
		fmt.Fprintf(tw, "%d\t%d\n", int(start)+i, v)
	}
	tw.Flush()
}

// decode decodes w with the runtime decoder of typ and order, so the probe
// shows exactly what a tag so configured would publish.
// NaN and infinities, which JSON (and the gateway) publish as null, are
// shown as such.
func decode(w []uint16, typ, order string, length int) probeValue {
	d, err := modbus.NewDecoder(config.ModbusTag{Table: config.TableHolding, Type: typ, Order: order, Bit: -1, Scale: 1, Length: length})
	if err != nil {
		return probeValue{}
	}
	v, _ := d.Registers(w)
	return probeValue{v}
}

type probeValue struct{ adapters.Value }

func (v probeValue) String() string {
	if v.Kind() == adapters.FloatKind {
		if f := v.Float(); math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Sprint(f)
		}
	}
	return v.Value.String()
}

// writeDecodings prints the raw registers, then at every start address
// each 16-, 32- and 64-bit decoding in every byte order, then the strings.
func writeDecodings(w io.Writer, start uint16, words []uint16) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "\nregisters:")
	fmt.Fprintln(tw, "address\thex\tuint16\tint16\tbits\t")
	for i, x := range words {
		fmt.Fprintf(tw, "%d\t%#04x\t%d\t%d\t%08b %08b\t\n", int(start)+i, x, x, int16(x), x>>8, x&0xff)
	}
	tw.Flush()
	if len(words) >= 2 {
		fmt.Fprintln(w, "\n32-bit (from each address; ABCD = big-endian, the Modbus norm):")
		fmt.Fprintln(tw, "address\torder\thex\tuint32\tint32\tfloat32\t")
		for i := 0; i+2 <= len(words); i++ {
			for _, o := range probeOrders {
				u := decode(words[i:], "uint32", o, 0)
				fmt.Fprintf(tw, "%d\t%s\t%#08x\t%s\t%s\t%s\t\n", int(start)+i, o, u.Uint(), u,
					decode(words[i:], "int32", o, 0), decode(words[i:], "float32", o, 0))
			}
		}
		tw.Flush()
	}
	if len(words) >= 4 {
		fmt.Fprintln(w, "\n64-bit (from each address):")
		fmt.Fprintln(tw, "address\torder\thex\tuint64\tint64\tfloat64\t")
		for i := 0; i+4 <= len(words); i++ {
			for _, o := range probeOrders {
				u := decode(words[i:], "uint64", o, 0)
				fmt.Fprintf(tw, "%d\t%s\t%#016x\t%s\t%s\t%s\t\n", int(start)+i, o, u.Uint(), u,
					decode(words[i:], "int64", o, 0), decode(words[i:], "float64", o, 0))
			}
		}
		tw.Flush()
	}
	fmt.Fprintln(w, "\nstring:")
	fmt.Fprintf(w, "  high byte first (ABCD, CDAB): %s\n", decode(words, "string", modbus.OrderABCD, len(words)))
	fmt.Fprintf(w, "  low byte first (BADC, DCBA):  %s\n", decode(words, "string", modbus.OrderBADC, len(words)))
}
