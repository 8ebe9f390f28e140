package opcua

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/gopcua/opcua/ua"
)

// maxExactInt is the largest integer a JSON consumer that parses numbers
// as IEEE doubles (JavaScript, many others) reads exactly: 2^53. Int64 and
// UInt64 values beyond it are published as decimal strings.
const maxExactInt = 1 << 53

// Quality maps an OPC UA StatusCode to a reading quality by its severity
// bits (Part 4, 7.39): 00 good, 01 uncertain, 10 and 11 bad.
func Quality(code ua.StatusCode) adapters.Quality {
	switch uint32(code) >> 30 {
	case 0:
		return adapters.Good
	case 1:
		return adapters.Uncertain
	default:
		return adapters.Bad
	}
}

// StatusName returns the symbolic name of a StatusCode as the OPC UA
// specification spells it ("BadNodeIdUnknown"), ignoring the info bits;
// an unknown code is written in hex.
func StatusName(code ua.StatusCode) string {
	base := code & 0xFFFF0000
	switch base {
	case ua.StatusGood:
		return "Good"
	case ua.StatusUncertain:
		return "Uncertain"
	case ua.StatusBad:
		return "Bad"
	}
	if d, ok := ua.StatusCodes[base]; ok {
		name := strings.TrimPrefix(d.Name, "Status")
		return strings.ReplaceAll(name, "ID", "Id")
	}
	return fmt.Sprintf("0x%08X", uint32(code))
}

// reading converts one DataValue of a tag into a Reading. now is used when
// the server sent neither a source nor a server timestamp.
func reading(device, tag string, dv *ua.DataValue, now time.Time) adapters.Reading {
	r := adapters.Reading{Device: device, Tag: tag, Time: now}
	if dv == nil {
		r.Quality, r.Err = adapters.Bad, "no value returned"
		return r
	}
	switch {
	case !dv.SourceTimestamp.IsZero() && dv.SourceTimestamp.Year() > 1601:
		r.Time = dv.SourceTimestamp
	case !dv.ServerTimestamp.IsZero() && dv.ServerTimestamp.Year() > 1601:
		r.Time = dv.ServerTimestamp
	}
	code := ua.StatusOK
	if dv.EncodingMask&ua.DataValueStatusCode != 0 {
		code = dv.Status
	}
	r.Quality = Quality(code)
	if r.Quality != adapters.Good {
		r.Err = StatusName(code)
	}
	if r.Quality == adapters.Bad {
		return r // a bad value is null whatever the server sent
	}
	v, ok := convertVariant(dv.Value)
	r.Value = v
	if !ok && r.Quality == adapters.Good {
		r.Quality = adapters.Uncertain
		r.Err = "value cannot be represented in JSON (NaN, Inf or unknown type)"
	}
	return r
}

// convertVariant maps a Variant to a Value. ok is false when the value
// could not be represented faithfully (NaN/±Inf, an unknown type).
func convertVariant(v *ua.Variant) (adapters.Value, bool) {
	if v == nil || v.Type() == ua.TypeIDNull || v.Value() == nil {
		return adapters.Value{}, true
	}
	val := v.Value()
	if v.Has(ua.VariantArrayValues) || isArray(val) {
		b, ok := appendArray(nil, reflect.ValueOf(val))
		return adapters.JSONValue(string(b)), ok
	}
	return convertScalar(val)
}

func isArray(val any) bool {
	switch val.(type) {
	case []byte: // ByteString
		return false
	}
	return reflect.TypeOf(val).Kind() == reflect.Slice
}

func appendArray(b []byte, rv reflect.Value) ([]byte, bool) {
	if rv.Type() == reflect.TypeOf(ua.ByteArray{}) {
		b = append(b, '[')
		for i, x := range rv.Bytes() {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendUint(b, uint64(x), 10)
		}
		return append(b, ']'), true
	}
	ok := true
	b = append(b, '[')
	for i := 0; i < rv.Len(); i++ {
		if i > 0 {
			b = append(b, ',')
		}
		e := rv.Index(i)
		if e.Kind() == reflect.Slice && e.Type() != reflect.TypeOf([]byte(nil)) {
			var eok bool
			b, eok = appendArray(b, e)
			ok = ok && eok
			continue
		}
		ev, eok := convertScalar(e.Interface())
		ok = ok && eok
		b = ev.AppendJSON(b)
	}
	return append(b, ']'), ok
}

func floatOK(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

func convertScalar(val any) (adapters.Value, bool) {
	switch x := val.(type) {
	case nil:
		return adapters.Value{}, true
	case bool:
		return adapters.BoolValue(x), true
	case int8:
		return adapters.IntValue(int64(x)), true
	case int16:
		return adapters.IntValue(int64(x)), true
	case int32:
		return adapters.IntValue(int64(x)), true
	case int64:
		if x > maxExactInt || x < -maxExactInt {
			return adapters.StringValue(strconv.FormatInt(x, 10)), true
		}
		return adapters.IntValue(x), true
	case uint8:
		return adapters.UintValue(uint64(x)), true
	case uint16:
		return adapters.UintValue(uint64(x)), true
	case uint32:
		return adapters.UintValue(uint64(x)), true
	case uint64:
		if x > maxExactInt {
			return adapters.StringValue(strconv.FormatUint(x, 10)), true
		}
		return adapters.UintValue(x), true
	case float32:
		// The shortest decimal that round-trips the float32, so 0.1f is
		// published as 0.1 and not as 0.10000000149011612.
		f, _ := strconv.ParseFloat(strconv.FormatFloat(float64(x), 'g', -1, 32), 64)
		return adapters.FloatValue(f), floatOK(f)
	case float64:
		return adapters.FloatValue(x), floatOK(x)
	case string:
		return adapters.StringValue(x), true
	case time.Time:
		return adapters.StringValue(x.UTC().Format(time.RFC3339Nano)), true
	case *ua.GUID:
		if x == nil {
			return adapters.Value{}, true
		}
		return adapters.StringValue(strings.ToLower(x.String())), true
	case []byte:
		return adapters.StringValue(base64.StdEncoding.EncodeToString(x)), true
	case ua.XMLElement:
		return adapters.StringValue(string(x)), true
	case *ua.NodeID:
		if x == nil {
			return adapters.Value{}, true
		}
		return adapters.StringValue(x.String()), true
	case *ua.ExpandedNodeID:
		if x == nil {
			return adapters.Value{}, true
		}
		return adapters.StringValue(x.String()), true
	case ua.StatusCode:
		return adapters.StringValue(StatusName(x)), true
	case *ua.QualifiedName:
		if x == nil {
			return adapters.Value{}, true
		}
		if x.NamespaceIndex != 0 {
			return adapters.StringValue(strconv.Itoa(int(x.NamespaceIndex)) + ":" + x.Name), true
		}
		return adapters.StringValue(x.Name), true
	case *ua.LocalizedText:
		if x == nil {
			return adapters.Value{}, true
		}
		return adapters.StringValue(x.Text), true
	case *ua.DataValue:
		if x == nil {
			return adapters.Value{}, true
		}
		return convertVariant(x.Value)
	case *ua.Variant:
		return convertVariant(x)
	case *ua.ExtensionObject:
		if x == nil || x.Value == nil {
			return adapters.Value{}, true
		}
		b, err := json.Marshal(x.Value)
		if err != nil {
			return adapters.Value{}, false
		}
		return adapters.JSONValue(string(b)), true
	}
	return adapters.Value{}, false
}
