package buffer

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// goldenRecords are the records of the golden segments: empty, short,
// binary and a 300-byte one.
func goldenRecords() [][]byte {
	return [][]byte{
		{},
		[]byte("hello"),
		{0x00, 0xF3, 'R', 'Y', 0x02, 0xFF},
		bytes.Repeat([]byte("0123456789"), 30),
	}
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run Golden -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s changed: the on-disk format must stay readable; bump the frame version and keep reading the old one.\ngot  %x\nwant %x", name, got, want)
	}
}

// TestGoldenFormat pins the on-disk format written by this version: a
// segment of version 2 frames and the cursor file. Regenerate with
// `go test -run TestGoldenFormat -update ./buffer` only for an intended,
// versioned format change.
func TestGoldenFormat(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Date(2026, 11, 25, 21, 0, 0, 123456789, time.UTC)}
	l := openLog(t, dir, Options{Sync: SyncNone, now: clock.now})
	recs := goldenRecords()
	if _, err := l.Append(recs[:2]...); err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Second)
	if _, err := l.Append(recs[2:]...); err != nil {
		t.Fatal(err)
	}
	l.Ack(1)
	l.Ack(2)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	seg, err := os.ReadFile(segPath(dir, 1))
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "format-v2.seg", seg)
	cur, err := os.ReadFile(filepath.Join(dir, cursorName))
	if err != nil {
		t.Fatal(err)
	}
	// Two slots; which one holds the newest record depends on how many
	// background writes came first: pin that record.
	_, slot, ok := parseCursor(cur)
	if len(cur) != cursorFile || !ok {
		t.Fatalf("cursor file: %d bytes, valid %v", len(cur), ok)
	}
	checkGolden(t, "format-v3.cursor", cur[slot*cursorStride:slot*cursorStride+cursorSize])
}

// TestReadCursorV1 reads the cursor file of earlier builds (one 20-byte
// record, testdata/format-v2.cursor) and rewrites it in place as version 2
// slots.
func TestReadCursorV1(t *testing.T) {
	dir := t.TempDir()
	old, err := os.ReadFile(filepath.Join("testdata", "format-v2.cursor"))
	if err != nil {
		t.Fatal(err)
	}
	seg, err := os.ReadFile(filepath.Join("testdata", "format-v2.seg"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, cursorName), old, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(segPath(dir, 1), seg, 0o640); err != nil {
		t.Fatal(err)
	}
	l := openLog(t, dir, Options{Sync: SyncNone})
	if got := l.Acked(); got != 3 {
		t.Fatalf("Acked = %d, want 3 (from the version 1 cursor)", got)
	}
	if err := l.Ack(3); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := readCursor(dir)
	if err != nil || c.acked != 4 {
		t.Fatalf("cursor after rewrite = %+v, %v", c, err)
	}
}

// TestReadFormatV1 opens a segment of version 1 frames (no time), as
// written by the first build, appends version 2 frames after them and reads
// both back, before and after a restart.
func TestReadFormatV1(t *testing.T) {
	recs := goldenRecords()
	var v1 []byte
	for i, r := range recs {
		v1 = appendFrameV1(v1, uint64(i+1), r)
	}
	checkGolden(t, "format-v1.seg", v1)

	dir := t.TempDir()
	golden, err := os.ReadFile(filepath.Join("testdata", "format-v1.seg"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(segPath(dir, 1), golden, 0o644); err != nil {
		t.Fatal(err)
	}
	check := func(l *Log, n int) {
		t.Helper()
		var got [][]byte
		if _, err := l.Scan(1, 0, func(seq uint64, data []byte) error {
			if seq != uint64(len(got)+1) {
				t.Fatalf("seq %d at position %d", seq, len(got))
			}
			got = append(got, append([]byte{}, data...))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if len(got) != n {
			t.Fatalf("read %d records, want %d", len(got), n)
		}
		for i := range got {
			if !bytes.Equal(got[i], recs[i%len(recs)]) {
				t.Fatalf("record %d = %q", i+1, got[i])
			}
		}
	}
	l := openLog(t, dir, Options{Sync: SyncNone})
	if st := l.Stats(); st.NextSeq != 5 || st.Corrupt != 0 || !st.OldestTime.IsZero() {
		t.Fatalf("Stats = %+v", st)
	}
	check(l, 4)
	if _, err := l.Append(recs...); err != nil {
		t.Fatal(err)
	}
	check(l, 8)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, dir, Options{Sync: SyncNone})
	check(l, 8)
	sum, err := Inspect(dir, nil)
	if err != nil || sum.Records != 8 || sum.Corrupt != 0 || sum.NewestTime.IsZero() {
		t.Fatalf("Inspect = %+v, %v", sum, err)
	}
}
