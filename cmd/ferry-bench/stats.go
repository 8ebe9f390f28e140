package main

import (
	"encoding/json"
	"errors"
	"math"
	"slices"
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
}

type rawReading struct {
	Quality string `json:"quality"`
}

type rawPayload struct {
	TS      string                `json:"ts"`
	Seq     *uint64               `json:"seq"`
	Quality string                `json:"quality"`
	Values  map[string]rawReading `json:"values"`
}

var errNoSeq = errors.New("payload has no seq")

// parsePayload decodes a telemetry payload; device is true for a device
// message (with "values"). withTags fills Tags for device messages.
func parsePayload(b []byte, withTags bool) (p payload, device bool, err error) {
	var r rawPayload
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
		p.Readings = len(r.Values)
		for name, v := range r.Values {
			if v.Quality == "bad" {
				p.Bad++
			}
			if withTags {
				p.Tags = append(p.Tags, name)
			}
		}
		return p, true, nil
	}
	p.Readings = 1
	if r.Quality == "bad" {
		p.Bad = 1
	}
	return p, false, nil
}
