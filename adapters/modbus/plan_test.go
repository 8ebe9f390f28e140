package modbus

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/config"
)

func tg(name, table string, addr uint16, typ string) config.ModbusTag {
	return config.ModbusTag{Name: name, Table: table, Address: addr, Type: typ, Order: "ABCD", Bit: -1, Scale: 1, Length: 4}
}

func dev(maxGap, maxRegs int, tags ...config.ModbusTag) config.ModbusDevice {
	return config.ModbusDevice{Name: "plc", URL: "tcp://127.0.0.1:1", Unit: 1, Interval: time.Second,
		Timeout: time.Second, MaxGap: maxGap, MaxRegistersPerRequest: maxRegs, Tags: tags}
}

// req is a compact form of a Request for comparisons: "holding 0+4 a b".
func reqs(p *Plan) []string {
	var out []string
	for _, sc := range p.ScanClasses() {
		for _, r := range sc.Requests {
			s := fmt.Sprintf("%s %s %d+%d", sc.Interval, r.Table, r.Start, r.Count)
			for _, t := range r.Tags {
				s += fmt.Sprintf(" %s@%d", t.Name, t.Offset)
			}
			out = append(out, s)
		}
	}
	return out
}

func TestCompilePlan(t *testing.T) {
	const H, I, C, D = config.TableHolding, config.TableInput, config.TableCoil, config.TableDiscrete
	bit := func(tag config.ModbusTag, b int) config.ModbusTag { tag.Bit = b; return tag }
	every := func(tag config.ModbusTag, d time.Duration) config.ModbusTag { tag.Interval = d; return tag }
	var many []config.ModbusTag
	for i := range 130 {
		many = append(many, tg(fmt.Sprint("r", i), H, uint16(i), "uint16"))
	}
	tests := []struct {
		name string
		dev  config.ModbusDevice
		want []string
	}{
		{"coalesce across gap", dev(10, 125, tg("a", H, 0, "uint16"), tg("b", H, 5, "float32"), tg("c", H, 17, "uint16")),
			[]string{"1s holding 0+18 a@0 b@5 c@17"}},
		{"gap too wide splits", dev(10, 125, tg("a", H, 0, "uint16"), tg("b", H, 12, "uint16")),
			[]string{"1s holding 0+1 a@0", "1s holding 12+1 b@0"}},
		{"gap exactly max_gap joins", dev(3, 125, tg("a", H, 0, "uint16"), tg("b", H, 4, "uint16")),
			[]string{"1s holding 0+5 a@0 b@4"}},
		{"max_gap 0 joins only adjacent", dev(0, 125, tg("a", H, 0, "uint32"), tg("b", H, 2, "uint16"), tg("c", H, 4, "uint16")),
			[]string{"1s holding 0+3 a@0 b@2", "1s holding 4+1 c@0"}},
		{"unsorted config order", dev(10, 125, tg("c", H, 20, "uint16"), tg("a", H, 10, "uint16")),
			[]string{"1s holding 10+11 a@0 c@10"}},
		{"limit 125 split", dev(0, 125, many...), []string{
			"1s holding 0+125 " + strings.Join(func() []string {
				var s []string
				for i := range 125 {
					s = append(s, fmt.Sprintf("r%d@%d", i, i))
				}
				return s
			}(), " "),
			"1s holding 125+5 r125@0 r126@1 r127@2 r128@3 r129@4"}},
		{"device limit 4", dev(10, 4, tg("a", H, 0, "uint16"), tg("b", H, 2, "uint32"), tg("c", H, 4, "uint16")),
			[]string{"1s holding 0+4 a@0 b@2", "1s holding 4+1 c@0"}},
		{"multi-register tag not split", dev(10, 4, tg("a", H, 0, "uint16"), tg("b", H, 3, "uint32")),
			[]string{"1s holding 0+1 a@0", "1s holding 3+2 b@0"}},
		{"limit 0 means 125", dev(200, 0, tg("a", H, 0, "uint16"), tg("b", H, 124, "uint16"), tg("c", H, 125, "uint16")),
			[]string{"1s holding 0+125 a@0 b@124", "1s holding 125+1 c@0"}},
		{"coil 2000-bit limit", dev(200, 125, tg("a", C, 0, "bool"), tg("b", C, 1999, "bool"), tg("c", C, 2000, "bool")),
			[]string{"1s coil 0+2000 a@0 b@1999", "1s coil 2000+1 c@0"}},
		{"coil gap is max_gap*16 bits", dev(1, 125, tg("a", C, 0, "bool"), tg("b", C, 17, "bool"), tg("c", C, 35, "bool")),
			[]string{"1s coil 0+18 a@0 b@17", "1s coil 35+1 c@0"}},
		{"tables never mix", dev(10, 125, tg("h", H, 0, "uint16"), tg("i", I, 0, "uint16"), tg("c", C, 0, "bool"), tg("d", D, 0, "bool")),
			[]string{"1s coil 0+1 c@0", "1s discrete 0+1 d@0", "1s holding 0+1 h@0", "1s input 0+1 i@0"}},
		{"one request per tag", func() config.ModbusDevice {
			d := dev(10, 125, tg("a", H, 0, "uint16"), tg("b", H, 1, "uint16"), tg("c", C, 0, "bool"), tg("d", C, 1, "bool"))
			d.OneRequestPerTag = true
			return d
		}(), []string{"1s coil 0+1 c@0", "1s coil 1+1 d@0", "1s holding 0+1 a@0", "1s holding 1+1 b@0"}},
		{"overlapping tags", dev(0, 125, tg("f", H, 10, "float64"), tg("lo", H, 12, "uint32"), tg("w", H, 11, "uint16")),
			[]string{"1s holding 10+4 f@0 w@1 lo@2"}},
		{"nested tag extends nothing", dev(0, 125, tg("s", H, 0, "string"), tg("w", H, 1, "uint16")),
			[]string{"1s holding 0+4 s@0 w@1"}},
		{"bits of one register", dev(0, 125, bit(tg("b0", H, 7, "bool"), 0), bit(tg("b3", H, 7, "bool"), 3), bit(tg("b15", H, 7, "bool"), 15)),
			[]string{"1s holding 7+1 b0@0 b3@0 b15@0"}},
		{"scan classes by interval, shortest first", dev(100,
			125, tg("slow", H, 0, "uint16"), every(tg("fast", H, 1, "uint16"), 100*time.Millisecond), every(tg("fast2", H, 50, "uint16"), 100*time.Millisecond)),
			[]string{"100ms holding 1+50 fast@0 fast2@49", "1s holding 0+1 slow@0"}},
		{"top of the address space", dev(0, 125, tg("top", H, 65532, "uint64")),
			[]string{"1s holding 65532+4 top@0"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Compile(tc.dev)
			if err != nil {
				t.Fatal(err)
			}
			if got := reqs(p); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("plan:\n got %q\nwant %q\n%s", got, tc.want, p)
			}
			if p.NumRequests() != len(tc.want) {
				t.Errorf("NumRequests = %d, want %d", p.NumRequests(), len(tc.want))
			}
			checkCoverage(t, tc.dev, p)
		})
	}
}

// checkCoverage: every tag is in exactly one request, which holds it whole
// and respects the limits.
func checkCoverage(t *testing.T, d config.ModbusDevice, p *Plan) {
	t.Helper()
	count := map[string]int{}
	for _, sc := range p.ScanClasses() {
		for _, r := range sc.Requests {
			limit := d.MaxRegistersPerRequest
			if limit <= 0 || limit > 125 {
				limit = 125
			}
			if r.Table == config.TableCoil || r.Table == config.TableDiscrete {
				limit = 2000
			}
			if r.Count == 0 || int(r.Count) > limit {
				t.Errorf("request %v: count %d outside 1..%d", r.Table, r.Count, limit)
			}
			for _, tr := range r.Tags {
				count[tr.Name]++
				if int(tr.Offset)+int(tr.Size) > int(r.Count) {
					t.Errorf("tag %s [%d+%d] outside its request (%d)", tr.Name, tr.Offset, tr.Size, r.Count)
				}
			}
		}
	}
	for _, tag := range d.Tags {
		if count[tag.Name] != 1 {
			t.Errorf("tag %s in %d requests", tag.Name, count[tag.Name])
		}
	}
}

func TestCompileErrors(t *testing.T) {
	const H = config.TableHolding
	str := tg("s", H, 0, "string")
	str.Length = 10
	tests := []struct {
		name string
		dev  config.ModbusDevice
		want string
	}{
		{"no tags", dev(0, 125), "no tags"},
		{"duplicate", dev(0, 125, tg("a", H, 0, "uint16"), tg("a", H, 1, "uint16")), "duplicate"},
		{"bad type", dev(0, 125, tg("a", config.TableCoil, 0, "int16")), "modbus[plc].tag[a]"},
		{"past 65535", dev(0, 125, tg("a", H, 65535, "uint32")), "past 65535"},
		{"larger than a request", dev(0, 8, str), "exceed"},
		{"no interval", func() config.ModbusDevice { d := dev(0, 125, tg("a", H, 0, "uint16")); d.Interval = 0; return d }(), "no interval"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(tc.dev)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestPlanString(t *testing.T) {
	b := tg("door", config.TableHolding, 7, "bool")
	b.Bit = 3
	p, err := Compile(dev(10, 125, tg("temp", config.TableHolding, 0, "float32"), b))
	if err != nil {
		t.Fatal(err)
	}
	want := "plc (unit 1): 1 requests per cycle\n  every 1s:\n    holding 0+8: temp@0 door@7.3\n"
	if got := p.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// TestPlanImmutable: ScanClasses returns copies.
func TestPlanImmutable(t *testing.T) {
	p, err := Compile(dev(10, 125, tg("a", config.TableHolding, 0, "uint16")))
	if err != nil {
		t.Fatal(err)
	}
	sc := p.ScanClasses()
	sc[0].Requests[0].Start = 99
	sc[0].Requests[0].Tags[0].Name = "x"
	if got := reqs(p); got[0] != "1s holding 0+1 a@0" {
		t.Errorf("plan changed: %v", got)
	}
}
