package buffer

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	for _, mode := range []SyncMode{SyncAlways, SyncBatch, SyncNone} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			l := openLog(t, dir, Options{Sync: mode, SegmentBytes: 4096})
			if got := l.NextSeq(); got != 1 {
				t.Fatalf("NextSeq of new log = %d, want 1", got)
			}
			first, err := l.Append(rec(1, 100), rec(2, 50), rec(3, 0))
			if err != nil || first != 1 {
				t.Fatalf("Append = %d, %v", first, err)
			}
			appendN(t, l, 97, 100)
			if got := scanAll(t, l, 1); !eqSeqs(got, seqRange(1, 100)) {
				t.Fatalf("scan = %v", got)
			}
			for seq := uint64(1); seq <= 40; seq++ {
				if err := l.Ack(seq); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if err := l.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if _, err := l.Append(rec(1, 10)); !errors.Is(err, ErrClosed) {
				t.Fatalf("Append after Close: %v", err)
			}

			l = openLog(t, dir, Options{Sync: mode, SegmentBytes: 4096})
			if got := l.Acked(); got != 41 {
				t.Fatalf("Acked after reopen = %d, want 41", got)
			}
			if got := l.NextSeq(); got != 101 {
				t.Fatalf("NextSeq after reopen = %d, want 101", got)
			}
			if got := scanAll(t, l, l.Acked()); !eqSeqs(got, seqRange(41, 100)) {
				t.Fatalf("scan after reopen = %v", got)
			}
			first, err = l.Append(rec(101, 10))
			if err != nil || first != 101 {
				t.Fatalf("Append after reopen = %d, %v", first, err)
			}
			st := l.Stats()
			if st.Records != 61 || st.NextSeq != 102 || st.AckedSeq != 41 || st.Corrupt != 0 || st.PendingBytes < 61*frameHeaderSize || st.PendingBytes > st.Bytes {
				t.Fatalf("Stats = %+v", st)
			}
		})
	}
}

func TestSeqNotReusedAfterAllAcked(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Sync: SyncNone, SegmentBytes: 1000}
	l := openLog(t, dir, opts)
	appendN(t, l, 50, 100)
	for seq := uint64(1); seq <= 50; seq++ {
		if err := l.Ack(seq); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := len(segFiles(t, dir)); n != 1 {
		t.Fatalf("%d segment files after everything was acked, want 1", n)
	}
	l.Close()

	// Also the worst case: the newest segment file is gone too.
	for _, f := range segFiles(t, dir) {
		os.Remove(f)
	}
	l = openLog(t, dir, opts)
	if got := l.NextSeq(); got != 51 {
		t.Fatalf("NextSeq = %d, want 51", got)
	}
	if got := l.Acked(); got != 51 {
		t.Fatalf("Acked = %d, want 51", got)
	}
	if first, err := l.Append(rec(51, 10)); err != nil || first != 51 {
		t.Fatalf("Append = %d, %v", first, err)
	}
	if got := scanAll(t, l, 1); !eqSeqs(got, []uint64{51}) {
		t.Fatalf("scan = %v", got)
	}
}

func TestAckOutOfOrder(t *testing.T) {
	l := openLog(t, t.TempDir(), Options{Sync: SyncNone})
	appendN(t, l, 10, 10)
	steps := []struct {
		ack  uint64
		want uint64 // Acked after the ack
	}{
		{3, 1}, {2, 1}, {5, 1}, {1, 4}, {4, 6}, {4, 6}, {1, 6}, {10, 6}, {6, 7}, {9, 7}, {8, 7}, {7, 11},
	}
	for _, s := range steps {
		if err := l.Ack(s.ack); err != nil {
			t.Fatalf("Ack(%d): %v", s.ack, err)
		}
		if got := l.Acked(); got != s.want {
			t.Fatalf("after Ack(%d): Acked = %d, want %d", s.ack, got, s.want)
		}
	}
	if err := l.Ack(11); !errors.Is(err, ErrNotAppended) {
		t.Fatalf("Ack(never appended) = %v", err)
	}
	if st := l.Stats(); st.Records != 0 {
		t.Fatalf("Records = %d, want 0", st.Records)
	}
}

func TestAckWindow(t *testing.T) {
	l := openLog(t, t.TempDir(), Options{Sync: SyncNone})
	recs := make([][]byte, AckWindow+10)
	for i := range recs {
		recs[i] = []byte{1}
	}
	if _, err := l.Append(recs...); err != nil {
		t.Fatal(err)
	}
	if err := l.Ack(AckWindow + 1); !errors.Is(err, ErrAckWindow) {
		t.Fatalf("Ack beyond window = %v", err)
	}
	for seq := uint64(AckWindow); seq >= 2; seq-- {
		if err := l.Ack(seq); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Ack(1); err != nil {
		t.Fatal(err)
	}
	if got := l.Acked(); got != AckWindow+1 {
		t.Fatalf("Acked = %d, want %d", got, AckWindow+1)
	}
}

func TestCursorPersistedBySyncAndClose(t *testing.T) {
	dir := t.TempDir()
	// A long interval, so only Sync and Close write the cursor.
	l := openLog(t, dir, Options{Sync: SyncNone, SyncInterval: time.Hour})
	appendN(t, l, 10, 10)
	for _, seq := range []uint64{1, 2, 3, 5} {
		l.Ack(seq)
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if c, err := readCursor(dir); err != nil || c.acked != 4 {
		t.Fatalf("cursor after Sync = %d, %v; want 4", c, err)
	}
	l.Ack(4)
	l.Ack(6)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if c, err := readCursor(dir); err != nil || c.acked != 7 {
		t.Fatalf("cursor after Close = %d, %v; want 7", c, err)
	}
}

func TestCursorPersistedInBackground(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, Options{Sync: SyncAlways, SyncInterval: time.Millisecond})
	appendN(t, l, 3, 10)
	l.Ack(1)
	l.Ack(2)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := readCursor(dir); err == nil && c.acked == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("cursor not written by the background goroutine")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRotationAndDeletion(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Sync: SyncBatch, SegmentBytes: 10 * frame100, SyncInterval: time.Hour, CursorInterval: time.Hour}
	l := openLog(t, dir, opts)
	appendN(t, l, 100, 100) // 10 frames per segment
	files := segFiles(t, dir)
	if len(files) != 10 {
		t.Fatalf("%d segment files, want 10: %v", len(files), files)
	}
	if want := filepath.Join(dir, "00000000000000000011.seg"); files[1] != want {
		t.Fatalf("second segment is %s, want %s", files[1], want)
	}
	for seq := uint64(1); seq <= 35; seq++ {
		l.Ack(seq)
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if files := segFiles(t, dir); len(files) != 7 || filepath.Base(files[0]) != "00000000000000000031.seg" {
		t.Fatalf("after acking 35: %v", files)
	}
	if st := l.Stats(); st.Segments != 7 || st.OldestSeq != 31 || st.Bytes != 70*frame100 {
		t.Fatalf("Stats = %+v", st)
	}
	for seq := uint64(36); seq <= 100; seq++ {
		l.Ack(seq)
	}
	l.Close()
	if files := segFiles(t, dir); len(files) != 1 {
		t.Fatalf("after acking all: %v", files)
	}
	l = openLog(t, dir, opts)
	if l.NextSeq() != 101 || l.Acked() != 101 {
		t.Fatalf("NextSeq %d Acked %d, want 101 101", l.NextSeq(), l.Acked())
	}
}

func TestOpenReadsOnlyNewestSegment(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Sync: SyncNone, SegmentBytes: 10 * frame100}
	l := openLog(t, dir, opts)
	appendN(t, l, 100, 100)
	l.Close()

	var mu sync.Mutex
	opened := map[string]int{}
	opts.OpenFile = func(path string, flag int) (segmentFile, error) {
		mu.Lock()
		opened[filepath.Base(path)]++
		mu.Unlock()
		return openOSFile(path, flag)
	}
	l = openLog(t, dir, opts)
	delete(opened, cursorName) // opened for in-place writes
	if len(opened) != 1 || opened["00000000000000000091.seg"] != 1 {
		t.Fatalf("Open opened %v, want only the newest segment", opened)
	}
	if got := scanAll(t, l, 1); !eqSeqs(got, seqRange(1, 100)) {
		t.Fatalf("scan = %v", got)
	}
}

// countingFile counts bytes read.
type countingFile struct {
	segmentFile
	n  *int64
	mu *sync.Mutex
}

func (f countingFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.segmentFile.ReadAt(p, off)
	f.mu.Lock()
	*f.n += int64(n)
	f.mu.Unlock()
	return n, err
}

// A consumer calling Scan(next, small) repeatedly must not re-read segments
// from the start on every call, in sealed segments of an earlier run (lazy
// index) and in the segment being written.
func TestScanIsIncremental(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Sync: SyncNone, SegmentBytes: 1 << 20}
	l := openLog(t, dir, opts)
	appendN(t, l, 20000, 100) // 2.4 MB: 3 segments
	l.Close()

	var read int64
	var mu sync.Mutex
	opts.OpenFile = func(path string, flag int) (segmentFile, error) {
		f, err := openOSFile(path, flag)
		if err != nil {
			return nil, err
		}
		return countingFile{f, &read, &mu}, nil
	}
	l = openLog(t, dir, opts)
	appendN(t, l, 5000, 100)
	mu.Lock()
	read = 0
	mu.Unlock()
	next := uint64(1)
	n := 0
	for {
		nx, err := l.Scan(next, 10, func(seq uint64, data []byte) error { n++; return nil })
		if err != nil {
			t.Fatal(err)
		}
		if nx == next {
			break
		}
		next = nx
	}
	if n != 25000 {
		t.Fatalf("visited %d records, want 25000", n)
	}
	total := l.Stats().Bytes
	mu.Lock()
	defer mu.Unlock()
	if read > 2*total {
		t.Fatalf("read %d bytes to scan %d bytes", read, total)
	}

	// Random access into a sealed segment uses the index built above.
	read = 0
	mu.Unlock()
	for _, from := range []uint64{12345, 2, 19999, 7000} {
		got := 0
		next, err := l.Scan(from, 1, func(seq uint64, data []byte) error {
			checkRec(t, seq, data)
			if seq != from {
				t.Fatalf("Scan(%d) visited %d", from, seq)
			}
			got++
			return nil
		})
		if err != nil || got != 1 || next != from+1 {
			t.Fatalf("Scan(%d) = %d, %v (%d visited)", from, next, err, got)
		}
	}
	mu.Lock()
	if read > 4*(indexEvery+readChunk) {
		t.Fatalf("4 seeks read %d bytes", read)
	}
}

func TestScanEdges(t *testing.T) {
	l := openLog(t, t.TempDir(), Options{Sync: SyncNone})
	next, err := l.Scan(1, 10, func(uint64, []byte) error { t.Fatal("visited"); return nil })
	if err != nil || next != 1 {
		t.Fatalf("Scan of empty log = %d, %v", next, err)
	}
	appendN(t, l, 5, 10)
	boom := errors.New("boom")
	next, err = l.Scan(2, 10, func(seq uint64, _ []byte) error {
		if seq == 4 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || next != 4 {
		t.Fatalf("Scan with failing fn = %d, %v; want 4, boom", next, err)
	}
	next, err = l.Scan(9, 10, func(uint64, []byte) error { t.Fatal("visited"); return nil })
	if err != nil || next != 9 {
		t.Fatalf("Scan past the end = %d, %v", next, err)
	}
	var got []uint64
	next, _ = l.Scan(0, 0, func(seq uint64, _ []byte) error { got = append(got, seq); return nil })
	if next != 6 || !eqSeqs(got, seqRange(1, 5)) {
		t.Fatalf("Scan(0, unlimited) = %d, %v", next, got)
	}
	if _, err := l.Append(make([]byte, MaxRecordBytes+1)); !errors.Is(err, ErrRecordTooLarge) {
		t.Fatalf("oversized Append = %v", err)
	}
	if first, err := l.Append(); err != nil || first != 6 {
		t.Fatalf("empty Append = %d, %v", first, err)
	}
}

func TestNotify(t *testing.T) {
	l := openLog(t, t.TempDir(), Options{Sync: SyncNone})
	select {
	case <-l.Notify():
		t.Fatal("notified before any Append")
	default:
	}
	appendN(t, l, 3, 10)
	select {
	case <-l.Notify():
	default:
		t.Fatal("no notification after Append")
	}
}

func TestLockedDir(t *testing.T) {
	dir := t.TempDir()
	openLog(t, dir, Options{})
	if l, err := Open(dir, Options{}); err == nil {
		l.Close()
		t.Fatal("second Open of the same directory succeeded")
	}
}

func TestSizeCap(t *testing.T) {
	var lb logBuffer
	dir := t.TempDir()
	opts := Options{Sync: SyncNone, SegmentBytes: 10 * frame100, MaxBytes: 50 * frame100, Logger: lb.logger()}
	l := openLog(t, dir, opts)
	for i := range 1000 {
		if _, err := l.Append(rec(uint64(i+1), 100)); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
		if i == 3 {
			l.Ack(1)
			l.Ack(2)
		}
	}
	st := l.Stats()
	if st.Bytes > opts.MaxBytes || st.Segments < 2 {
		t.Fatalf("Stats = %+v", st)
	}
	// Everything below the oldest segment is gone; acked records are not
	// counted as dropped.
	if want := st.OldestSeq - 3; st.Dropped != want {
		t.Fatalf("Dropped = %d, want %d (Stats %+v)", st.Dropped, want, st)
	}
	if st.AckedSeq != st.OldestSeq {
		t.Fatalf("cursor %d not moved to the oldest record %d", st.AckedSeq, st.OldestSeq)
	}
	if got := scanAll(t, l, 1); !eqSeqs(got, seqRange(st.OldestSeq, 1000)) {
		t.Fatalf("scan = %v", got)
	}
	if n := strings.Count(lb.String(), "dropped oldest"); n == 0 || n > 1000/10 {
		t.Fatalf("%d drop warnings:\n%s", n, lb.String())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, dir, opts)
	if got := l.Acked(); got != st.OldestSeq {
		t.Fatalf("Acked after reopen = %d, want %d", got, st.OldestSeq)
	}
}

// Several appenders and one consumer that scans, and acks out of order.
func TestConcurrentAppendScanAck(t *testing.T) {
	for _, mode := range []SyncMode{SyncAlways, SyncBatch} {
		t.Run(mode.String(), func(t *testing.T) {
			l := openLog(t, t.TempDir(), Options{Sync: mode, SegmentBytes: 32 << 10, SyncInterval: time.Millisecond})
			const writers, perWriter = 4, 150
			var wg sync.WaitGroup
			var total int
			for w := range writers {
				n := 0
				for i := range perWriter {
					n += 1 + (w+i)%3
				}
				total += n
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range perWriter {
						k := 1 + (w+i)%3
						recs := make([][]byte, k)
						for j := range recs {
							recs[j] = make([]byte, 40)
						}
						if _, err := l.Append(recs...); err != nil {
							t.Errorf("Append: %v", err)
							return
						}
					}
				}()
			}
			seen := 0
			next := l.Acked()
			deadline := time.After(20 * time.Second)
			for seen < total {
				var batch []uint64
				nx, err := l.Scan(next, 64, func(seq uint64, data []byte) error {
					if seq != next+uint64(len(batch)) {
						t.Fatalf("visited %d, want %d", seq, next+uint64(len(batch)))
					}
					batch = append(batch, seq)
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				for i := len(batch) - 1; i >= 0; i-- {
					if err := l.Ack(batch[i]); err != nil {
						t.Fatal(err)
					}
				}
				seen += len(batch)
				next = nx
				if len(batch) == 0 {
					select {
					case <-l.Notify():
					case <-time.After(10 * time.Millisecond):
					case <-deadline:
						t.Fatalf("consumer saw %d of %d records", seen, total)
					}
				}
			}
			wg.Wait()
			if got, want := l.Acked(), uint64(total+1); got != want {
				t.Fatalf("Acked = %d, want %d", got, want)
			}
			if err := l.Sync(); err != nil {
				t.Fatal(err)
			}
			if st := l.Stats(); st.Records != 0 || st.Segments != 1 {
				t.Fatalf("Stats = %+v", st)
			}
		})
	}
}

func TestWarnMaxBytesOverFreeSpace(t *testing.T) {
	if _, ok := freeBytes(t.TempDir()); !ok {
		t.Skip("no statfs")
	}
	var lb logBuffer
	openLog(t, t.TempDir(), Options{MaxBytes: 1 << 62, Logger: lb.logger()})
	if !strings.Contains(lb.String(), "larger than the free disk space") {
		t.Fatalf("no warning:\n%s", lb.String())
	}
}
