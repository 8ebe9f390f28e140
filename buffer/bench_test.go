package buffer

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

const benchRecSize = 200

// BenchmarkAppend measures Append of 200-byte records per sync mode and
// batch size (records per Append call). Compare with BenchmarkBaselineFile,
// which writes the same bytes to a plain file.
func BenchmarkAppend(b *testing.B) {
	for _, mode := range []SyncMode{SyncNone, SyncBatch, SyncAlways} {
		for _, batch := range []int{1, 64, 100} {
			b.Run(fmt.Sprintf("%s/batch=%d", mode, batch), func(b *testing.B) {
				l, err := Open(b.TempDir(), Options{Sync: mode})
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
				recs := make([][]byte, batch)
				for i := range recs {
					recs[i] = make([]byte, benchRecSize)
				}
				b.SetBytes(int64(benchRecSize * batch))
				for b.Loop() {
					if _, err := l.Append(recs...); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
				reportFsyncs(b, l, b.N*batch)
			})
		}
	}
	// Group commit: 64 goroutines (32 per CPU on 2 CPUs) appending one
	// record each with SyncAlways; concurrent appends share fsyncs.
	b.Run("always/batch=1/appenders=64", func(b *testing.B) {
		l, err := Open(b.TempDir(), Options{Sync: SyncAlways})
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		b.SetParallelism(max(64/runtimeProcs(), 1))
		b.SetBytes(benchRecSize)
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			rec := make([]byte, benchRecSize)
			for pb.Next() {
				if _, err := l.Append(rec); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
		reportFsyncs(b, l, b.N)
	})
}

func reportFsyncs(b *testing.B, l *Log, records int) {
	if fs := l.Stats().Fsync; fs.Count > 0 {
		b.ReportMetric(float64(records)/float64(fs.Count), "records/fsync")
		b.ReportMetric(float64(fs.Sum.Microseconds())/float64(fs.Count), "µs/fsync")
	}
}

// BenchmarkBaselineFile is the yardstick for BenchmarkAppend: it writes the
// bytes Append would write (framed 200-byte records) to a plain file, one
// write call per batch, cutting a new file every 64 MiB like the log.
// fsync=each: one fdatasync per batch (what SyncAlways must do at best);
// fsync=10ms: fdatasync at most every 10 ms from a second goroutine (the
// policy of SyncBatch); fsync=never: the page cache alone.
func BenchmarkBaselineFile(b *testing.B) {
	for _, policy := range []string{"each", "10ms", "never"} {
		for _, batch := range []int{1, 64, 100} {
			if policy != "each" && batch == 64 {
				continue
			}
			b.Run(fmt.Sprintf("fsync=%s/batch=%d", policy, batch), func(b *testing.B) {
				dir := b.TempDir()
				buf := make([]byte, 0, batch*(frameHeaderSize+benchRecSize))
				data := make([]byte, benchRecSize)
				for i := range batch {
					buf = appendFrame(buf, uint64(i+1), 1, data)
				}
				var cur atomic.Pointer[os.File]
				n := 0
				newFile := func() {
					f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%d", n)), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
					if err != nil {
						b.Fatal(err)
					}
					n++
					if old := cur.Swap(f); old != nil {
						fdatasync(old)
						old.Close()
					}
					syncDir(dir)
				}
				newFile()
				stop, done := make(chan struct{}), make(chan struct{})
				go func() {
					defer close(done)
					if policy != "10ms" {
						return
					}
					t := time.NewTicker(10 * time.Millisecond)
					defer t.Stop()
					for {
						select {
						case <-stop:
							return
						case <-t.C:
							fdatasync(cur.Load())
						}
					}
				}()
				var size int64
				var syncs int
				var syncTime time.Duration
				b.SetBytes(int64(benchRecSize * batch))
				for b.Loop() {
					f := cur.Load()
					if _, err := f.Write(buf); err != nil {
						b.Fatal(err)
					}
					if policy == "each" {
						t0 := time.Now()
						if err := fdatasync(f); err != nil {
							b.Fatal(err)
						}
						syncTime += time.Since(t0)
						syncs++
					}
					if size += int64(len(buf)); size > DefaultSegmentBytes {
						newFile()
						size = 0
					}
				}
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
				if syncs > 0 {
					b.ReportMetric(float64(syncTime.Microseconds())/float64(syncs), "µs/fsync")
				}
				close(stop)
				<-done
				cur.Load().Close()
			})
		}
	}
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
		recs[i] = make([]byte, benchRecSize)
	}
	for range 100 {
		if _, err := l.Append(recs...); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(benchRecSize)
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
