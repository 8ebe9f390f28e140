package buffer

import (
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"
)

// TestCursorSlots: the newest valid slot wins; a torn or damaged slot
// leaves the other one, one write older; a version 1 file is slot 0.
func TestCursorSlots(t *testing.T) {
	slots := func(a, b []byte) []byte {
		f := make([]byte, cursorFile)
		copy(f, a)
		copy(f[cursorStride:], b)
		return f
	}
	v1 := func(c byte) []byte {
		b := make([]byte, cursorSizeV1)
		copy(b, cursorMagicV1)
		b[8] = c
		binary.LittleEndian.PutUint32(b[16:], crc32.Checksum(b[:16], castagnoli))
		return b
	}
	torn := func(b []byte) []byte { b = append([]byte(nil), b...); b[12] ^= 1; return b }
	c5 := encodeCursor(cursorState{acked: 5})
	c7 := encodeCursor(cursorState{acked: 7, next: 9})
	tests := []struct {
		name  string
		file  []byte
		want  cursorState
		valid bool
	}{
		{"both valid, newer in slot 1", slots(c5, c7), cursorState{7, 9}, true},
		{"both valid, newer in slot 0", slots(c7, c5), cursorState{7, 9}, true},
		{"slot 1 torn", slots(c5, torn(c7)), cursorState{acked: 5}, true},
		{"slot 0 torn", slots(torn(c7), c5), cursorState{acked: 5}, true},
		{"slot 1 never written", slots(c5, nil), cursorState{acked: 5}, true},
		{"version 1 file", v1(3), cursorState{acked: 3}, true},
		{"version 1 then slot 1", slots(v1(3), c5), cursorState{acked: 5}, true},
		{"both torn", slots(torn(c5), torn(c7)), cursorState{}, false},
		{"empty", nil, cursorState{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, cursorName), tt.file, 0o640); err != nil {
				t.Fatal(err)
			}
			got, err := readCursor(dir)
			if (err == nil) != tt.valid || got != tt.want {
				t.Fatalf("readCursor = %+v, %v; want %+v (valid %v)", got, err, tt.want, tt.valid)
			}
		})
	}
}

// TestCursorWritesInPlace: after the file exists, cursor writes alternate
// slots of the same file (same inode, same size): no new space needed.
func TestCursorWritesInPlace(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, Options{Sync: SyncNone})
	path := filepath.Join(dir, cursorName)
	before, err := os.Stat(path)
	if err != nil {
		t.Fatalf("no cursor file after Open: %v", err)
	}
	for i := range 3 {
		if _, err := l.Append(rec(l.NextSeq(), 10)); err != nil {
			t.Fatal(err)
		}
		if err := l.Ack(l.NextSeq() - 1); err != nil {
			t.Fatal(err)
		}
		if err := l.Sync(); err != nil {
			t.Fatal(err)
		}
		after, err := os.Stat(path)
		if err != nil || !os.SameFile(before, after) || after.Size() != cursorFile {
			t.Fatalf("write %d: cursor file replaced or resized (%v)", i, err)
		}
		if c, err := readCursor(dir); err != nil || c.acked != l.NextSeq() {
			t.Fatalf("write %d: cursor %+v, %v; want %d", i, c, err, l.NextSeq())
		}
	}
}
