package opcua

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

func deviceError(format string, args ...any) error {
	return &adapters.WriteError{Code: adapters.CodeDeviceError, Err: fmt.Errorf(format, args...)}
}

// live is the connection Run currently holds, for writes.
type live struct {
	cn         *conn
	ids        []*ua.NodeID
	namespaces int
	mu         sync.Mutex
	types      map[int]uint32 // tag index -> built-in type id (read once per connection)
}

func (c *Client) setLive(l *live) {
	c.liveMu.Lock()
	c.cur = l
	c.liveMu.Unlock()
}

func (c *Client) tagIndex(name string) int {
	for i, t := range c.tags {
		if t.cfg.Name == name {
			return i
		}
	}
	return -1
}

// CheckWrite validates a write of v to tag without I/O (CompileWrite and
// Check); the gateway compiles each tag once instead.
func (c *Client) CheckWrite(tag string, v adapters.Value) error {
	return adapters.CheckWrite(c, tag, v)
}

// WriteTag checks and writes v to tag: CompileWrite, Check and Write in
// one call.
func (c *Client) WriteTag(ctx context.Context, tag string, v adapters.Value, verify bool) (adapters.Value, error) {
	return adapters.WriteTag(ctx, c, tag, v, verify)
}

// tagWrite is one writable tag of a Client, compiled once: its index (so
// its node on the current connection) and its limits. The node's data
// type is known per connection (dataType).
type tagWrite struct {
	c        *Client
	i        int
	min, max *adapters.Limit
}

// CompileWrite compiles the writes of tag (adapters.Writer): it refuses a
// tag the device does not have and one that is not writable (bad_value).
func (c *Client) CompileWrite(tag string) (adapters.TagWrite, error) {
	i := c.tagIndex(tag)
	if i < 0 {
		return nil, adapters.BadValue("device %s has no tag %q", c.dev.Name, tag)
	}
	t := c.tags[i].cfg
	if !t.Writable {
		return nil, adapters.BadValue("tag %s/%s is not writable", c.dev.Name, tag)
	}
	return &tagWrite{c: c, i: i, min: adapters.NewLimit(t.Min, t.MinInt), max: adapters.NewLimit(t.Max, t.MaxInt)}, nil
}

// Check validates v without I/O: v is within the tag's min and max
// (compared exactly), and a bool, a finite number or a string (that fits
// the node's data type when that is known from an earlier write).
func (tw *tagWrite) Check(v adapters.Value) (any, error) {
	if err := adapters.CheckLimits(v, tw.min, tw.max); err != nil {
		return nil, err
	}
	switch v.Kind() {
	case adapters.BoolKind, adapters.IntKind, adapters.UintKind, adapters.StringKind:
	case adapters.FloatKind:
		if !floatOK(v.Float()) {
			return nil, adapters.BadValue("NaN and infinite values cannot be written")
		}
	default:
		return nil, adapters.BadValue("only booleans, numbers and strings can be written")
	}
	c := tw.c
	c.liveMu.Lock()
	l := c.cur
	c.liveMu.Unlock()
	if l != nil {
		l.mu.Lock()
		dt, ok := l.types[tw.i]
		l.mu.Unlock()
		if ok {
			if _, err := coerce(v, dt); err != nil {
				return nil, err
			}
		}
	}
	return v, nil
}

// Write writes the value Check accepted to the tag's node, coerced to the
// node's DataType (read once per connection and cached): Boolean,
// SByte..UInt64 (exact integers in range), Float, Double, String. A status
// code other than Good is a device_error named by its code
// (BadNotWritable, BadUserAccessDenied, BadTypeMismatch, ...). Only nodes
// of configured tags are written, and only after their namespace was
// resolved on the current connection. With verify the value is read back
// and compared. Without Run (ferry write) it connects for this one write.
func (tw *tagWrite) Write(ctx context.Context, raw any, verify bool) (adapters.Value, error) {
	c := tw.c
	v, ok := raw.(adapters.Value)
	if !ok {
		return adapters.Value{}, adapters.BadValue("tag %s/%s: write of a value that was not checked", c.dev.Name, c.tags[tw.i].cfg.Name)
	}
	got, err := c.write(ctx, tw.i, v, verify)
	// A failure of the device or of the connection says which write it
	// was (value, device/tag), not only what the connection last did.
	var we *adapters.WriteError
	if errors.As(err, &we) && (we.Code == adapters.CodeDeviceError || we.Code == adapters.CodeTimeout) {
		return got, &adapters.WriteError{Code: we.Code, Err: fmt.Errorf("write of %s to %s/%s: %w", v, c.dev.Name, c.tags[tw.i].cfg.Name, we.Err)}
	}
	return got, err
}

// write writes v to the node of tag i on the current connection (or on
// one of its own without Run).
func (c *Client) write(ctx context.Context, i int, v adapters.Value, verify bool) (adapters.Value, error) {
	c.liveMu.Lock()
	l := c.cur
	c.liveMu.Unlock()
	if l == nil {
		if c.running.Load() {
			return adapters.Value{}, deviceError("not sent: not connected to %s (ferry reconnects by itself; send the command again later)", c.dev.Endpoint)
		}
		cn, err := c.connect(ctx)
		if err != nil {
			return adapters.Value{}, classify(ctx, err)
		}
		defer cn.close()
		ns := cn.cl.Namespaces()
		ids, _ := c.resolve(ns)
		l = &live{cn: cn, ids: ids, namespaces: len(ns), types: map[int]uint32{}}
	}
	node := l.ids[i]
	if node == nil {
		return adapters.Value{}, deviceError("node %s is not on the server (namespace not found)", c.tags[i].cfg.Node)
	}
	if int(node.Namespace()) >= l.namespaces {
		// gopcua's own server panics on a write to an unknown namespace;
		// no server should get one.
		return adapters.Value{}, deviceError("node %s: namespace index %d is not on the server", c.tags[i].cfg.Node, node.Namespace())
	}
	dt, err := c.dataType(ctx, l, i, node)
	if err != nil {
		return adapters.Value{}, err
	}
	variant, err := coerce(v, dt)
	if err != nil {
		return adapters.Value{}, err
	}
	if err := c.writeNode(ctx, l, i, node, variant); err != nil {
		return adapters.Value{}, err
	}
	written, _ := convertVariant(variant)
	if verify {
		if err := c.verify(ctx, l, i, node, written); err != nil {
			c.st.writeErrors.Add(1)
			return adapters.Value{}, err
		}
	}
	select { // poll mode: read at once so the new value is published now
	case c.kick <- struct{}{}:
	default:
	}
	return written, nil
}

// writeNode sends the write request of tag i's node.
func (c *Client) writeNode(ctx context.Context, l *live, i int, node *ua.NodeID, variant *ua.Variant) error {
	c.st.writes.Add(1)
	res, err := l.cn.cl.Write(ctx, &ua.WriteRequest{NodesToWrite: []*ua.WriteValue{{
		NodeID: node, AttributeID: ua.AttributeIDValue,
		Value: &ua.DataValue{EncodingMask: ua.DataValueValue, Value: variant},
	}}})
	if err == nil && res.ResponseHeader != nil && res.ResponseHeader.ServiceResult != ua.StatusOK {
		err = res.ResponseHeader.ServiceResult
	}
	if err == nil && len(res.Results) != 1 {
		err = fmt.Errorf("write: %d results for 1 node", len(res.Results))
	}
	if err != nil {
		c.st.writeErrors.Add(1)
		return classify(ctx, fmt.Errorf("write %s: %w", c.tags[i].cfg.Node, err))
	}
	if code := res.Results[0]; code != ua.StatusOK && Quality(code) != adapters.Good {
		c.st.writeErrors.Add(1)
		return deviceError("%s: write %s refused", StatusName(code), c.tags[i].cfg.Node)
	}
	return nil
}

// verify reads tag i's node back and compares it with what was written.
func (c *Client) verify(ctx context.Context, l *live, i int, node *ua.NodeID, written adapters.Value) error {
	rr, err := l.cn.cl.Read(ctx, &ua.ReadRequest{NodesToRead: []*ua.ReadValueID{{NodeID: node, AttributeID: ua.AttributeIDValue}},
		TimestampsToReturn: ua.TimestampsToReturnNeither})
	if err == nil && (len(rr.Results) != 1 || rr.Results[0] == nil) {
		err = errors.New("no result")
	}
	if err != nil {
		return classify(ctx, fmt.Errorf("verify: read %s: %w", c.tags[i].cfg.Node, err))
	}
	dv := rr.Results[0]
	if Quality(dv.Status) != adapters.Good || dv.Value == nil {
		return deviceError("verify: read %s: %s", c.tags[i].cfg.Node, StatusName(dv.Status))
	}
	if back, _ := convertVariant(dv.Value); back != written {
		return deviceError("verify: wrote %s, the server holds %s", written, back)
	}
	return nil
}

// classify maps a request error to timeout or device_error.
func classify(ctx context.Context, err error) error {
	var code ua.StatusCode
	switch {
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil || errors.Is(err, ua.StatusBadTimeout):
		return &adapters.WriteError{Code: adapters.CodeTimeout, Err: err}
	case errors.As(err, &code):
		return &adapters.WriteError{Code: adapters.CodeDeviceError, Err: fmt.Errorf("%s: %w", StatusName(code), err)}
	}
	return &adapters.WriteError{Code: adapters.CodeDeviceError, Err: err}
}

// dataType returns the built-in type id of tag i's node, read once per
// connection.
func (c *Client) dataType(ctx context.Context, l *live, i int, node *ua.NodeID) (uint32, error) {
	l.mu.Lock()
	dt, ok := l.types[i]
	l.mu.Unlock()
	if ok {
		return dt, nil
	}
	rr, err := l.cn.cl.Read(ctx, &ua.ReadRequest{NodesToRead: []*ua.ReadValueID{{NodeID: node, AttributeID: ua.AttributeIDDataType}},
		TimestampsToReturn: ua.TimestampsToReturnNeither})
	if err == nil && (len(rr.Results) != 1 || rr.Results[0] == nil) {
		err = errors.New("no result")
	}
	if err != nil {
		return 0, classify(ctx, fmt.Errorf("read the data type of %s: %w", c.tags[i].cfg.Node, err))
	}
	dv := rr.Results[0]
	if Quality(dv.Status) != adapters.Good || dv.Value == nil {
		return 0, deviceError("%s: read the data type of %s", StatusName(dv.Status), c.tags[i].cfg.Node)
	}
	var n *ua.NodeID
	switch x := dv.Value.Value().(type) {
	case *ua.NodeID:
		n = x
	case *ua.ExpandedNodeID:
		n = x.NodeID
	}
	if n == nil || n.Namespace() != 0 || n.Type() != ua.NodeIDTypeTwoByte && n.Type() != ua.NodeIDTypeFourByte && n.Type() != ua.NodeIDTypeNumeric {
		return 0, adapters.BadValue("node %s has data type %v, which ferry cannot write", c.tags[i].cfg.Node, dv.Value.Value())
	}
	dt = n.IntID()
	if dt == id.Duration {
		dt = id.Double
	}
	if _, ok := builtinNames[dt]; !ok {
		return 0, adapters.BadValue("node %s has data type %v, which ferry cannot write (Boolean, integers, Float, Double, String)", c.tags[i].cfg.Node, n)
	}
	l.mu.Lock()
	l.types[i] = dt
	l.mu.Unlock()
	return dt, nil
}

var builtinNames = map[uint32]string{
	id.Boolean: "Boolean", id.SByte: "SByte", id.Byte: "Byte", id.Int16: "Int16", id.UInt16: "UInt16",
	id.Int32: "Int32", id.UInt32: "UInt32", id.Int64: "Int64", id.UInt64: "UInt64",
	id.Float: "Float", id.Double: "Double", id.String: "String",
}

// coerce converts v to a Variant of the built-in type dt, refusing what the
// type cannot hold exactly (fractions for integers, out of range values,
// overflowing floats) and values of another kind.
func coerce(v adapters.Value, dt uint32) (*ua.Variant, error) {
	name := builtinNames[dt]
	wrong := func() (*ua.Variant, error) {
		return nil, adapters.BadValue("%s does not fit the node's data type %s", v, name)
	}
	switch dt {
	case id.Boolean:
		if v.Kind() != adapters.BoolKind {
			return wrong()
		}
		return ua.MustVariant(v.Bool()), nil
	case id.String:
		if v.Kind() != adapters.StringKind {
			return wrong()
		}
		return ua.MustVariant(v.Str()), nil
	case id.Float, id.Double:
		switch v.Kind() {
		case adapters.IntKind, adapters.UintKind, adapters.FloatKind:
		default:
			return wrong()
		}
		f := v.Float()
		if !floatOK(f) {
			return nil, adapters.BadValue("NaN and infinite values cannot be written")
		}
		if dt == id.Float {
			f32 := float32(f)
			if math.IsInf(float64(f32), 0) {
				return nil, adapters.BadValue("%s is out of the range of Float", v)
			}
			return ua.MustVariant(f32), nil
		}
		return ua.MustVariant(f), nil
	}
	return coerceInt(v, dt, name)
}

// coerceInt converts v to a Variant of the integer type dt (named name),
// exactly.
func coerceInt(v adapters.Value, dt uint32, name string) (*ua.Variant, error) {
	var lo, hi int64 // the range of the signed types up to Int32 and the unsigned ones up to UInt32
	switch dt {
	case id.SByte:
		lo, hi = math.MinInt8, math.MaxInt8
	case id.Byte:
		lo, hi = 0, math.MaxUint8
	case id.Int16:
		lo, hi = math.MinInt16, math.MaxInt16
	case id.UInt16:
		lo, hi = 0, math.MaxUint16
	case id.Int32:
		lo, hi = math.MinInt32, math.MaxInt32
	case id.UInt32:
		lo, hi = 0, math.MaxUint32
	case id.Int64, id.UInt64:
	default:
		return nil, adapters.BadValue("data type %d cannot be written", dt)
	}
	switch v.Kind() {
	case adapters.IntKind, adapters.UintKind, adapters.FloatKind:
	default:
		return nil, adapters.BadValue("%s does not fit the node's data type %s", v, name)
	}
	if !v.Whole() {
		return nil, adapters.BadValue("%s is not a whole number in the range of %s", v, name)
	}
	// Integers are compared as integers (never through a float64): 2^63
	// is out of the range of Int64 however it is written.
	if dt == id.UInt64 {
		u, ok := v.ExactUint()
		if !ok {
			return nil, adapters.BadValue("%s is out of the range of %s (0..%d)", v, name, uint64(math.MaxUint64))
		}
		return ua.MustVariant(u), nil
	}
	i, ok := v.ExactInt()
	if dt == id.Int64 {
		if !ok {
			return nil, adapters.BadValue("%s is out of the range of %s (%d..%d)", v, name, int64(math.MinInt64), int64(math.MaxInt64))
		}
		return ua.MustVariant(i), nil
	}
	if !ok || i < lo || i > hi {
		return nil, adapters.BadValue("%s is out of the range of %s (%d..%d)", v, name, lo, hi)
	}
	switch dt {
	case id.SByte:
		return ua.MustVariant(int8(i)), nil
	case id.Byte:
		return ua.MustVariant(uint8(i)), nil
	case id.Int16:
		return ua.MustVariant(int16(i)), nil
	case id.UInt16:
		return ua.MustVariant(uint16(i)), nil
	case id.Int32:
		return ua.MustVariant(int32(i)), nil
	}
	return ua.MustVariant(uint32(i)), nil
}
