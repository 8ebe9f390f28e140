package buffer_test

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ferry-gateway/ferry/buffer"
	"github.com/ferry-gateway/ferry/buffer/buffertest"
)

// record returns a 200-byte record holding seq.
func record(seq uint64) []byte {
	b := make([]byte, 200)
	binary.LittleEndian.PutUint64(b, seq)
	return b
}

// fill appends records until the disk is full and returns the seqs
// appended. The error must be ENOSPC.
func fill(t *testing.T, l *buffer.Log) []uint64 {
	t.Helper()
	var seqs []uint64
	for range 100000 {
		seq := l.NextSeq()
		got, err := l.Append(record(seq))
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("Append on a full disk = %v, want ENOSPC", err)
			}
			return seqs
		}
		seqs = append(seqs, got)
	}
	t.Fatal("the disk never filled up")
	return nil
}

// drain scans every record from the cursor and acks it, like a publisher
// whose broker takes everything; it returns the seqs. A record holding a
// seq (see record) must hold its own; record(0) is not checked.
func drain(t *testing.T, l *buffer.Log) []uint64 {
	t.Helper()
	var seqs []uint64
	from := l.Acked()
	for {
		next, err := l.Scan(from, 100, func(seq uint64, data []byte) error {
			if got := binary.LittleEndian.Uint64(data); got != seq && got != 0 {
				t.Fatalf("record at seq %d holds %d", seq, got)
			}
			seqs = append(seqs, seq)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if next == from {
			break
		}
		from = next
	}
	for _, seq := range seqs {
		if err := l.Ack(seq); err != nil {
			t.Fatal(err)
		}
	}
	return seqs
}

// A disk that fills up while the broker is away, with everything in one
// segment (the newest, which the log never deleted): once the backlog is
// delivered, the log frees that space by itself and appends work again;
// a restart on that disk sends nothing twice. Before the fix, appends kept
// failing for good: the newest segment was never deleted.
func TestDiskFullRecoversWhenBacklogDelivered(t *testing.T) {
	for _, mode := range []buffer.SyncMode{buffer.SyncAlways, buffer.SyncBatch} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			faults := buffertest.NewFaults()
			opts := buffer.Options{Sync: mode, OpenFile: faults.OpenFile}
			l, err := buffer.Open(dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			faults.Set(func(f *buffertest.Faults) { f.Capacity = 64 << 10 })
			backlog := fill(t, l)
			if st := l.Stats(); !st.WriteFailing || !st.DiskFull || st.FailingSince.IsZero() {
				t.Fatalf("Stats on a full disk: failing %v, disk full %v, since %v", st.WriteFailing, st.DiskFull, st.FailingSince)
			}
			if got := drain(t, l); len(got) != len(backlog) {
				t.Fatalf("delivered %d of %d", len(got), len(backlog))
			}
			// The background would do this within CursorInterval; Sync does
			// it now.
			if err := l.Sync(); err != nil {
				t.Fatalf("Sync: %v", err)
			}
			next := l.NextSeq()
			first, err := l.Append(record(next))
			if err != nil {
				t.Fatalf("Append after the backlog was delivered: %v", err)
			}
			if first != next {
				t.Fatalf("Append = seq %d, want %d", first, next)
			}
			if st := l.Stats(); st.WriteFailing || st.DiskFull {
				t.Fatalf("Stats after recovery: failing %v, disk full %v", st.WriteFailing, st.DiskFull)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}

			// A restart on that disk: only the new record is pending.
			l, err = buffer.Open(dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if got := drain(t, l); len(got) != 1 || got[0] != first {
				t.Fatalf("after restart the log sends %v, want only [%d]", got, first)
			}
		})
	}
}

// The cursor file cannot be written (every write fails with ENOSPC, the
// cursor's too) while everything is acknowledged: the segments are
// deleted all the same, and once writes work the cursor is persisted.
func TestAckedSegmentsDeletedWhileCursorWritesFail(t *testing.T) {
	dir := t.TempDir()
	faults := buffertest.NewFaults()
	opts := buffer.Options{Sync: buffer.SyncNone, SegmentBytes: 8 << 10, OpenFile: faults.OpenFile}
	l, err := buffer.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var seqs []uint64
	for range 200 { // several segments
		seq, err := l.Append(record(l.NextSeq()))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	faults.Set(func(f *buffertest.Faults) { f.Write = syscall.ENOSPC })
	if _, err := l.Append(record(l.NextSeq())); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Append = %v, want ENOSPC", err)
	}
	drain(t, l)
	if err := l.Sync(); !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "cursor") {
		t.Fatalf("Sync with failing cursor writes = %v, want the cursor's ENOSPC", err)
	}
	if st := l.Stats(); st.Bytes != 0 || st.Segments != 1 {
		t.Fatalf("acknowledged segments kept while the cursor cannot be written: %d bytes in %d segments", st.Bytes, st.Segments)
	}
	faults.Clear()
	next := l.NextSeq()
	if _, err := l.Append(record(next)); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err = buffer.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := drain(t, l); len(got) != 1 || got[0] != next {
		t.Fatalf("after restart the log sends %v, want only [%d]", got, next)
	}
	if st := l.Stats(); st.Corrupt != 0 {
		t.Fatalf("Corrupt = %d after restart", st.Corrupt)
	}
}

// Only the cursor file fails (ENOSPC) while segments take writes: nothing
// is deleted that the persisted cursor does not cover, and nothing is lost.
func TestCursorWriteFailsAlone(t *testing.T) {
	dir := t.TempDir()
	faults := buffertest.NewFaults()
	opts := buffer.Options{Sync: buffer.SyncNone, SegmentBytes: 8 << 10, OpenFile: faults.OpenFile}
	l, err := buffer.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for range 100 {
		if _, err := l.Append(record(l.NextSeq())); err != nil {
			t.Fatal(err)
		}
	}
	faults.Set(func(f *buffertest.Faults) { f.Write, f.Only = syscall.ENOSPC, "cursor*" })
	acked := drain(t, l)
	if err := l.Sync(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Sync = %v, want ENOSPC", err)
	}
	if st := l.Stats(); st.WriteFailing || st.WriteErrors == 0 {
		t.Fatalf("Stats: failing %v, write errors %d", st.WriteFailing, st.WriteErrors)
	}
	// The records are still on disk: a crash now would send them again
	// (at-least-once), never lose them.
	sum, err := buffer.Inspect(dir, nil)
	if err != nil || sum.Records != uint64(len(acked)) {
		t.Fatalf("Inspect = %+v, %v; want %d records kept", sum, err, len(acked))
	}
	faults.Clear()
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if sum, err := buffer.Inspect(dir, nil); err != nil || sum.Unacked != 0 || sum.Segments != 1 {
		t.Fatalf("Inspect after the cursor write = %+v, %v", sum, err)
	}
}

// Skip gives seqs to readings that could not be stored: the next record's
// seq shows the gap, the cursor steps over it (before and after a
// restart), and a skip not followed by a record survives a restart.
func TestSkipShowsAsGap(t *testing.T) {
	dir := t.TempDir()
	opts := buffer.Options{Sync: buffer.SyncNone}
	l, err := buffer.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	mustAppend := func(l *buffer.Log) uint64 {
		t.Helper()
		seq, err := l.Append(record(0)) // NextSeq does not count a pending skip
		if err != nil {
			t.Fatal(err)
		}
		return seq
	}
	mustAppend(l) // 1
	mustAppend(l) // 2
	if err := l.Skip(5); err != nil {
		t.Fatal(err)
	}
	if got := mustAppend(l); got != 8 {
		t.Fatalf("seq after Skip(5) = %d, want 8", got)
	}
	// Seqs 1, 2 and 8 pending; acking them moves the cursor over 3..7.
	if got := drain(t, l); len(got) != 3 || got[2] != 8 {
		t.Fatalf("delivered %v", got)
	}
	if got := l.Acked(); got != 9 {
		t.Fatalf("Acked = %d, want 9", got)
	}
	// A skip with no record after it, then a restart.
	if err := l.Skip(3); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err = buffer.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := mustAppend(l); got != 12 {
		t.Fatalf("seq after Skip(3) and a restart = %d, want 12", got)
	}
	// A gap inside pending data, found again after a restart: the cursor
	// still steps over it.
	if err := l.Skip(4); err != nil {
		t.Fatal(err)
	}
	mustAppend(l) // 17
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err = buffer.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := drain(t, l); len(got) != 2 || got[0] != 12 || got[1] != 17 {
		t.Fatalf("delivered after restart %v, want [12 17]", got)
	}
	if got := l.Acked(); got != 18 {
		t.Fatalf("Acked = %d, want 18", got)
	}
	if st := l.Stats(); st.Records != 0 || st.Corrupt != 0 {
		t.Fatalf("Stats: %d records, %d corrupt", st.Records, st.Corrupt)
	}
}

// A gap wider than AckWindow between pending records: acks after it are
// accepted and the cursor gets past it.
func TestSkipWiderThanAckWindow(t *testing.T) {
	l, err := buffer.Open(t.TempDir(), buffer.Options{Sync: buffer.SyncNone})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Append(record(1)); err != nil {
		t.Fatal(err)
	}
	if err := l.Skip(3 * buffer.AckWindow); err != nil {
		t.Fatal(err)
	}
	after, err := l.Append(record(2 + 3*buffer.AckWindow))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Ack(after); err != nil {
		t.Fatalf("Ack past the gap: %v", err)
	}
	if err := l.Ack(1); err != nil {
		t.Fatal(err)
	}
	if got := l.Acked(); got != after+1 {
		t.Fatalf("Acked = %d, want %d", got, after+1)
	}
}

// Buffer files are 0640 and directories 0750, like the MQTT session's.
func TestFileModes(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "buffer")
	l, err := buffer.Open(dir, buffer.Options{Sync: buffer.SyncNone})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(record(1)); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// A corrupt record is set aside in corrupt/.
	seg := filepath.Join(dir, "00000000000000000001.seg")
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, b...) // a second copy of record 1: bad seq, set aside
	b[len(b)-1] ^= 0xff
	if err := os.WriteFile(seg, b, 0o640); err != nil {
		t.Fatal(err)
	}
	l, err = buffer.Open(dir, buffer.Options{Sync: buffer.SyncNone})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var n int
	err = filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		want := os.FileMode(0o640)
		if fi.IsDir() {
			want = 0o750 | os.ModeDir
		}
		if fi.Name() == filepath.Base(seg) {
			return nil // rewritten by this test
		}
		n++
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 5 { // dir, LOCK, cursor, corrupt/, a file in it
		t.Fatalf("checked only %d files", n)
	}
}

// frameBytes is the size of the frame of a record(seq).
const frameBytes = 28 + 200

// cappedLog opens a buffer of four 10-record segments and returns it with
// a function that appends n records.
func cappedLog(t *testing.T) (*buffer.Log, func(n int)) {
	t.Helper()
	l, err := buffer.Open(t.TempDir(), buffer.Options{Sync: buffer.SyncNone, SegmentBytes: 10 * frameBytes, MaxBytes: 40 * frameBytes})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, func(n int) {
		for range n {
			if _, err := l.Append(record(l.NextSeq())); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// The size cap drops segments while the consumer has read ahead: the
// records it had read are delivered (acked late), so Dropped counts exactly
// the seqs the consumer never got. Before the fix it counted the read-ahead
// records too.
func TestCapDropCountsOnlyUndelivered(t *testing.T) {
	l, appendRecs := cappedLog(t)
	appendRecs(30)
	// The consumer reads 15 records ahead (in flight, not acked yet).
	var got []uint64
	if _, err := l.Scan(l.Acked(), 15, func(seq uint64, _ []byte) error {
		got = append(got, seq)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	appendRecs(40) // the cap drops the oldest segments
	st := l.Stats()
	if st.Dropped == 0 {
		t.Fatal("the cap dropped nothing; the test does not test anything")
	}
	for _, seq := range got { // delivered after the drop
		if err := l.Ack(seq); err != nil {
			t.Fatal(err)
		}
	}
	got = append(got, drain(t, l)...)
	seen := make(map[uint64]bool, len(got))
	for _, seq := range got {
		seen[seq] = true
	}
	var missing uint64
	for seq := uint64(1); seq < l.NextSeq(); seq++ {
		if !seen[seq] {
			missing++
		}
	}
	if st := l.Stats(); st.Dropped != missing {
		t.Fatalf("Dropped = %d, but the consumer misses %d seqs", st.Dropped, missing)
	}
}

// A corrupt record in the middle of the newest segment: the consumer acks
// every record around it and the cursor gets past the lost seq. Before the
// fix it stayed there, so everything after it was sent again after every
// restart and acked segments were never deleted.
func TestCursorPassesCorruptRecord(t *testing.T) {
	dir := t.TempDir()
	opts := buffer.Options{Sync: buffer.SyncNone}
	l, err := buffer.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := l.Append(record(l.NextSeq())); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	seg := filepath.Join(dir, "00000000000000000001.seg")
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	b[4*frameBytes+40] ^= 0xff // in record 5's data: checksum mismatch
	if err := os.WriteFile(seg, b, 0o640); err != nil {
		t.Fatal(err)
	}
	l, err = buffer.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := drain(t, l); len(got) != 9 {
		t.Fatalf("delivered %v", got)
	}
	if got, st := l.Acked(), l.Stats(); got != 11 || st.Corrupt != 1 || st.Records != 0 {
		t.Fatalf("Acked = %d (want 11), Corrupt = %d, Records = %d", got, st.Corrupt, st.Records)
	}
}

// A consumer that starts again at the cursor (a publisher restarted by a
// reload) holds none of what the one before it read: those records count
// as dropped again.
func TestCapDropAfterConsumerRestart(t *testing.T) {
	l, appendRecs := cappedLog(t)
	appendRecs(30)
	scan := func(n int) {
		if _, err := l.Scan(l.Acked(), n, func(uint64, []byte) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	scan(15) // the first consumer reads 1..15 and goes away
	scan(1)  // the new one reads 1
	appendRecs(40)
	// Segments 1..30 are dropped: 2..30 never reached the new consumer.
	if st := l.Stats(); st.Dropped != 29 {
		t.Fatalf("Dropped = %d, want 29", st.Dropped)
	}
}
