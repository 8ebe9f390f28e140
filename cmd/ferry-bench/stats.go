package main

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"
)

// percentile returns the p-th percentile (0..100) of sorted by the
// nearest-rank method; NaN for an empty slice.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	if p <= 0 {
		return sorted[0]
	}
	if p >= 100 {
		return sorted[len(sorted)-1]
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

// latencySummary is p50, p99 and max of a set of latencies, in ms.
type latencySummary struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

func summarize(ms []float64) latencySummary {
	if len(ms) == 0 {
		return latencySummary{}
	}
	s := slices.Clone(ms)
	slices.Sort(s)
	return latencySummary{N: len(s), P50: percentile(s, 50), P99: percentile(s, 99), Max: s[len(s)-1]}
}

// seqTracker records which seqs were seen. Seqs of a fresh buffer start at
// 1, so every missing number in 1..max is a lost message.
type seqTracker struct {
	bits     []uint64
	distinct int64
	dups     int64
	min, max uint64
}

// add records seq; it reports whether seq is a repeat.
func (t *seqTracker) add(seq uint64) bool {
	w := int(seq / 64)
	if w >= len(t.bits) {
		n := max(2*len(t.bits), w+1, 1024)
		t.bits = append(t.bits, make([]uint64, n-len(t.bits))...)
	}
	m := uint64(1) << (seq % 64)
	if t.bits[w]&m != 0 {
		t.dups++
		return true
	}
	t.bits[w] |= m
	if t.distinct == 0 || seq < t.min {
		t.min = seq
	}
	if seq > t.max {
		t.max = seq
	}
	t.distinct++
	return false
}

// lost is the number of seqs in 1..max never seen.
func (t *seqTracker) lost() int64 {
	if t.distinct == 0 {
		return 0
	}
	return int64(t.max) - t.distinct
}

// contiguousTo reports whether every seq in 1..n was seen.
func (t *seqTracker) contiguousTo(n uint64) bool {
	for s := uint64(1); s <= n; s++ {
		w := int(s / 64)
		if w >= len(t.bits) || t.bits[w]&(1<<(s%64)) == 0 {
			return false
		}
	}
	return true
}

// payload is what the subscriber needs of a telemetry message, in either
// publish mode:
//
//	tag:    {"value":23.5,"quality":"good","ts":"...","seq":1234}
//	device: {"ts":"...","values":{"TAG":{"value":..,"quality":"good","ts":".."},...},"seq":N}
type payload struct {
	Seq      uint64
	TS       time.Time
	Readings int      // 1 in tag mode, len(values) in device mode
	Bad      int      // readings with quality "bad"
	Tags     []string // device mode: the tag names (only when asked for)
	tsAt     [2]int   // offsets of the top-level ts value (with its quotes)
	seqAt    [2]int   // offsets of the seq value
}

var errNoSeq = errors.New("payload has no seq")

// parsePayload reads a telemetry payload in one pass, without building
// maps: device is true for a device message (with "values"); withTags
// fills Tags for device messages. At thousands of 7 kB device messages a
// second, encoding/json (about 80 µs a message) made the bench subscriber
// the bottleneck it is meant to observe. It reads what ferry writes (any
// valid JSON object with these keys); it is not a validating parser.
func parsePayload(b []byte, withTags bool) (p payload, device bool, err error) {
	s := jsonScan{b: b}
	if !s.byte('{') {
		return p, false, s.fail("payload is not a JSON object")
	}
	hasSeq := false
	for first := true; ; first = false {
		if s.byte('}') {
			break
		}
		if !first && !s.byte(',') {
			return p, false, s.fail("expected , or }")
		}
		key, ok := s.str()
		if !ok || !s.byte(':') {
			return p, false, s.fail("expected a key")
		}
		switch string(key) {
		case "ts":
			if s.null() {
				break
			}
			p.tsAt[0] = s.skipWS()
			v, ok := s.str()
			if !ok {
				return p, false, s.fail("ts is not a string")
			}
			p.tsAt[1] = s.i
			if len(v) == 0 {
				p.TS = time.Time{}
			} else if p.TS, err = time.Parse(time.RFC3339Nano, string(v)); err != nil {
				return p, false, err
			}
		case "seq":
			p.seqAt[0] = s.skipWS()
			v := s.number()
			p.seqAt[1] = s.i
			if p.Seq, err = strconv.ParseUint(string(v), 10, 64); err != nil {
				return p, false, fmt.Errorf("seq: %w", err)
			}
			hasSeq = true
		case "quality":
			if s.null() {
				p.Bad = 0
			} else if v, ok := s.str(); ok {
				p.Bad = 0
				if string(v) == "bad" {
					p.Bad = 1
				}
			} else {
				return p, false, s.fail("quality is not a string")
			}
		case "values":
			if s.null() {
				device = false
				break
			}
			device = true
			p.Readings, p.Bad = 0, 0
			if err := s.values(&p, withTags); err != nil {
				return p, false, err
			}
		default:
			if !s.skip() {
				return p, false, s.fail("bad value")
			}
		}
	}
	if s.skipWS() != len(b) {
		return p, false, s.fail("data after the object")
	}
	if !hasSeq {
		return p, false, errNoSeq
	}
	if !device {
		p.Readings = 1
	}
	return p, device, nil
}

// values reads the device message's {"TAG":{...,"quality":"..."},...}.
func (s *jsonScan) values(p *payload, withTags bool) error {
	if !s.byte('{') {
		return s.fail("values is not an object")
	}
	for first := true; ; first = false {
		if s.byte('}') {
			return nil
		}
		if !first && !s.byte(',') {
			return s.fail("expected , or } in values")
		}
		tag, ok := s.str()
		if !ok || !s.byte(':') {
			return s.fail("expected \"TAG\": in values")
		}
		p.Readings++
		if withTags {
			p.Tags = append(p.Tags, string(tag))
		}
		if s.null() {
			continue
		}
		if !s.byte('{') {
			return s.fail("a reading is not an object")
		}
		bad := false
		for first := true; ; first = false {
			if s.byte('}') {
				break
			}
			if !first && !s.byte(',') {
				return s.fail("expected , or } in a reading")
			}
			key, ok := s.str()
			if !ok || !s.byte(':') {
				return s.fail("expected a key in a reading")
			}
			if string(key) == "quality" {
				if s.null() {
					bad = false
					continue
				}
				q, ok := s.str()
				if !ok {
					return s.fail("quality is not a string")
				}
				bad = string(q) == "bad"
			} else if !s.skip() {
				return s.fail("bad value in a reading")
			}
		}
		if bad {
			p.Bad++
		}
	}
}

var numberByte = func() (t [256]bool) {
	for _, c := range []byte("+-.0123456789eE") {
		t[c] = true
	}
	return t
}()

// jsonScan is a cursor over JSON text.
type jsonScan struct {
	b []byte
	i int
}

func (s *jsonScan) fail(msg string) error {
	return fmt.Errorf("payload offset %d: %s", s.i, msg)
}

// skipWS skips white space and returns the new offset.
func (s *jsonScan) skipWS() int {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\t' || s.b[s.i] == '\n' || s.b[s.i] == '\r') {
		s.i++
	}
	return s.i
}

// byte consumes c (after white space) if it is next.
func (s *jsonScan) byte(c byte) bool {
	if s.skipWS() < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// null consumes a null literal if it is next.
func (s *jsonScan) null() bool {
	if s.skipWS() < len(s.b) && bytes.HasPrefix(s.b[s.i:], []byte("null")) {
		s.i += 4
		return true
	}
	return false
}

// str reads a string and returns its raw bytes (escapes left as they are).
func (s *jsonScan) str() ([]byte, bool) {
	if !s.byte('"') {
		return nil, false
	}
	start := s.i
	for {
		q := bytes.IndexByte(s.b[s.i:], '"')
		if q < 0 {
			s.i = len(s.b)
			return nil, false
		}
		s.i += q + 1
		// The quote ends the string unless an odd run of backslashes
		// escapes it.
		bs := 0
		for j := s.i - 2; j >= start && s.b[j] == '\\'; j-- {
			bs++
		}
		if bs%2 == 0 {
			return s.b[start : s.i-1], true
		}
	}
}

// number reads the bytes of a number.
func (s *jsonScan) number() []byte {
	start := s.skipWS()
	for s.i < len(s.b) && numberByte[s.b[s.i]] {
		s.i++
	}
	return s.b[start:s.i]
}

// skip skips one value of any kind; false if it is malformed.
func (s *jsonScan) skip() bool {
	if s.skipWS() >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		_, ok := s.str()
		return ok
	case c == '{' || c == '[':
		depth := 0
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case '"':
				if _, ok := s.str(); !ok {
					return false
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
			}
			s.i++
			if depth == 0 {
				return true
			}
		}
		return false
	case c == 't' || c == 'f' || c == 'n':
		for _, lit := range [...]string{"true", "false", "null"} {
			if bytes.HasPrefix(s.b[s.i:], []byte(lit)) {
				s.i += len(lit)
				return true
			}
		}
		return false
	default:
		return len(s.number()) > 0
	}
}
