package modbus

import (
	"math/bits"
	"math/rand/v2"
	"slices"
	"testing"
)

// validGroup: the spans of mask fit in one request of at most limit
// registers, and no run of more than maxGap registers inside it is
// covered by none of them.
func validGroup(spans []span, mask uint, maxGap, limit int) bool {
	var in []span
	for i := range spans {
		if mask&(1<<i) != 0 {
			in = append(in, spans[i])
		}
	}
	slices.SortFunc(in, func(a, b span) int { return a.start - b.start })
	lo, end := in[0].start, in[0].start+in[0].size
	for _, s := range in[1:] {
		if s.start-end > maxGap {
			return false
		}
		end = max(end, s.start+s.size)
	}
	return end-lo <= limit
}

// bruteForce is the fewest requests of any valid grouping, by exhaustive
// search over the partitions of the spans.
func bruteForce(spans []span, maxGap, limit int) int {
	n := len(spans)
	full := uint(1)<<n - 1
	valid := make([]bool, full+1)
	for m := uint(1); m <= full; m++ {
		valid[m] = validGroup(spans, m, maxGap, limit)
	}
	best := make([]int, full+1)
	for m := uint(1); m <= full; m++ {
		best[m] = n + 1
		low := m & -m
		rest := m &^ low
		// every submask of m that contains its lowest span
		for sub := rest; ; sub = (sub - 1) & rest {
			g := sub | low
			if valid[g] && best[m&^g]+1 < best[m] {
				best[m] = best[m&^g] + 1
			}
			if sub == 0 {
				break
			}
		}
	}
	return best[full]
}

// TestCoalesceMinimal compares the planner with an exhaustive search on
// random register maps: overlapping, nested and duplicate spans, every gap
// and limit. The planner's groups must be valid and as few as possible.
func TestCoalesceMinimal(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	sizes := []int{1, 1, 1, 2, 2, 4, 3, 6}
	for iter := range 4000 {
		n := 1 + rng.IntN(9)
		spans := make([]span, n)
		maxSize := 0
		for i := range spans {
			spans[i] = span{start: rng.IntN(24), size: sizes[rng.IntN(len(sizes))], idx: i}
			maxSize = max(maxSize, spans[i].size)
		}
		limit := maxSize + rng.IntN(12)
		maxGap := rng.IntN(5)
		got := coalesce(spans, maxGap, limit, false)
		seen := 0
		for _, g := range got {
			var mask uint
			for _, s := range g.spans {
				mask |= 1 << s.idx
				if s.start < g.start || s.start+s.size > g.end {
					t.Fatalf("span %+v outside its group [%d,%d)", s, g.start, g.end)
				}
			}
			if seen&int(mask) != 0 {
				t.Fatalf("a span in two groups: %+v", got)
			}
			seen |= int(mask)
			if !validGroup(spans, mask, maxGap, limit) {
				t.Fatalf("invalid group %+v (gap %d, limit %d)", g, maxGap, limit)
			}
		}
		if bits.OnesCount(uint(seen)) != n {
			t.Fatalf("not every span planned: %+v", got)
		}
		if want := bruteForce(spans, maxGap, limit); len(got) != want {
			t.Fatalf("map %d: spans %+v gap %d limit %d: planner %d requests, minimum %d\n%+v",
				iter, spans, maxGap, limit, len(got), want, got)
		}
	}
}
