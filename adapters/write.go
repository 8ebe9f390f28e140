package adapters

import (
	"cmp"
	"context"
	"fmt"
	"math"
)

// Command result codes (CONTRACT.md, Commands): the one place they are
// defined. An adapter's write fails with CodeBadValue, CodeOutOfRange,
// CodeDeviceError or CodeTimeout; the gateway answers the others itself.
const (
	CodeUnknownTag  = "unknown_tag"
	CodeNotWritable = "not_writable"
	CodeBadValue    = "bad_value"
	CodeOutOfRange  = "out_of_range"
	CodeExpired     = "expired"
	CodeRateLimited = "rate_limited"
	CodeDeviceError = "device_error"
	CodeTimeout     = "timeout"
)

// ResultCodes lists every result code, "ok" (a success) first.
var ResultCodes = []string{"ok", CodeUnknownTag, CodeNotWritable, CodeBadValue, CodeOutOfRange,
	CodeExpired, CodeRateLimited, CodeDeviceError, CodeTimeout}

// Writer is what an adapter implements for its devices to take commands
// (see the package doc): *modbus.Poller and *opcua.Client.
type Writer interface {
	// CompileWrite compiles the writes of tag once: it refuses (a
	// *WriteError, bad_value) a tag the device does not have or that is
	// not writable, and one whose config cannot be written.
	CompileWrite(tag string) (TagWrite, error)
}

// CheckWrite validates a write of v to tag of w without any I/O:
// CompileWrite and Check in one call, for tools and tests (the gateway
// compiles each tag once).
func CheckWrite(w Writer, tag string, v Value) error {
	tw, err := w.CompileWrite(tag)
	if err != nil {
		return err
	}
	_, err = tw.Check(v)
	return err
}

// WriteTag checks and writes v to tag of w: CompileWrite, Check and Write
// in one call, for tools and tests.
func WriteTag(ctx context.Context, w Writer, tag string, v Value, verify bool) (Value, error) {
	tw, err := w.CompileWrite(tag)
	if err != nil {
		return Value{}, err
	}
	raw, err := tw.Check(v)
	if err != nil {
		return Value{}, err
	}
	return tw.Write(ctx, raw, verify)
}

// TagWrite is one writable tag, compiled once by Writer.CompileWrite.
type TagWrite interface {
	// Check validates v for the tag without any I/O: its kind and range
	// for the tag's type, and the tag's min and max, exactly. It returns
	// what Write takes, opaque to the caller.
	Check(v Value) (any, error)
	// Write writes what Check returned (and reads it back with verify);
	// it returns the value the device holds.
	Write(ctx context.Context, raw any, verify bool) (Value, error)
}

// WriteError is why a write to a device failed; Code is one of the Code
// constants. Find it with errors.As.
type WriteError struct {
	Code string
	Err  error
}

func (e *WriteError) Error() string { return e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// BadValue is a WriteError with CodeBadValue: the value cannot be written
// to the tag as it is (type, range, size).
func BadValue(format string, args ...any) error {
	return &WriteError{Code: CodeBadValue, Err: fmt.Errorf(format, args...)}
}

// OutOfRange is a WriteError with CodeOutOfRange: the value is below the
// tag's min or above its max.
func OutOfRange(format string, args ...any) error {
	return &WriteError{Code: CodeOutOfRange, Err: fmt.Errorf(format, args...)}
}

// Limit is a tag's min or max as the config wrote it: Float always, and
// Int when it was an integer, so that integers beyond 2^53 compare exactly.
type Limit struct {
	Float float64
	Int   *int64
}

// CheckLimits refuses v with out_of_range when it is below min or above max
// (either may be nil). The comparison is exact for every combination of
// kinds: an integer is never rounded to a float64 to be compared, so
// 2^53+1 is above a max of 2^53 and 2^63 is above a max of 2^63-1. Values
// other than numbers are not limited.
func CheckLimits(v Value, min, max *Limit) error {
	switch v.Kind() {
	case IntKind, UintKind, FloatKind:
	default:
		return nil
	}
	if min != nil && min.compare(v) > 0 {
		return OutOfRange("%s is below the minimum %s", v, min)
	}
	if max != nil && max.compare(v) < 0 {
		return OutOfRange("%s is above the maximum %s", v, max)
	}
	return nil
}

// String formats the limit as the config wrote it.
func (l *Limit) String() string {
	if l.Int != nil {
		return IntValue(*l.Int).String()
	}
	return FloatValue(l.Float).String()
}

// compare is -1, 0 or +1 as the limit is below, equal to or above v,
// exactly.
func (l *Limit) compare(v Value) int {
	if l.Int != nil {
		return -CompareInt(v, *l.Int)
	}
	return -CompareFloat(v, l.Float)
}

// CompareInt is -1, 0 or +1 as the number v is below, equal to or above
// i, exactly (0 for a v that is not a number).
func CompareInt(v Value, i int64) int {
	switch v.Kind() {
	case IntKind:
		return cmp.Compare(v.Int(), i)
	case UintKind:
		if v.Uint() > math.MaxInt64 {
			return 1
		}
		return cmp.Compare(int64(v.Uint()), i)
	case FloatKind:
		return -CompareFloat(IntValue(i), v.Float())
	}
	return 0
}

// CompareFloat is -1, 0 or +1 as the number v is below, equal to or above
// f, exactly: an int64 or uint64 is compared with the float's integer part
// and then its fraction, never converted to a float64 (0 for a v that is
// not a number, or a NaN).
func CompareFloat(v Value, f float64) int {
	if math.IsNaN(f) {
		return 0
	}
	switch v.Kind() {
	case IntKind:
		switch {
		case f >= 0x1p63:
			return -1
		case f < -0x1p63:
			return 1
		}
		t := math.Trunc(f)
		if c := cmp.Compare(v.Int(), int64(t)); c != 0 {
			return c
		}
		return cmp.Compare(t, f)
	case UintKind:
		switch {
		case f >= 0x1p64:
			return -1
		case f < 0:
			return 1
		}
		t := math.Trunc(f)
		if c := cmp.Compare(v.Uint(), uint64(t)); c != 0 {
			return c
		}
		return cmp.Compare(t, f)
	case FloatKind:
		return cmp.Compare(v.Float(), f)
	}
	return 0
}

func cmp3[T int64 | uint64 | float64](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// NewLimit is the Limit of a config's min or max: f as a float64 and, when
// the config wrote an integer, i exactly. It is nil when f is nil (no
// limit).
func NewLimit(f *float64, i *int64) *Limit {
	if f == nil {
		return nil
	}
	return &Limit{Float: *f, Int: i}
}
