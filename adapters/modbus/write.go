package modbus

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
	mb "github.com/simonvetter/modbus"
)

// maxWriteRegisters is the most registers one FC16 carries (and so the
// longest writable string tag).
const maxWriteRegisters = 123

// encodedWrite is the Modbus request a tag write becomes.
type encodedWrite struct {
	table string // holding or coil
	addr  uint16
	coil  bool     // FC5 value (table coil)
	words []uint16 // FC6 (one register, no bit) or FC16 (several)
	bit   int      // >= 0: read-modify-write of this bit of the register addr
	on    bool     // the bit's new value
}

// EncodeWrite checks that v (an engineering value from a command) can be
// written to tag and returns nil if so, without any I/O: the JSON kind fits
// the tag type, integers fit the register type exactly (no truncation, no
// wrap-around), the inverse scaling raw = (v - offset) / scale gives a raw
// value the type holds (a whole number for integer types, within 10^-6 of a
// raw step), floats are finite, strings fit the registers and contain no
// NUL. min and max are the caller's business.
func EncodeWrite(tag config.ModbusTag, v adapters.Value) error {
	_, err := encodeWrite(tag, v)
	return err
}

func encodeWrite(tag config.ModbusTag, v adapters.Value) (encodedWrite, error) {
	e, err := newEncoder(tag)
	if err != nil {
		return encodedWrite{table: tag.Table, addr: tag.Address, bit: -1}, err
	}
	return e.encode(v)
}

// encoder turns the values of one writable tag into requests. Everything
// that depends on the tag alone is checked once, by newEncoder.
type encoder struct {
	tag   config.ModbusTag
	order string
	sc    scaler
	lo    int64  // integer types: the range as int64/uint64 bit patterns
	hi    uint64 //
	n     int    // integer types: size in registers
}

// newEncoder checks that tag can be written at all: a coil or a holding
// register, a known byte order, a bit within the register, a string short
// enough for one request, a scale that can be inverted, a writable type.
func newEncoder(tag config.ModbusTag) (*encoder, error) {
	e := &encoder{tag: tag, order: tag.Order}
	switch tag.Table {
	case config.TableCoil:
		return e, nil
	case config.TableHolding:
	default:
		return nil, adapters.BadValue("a %s tag cannot be written (only holding and coil)", tag.Table)
	}
	if e.order == "" {
		e.order = OrderABCD
	}
	if _, ok := words32[e.order]; !ok {
		return nil, adapters.BadValue("unknown order %q", tag.Order)
	}
	switch tag.Type {
	case "bool":
		if tag.Bit > 15 {
			return nil, adapters.BadValue("bit %d out of range 0..15", tag.Bit)
		}
		return e, nil
	case "string":
		if tag.Length < 1 || tag.Length > maxWriteRegisters {
			return nil, adapters.BadValue("a string of %d registers cannot be written in one request (at most %d)", tag.Length, maxWriteRegisters)
		}
		return e, nil
	}
	if tag.Scale == 0 {
		return nil, adapters.BadValue("scale 0 cannot be inverted")
	}
	e.sc = newScaler(tag.Scale, tag.Offset)
	if tag.Type == "float32" || tag.Type == "float64" {
		return e, nil
	}
	var ok bool
	if e.lo, e.hi, e.n, ok = intRange(tag.Type); !ok {
		return nil, adapters.BadValue("type %q cannot be written", tag.Type)
	}
	return e, nil
}

// encode is the request that writes v, or why v cannot be written (a
// *adapters.WriteError, bad_value).
func (e *encoder) encode(v adapters.Value) (encodedWrite, error) {
	w := encodedWrite{table: e.tag.Table, addr: e.tag.Address, bit: -1}
	if e.tag.Table == config.TableCoil {
		if v.Kind() != adapters.BoolKind {
			return w, adapters.BadValue("expected true or false, got %s", kindName(v))
		}
		w.coil = v.Bool()
		return w, nil
	}
	switch e.tag.Type {
	case "bool":
		return e.encodeBool(w, v)
	case "string":
		return e.encodeString(w, v)
	}
	switch v.Kind() {
	case adapters.IntKind, adapters.UintKind, adapters.FloatKind:
	default:
		return w, adapters.BadValue("expected a number, got %s", kindName(v))
	}
	if v.Kind() == adapters.FloatKind && !floatOK(v.Float()) {
		return w, adapters.BadValue("NaN and infinite values cannot be written")
	}
	if e.tag.Type == "float32" || e.tag.Type == "float64" {
		return e.encodeFloat(w, v)
	}
	return e.encodeInt(w, v)
}

func (e *encoder) encodeBool(w encodedWrite, v adapters.Value) (encodedWrite, error) {
	if v.Kind() != adapters.BoolKind {
		return w, adapters.BadValue("expected true or false, got %s", kindName(v))
	}
	if e.tag.Bit >= 0 {
		w.bit, w.on = e.tag.Bit, v.Bool()
		return w, nil
	}
	w.words = []uint16{0}
	if v.Bool() {
		w.words[0] = 1
	}
	return w, nil
}

func (e *encoder) encodeString(w encodedWrite, v adapters.Value) (encodedWrite, error) {
	if v.Kind() != adapters.StringKind {
		return w, adapters.BadValue("expected a string, got %s", kindName(v))
	}
	s := v.Str()
	if !utf8.ValidString(s) {
		return w, adapters.BadValue("string is not valid UTF-8")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return w, adapters.BadValue("string contains NUL")
	}
	n := e.tag.Length
	if len(s) > 2*n {
		return w, adapters.BadValue("string of %d bytes does not fit %d registers (%d bytes)", len(s), n, 2*n)
	}
	b := make([]byte, 2*n)
	copy(b, s)
	lowFirst := e.order == OrderBADC || e.order == OrderDCBA
	w.words = make([]uint16, n)
	for i := range w.words {
		if lowFirst {
			w.words[i] = uint16(b[2*i+1])<<8 | uint16(b[2*i])
		} else {
			w.words[i] = uint16(b[2*i])<<8 | uint16(b[2*i+1])
		}
	}
	return w, nil
}

func (e *encoder) encodeFloat(w encodedWrite, v adapters.Value) (encodedWrite, error) {
	raw := v.Float()
	if !e.sc.identity {
		raw = e.sc.invert(raw)
	}
	if !floatOK(raw) {
		return w, adapters.BadValue("%s is out of range after scaling", v)
	}
	if e.tag.Type == "float32" {
		f := float32(raw)
		if math.IsInf(float64(f), 0) {
			return w, adapters.BadValue("%s is out of the range of float32", v)
		}
		w.words = orderWords(uint64(math.Float32bits(f)), 2, e.order)
	} else {
		w.words = orderWords(math.Float64bits(raw), 4, e.order)
	}
	return w, nil
}

func (e *encoder) encodeInt(w encodedWrite, v adapters.Value) (encodedWrite, error) {
	typ := e.tag.Type
	if e.sc.identity {
		u, err := exactInt(v, e.lo, e.hi, typ)
		if err != nil {
			return w, err
		}
		w.words = orderWords(u, e.n, e.order)
		return w, nil
	}
	eng := v.Float()
	raw := math.Round(e.sc.invert(eng))
	back := e.sc.apply(raw)
	if !floatOK(raw) || math.Abs(back-eng) > 1e-6*math.Abs(e.tag.Scale)+1e-12*math.Abs(eng) {
		return w, adapters.BadValue("%s is not representable with scale %g and offset %g (nearest is %s)", v, e.tag.Scale, e.tag.Offset, adapters.FloatValue(back))
	}
	u, err := exactInt(adapters.FloatValue(raw), e.lo, e.hi, typ)
	if err != nil {
		return w, adapters.BadValue("%s is out of range: raw value %g does not fit %s", v, raw, typ)
	}
	w.words = orderWords(u, e.n, e.order)
	return w, nil
}

// invert is the inverse of apply: raw = (eng - offset) / scale.
func (s scaler) invert(eng float64) float64 {
	if s.div != 0 {
		return (eng - s.offset) * s.div
	}
	return (eng - s.offset) / s.scale
}

// intRange gives the bounds of an integer type as int64/uint64 bit patterns
// (lo as int64, hi as uint64) and its size in registers.
func intRange(typ string) (lo int64, hi uint64, n int, ok bool) {
	switch typ {
	case "int16":
		return math.MinInt16, math.MaxInt16, 1, true
	case "uint16":
		return 0, math.MaxUint16, 1, true
	case "int32":
		return math.MinInt32, math.MaxInt32, 2, true
	case "uint32":
		return 0, math.MaxUint32, 2, true
	case "int64":
		return math.MinInt64, math.MaxInt64, 4, true
	case "uint64":
		return 0, math.MaxUint64, 4, true
	}
	return 0, 0, 0, false
}

// exactInt returns v as the two's complement bit pattern of an integer in
// [lo, hi], refusing fractions and anything out of range. The bounds are
// compared as integers: a float such as 9223372036854775808.0 (2^63) is
// out of the range of int64, not wrapped to -2^63.
func exactInt(v adapters.Value, lo int64, hi uint64, typ string) (uint64, error) {
	switch v.Kind() {
	case adapters.IntKind, adapters.UintKind, adapters.FloatKind:
	default:
		return 0, adapters.BadValue("expected a number, got %s", kindName(v))
	}
	if !v.Whole() {
		return 0, adapters.BadValue("%s is not a whole number (type %s)", v, typ)
	}
	outOfRange := func() error {
		return adapters.BadValue("%s is out of the range of %s (%d..%d)", v, typ, lo, hi)
	}
	if lo < 0 {
		i, ok := v.ExactInt()
		if !ok || i < lo || i > int64(hi) {
			return 0, outOfRange()
		}
		return uint64(i), nil
	}
	u, ok := v.ExactUint()
	if !ok || u > hi {
		return 0, outOfRange()
	}
	return u, nil
}

// orderWords lays out the low n*16 bits of x (big-endian) as n registers in
// the given order: the inverse of words32/words64.
func orderWords(x uint64, n int, order string) []uint16 {
	w := make([]uint16, n)
	for i := range n {
		w[i] = uint16(x >> (16 * (n - 1 - i)))
	}
	if n == 1 {
		return w
	}
	if order == OrderCDAB || order == OrderDCBA {
		slices.Reverse(w)
	}
	if order == OrderBADC || order == OrderDCBA {
		for i := range w {
			w[i] = bits.ReverseBytes16(w[i])
		}
	}
	return w
}

func floatOK(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

func kindName(v adapters.Value) string {
	switch v.Kind() {
	case adapters.BoolKind:
		return "a boolean"
	case adapters.IntKind, adapters.UintKind, adapters.FloatKind:
		return "a number"
	case adapters.StringKind:
		return "a string"
	case adapters.Null:
		return "null"
	}
	return "an array or object"
}

// tagConfig returns the config of the tag named name.
func (p *Poller) tagConfig(name string) (config.ModbusTag, int, bool) {
	for _, t := range p.dev.Tags {
		if t.Name == name {
			for ci, c := range p.plan.classes {
				if slices.Contains(c.names, name) {
					return t, ci, true
				}
			}
			return t, -1, true
		}
	}
	return config.ModbusTag{}, -1, false
}

// CheckWrite validates a write of v to tag without any I/O (see
// EncodeWrite); it also refuses a tag that is not writable, and a value
// below the tag's min or above its max (out_of_range, compared exactly).
// The gateway compiles the tag once instead (CompileWrite).
func (p *Poller) CheckWrite(tag string, v adapters.Value) error {
	return adapters.CheckWrite(p, tag, v)
}

// WriteTag checks and writes v to tag: CompileWrite, Check and Write in
// one call (ferry's tests and tools; the gateway compiles each tag once).
func (p *Poller) WriteTag(ctx context.Context, tag string, v adapters.Value, verify bool) (adapters.Value, error) {
	return adapters.WriteTag(ctx, p, tag, v, verify)
}

// tagWrite is one writable tag of a Poller, compiled once: its encoder,
// the decoder of what it reads back, its limits and its scan class.
type tagWrite struct {
	p        *Poller
	name     string
	ci       int // scan class polled at once after a write; -1 none
	enc      *encoder
	dec      Decoder
	min, max *adapters.Limit
}

// checkedWrite is what tagWrite.Check hands to Write.
type checkedWrite struct {
	v adapters.Value
	w encodedWrite
}

// CompileWrite compiles the writes of tag (adapters.Writer): it refuses a
// tag the device does not have, one that is not writable, and one whose
// table, type, order or scaling cannot be written (bad_value).
func (p *Poller) CompileWrite(tag string) (adapters.TagWrite, error) {
	t, ci, ok := p.tagConfig(tag)
	if !ok {
		return nil, adapters.BadValue("device %s has no tag %q", p.dev.Name, tag)
	}
	if !t.Writable {
		return nil, adapters.BadValue("tag %s/%s is not writable", p.dev.Name, tag)
	}
	enc, err := newEncoder(t)
	if err != nil {
		return nil, fmt.Errorf("tag %s/%s: %w", p.dev.Name, tag, err)
	}
	dec, err := NewDecoder(t)
	if err != nil {
		return nil, adapters.BadValue("tag %s/%s: %v", p.dev.Name, tag, err)
	}
	return &tagWrite{p: p, name: tag, ci: ci, enc: enc, dec: dec,
		min: adapters.NewLimit(t.Min, t.MinInt), max: adapters.NewLimit(t.Max, t.MaxInt)}, nil
}

// Check validates v without I/O: the tag's min and max (exactly), then
// the tag's type (see EncodeWrite).
func (tw *tagWrite) Check(v adapters.Value) (any, error) {
	if err := adapters.CheckLimits(v, tw.min, tw.max); err != nil {
		return nil, err
	}
	w, err := tw.enc.encode(v)
	if err != nil {
		return nil, err
	}
	return checkedWrite{v: v, w: w}, nil
}

// Write writes the engineering value that Check accepted: FC5 for a coil,
// FC6 for one register, FC16 for a multi-register value (a 32- or 64-bit
// value or a string is always one request), and for a bool on one bit of
// a holding register a read (FC3) and a write (FC6) of that register. The
// request holds the link the whole time, so it never interleaves with a
// poll of any device on the same connection (a bit write cannot lose a
// concurrent change made through ferry), and it goes ahead of the next
// poll request. Writes are not retried: a timeout may have been carried
// out.
//
// With verify, the tag is read back on the same hold of the link and
// compared register by register (bit by bit) with what was written. It
// returns the value the device holds now, decoded as a poll would, and
// asks Run for an immediate poll of the tag's scan class so the new value
// is published promptly. Errors are *adapters.WriteError.
func (tw *tagWrite) Write(ctx context.Context, raw any, verify bool) (adapters.Value, error) {
	cw, ok := raw.(checkedWrite)
	if !ok {
		return adapters.Value{}, adapters.BadValue("tag %s/%s: write of a value that was not checked", tw.p.dev.Name, tw.name)
	}
	p := tw.p
	// Every failure from here on says what happened to this write, not
	// what happened to the last poll.
	what := fmt.Sprintf("write of %s to %s/%s", cw.v, p.dev.Name, tw.name)
	got, err := p.write(ctx, tw, cw.w, verify, what)
	if err != nil {
		return adapters.Value{}, err
	}
	if tw.ci >= 0 {
		p.kickClass(tw.ci)
	}
	return got, nil
}

// write carries out w on the device's link; what names the write in every
// error.
func (p *Poller) write(ctx context.Context, tw *tagWrite, w encodedWrite, verify bool, what string) (adapters.Value, error) {
	if err := ctx.Err(); err != nil {
		return adapters.Value{}, &adapters.WriteError{Code: adapters.CodeTimeout, Err: fmt.Errorf("%s not sent: %w", what, err)}
	}
	l, err := p.acquire()
	if err != nil {
		return adapters.Value{}, &adapters.WriteError{Code: adapters.CodeDeviceError, Err: fmt.Errorf("%s not sent: %w", what, err)}
	}
	h := l.hold()
	defer h.unhold()
	if ctx.Err() != nil {
		return adapters.Value{}, &adapters.WriteError{Code: adapters.CodeTimeout, Err: fmt.Errorf("%s not sent: waited too long for the connection: %w", what, ctx.Err())}
	}
	if _, err := h.ensure(!p.running.Load(), p.minBackoff, p.maxBackoff); err != nil {
		return adapters.Value{}, p.notConnected(what, err)
	}
	words, bitsNow, err := p.writeHeld(h, w)
	if err == nil && verify {
		var back []uint16
		var backBits []bool
		back, backBits, err = p.readBackHeld(h, w, len(words))
		if err == nil && !sameWrite(w, words, bitsNow, back, backBits) {
			err = &adapters.WriteError{Code: adapters.CodeDeviceError, Err: fmt.Errorf("verify: the device holds %s after the write", decodeBack(tw.dec, w, back, backBits))}
		}
		words, bitsNow = back, backBits
	}
	p.stats.add(func(s *Stats) {
		s.Writes++
		if err != nil {
			s.WriteErrors++
		}
	})
	if err != nil {
		var we *adapters.WriteError
		if errors.As(err, &we) {
			return adapters.Value{}, &adapters.WriteError{Code: we.Code, Err: fmt.Errorf("%s: %w", what, we.Err)}
		}
		return adapters.Value{}, fmt.Errorf("%s: %w", what, err)
	}
	return decodeBack(tw.dec, w, words, bitsNow), nil
}

// notConnected is the error of a write not sent because the link is
// down. A device that stopped answering in time is a timeout to the
// commander, not an error: the link is backing off after it.
func (p *Poller) notConnected(what string, err error) error {
	if errors.Is(err, mb.ErrRequestTimedOut) {
		return &adapters.WriteError{Code: adapters.CodeTimeout, Err: &quietError{
			msg: fmt.Sprintf("%s not sent: device %s stopped answering (its requests timed out after %v) and is not connected; ferry reconnects by itself, send the command again later", what, p.dev.Name, p.dev.Timeout),
			err: err,
		}}
	}
	return &adapters.WriteError{Code: adapters.CodeDeviceError, Err: fmt.Errorf("%s not sent: device %s is not connected: %w", what, p.dev.Name, err)}
}

func decodeBack(dec Decoder, w encodedWrite, words []uint16, bitsNow []bool) adapters.Value {
	if w.table == config.TableCoil {
		v, _ := dec.Bits(bitsNow)
		return v
	}
	v, _ := dec.Registers(words)
	return v
}

func sameWrite(w encodedWrite, words []uint16, bitsNow []bool, back []uint16, backBits []bool) bool {
	switch {
	case w.table == config.TableCoil:
		return len(backBits) == 1 && len(bitsNow) == 1 && backBits[0] == bitsNow[0]
	case w.bit >= 0:
		return len(back) == 1 && (back[0]>>w.bit&1 == 1) == w.on
	}
	return slices.Equal(words, back)
}

// writeHeld performs w on the held, connected link. It returns the
// registers (bits) the tag holds after the write.
func (p *Poller) writeHeld(h held, w encodedWrite) ([]uint16, []bool, error) {
	var err error
	words := w.words
	var bitsNow []bool
	unit := p.dev.Unit
	switch {
	case w.table == config.TableCoil:
		err = h.writeCoil(unit, w.addr, w.coil)
		bitsNow = []bool{w.coil}
	case w.bit >= 0:
		var cur []uint16
		cur, _, err = h.read(unit, config.TableHolding, w.addr, 1)
		if err == nil {
			x := cur[0] &^ (1 << w.bit)
			if w.on {
				x |= 1 << w.bit
			}
			words = []uint16{x}
			err = h.writeRegisters(unit, w.addr, words)
		}
	default:
		err = h.writeRegisters(unit, w.addr, w.words)
	}
	if err != nil {
		return nil, nil, p.writeFailed(h, fmt.Errorf("write %s %d: %w", w.table, w.addr, err), err)
	}
	h.answered(p.minBackoff)
	return words, bitsNow, nil
}

// readBackHeld reads the tag back after a write (verify).
func (p *Poller) readBackHeld(h held, w encodedWrite, n int) ([]uint16, []bool, error) {
	if w.table == config.TableCoil {
		_, b, err := h.read(p.dev.Unit, config.TableCoil, w.addr, 1)
		if err != nil {
			return nil, nil, p.writeFailed(h, fmt.Errorf("verify: read coil %d: %w", w.addr, err), err)
		}
		return nil, b[:1], nil
	}
	r, _, err := h.read(p.dev.Unit, config.TableHolding, w.addr, uint16(max(n, 1)))
	if err != nil {
		return nil, nil, p.writeFailed(h, fmt.Errorf("verify: read holding %d: %w", w.addr, err), err)
	}
	return r[:max(n, 1)], nil, nil
}

// writeFailed classifies a failed request of a write (the link held): a
// timeout is adapters.CodeTimeout, anything else adapters.CodeDeviceError;
// a transport error closes the link as a failed poll would.
func (p *Poller) writeFailed(h held, werr, err error) error {
	switch {
	case errors.Is(err, mb.ErrRequestTimedOut):
		h.timedOut(werr, p.minBackoff, p.maxBackoff)
		return &adapters.WriteError{Code: adapters.CodeTimeout, Err: fmt.Errorf("%w: no answer within %v, so it may have been carried out or not", werr, p.dev.Timeout)}
	case isException(err):
		h.answered(p.minBackoff)
	default:
		h.fail(werr, p.minBackoff, p.maxBackoff)
	}
	return &adapters.WriteError{Code: adapters.CodeDeviceError, Err: werr}
}

// quietError is an error whose message is msg alone, but which unwraps to
// err (its cause, kept for errors.Is).
type quietError struct {
	msg string
	err error
}

func (e *quietError) Error() string { return e.msg }
func (e *quietError) Unwrap() error { return e.err }

// kickClass asks Run to poll scan class ci at once (after a write).
func (p *Poller) kickClass(ci int) {
	p.kickMu.Lock()
	if p.kicked == nil {
		p.kicked = map[int]bool{}
	}
	p.kicked[ci] = true
	p.kickMu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// takeKicked returns the scan classes to poll at once.
func (p *Poller) takeKicked() map[int]bool {
	p.kickMu.Lock()
	defer p.kickMu.Unlock()
	k := p.kicked
	p.kicked = nil
	return k
}
