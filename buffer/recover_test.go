package buffer

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

// garbage returns n bytes of noise that contain the frame prefix.
func garbage(n int) []byte {
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
		if i%97 == 0 && i+4 < n {
			copy(b[i:], frameMagic)
		}
	}
	return b
}

// zeroRange zeroes n bytes from record seq of segment base (plus skip bytes).
func zeroRange(base, seq uint64, n int, skip ...int64) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		f, err := os.OpenFile(segPath(dir, base), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		pos := int64(seq-base) * corrFrameSize
		for _, s := range skip {
			pos += s
		}
		if _, err := f.WriteAt(make([]byte, n), pos); err != nil {
			t.Fatal(err)
		}
	}
}

// flipBits flips one bit in the data of n consecutive records from seq.
func flipBits(base, seq uint64, n int) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		for i := range n {
			flipByte(base, seq+uint64(i), int64(frameHeaderSize+10+i))(t, dir)
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
		{"garbage_file", func(t *testing.T, dir string) {
			writeFile("junk.bin", garbage(5000))(t, dir)
			writeFile("00000000000000000001.seg.bak", garbage(300))(t, dir)
			if err := os.Mkdir(filepath.Join(dir, segmentName(30)), 0o755); err != nil {
				t.Fatal(err)
			}
		}, want{all, 13, 26, 0, 0}},
		// A garbage file with a segment's name after the newest segment: its
		// bytes are set aside and truncated away; the seqs its name skips
		// over are counted as missing (a consumer sees that gap too).
		{"garbage_named_newest_segment", writeFile(segmentName(40), garbage(3000)), want{all, 13, 40, 14, 2}},
		// Below the cursor: deleted as fully committed, nothing lost.
		{"garbage_named_old_segment", writeFile(segmentName(2), garbage(3000)), want{all, 13, 26, 0, 0}},
		{"zeroed_page_sealed_segment", zeroRange(11, 15, 2*corrFrameSize), want{without(all, 15, 16), 13, 26, 2, 1}},
		{"zeroed_page_last_segment", zeroRange(21, 22, 2*corrFrameSize), want{without(all, 22, 23), 13, 26, 2, 1}},
		{"zeroed_page_mid_record", zeroRange(21, 22, corrFrameSize+30, 40), want{without(all, 22, 23), 13, 26, 2, 1}},
		{"flipped_bits_mid_segment", flipBits(11, 14, 3), want{without(all, 14, 15, 16), 13, 26, 3, 1}},
		{"truncated_sealed_segment", func(t *testing.T, dir string) {
			os.Truncate(segPath(dir, 11), 4*corrFrameSize+10)
		}, want{without(all, 15, 16, 17, 18, 19, 20), 13, 26, 6, 1}},
		{"truncated_sealed_segment_at_frame", func(t *testing.T, dir string) {
			os.Truncate(segPath(dir, 11), 4*corrFrameSize)
		}, want{without(all, 15, 16, 17, 18, 19, 20), 13, 26, 6, 1}},
		// The segment holding uncommitted records 13..20 is gone: counted at
		// Open, the cursor moves to the next segment.
		{"missing_oldest_segment", removeFile(segmentName(11)), want{seqRange(21, 25), 21, 26, 8, 1}},
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
			// A restart neither counts, logs nor copies the same damage
			// again; Corrupt is a lifetime count.
			var lb2 logBuffer
			l = openLog(t, dir, Options{Sync: SyncNone, SegmentBytes: 10 * corrFrameSize, Logger: lb2.logger()})
			if got := l.NextSeq(); got != next+1 {
				t.Errorf("NextSeq after second reopen = %d, want %d", got, next+1)
			}
			if got, want := scanAll(t, l, 1), append(tt.want.seqs[:len(tt.want.seqs):len(tt.want.seqs)], next); !eqSeqs(got, want) {
				t.Errorf("scan after second reopen = %v\nwant   %v", got, want)
			}
			if got := l.Stats().Corrupt; got != tt.want.corrupt {
				t.Errorf("Corrupt after reopen = %d, want %d (lifetime)", got, tt.want.corrupt)
			}
			if kept2, _ := filepath.Glob(filepath.Join(dir, corruptDir, "*.bin")); len(kept2) != len(kept) {
				t.Errorf("corrupt/ after reopen holds %v, was %v", kept2, kept)
			}
			if strings.Contains(lb2.String(), "level=WARN") {
				t.Errorf("reopen logged warnings again:\n%s", lb2.String())
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

// A segment in the middle is lost: the seqs it held are counted once, when
// Scan gets past the segment before it, and not again after a restart.
func TestRecoverMissingMiddleSegment(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Sync: SyncNone, SegmentBytes: 10 * corrFrameSize}
	l := openLog(t, dir, opts)
	appendN(t, l, 35, corrRecSize) // segments 1, 11, 21, 31
	l.Ack(1)
	l.Ack(2)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	removeFile(segmentName(11))(t, dir)

	sum, err := Inspect(dir, nil)
	if err != nil || sum.Corrupt != 10 || sum.Unacked != 23 || sum.NextSeq != 36 {
		t.Fatalf("Inspect = %+v, %v", sum, err)
	}

	for round := range 2 {
		var lb logBuffer
		opts.Logger = lb.logger()
		l = openLog(t, dir, opts)
		want := append(seqRange(3, 10), seqRange(21, 35)...)
		if got := scanAll(t, l, l.Acked()); !eqSeqs(got, want) {
			t.Fatalf("round %d: scan = %v", round, got)
		}
		if got := l.Stats().Corrupt; got != 10 {
			t.Fatalf("round %d: Corrupt = %d, want 10", round, got)
		}
		if n := strings.Count(lb.String(), "records missing between segments"); n != 1-round {
			t.Fatalf("round %d: %d warnings:\n%s", round, n, lb.String())
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
