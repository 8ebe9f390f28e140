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
// Whole numbers keep their exact integer value (int64 or uint64) however
// they are written; other numbers are float64 and must be finite (see
// numberValue). null, arrays and nested objects, invalid UTF-8,
// lone UTF-16 surrogates, duplicate or unknown keys and trailing data are
// refused.
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
	if err := checkSurrogates(b); err != nil {
		return cp, err
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

// numberValue parses a JSON number exactly. A number that is a whole
// number in the range of int64 or uint64 is that integer however it is
// written (42, 42.0, 4.2e1, 9223372036854775807.0, 1e19), never rounded
// through a float64; -0 is 0, -0.0 stays a float. Other numbers are the
// nearest finite float64, marked inexact (adapters.InexactFloatValue) when
// the float64 is a whole number in the range of int64 or uint64 that the
// number is not (2^53 + 0.5, -2^63 - 1), so that they are never written to
// an integer tag.
func numberValue(s string) (adapters.Value, error) {
	neg := strings.HasPrefix(s, "-")
	mant, expText, hasExp := strings.Cut(strings.TrimPrefix(s, "-"), "e")
	if !hasExp {
		mant, expText, hasExp = strings.Cut(mant, "E")
	}
	intPart, fracPart, hasFrac := strings.Cut(mant, ".")
	if !hasFrac && !hasExp {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return adapters.IntValue(i), nil
		}
		if u, err := strconv.ParseUint(s, 10, 64); err == nil {
			return adapters.UintValue(u), nil
		}
		return adapters.Value{}, fmt.Errorf("integer %s is out of range", s)
	}
	// The exact value is digits × 10^exp.
	digits := strings.TrimLeft(intPart+fracPart, "0")
	exp, err := strconv.Atoi(expText)
	if !hasExp {
		exp, err = 0, nil
	}
	whole := false
	switch {
	case digits == "":
		if neg {
			return adapters.FloatValue(math.Copysign(0, -1)), nil
		}
		return adapters.IntValue(0), nil
	case err != nil || exp > 1<<20 || exp < -(1<<20):
		// An exponent too large to matter: the float64 is 0 or ±Inf.
		whole = !strings.HasPrefix(strings.TrimLeft(expText, "+"), "-")
	default:
		exp -= len(fracPart)
		trimmed := strings.TrimRight(digits, "0")
		exp += len(digits) - len(trimmed)
		digits = trimmed
		if whole = exp >= 0; whole && len(digits)+exp <= 20 {
			text := digits + strings.Repeat("0", exp)
			if neg {
				text = "-" + text
			}
			if i, err := strconv.ParseInt(text, 10, 64); err == nil {
				return adapters.IntValue(i), nil
			}
			if u, err := strconv.ParseUint(text, 10, 64); err == nil {
				return adapters.UintValue(u), nil
			}
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) || math.IsInf(f, 0) || math.IsNaN(f) {
		return adapters.Value{}, fmt.Errorf("number %s is out of range", s)
	}
	switch x := adapters.FloatValue(f); {
	case !whole && x.Whole():
		return adapters.InexactFloatValue(f, false), nil // 2^53 + 0.5 is not 2^53
	case whole:
		// A whole number beyond int64 and uint64 whose float64 is within
		// them (-2^63 - 1 rounds to -2^63) is not that integer.
		if _, ok := x.ExactInt(); ok {
			return adapters.InexactFloatValue(f, true), nil
		}
		if _, ok := x.ExactUint(); ok {
			return adapters.InexactFloatValue(f, true), nil
		}
	}
	return adapters.FloatValue(f), nil
}

// checkSurrogates refuses a JSON text whose strings hold a \u escape of a
// lone UTF-16 surrogate (\ud800 not followed by a low surrogate escape, or
// a low one alone). encoding/json silently replaces those with U+FFFD, so
// "\ud800" would be written to the device as a character nobody sent.
func checkSurrogates(b []byte) error {
	in := false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			in = !in
		case in && c == '\\' && i+1 < len(b):
			i++
			if b[i] != 'u' {
				continue
			}
			r, ok := hex4(b, i+1)
			if !ok {
				continue
			}
			i += 4
			switch {
			case r >= 0xDC00 && r <= 0xDFFF:
				return fmt.Errorf("string holds a lone UTF-16 surrogate \\u%04x, which is not a character", r)
			case r >= 0xD800 && r <= 0xDBFF:
				if i+2 < len(b) && b[i+1] == '\\' && b[i+2] == 'u' {
					if lo, ok := hex4(b, i+3); ok && lo >= 0xDC00 && lo <= 0xDFFF {
						i += 6
						continue
					}
				}
				return fmt.Errorf("string holds a lone UTF-16 surrogate \\u%04x, which is not a character", r)
			}
		}
	}
	return nil
}

// hex4 decodes the 4 hex digits at b[i:].
func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}
