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
	w := encodedWrite{table: tag.Table, addr: tag.Address, bit: -1}
	switch tag.Table {
	case config.TableCoil:
		if v.Kind() != adapters.BoolKind {
			return w, adapters.BadValue("expected true or false, got %s", kindName(v))
		}
		w.coil = v.Bool()
		return w, nil
	case config.TableHolding:
	default:
		return w, adapters.BadValue("a %s tag cannot be written (only holding and coil)", tag.Table)
	}
	order := tag.Order
	if order == "" {
		order = OrderABCD
	}
	if _, ok := words32[order]; !ok {
		return w, adapters.BadValue("unknown order %q", tag.Order)
	}
	switch tag.Type {
	case "bool":
		if v.Kind() != adapters.BoolKind {
			return w, adapters.BadValue("expected true or false, got %s", kindName(v))
		}
		if tag.Bit >= 0 {
			if tag.Bit > 15 {
				return w, adapters.BadValue("bit %d out of range 0..15", tag.Bit)
			}
			w.bit, w.on = tag.Bit, v.Bool()
			return w, nil
		}
		w.words = []uint16{0}
		if v.Bool() {
			w.words[0] = 1
		}
		return w, nil
	case "string":
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
		if tag.Length < 1 || tag.Length > maxWriteRegisters {
			return w, adapters.BadValue("a string of %d registers cannot be written in one request (at most %d)", tag.Length, maxWriteRegisters)
		}
		if len(s) > 2*tag.Length {
			return w, adapters.BadValue("string of %d bytes does not fit %d registers (%d bytes)", len(s), tag.Length, 2*tag.Length)
		}
		b := make([]byte, 2*tag.Length)
		copy(b, s)
		lowFirst := order == OrderBADC || order == OrderDCBA
		w.words = make([]uint16, tag.Length)
		for i := range w.words {
			if lowFirst {
				w.words[i] = uint16(b[2*i+1])<<8 | uint16(b[2*i])
			} else {
				w.words[i] = uint16(b[2*i])<<8 | uint16(b[2*i+1])
			}
		}
		return w, nil
	}
	switch v.Kind() {
	case adapters.IntKind, adapters.UintKind, adapters.FloatKind:
	default:
		return w, adapters.BadValue("expected a number, got %s", kindName(v))
	}
	if v.Kind() == adapters.FloatKind && !floatOK(v.Float()) {
		return w, adapters.BadValue("NaN and infinite values cannot be written")
	}
	if tag.Scale == 0 {
		return w, adapters.BadValue("scale 0 cannot be inverted")
	}
	sc := newScaler(tag.Scale, tag.Offset)
	switch tag.Type {
	case "float32", "float64":
		raw := v.Float()
		if !sc.identity {
			raw = sc.invert(raw)
		}
		if !floatOK(raw) {
			return w, adapters.BadValue("%s is out of range after scaling", v)
		}
		if tag.Type == "float32" {
			f := float32(raw)
			if math.IsInf(float64(f), 0) {
				return w, adapters.BadValue("%s is out of the range of float32", v)
			}
			w.words = orderWords(uint64(math.Float32bits(f)), 2, order)
		} else {
			w.words = orderWords(math.Float64bits(raw), 4, order)
		}
		return w, nil
	}
	lo, hi, n, ok := intRange(tag.Type)
	if !ok {
		return w, adapters.BadValue("type %q cannot be written", tag.Type)
	}
	var bitsOut uint64
	if sc.identity {
		u, err := exactInt(v, lo, hi, tag.Type)
		if err != nil {
			return w, err
		}
		bitsOut = u
	} else {
		eng := v.Float()
		raw := math.Round(sc.invert(eng))
		back := sc.apply(raw)
		if !floatOK(raw) || math.Abs(back-eng) > 1e-6*math.Abs(tag.Scale)+1e-12*math.Abs(eng) {
			return w, adapters.BadValue("%s is not representable with scale %g and offset %g (nearest is %s)", v, tag.Scale, tag.Offset, adapters.FloatValue(back))
		}
		u, err := exactInt(adapters.FloatValue(raw), lo, hi, tag.Type)
		if err != nil {
			return w, adapters.BadValue("%s is out of range: raw value %g does not fit %s", v, raw, tag.Type)
		}
		bitsOut = u
	}
	w.words = orderWords(bitsOut, n, order)
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
func (p *Poller) CheckWrite(tag string, v adapters.Value) error {
	t, _, ok := p.tagConfig(tag)
	if !ok {
		return adapters.BadValue("device %s has no tag %q", p.dev.Name, tag)
	}
	if !t.Writable {
		return adapters.BadValue("tag %s/%s is not writable", p.dev.Name, tag)
	}
	if err := checkLimits(t, v); err != nil {
		return err
	}
	return EncodeWrite(t, v)
}

// checkLimits applies the tag's min and max to v, exactly.
func checkLimits(t config.ModbusTag, v adapters.Value) error {
	return adapters.CheckLimits(v, adapters.NewLimit(t.Min, t.MinInt), adapters.NewLimit(t.Max, t.MaxInt))
}

// WriteTag writes the engineering value v to tag: FC5 for a coil, FC6 for
// one register, FC16 for a multi-register value (a 32- or 64-bit value or
// a string is always one request), and for a bool on one bit of a holding
// register a read (FC3) and a write (FC6) of that register. The request
// holds the link the whole time, so it never interleaves with a poll of any
// device on the same connection (a bit write cannot lose a concurrent
// change made through ferry), and it goes ahead of the next poll request.
// Writes are not retried: a timeout may have been carried out.
//
// With verify, the tag is read back on the same hold of the link and
// compared register by register (bit by bit) with what was written. It
// returns the value the device holds now, decoded as a poll would, and
// asks Run for an immediate poll of the tag's scan class so the new value
// is published promptly. Errors are *adapters.WriteError.
func (p *Poller) WriteTag(ctx context.Context, tag string, v adapters.Value, verify bool) (adapters.Value, error) {
	t, ci, ok := p.tagConfig(tag)
	if !ok {
		return adapters.Value{}, adapters.BadValue("device %s has no tag %q", p.dev.Name, tag)
	}
	if !t.Writable {
		return adapters.Value{}, adapters.BadValue("tag %s/%s is not writable", p.dev.Name, tag)
	}
	if err := checkLimits(t, v); err != nil {
		return adapters.Value{}, err
	}
	w, err := encodeWrite(t, v)
	if err != nil {
		return adapters.Value{}, err
	}
	dec, err := NewDecoder(t)
	if err != nil {
		return adapters.Value{}, adapters.BadValue("%v", err)
	}
	// Every failure from here on says what happened to this write, not
	// what happened to the last poll.
	what := fmt.Sprintf("write of %s to %s/%s", v, p.dev.Name, tag)
	if err := ctx.Err(); err != nil {
		return adapters.Value{}, &adapters.WriteError{Code: adapters.CodeTimeout, Err: fmt.Errorf("%s not sent: %w", what, err)}
	}
	l, err := p.acquire()
	if err != nil {
		return adapters.Value{}, &adapters.WriteError{Code: adapters.CodeDeviceError, Err: fmt.Errorf("%s not sent: %w", what, err)}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if ctx.Err() != nil {
		return adapters.Value{}, &adapters.WriteError{Code: adapters.CodeTimeout, Err: fmt.Errorf("%s not sent: waited too long for the connection: %w", what, ctx.Err())}
	}
	if _, err := l.ensure(!p.running.Load(), p.minBackoff, p.maxBackoff); err != nil {
		// The link is backing off after a failure: a device that stopped
		// answering in time is a timeout to the commander, not an error.
		if errors.Is(err, mb.ErrRequestTimedOut) {
			return adapters.Value{}, &adapters.WriteError{Code: adapters.CodeTimeout, Err: &quietError{
				msg: fmt.Sprintf("%s not sent: device %s stopped answering (its requests timed out after %v) and is not connected; ferry reconnects by itself, send the command again later", what, p.dev.Name, p.dev.Timeout),
				err: err,
			}}
		}
		return adapters.Value{}, &adapters.WriteError{Code: adapters.CodeDeviceError, Err: fmt.Errorf("%s not sent: device %s is not connected: %w", what, p.dev.Name, err)}
	}
	words, bitsNow, err := p.writeLocked(l, w)
	if err == nil && verify {
		var back []uint16
		var backBits []bool
		back, backBits, err = p.readBackLocked(l, w, len(words))
		if err == nil && !sameWrite(w, words, bitsNow, back, backBits) {
			err = &adapters.WriteError{Code: adapters.CodeDeviceError, Err: fmt.Errorf("verify: the device holds %s after the write", decodeBack(dec, w, back, backBits))}
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
	if ci >= 0 {
		p.kickClass(ci)
	}
	return decodeBack(dec, w, words, bitsNow), nil
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

// writeLocked performs w; caller holds l.mu and l is connected. It returns
// the registers (bits) the tag holds after the write.
func (p *Poller) writeLocked(l *link, w encodedWrite) ([]uint16, []bool, error) {
	_ = l.client.SetUnitId(p.dev.Unit)
	var err error
	words := w.words
	var bitsNow []bool
	switch {
	case w.table == config.TableCoil:
		err = l.client.WriteCoil(w.addr, w.coil)
		bitsNow = []bool{w.coil}
	case w.bit >= 0:
		var cur []uint16
		cur, err = l.client.ReadRegisters(w.addr, 1, mb.HOLDING_REGISTER)
		if err == nil && len(cur) != 1 {
			err = mb.ErrProtocolError
		}
		if err == nil {
			x := cur[0] &^ (1 << w.bit)
			if w.on {
				x |= 1 << w.bit
			}
			words = []uint16{x}
			err = l.client.WriteRegister(w.addr, x)
		}
	case len(w.words) == 1:
		err = l.client.WriteRegister(w.addr, w.words[0])
	default:
		err = l.client.WriteRegisters(w.addr, w.words)
	}
	if err != nil {
		return nil, nil, p.writeFailed(l, fmt.Errorf("write %s %d: %w", w.table, w.addr, err), err)
	}
	l.answered(p.minBackoff)
	return words, bitsNow, nil
}

func (p *Poller) readBackLocked(l *link, w encodedWrite, n int) ([]uint16, []bool, error) {
	if w.table == config.TableCoil {
		b, err := l.client.ReadCoils(w.addr, 1)
		if err == nil && len(b) != 1 {
			err = mb.ErrProtocolError
		}
		if err != nil {
			return nil, nil, p.writeFailed(l, fmt.Errorf("verify: read coil %d: %w", w.addr, err), err)
		}
		return nil, b, nil
	}
	r, err := l.client.ReadRegisters(w.addr, uint16(max(n, 1)), mb.HOLDING_REGISTER)
	if err == nil && len(r) != max(n, 1) {
		err = mb.ErrProtocolError
	}
	if err != nil {
		return nil, nil, p.writeFailed(l, fmt.Errorf("verify: read holding %d: %w", w.addr, err), err)
	}
	return r, nil, nil
}

// writeFailed classifies a failed request of a write (caller holds l.mu):
// a timeout is adapters.CodeTimeout, anything else adapters.CodeDeviceError; a transport
// error closes the link as a failed poll would.
func (p *Poller) writeFailed(l *link, werr, err error) error {
	switch {
	case errors.Is(err, mb.ErrRequestTimedOut):
		l.consecTmout++
		if l.consecTmout >= l.users() {
			l.fail(werr, p.minBackoff, p.maxBackoff)
		}
		return &adapters.WriteError{Code: adapters.CodeTimeout, Err: fmt.Errorf("%w: no answer within %v, so it may have been carried out or not", werr, p.dev.Timeout)}
	case isException(err):
		l.answered(p.minBackoff)
	default:
		l.fail(werr, p.minBackoff, p.maxBackoff)
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
