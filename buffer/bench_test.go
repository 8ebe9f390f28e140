package buffer

import (
	"fmt"
	"testing"
	"time"
)

func BenchmarkAppend(b *testing.B) {
	for _, mode := range []SyncMode{SyncNone, SyncBatch, SyncAlways} {
		for _, batch := range []int{1, 100} {
			b.Run(fmt.Sprintf("%s/batch=%d", mode, batch), func(b *testing.B) {
				l, err := Open(b.TempDir(), Options{Sync: mode})
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
				recs := make([][]byte, batch)
				for i := range recs {
					recs[i] = make([]byte, 200)
				}
				b.SetBytes(int64(200 * batch))
				b.ResetTimer()
				for b.Loop() {
					if _, err := l.Append(recs...); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
			})
		}
	}
	// Group commit: many goroutines appending one record each with SyncAlways.
	b.Run("always/batch=1/parallel=32", func(b *testing.B) {
		l, err := Open(b.TempDir(), Options{Sync: SyncAlways})
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		b.SetParallelism(16) // 16 goroutines per GOMAXPROCS
		start := time.Now()
		b.SetBytes(200)
		b.RunParallel(func(pb *testing.PB) {
			rec := make([]byte, 200)
			for pb.Next() {
				if _, err := l.Append(rec); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
	})
}

// BenchmarkScan measures a consumer reading 256 records at a time.
func BenchmarkScan(b *testing.B) {
	l, err := Open(b.TempDir(), Options{Sync: SyncNone})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	recs := make([][]byte, 1000)
	for i := range recs {
		recs[i] = make([]byte, 200)
	}
	for range 100 {
		if _, err := l.Append(recs...); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(200)
	next := uint64(1)
	for b.Loop() {
		if next >= l.NextSeq() {
			next = 1
		}
		_, err := l.Scan(next, 1, func(seq uint64, _ []byte) error { next = seq + 1; return nil })
		if err != nil {
			b.Fatal(err)
		}
	}
}
