package buffer

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

const (
	corrRecSize   = 100
	corrFrameSize = frameHeaderSize + corrRecSize
)

// buildCorruptionFixture leaves dir with segments 11 (records 11..20) and 21
// (records 21..25) and the cursor at 13.
func buildCorruptionFixture(t *testing.T, dir string) {
	l := openLog(t, dir, Options{Sync: SyncNone, SegmentBytes: 10 * corrFrameSize})
	appendN(t, l, 25, corrRecSize)
	for seq := uint64(1); seq <= 12; seq++ {
		l.Ack(seq)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if got := segFiles(t, dir); len(got) != 2 {
		t.Fatalf("fixture has segments %v", got)
	}
}

func segPath(dir string, base uint64) string { return filepath.Join(dir, segmentName(base)) }

func truncateBy(n int64) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		p := segPath(dir, 21)
		if err := os.Truncate(p, 5*corrFrameSize-n); err != nil {
			t.Fatal(err)
		}
	}
}

func appendBytes(base uint64, b []byte) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		f, err := os.OpenFile(segPath(dir, base), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
	}
}

// flipByte inverts the byte at offset off of record seq in segment base.
func flipByte(base, seq uint64, off int64) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		f, err := os.OpenFile(segPath(dir, base), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		pos := int64(seq-base)*corrFrameSize + off
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, pos); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0xFF
		if _, err := f.WriteAt(b, pos); err != nil {
			t.Fatal(err)
		}
	}
}

func writeFile(name string, b []byte) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func removeFile(name string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

func without(seqs []uint64, drop ...uint64) []uint64 {
	var out []uint64
outer:
	for _, s := range seqs {
		for _, d := range drop {
			if s == d {
				continue outer
			}
		}
		out = append(out, s)
	}
	return out
}

func TestRecoverCorruption(t *testing.T) {
	all := seqRange(11, 25)
	type want struct {
		seqs         []uint64 // from Scan(1, ...)
		acked, next  uint64
		corrupt      uint64 // Stats().Corrupt after the scan
		corruptFiles int
	}
	tests := []struct {
		name   string
		mangle func(*testing.T, string)
		want   want
	}{
		{"intact", func(*testing.T, string) {}, want{all, 13, 26, 0, 0}},
		{"torn_last_record_1", truncateBy(1), want{seqRange(11, 24), 13, 25, 0, 1}},
		{"torn_last_record_in_data", truncateBy(50), want{seqRange(11, 24), 13, 25, 0, 1}},
		{"torn_last_record_header_only", truncateBy(corrRecSize), want{seqRange(11, 24), 13, 25, 0, 1}},
		{"torn_last_record_in_header", truncateBy(corrRecSize + 7), want{seqRange(11, 24), 13, 25, 0, 1}},
		{"torn_last_record_magic_only", truncateBy(corrFrameSize - 1), want{seqRange(11, 24), 13, 25, 0, 1}},
		{"torn_last_two_records", truncateBy(corrFrameSize + 3), want{seqRange(11, 23), 13, 24, 0, 1}},
		{"garbage_tail", appendBytes(21, bytes.Repeat([]byte{0xAB}, 37)), want{all, 13, 26, 0, 1}},
		{"garbage_tail_with_magic", appendBytes(21, append(append([]byte{}, frameMagic...), 1, 2, 3)), want{all, 13, 26, 0, 1}},
		{"zero_filled_tail", appendBytes(21, make([]byte, 4096)), want{all, 13, 26, 0, 0}},
		{"flipped_data_byte_middle_record", flipByte(21, 23, 70), want{without(all, 23), 13, 26, 1, 1}},
		{"flipped_magic_middle_record", flipByte(21, 23, 1), want{without(all, 23), 13, 26, 1, 1}},
		{"flipped_length_middle_record", flipByte(21, 23, 6), want{without(all, 23), 13, 26, 1, 1}},
		{"flipped_seq_middle_record", flipByte(21, 23, 9), want{without(all, 23), 13, 26, 1, 1}},
		{"flipped_crc_first_record", flipByte(21, 21, 17), want{without(all, 21), 13, 26, 1, 1}},
		{"flipped_byte_sealed_segment", flipByte(11, 15, 70), want{without(all, 15), 13, 26, 1, 1}},
		{"flipped_last_record_sealed_segment", flipByte(11, 20, 70), want{without(all, 20), 13, 26, 1, 1}},
		{"torn_sealed_segment", func(t *testing.T, dir string) {
			os.Truncate(segPath(dir, 11), 10*corrFrameSize-50)
		}, want{without(all, 20), 13, 26, 1, 1}},
		{"empty_last_segment", truncateBy(5 * corrFrameSize), want{seqRange(11, 20), 13, 21, 0, 0}},
		{"empty_extra_segment", writeFile(segmentName(26), nil), want{all, 13, 26, 0, 0}},
		{"missing_cursor", removeFile(cursorName), want{all, 11, 26, 0, 0}},
		{"corrupt_cursor", writeFile(cursorName, []byte("FRYCUR01\x0d\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")), want{all, 11, 26, 0, 0}},
		{"short_cursor", writeFile(cursorName, []byte("FRY")), want{all, 11, 26, 0, 0}},
		{"stale_cursor_tmp", writeFile(cursorTmpName, []byte("junk")), want{all, 13, 26, 0, 0}},
		{"unrelated_files", func(t *testing.T, dir string) {
			writeFile("notes.txt", []byte("x"))(t, dir)
			writeFile("0000000000000000000x.seg", []byte("x"))(t, dir)
		}, want{all, 13, 26, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			buildCorruptionFixture(t, dir)
			tt.mangle(t, dir)

			var lb logBuffer
			l := openLog(t, dir, Options{Sync: SyncNone, SegmentBytes: 10 * corrFrameSize, Logger: lb.logger()})
			if got := l.Acked(); got != tt.want.acked {
				t.Errorf("Acked = %d, want %d", got, tt.want.acked)
			}
			if got := l.NextSeq(); got != tt.want.next {
				t.Errorf("NextSeq = %d, want %d", got, tt.want.next)
			}
			got := scanAll(t, l, 1)
			if !eqSeqs(got, tt.want.seqs) {
				t.Errorf("scan = %v\nwant   %v", got, tt.want.seqs)
			}
			// Scanning again reports nothing new.
			scanAll(t, l, 1)
			if got := l.Stats().Corrupt; got != tt.want.corrupt {
				t.Errorf("Corrupt = %d, want %d", got, tt.want.corrupt)
			}
			kept, _ := filepath.Glob(filepath.Join(dir, corruptDir, "*.bin"))
			if len(kept) != tt.want.corruptFiles {
				t.Errorf("corrupt/ holds %v, want %d files", kept, tt.want.corruptFiles)
			}
			// The log keeps working and the next seq is not reused.
			next := l.NextSeq()
			if first, err := l.Append(rec(next, corrRecSize)); err != nil || first != next {
				t.Fatalf("Append = %d, %v", first, err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l = openLog(t, dir, Options{Sync: SyncNone, SegmentBytes: 10 * corrFrameSize})
			if got := l.NextSeq(); got != next+1 {
				t.Errorf("NextSeq after second reopen = %d, want %d", got, next+1)
			}
			if got, want := scanAll(t, l, 1), append(tt.want.seqs[:len(tt.want.seqs):len(tt.want.seqs)], next); !eqSeqs(got, want) {
				t.Errorf("scan after second reopen = %v\nwant   %v", got, want)
			}
			if t.Failed() {
				t.Log(lb.String())
			}
		})
	}
}

func TestCorruptionErrorType(t *testing.T) {
	e := &CorruptionError{Segment: "s.seg", Offset: 12, Err: errChecksum}
	var target *CorruptionError
	if !errorsAs(fmt.Errorf("wrapped: %w", e), &target) || target.Offset != 12 {
		t.Fatal("errors.As failed")
	}
	if got := e.Error(); got != "buffer: corruption in segment s.seg at offset 12: checksum mismatch" {
		t.Fatalf("Error() = %q", got)
	}
}
