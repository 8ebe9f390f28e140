package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ferry-gateway/ferry/adapters"
)

// maxCommandPayload bounds a command payload; a longer one is bad_value.
const maxCommandPayload = 64 << 10

// commandPayload is a decoded command payload.
type commandPayload struct {
	value adapters.Value
	ts    time.Time // zero when absent
}

// decodeCommand decodes a command payload: a bare JSON value (42, true,
// "text") or an object {"value": V, "ts": "RFC 3339"} with no other keys.
// Numbers keep their exact integer value (int64 or uint64) when written
// without fraction or exponent; other numbers are float64 and must be
// finite. null, arrays and nested objects, invalid UTF-8, duplicate or
// unknown keys and trailing data are refused.
func decodeCommand(b []byte) (commandPayload, error) {
	var cp commandPayload
	if len(b) > maxCommandPayload {
		return cp, fmt.Errorf("payload of %d bytes is longer than %d", len(b), maxCommandPayload)
	}
	if !utf8.Valid(b) {
		return cp, errors.New("payload is not valid UTF-8")
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return cp, errors.New("empty payload")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return cp, fmt.Errorf("invalid JSON: %v", err)
	}
	if d, ok := tok.(json.Delim); ok && d == '{' {
		seen := map[string]bool{}
		hasValue := false
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return cp, fmt.Errorf("invalid JSON: %v", err)
			}
			key, _ := kt.(string)
			if seen[key] {
				return cp, fmt.Errorf("duplicate key %q", key)
			}
			seen[key] = true
			vt, err := dec.Token()
			if err != nil {
				return cp, fmt.Errorf("invalid JSON: %v", err)
			}
			switch key {
			case "value":
				if cp.value, err = scalarValue(vt); err != nil {
					return cp, err
				}
				hasValue = true
			case "ts":
				s, ok := vt.(string)
				if !ok {
					return cp, errors.New(`"ts" must be an RFC 3339 time string`)
				}
				if cp.ts, err = time.Parse(time.RFC3339Nano, s); err != nil {
					return cp, fmt.Errorf(`"ts": %v`, err)
				}
			default:
				if _, ok := vt.(json.Delim); ok {
					return cp, fmt.Errorf("unknown key %q", key)
				}
				return cp, fmt.Errorf("unknown key %q (only \"value\" and \"ts\")", key)
			}
		}
		if _, err := dec.Token(); err != nil { // the closing '}'
			return cp, fmt.Errorf("invalid JSON: %v", err)
		}
		if !hasValue {
			return cp, errors.New(`object without "value"`)
		}
	} else if cp.value, err = scalarValue(tok); err != nil {
		return cp, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return cp, errors.New("invalid JSON: data after the value")
	}
	return cp, nil
}

// scalarValue converts a JSON token to a Value: bool, number or string.
func scalarValue(tok json.Token) (adapters.Value, error) {
	switch t := tok.(type) {
	case bool:
		return adapters.BoolValue(t), nil
	case string:
		return adapters.StringValue(t), nil
	case json.Number:
		return numberValue(string(t))
	case nil:
		return adapters.Value{}, errors.New("null is not a value that can be written")
	case json.Delim:
		return adapters.Value{}, errors.New("arrays and objects cannot be written")
	}
	return adapters.Value{}, fmt.Errorf("unexpected JSON %v", tok)
}

// numberValue parses a JSON number exactly: integers as int64 (or uint64
// above MaxInt64), others as a finite float64.
func numberValue(s string) (adapters.Value, error) {
	if !strings.ContainsAny(s, ".eE") {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return adapters.IntValue(i), nil
		}
		if u, err := strconv.ParseUint(s, 10, 64); err == nil {
			return adapters.UintValue(u), nil
		}
		return adapters.Value{}, fmt.Errorf("integer %s is out of range", s)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return adapters.Value{}, fmt.Errorf("number %s is out of range", s)
	}
	return adapters.FloatValue(f), nil
}
