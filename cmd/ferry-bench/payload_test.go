package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/gateway/record"
)

// parseReference is parsePayload written with encoding/json: the
// definition the one-pass scanner is checked against.
func parseReference(b []byte) (p payload, device bool, err error) {
	var r struct {
		TS      string  `json:"ts"`
		Seq     *uint64 `json:"seq"`
		Quality string  `json:"quality"`
		Values  map[string]struct {
			Quality string `json:"quality"`
		} `json:"values"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return p, false, err
	}
	if r.Seq == nil {
		return p, false, errNoSeq
	}
	p.Seq = *r.Seq
	if r.TS != "" {
		if p.TS, err = time.Parse(time.RFC3339Nano, r.TS); err != nil {
			return p, false, err
		}
	}
	if r.Values != nil {
		for name, v := range r.Values {
			p.Readings++
			if v.Quality == "bad" {
				p.Bad++
			}
			p.Tags = append(p.Tags, name)
		}
		return p, true, nil
	}
	p.Readings = 1
	if r.Quality == "bad" {
		p.Bad = 1
	}
	return p, false, nil
}

// randomReading draws a reading of any value kind, including strings that
// need escaping and JSON values with nested braces and quotes.
func randomReading(rng *rand.Rand, tag string, ts time.Time) adapters.Reading {
	r := adapters.Reading{Tag: tag, Time: ts.Add(time.Duration(rng.IntN(1000)) * time.Millisecond), Quality: adapters.Good}
	switch rng.IntN(7) {
	case 0:
		r.Value = adapters.FloatValue(rng.NormFloat64() * 1e6)
	case 1:
		r.Value = adapters.IntValue(rng.Int64() - rng.Int64())
	case 2:
		r.Value = adapters.BoolValue(rng.IntN(2) == 0)
	case 3:
		r.Value = adapters.StringValue([]string{`a"b`, `back\slash`, "tab\tnew\nline", "ünïcødé", `}{][`, `\"`, ""}[rng.IntN(7)])
	case 4:
		r.Value = adapters.JSONValue(`{"a":[1,{"b":"}\""}],"c":null}`)
	case 5:
		r.Quality, r.Err = adapters.Bad, `timeout "reading" \ register`
	default:
		r.Value, r.Quality = adapters.UintValue(rng.Uint64()), adapters.Uncertain
	}
	return r
}

// ferryPayload builds a payload the way ferry does: a tag message, or a
// device message of n readings.
func ferryPayload(rng *rand.Rand, device bool, n int, seq uint64) []byte {
	ts := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC).Add(time.Duration(rng.IntN(1e6)) * time.Millisecond)
	var rec []byte
	if !device {
		rec = record.AppendReading(nil, "p/d/t", false, randomReading(rng, "t", ts))
	} else {
		rec = record.AppendHeader(nil, "p/d", false)
		rec = append(rec, `{"ts":"`...)
		rec = record.AppendTime(rec, ts)
		rec = append(rec, `","values":{`...)
		for i := range n {
			if i > 0 {
				rec = append(rec, ',')
			}
			tag := fmt.Sprintf("t%03d", i)
			if i%7 == 3 {
				tag += `"quoted\`
			}
			rec = adapters.AppendJSONString(rec, tag)
			rec = append(rec, ':')
			rec = record.AppendReadingBody(rec, randomReading(rng, tag, ts))
			rec = append(rec, '}')
		}
		rec = append(rec, '}')
	}
	m, err := record.Decode(rec)
	if err != nil {
		panic(err)
	}
	return m.AppendPayload(nil, seq)
}

func samePayload(t *testing.T, in []byte, got, want payload, gotDev, wantDev bool) {
	t.Helper()
	slices.Sort(got.Tags)
	slices.Sort(want.Tags)
	if gotDev != wantDev || got.Seq != want.Seq || !got.TS.Equal(want.TS) || got.Readings != want.Readings || got.Bad != want.Bad {
		t.Fatalf("%s\nscanner   %+v device=%v\nreference %+v device=%v", in, got, gotDev, want, wantDev)
	}
	if wantDev && len(got.Tags) != len(want.Tags) {
		t.Fatalf("%s\ntags %q, want %q", in, got.Tags, want.Tags)
	}
}

// TestParsePayloadMatchesReference: payloads made by ferry's own encoders
// read the same through the scanner as through encoding/json, and the
// offsets of ts and seq point at their values.
func TestParsePayloadMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		device := i%2 == 1
		in := ferryPayload(rng, device, rng.IntN(40)+1, rng.Uint64N(1<<53))
		want, wantDev, err := parseReference(in)
		if err != nil {
			t.Fatalf("reference: %v\n%s", err, in)
		}
		got, gotDev, err := parsePayload(in, true)
		if err != nil {
			t.Fatalf("scanner: %v\n%s", err, in)
		}
		if !device {
			got.Tags, want.Tags = nil, nil
		}
		samePayload(t, in, got, want, gotDev, wantDev)
		if s := string(in[got.seqAt[0]:got.seqAt[1]]); s != fmt.Sprint(want.Seq) {
			t.Fatalf("seq offsets give %q", s)
		}
		if s := string(in[got.tsAt[0]:got.tsAt[1]]); !strings.HasPrefix(s, `"`) || !strings.HasSuffix(s, `"`) {
			t.Fatalf("ts offsets give %q", s)
		}
	}
}

// FuzzParsePayload: the scanner never panics, and on valid JSON without
// repeated keys it agrees with encoding/json.
func FuzzParsePayload(f *testing.F) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 8 {
		f.Add(ferryPayload(rng, i%2 == 0, 3, uint64(i)))
	}
	f.Add([]byte(`{"seq":1,"x":[1,"]",{"y":"\\"}],"values":{}}`))
	f.Add([]byte(`{"seq":`))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, gotDev, err := parsePayload(in, true)
		if !json.Valid(in) || ambiguous(in) {
			return
		}
		want, wantDev, werr := parseReference(in)
		if werr != nil {
			return // a shape encoding/json refuses (ts not a time, ...)
		}
		if err != nil {
			t.Fatalf("scanner refused what encoding/json reads: %v\n%s", err, in)
		}
		samePayload(t, in, got, want, gotDev, wantDev)
	})
}

// ambiguous reports JSON texts on which the scanner and encoding/json may
// rightly differ: a repeated key (encoding/json keeps the last one, the
// scanner counts both), a key that only folds to one of the payload's
// keys (encoding/json matches case-insensitively), and an escaped ts.
func ambiguous(in []byte) bool {
	type frame struct {
		keys   map[string]bool
		object bool
		key    bool // the next string of the object is a key
	}
	known := []string{"ts", "seq", "quality", "values"}
	var stack []*frame
	dec := json.NewDecoder(bytes.NewReader(in))
	lastKey := ""
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{':
				if top != nil && top.object {
					top.key = true // after this value
				}
				stack = append(stack, &frame{keys: map[string]bool{}, object: true, key: true})
			case '[':
				if top != nil && top.object {
					top.key = true
				}
				stack = append(stack, &frame{})
			default:
				stack = stack[:len(stack)-1]
			}
			continue
		}
		if top == nil || !top.object {
			continue
		}
		if !top.key { // a scalar value
			top.key = true
			if lastKey == "ts" && len(stack) == 1 && bytes.IndexByte(in, '\\') >= 0 {
				return true // ts may be written with escapes
			}
			continue
		}
		k := tok.(string)
		top.key, lastKey = false, k
		if top.keys[k] {
			return true
		}
		top.keys[k] = true
		for _, kn := range known {
			if k != kn && strings.EqualFold(k, kn) {
				return true
			}
		}
		for _, c := range []byte(k) {
			if c >= 0x80 {
				return true // Unicode case folding
			}
		}
	}
}

func BenchmarkParsePayload(b *testing.B) {
	rng := rand.New(rand.NewPCG(5, 6))
	in := ferryPayload(rng, true, 100, 123456)
	b.SetBytes(int64(len(in)))
	b.Run("scanner", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := parsePayload(in, false); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := parseReference(in); err != nil {
				b.Fatal(err)
			}
		}
	})
}
