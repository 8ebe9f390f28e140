package buffer

import (
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable Options.now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestMaxAge(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 11, 25, 21, 0, 0, 0, time.UTC)}
	var lb logBuffer
	dir := t.TempDir()
	// An hour, so the background ticker stays out of the way: the test
	// calls expire itself.
	opts := Options{Sync: SyncNone, SegmentBytes: 10 * frame100, MaxAge: time.Hour, Logger: lb.logger(), now: clock.now}
	l := openLog(t, dir, opts)
	appendN(t, l, 25, 100) // segments 1, 11 (sealed) and 21 (5 records), at 21:00
	l.Ack(1)
	l.Ack(2)
	clock.advance(30 * time.Minute)
	appendN(t, l, 10, 100) // 26..30 to segment 21, then segment 31, at 21:30
	if st := l.Stats(); !st.OldestTime.Equal(clock.t.Add(-30*time.Minute)) || !st.NewestTime.Equal(clock.t) {
		t.Fatalf("Stats times = %v, %v", st.OldestTime, st.NewestTime)
	}

	clock.advance(45 * time.Minute) // 22:15: 21:00 is too old, 21:30 is not
	l.expire()
	st := l.Stats()
	// Segments 1 and 11 are dropped (18 unacked records); 21 holds a
	// record of 21:30 and stays.
	if st.Dropped != 18 || st.Expired != 18 || st.OldestSeq != 21 || st.AckedSeq != 21 || st.Segments != 2 {
		t.Fatalf("after expiry: %+v", st)
	}
	if got := scanAll(t, l, 1); !eqSeqs(got, seqRange(21, 35)) {
		t.Fatalf("scan = %v", got)
	}
	if n := strings.Count(lb.String(), "max_age exceeded"); n != 1 {
		t.Fatalf("%d warnings:\n%s", n, lb.String())
	}
	l.expire() // nothing more to do: no second warning
	if n := strings.Count(lb.String(), "max_age exceeded"); n != 1 {
		t.Fatalf("%d warnings after a second check", n)
	}
	// Files go after the cursor is written.
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if files := segFiles(t, dir); len(files) != 2 {
		t.Fatalf("segment files %v", files)
	}

	// Everything is old, the newest segment too: it is cut, so the
	// records go and the next seq stays. Records 21..35 were handed out by
	// the Scan above: they are the consumer's to deliver, not counted as
	// dropped.
	clock.advance(2 * time.Hour)
	l.expire()
	st = l.Stats()
	if st.Dropped != 18 || st.Records != 0 || st.NextSeq != 36 || st.Segments != 1 || !st.OldestTime.IsZero() {
		t.Fatalf("after expiring everything: %+v", st)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, dir, opts)
	if l.NextSeq() != 36 || l.Acked() != 36 {
		t.Fatalf("after reopen: next %d acked %d", l.NextSeq(), l.Acked())
	}
}

// Segments of an earlier run are aged by their file's mtime until read.
func TestMaxAgeAfterRestart(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Sync: SyncNone, SegmentBytes: 10 * frame100}
	l := openLog(t, dir, opts)
	appendN(t, l, 25, 100)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-3 * time.Hour)
	for _, f := range segFiles(t, dir)[:2] {
		if err := os.Chtimes(f, old, old); err != nil {
			t.Fatal(err)
		}
	}
	opts.MaxAge = time.Hour
	l = openLog(t, dir, opts)
	l.expire()
	if st := l.Stats(); st.Expired != 20 || st.OldestSeq != 21 {
		t.Fatalf("Stats = %+v", st)
	}
}

// The background goroutine enforces MaxAge by itself.
func TestMaxAgeBackground(t *testing.T) {
	clock := &fakeClock{t: time.Now()}
	l := openLog(t, t.TempDir(), Options{Sync: SyncNone, SegmentBytes: 10 * frame100, MaxAge: 200 * time.Millisecond, now: clock.now})
	appendN(t, l, 15, 100)
	clock.advance(time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for l.Stats().Expired != 15 {
		if time.Now().After(deadline) {
			t.Fatalf("not expired: %+v", l.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Acks in a tight loop write the cursor at most every CursorInterval, not
// once per ack.
func TestCursorInterval(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, Options{Sync: SyncAlways, CursorInterval: 50 * time.Millisecond})
	start := time.Now()
	for time.Since(start) < 300*time.Millisecond {
		appendN(t, l, 1, 10)
		if err := l.Ack(l.NextSeq() - 1); err != nil {
			t.Fatal(err)
		}
	}
	st := l.Stats()
	if st.CursorWrites == 0 || st.CursorWrites > 9 || st.Committed < 20 {
		t.Fatalf("%d cursor writes for %d acks in 300ms", st.CursorWrites, st.Committed)
	}
	if st.Fsync.Count == 0 || st.Fsync.Buckets[len(FsyncBuckets)-1] > st.Fsync.Count || st.Fsync.Sum <= 0 || st.Fsync.Max <= 0 {
		t.Fatalf("fsync stats %+v", st.Fsync)
	}
	if st.Appended != st.Committed || st.Records != 0 {
		t.Fatalf("Stats = %+v", st)
	}
}
