package modbus

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ferry-gateway/ferry/config"
)

// Protocol limits of one read request.
const (
	maxRegisters = 125  // function codes 3 and 4
	maxBits      = 2000 // function codes 1 and 2
)

// Plan is the immutable read plan of one device, compiled from its config:
// per scan class (tags sharing an interval), the read requests of one cycle
// with the decoder of every tag they cover. It is safe for concurrent use.
type Plan struct {
	device  string
	unit    uint8
	classes []*class
}

// ScanClass is the printable form of one scan class.
type ScanClass struct {
	Interval time.Duration
	Requests []Request
}

// Request is the printable form of one read request.
type Request struct {
	Table string // config.TableHolding, TableInput, TableCoil or TableDiscrete
	Start uint16
	Count uint16 // registers, or bits for coil and discrete
	Tags  []TagRef
}

// TagRef is one tag covered by a request.
type TagRef struct {
	Name   string
	Offset uint16 // of its first register (or bit) from Request.Start
	Size   uint16 // registers (or bits)
	Bit    int    // -1, or the bit of the register for bool tags
}

type class struct {
	interval time.Duration
	names    []string    // tags of the class in config order: the slots of a cycle's readings
	rbe      []rbeConfig // per slot; nil when no tag of the class reports by exception
	reqs     []*request
}

// rbeConfig is a tag's report-by-exception setting.
type rbeConfig struct {
	onChange  bool
	deadband  float64
	heartbeat time.Duration
}

type request struct {
	table string
	start uint16
	count uint16
	tags  []boundTag
}

type boundTag struct {
	name   string
	slot   int // index in class.names
	offset int
	bit    int
	dec    Decoder
}

// Compile validates dev as far as reading is concerned and compiles its read
// plan. Tags are grouped by Interval into scan classes (shortest first);
// within a class, per table, tags sorted by address are coalesced into one
// request across gaps of up to dev.MaxGap registers (dev.MaxGap*16 bits on
// coil and discrete tables, the same bytes on the wire), never over
// dev.MaxRegistersPerRequest registers (at most 125; 0 means 125) or 2000
// bits. With dev.OneRequestPerTag every tag gets its own request. Tags may
// overlap or share a register (bits of one register).
func Compile(dev config.ModbusDevice) (*Plan, error) {
	if len(dev.Tags) == 0 {
		return nil, fmt.Errorf("modbus[%s]: no tags", dev.Name)
	}
	regLimit := dev.MaxRegistersPerRequest
	if regLimit <= 0 || regLimit > maxRegisters {
		regLimit = maxRegisters
	}
	maxGap := max(dev.MaxGap, 0)

	p := &Plan{device: dev.Name, unit: dev.Unit}
	byInterval := map[time.Duration]*class{}
	var items []planItem
	seen := map[string]bool{}
	for _, t := range dev.Tags {
		if seen[t.Name] {
			return nil, fmt.Errorf("modbus[%s].tag[%s]: duplicate tag name", dev.Name, t.Name)
		}
		seen[t.Name] = true
		dec, iv, err := compileTag(dev, t, regLimit)
		if err != nil {
			return nil, err
		}
		c := byInterval[iv]
		if c == nil {
			c = &class{interval: iv}
			byInterval[iv] = c
			p.classes = append(p.classes, c)
		}
		bit := -1
		if t.Type == "bool" && t.Table != config.TableCoil && t.Table != config.TableDiscrete {
			bit = t.Bit
		}
		items = append(items, planItem{cls: c, tab: t.Table, tag: boundTag{
			name: t.Name, slot: len(c.names), offset: int(t.Address), bit: bit, dec: dec,
		}})
		c.names = append(c.names, t.Name)
		c.rbe = append(c.rbe, rbeConfig{onChange: t.OnChange, deadband: t.Deadband, heartbeat: t.Heartbeat})
	}
	slices.SortStableFunc(p.classes, func(a, b *class) int { return cmp.Compare(a.interval, b.interval) })
	for _, c := range p.classes {
		// A plan lives as long as its device: no spare capacity, and no
		// per-tag settings when every tag is published every cycle.
		c.names = slices.Clip(c.names)
		if !slices.ContainsFunc(c.rbe, func(r rbeConfig) bool { return r.onChange }) {
			c.rbe = nil
		}
		c.rbe = slices.Clip(c.rbe)
	}
	p.addRequests(items, maxGap, regLimit, dev.OneRequestPerTag)
	return p, nil
}

// planItem is a tag of a plan before its requests are made.
type planItem struct {
	cls *class
	tag boundTag
	tab string
}

// compileTag checks tag t of dev: its decoder, its size in one request
// (of at most regLimit registers), its address range and its interval.
func compileTag(dev config.ModbusDevice, t config.ModbusTag, regLimit int) (Decoder, time.Duration, error) {
	dec, err := NewDecoder(t)
	if err != nil {
		return Decoder{}, 0, fmt.Errorf("modbus[%s].tag[%s]: %w", dev.Name, t.Name, err)
	}
	limit := regLimit
	if t.Table == config.TableCoil || t.Table == config.TableDiscrete {
		limit = maxBits
	}
	if dec.Size() > limit {
		return Decoder{}, 0, fmt.Errorf("modbus[%s].tag[%s]: %d registers exceed the %d of one request", dev.Name, t.Name, dec.Size(), limit)
	}
	if int(t.Address)+dec.Size() > 1<<16 {
		return Decoder{}, 0, fmt.Errorf("modbus[%s].tag[%s]: address %d + %d runs past 65535", dev.Name, t.Name, t.Address, dec.Size())
	}
	iv := t.Interval
	if iv <= 0 {
		iv = dev.Interval
	}
	if iv <= 0 {
		return Decoder{}, 0, fmt.Errorf("modbus[%s].tag[%s]: no interval", dev.Name, t.Name)
	}
	return dec, iv, nil
}

// addRequests coalesces the items of each scan class and table into
// requests (see Compile).
func (p *Plan) addRequests(items []planItem, maxGap, regLimit int, onePerTag bool) {
	for _, c := range p.classes {
		for _, table := range []string{config.TableCoil, config.TableDiscrete, config.TableHolding, config.TableInput} {
			var spans []span
			var tags []boundTag
			for _, it := range items {
				if it.cls == c && it.tab == table {
					spans = append(spans, span{start: it.tag.offset, size: it.tag.dec.Size(), idx: len(tags)})
					tags = append(tags, it.tag)
				}
			}
			if len(spans) == 0 {
				continue
			}
			gap, limit := maxGap, regLimit
			if table == config.TableCoil || table == config.TableDiscrete {
				gap, limit = maxGap*16, maxBits
			}
			for _, g := range coalesce(spans, gap, limit, onePerTag) {
				r := &request{table: table, start: uint16(g.start), count: uint16(g.end - g.start)}
				for _, s := range g.spans {
					bt := tags[s.idx]
					bt.offset = s.start - g.start
					r.tags = append(r.tags, bt)
				}
				r.tags = slices.Clip(r.tags)
				c.reqs = append(c.reqs, r)
			}
		}
	}
}

// span is one tag's address range, [start, start+size).
type span struct {
	start, size int
	idx         int
}

// group is one planned request: [start, end) covering spans.
type group struct {
	start, end int
	spans      []span
}

// coalesce is the planner: it groups spans into requests of at most limit
// registers, each covering whole spans, such that inside a request no run
// of more than maxGap registers is covered by none of its spans. It sweeps
// the spans sorted by start (longest first on ties), adding each to the
// last request when the result stays valid, else opening a new one.
//
// The result is minimal: no valid grouping has fewer requests. Proof. Let
// x1, x2, ..., xk be the spans that opened the sweep's groups G1..Gk, and
// end(G) the largest end of a group's spans. (a) Group ends strictly
// increase: x(j+1) was refused by Gj, and a span starting at or after
// Gj's start that ends by end(Gj) fits Gj (no longer, no new hole), so
// x(j+1) ends after end(Gj). Hence every span that starts before x(j+1)
// ends by end(Gj). (b) No valid request holds two openers xi and xm, i < m:
// xm was refused by G(m-1) either because xm.end - start(G(m-1)) > limit,
// and xi starts no later than G(m-1), so a request holding both is too
// long; or because xm starts more than maxGap registers after end(G(m-1)),
// and by (a) no span at all covers that run, while xi starts before it, so
// a request holding both contains a hole longer than maxGap. So any valid
// grouping needs at least k requests, the sweep's count. Nested and
// overlapping spans are covered by the argument (that is why it uses
// end(G), not the end of the last span). TestCoalesceMinimal checks the
// claim against an exhaustive search on thousands of random maps.
func coalesce(spans []span, maxGap, limit int, perSpan bool) []group {
	spans = slices.Clone(spans)
	slices.SortStableFunc(spans, func(a, b span) int {
		if c := cmp.Compare(a.start, b.start); c != 0 {
			return c
		}
		return cmp.Compare(b.size, a.size)
	})
	var out []group
	for _, s := range spans {
		end := s.start + s.size
		if n := len(out); n > 0 && !perSpan {
			g := &out[n-1]
			if s.start-g.end <= maxGap && max(g.end, end)-g.start <= limit {
				g.end = max(g.end, end)
				g.spans = append(g.spans, s)
				continue
			}
		}
		out = append(out, group{start: s.start, end: end, spans: []span{s}})
	}
	return out
}

// Device is the name of the device the plan reads.
func (p *Plan) Device() string { return p.device }

// NumRequests is the number of requests of one cycle of every scan class.
func (p *Plan) NumRequests() int {
	n := 0
	for _, c := range p.classes {
		n += len(c.reqs)
	}
	return n
}

// ScanClasses returns a copy of the plan, shortest interval first, for
// printing (ferry plan) and tests.
func (p *Plan) ScanClasses() []ScanClass {
	out := make([]ScanClass, 0, len(p.classes))
	for _, c := range p.classes {
		sc := ScanClass{Interval: c.interval}
		for _, r := range c.reqs {
			rq := Request{Table: r.table, Start: r.start, Count: r.count}
			for _, t := range r.tags {
				rq.Tags = append(rq.Tags, TagRef{Name: t.name, Offset: uint16(t.offset), Size: uint16(t.dec.Size()), Bit: t.bit})
			}
			sc.Requests = append(sc.Requests, rq)
		}
		out = append(out, sc)
	}
	return out
}

// String prints the plan, one request per line:
//
//	plc1 (unit 1): 2 requests per cycle
//	  every 1s:
//	    holding 100+12: temperature@100 door_open@107.3 recipe@104
func (p *Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (unit %d): %d requests per cycle\n", p.device, p.unit, p.NumRequests())
	for _, sc := range p.ScanClasses() {
		fmt.Fprintf(&b, "  every %s:\n", sc.Interval)
		for _, r := range sc.Requests {
			fmt.Fprintf(&b, "    %s %d+%d:", r.Table, r.Start, r.Count)
			for _, t := range r.Tags {
				fmt.Fprintf(&b, " %s@%d", t.Name, int(r.Start)+int(t.Offset))
				if t.Bit >= 0 {
					fmt.Fprintf(&b, ".%d", t.Bit)
				}
			}
			b.WriteByte('\n')
		}
	}
	return b.String()
}
