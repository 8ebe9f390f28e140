package buffer

import (
	"os"
	"runtime"
	"testing"
	"time"
)

// TestMemoryFlat pushes 200 MB through a 4 MB buffer, a consumer scanning
// and acking behind the producer, and checks that the heap and the number
// of segment files stay bounded: old segments are deleted and nothing
// accumulates. FERRY_BUFFER_SOAK=1 runs the full 10 GB through 100 MB.
func TestMemoryFlat(t *testing.T) {
	total, maxBytes := int64(200<<20), int64(4<<20)
	if os.Getenv("FERRY_BUFFER_SOAK") != "" {
		total, maxBytes = 10<<30, 100<<20
	}
	dir := t.TempDir()
	l := openLog(t, dir, Options{Sync: SyncBatch, MaxBytes: maxBytes, CursorInterval: 10 * time.Millisecond})
	const recSize, batch = 4096, 16
	recs := make([][]byte, batch)
	for i := range recs {
		recs[i] = make([]byte, recSize)
	}
	var ms runtime.MemStats
	var base, peak uint64
	maxSegs, maxFiles := 0, 0
	next := l.Acked()
	start := time.Now()
	var passed int64
	for i := 0; passed < total; i++ {
		if _, err := l.Append(recs...); err != nil {
			t.Fatal(err)
		}
		passed += recSize * batch
		// The consumer trails the producer by a few batches, acking in
		// reverse order within each Scan.
		if i%4 == 3 {
			var seqs []uint64
			nx, err := l.Scan(next, 0, func(seq uint64, data []byte) error {
				seqs = append(seqs, seq)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for j := len(seqs) - 1; j >= 0; j-- {
				if err := l.Ack(seqs[j]); err != nil {
					t.Fatal(err)
				}
			}
			next = nx
		}
		if i%512 == 0 {
			maxSegs = max(maxSegs, l.Stats().Segments)
			if ents, err := os.ReadDir(dir); err == nil {
				maxFiles = max(maxFiles, len(ents))
			}
			runtime.ReadMemStats(&ms)
			if i == 512 {
				base = ms.HeapInuse
			}
			peak = max(peak, ms.HeapInuse)
		}
	}
	st := l.Stats()
	t.Logf("%d MB in %v: heap in use %d KB after warm-up, peak %d KB; at most %d segments, %d files; %+v",
		passed>>20, time.Since(start).Round(time.Millisecond), base>>10, peak>>10, maxSegs, maxFiles, st)
	if peak > base+16<<20 {
		t.Errorf("heap grew from %d KB to %d KB", base>>10, peak>>10)
	}
	if limit := int(maxBytes/(maxBytes/8)) + 3; maxSegs > limit || maxFiles > limit+3 {
		t.Errorf("up to %d segments, %d files in the directory; want at most %d", maxSegs, maxFiles, limit)
	}
	if st.Dropped != 0 {
		t.Errorf("dropped %d records although the consumer kept up", st.Dropped)
	}
}
