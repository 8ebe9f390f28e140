package buffer

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestInspect(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Date(2026, 11, 25, 21, 0, 0, 0, time.UTC)}
	l := openLog(t, dir, Options{Sync: SyncNone, SegmentBytes: 10 * corrFrameSize, now: clock.now})
	appendN(t, l, 12, corrRecSize)
	clock.advance(time.Minute)
	appendN(t, l, 13, corrRecSize) // 1..25 in segments 1, 11, 21
	for seq := uint64(1); seq <= 12; seq++ {
		l.Ack(seq)
	}
	if err := l.Sync(); err != nil { // cursor 13; segment 1 deleted
		t.Fatal(err)
	}

	// While the log is open: live, nothing locked or changed by Inspect.
	var seqs []uint64
	sum, err := Inspect(dir, func(r Record) error {
		checkRec(t, r.Seq, r.Data)
		if r.Acked != (r.Seq < 13) {
			t.Errorf("seq %d acked = %v", r.Seq, r.Acked)
		}
		seqs = append(seqs, r.Seq)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !eqSeqs(seqs, seqRange(11, 25)) {
		t.Fatalf("visited %v", seqs)
	}
	want := Summary{
		Dir: dir, Live: true, Segments: 2, Bytes: 15 * corrFrameSize, AckedSeq: 13,
		OldestSeq: 11, NextSeq: 26, Records: 15, Unacked: 13, UnackedBytes: 13 * corrFrameSize,
		OldestTime: time.Date(2026, 11, 25, 21, 1, 0, 0, time.UTC), NewestTime: time.Date(2026, 11, 25, 21, 1, 0, 0, time.UTC),
	}
	if sum != want {
		t.Fatalf("Summary = %+v\nwant      %+v", sum, want)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	// Damage it; Inspect counts but repairs nothing.
	flipByte(21, 23, 70)(t, dir)
	appendBytes(21, []byte("torn"))(t, dir)
	before := dirState(t, dir)
	sum, err = Inspect(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Live || sum.Corrupt != 1 || sum.TornBytes != 4 || sum.Unacked != 12 || sum.CorruptRecorded != 0 {
		t.Fatalf("Summary of damaged log = %+v", sum)
	}
	if after := dirState(t, dir); after != before {
		t.Fatalf("Inspect changed the directory:\n%s\n%s", before, after)
	}

	// Open records the damage; Inspect then reports it as recorded too.
	l = openLog(t, dir, Options{Sync: SyncNone, SegmentBytes: 10 * corrFrameSize})
	scanAll(t, l, 1)
	l.Close()
	if sum, err = Inspect(dir, nil); err != nil || sum.CorruptRecorded != 1 || sum.CorruptFiles != 2 {
		t.Fatalf("Summary after Open = %+v, %v", sum, err)
	}

	if _, err := Inspect(filepath.Join(dir, "nope"), nil); err == nil {
		t.Fatal("Inspect of a missing directory succeeded")
	}
}

// dirState lists names, sizes and modification times.
func dirState(t *testing.T, dir string) string {
	t.Helper()
	var s string
	err := filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		s += fmt.Sprintln(path, fi.ModTime(), fi.Size())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
