package buffer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

func validSegment(base uint64, n int) []byte {
	var b []byte
	for i := range n {
		b = appendFrame(b, base+uint64(i), int64(i+1)*1e9, rec(base+uint64(i), 10+i*7))
	}
	return b
}

// FuzzRecover feeds arbitrary bytes to Open and Scan, as the newest segment
// (validated at Open) and as an older one (read lazily by Scan). Neither may
// panic or fail, and the log must stay usable.
func FuzzRecover(f *testing.F) {
	seg := validSegment(1, 4)
	f.Add(seg, false)
	f.Add(seg[:len(seg)-3], true)
	f.Add(append(append([]byte{}, seg...), 0, 0, 0, 0), false)
	mid := append([]byte{}, seg...)
	mid[40] ^= 0x10
	f.Add(mid, true)
	f.Add(append(append([]byte{}, frameMagic...), 0xff, 0xff, 0xff, 0xff), false)
	f.Add([]byte{}, true)
	f.Fuzz(func(t *testing.T, data []byte, older bool) {
		dir, err := os.MkdirTemp("", "fuzzrecover")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		if err := os.WriteFile(filepath.Join(dir, segmentName(1)), data, 0o644); err != nil {
			t.Fatal(err)
		}
		if older {
			if err := os.WriteFile(filepath.Join(dir, segmentName(1000)), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		l, err := Open(dir, Options{Sync: SyncNone})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer l.Close()
		prev := uint64(0)
		next, err := l.Scan(0, 0, func(seq uint64, _ []byte) error {
			if seq <= prev {
				t.Fatalf("seq %d after %d", seq, prev)
			}
			prev = seq
			return nil
		})
		if err != nil {
			t.Fatalf("Scan: %v", err)
		}
		want := l.NextSeq()
		if next > want {
			t.Fatalf("Scan returned %d beyond NextSeq %d", next, want)
		}
		first, err := l.Append([]byte("after"))
		if err != nil || first != want {
			t.Fatalf("Append = %d, %v; want %d", first, err, want)
		}
		var last []byte
		if _, err := l.Scan(first, 1, func(_ uint64, d []byte) error { last = append(last, d...); return nil }); err != nil || string(last) != "after" {
			t.Fatalf("Scan of appended record = %q, %v", last, err)
		}
	})
}

// FuzzFrame checks the frame decoder and the resynchronisation search on
// arbitrary bytes: no panic, and what they accept really is a valid frame.
func FuzzFrame(f *testing.F) {
	f.Add(validSegment(7, 3), uint64(0))
	f.Add(append([]byte{1, 2, 3}, validSegment(7, 2)...), uint64(7))
	f.Fuzz(func(t *testing.T, data []byte, prev uint64) {
		r := segReader{f: bytes.NewReader(data), end: int64(len(data))}
		off := int64(0)
		for off < r.end {
			seq, ts, rec, n, bad, err := r.frameAt(off, prev)
			if err != nil {
				t.Fatalf("frameAt(%d): %v", off, err)
			}
			if bad == nil {
				if seq <= prev || (n != int64(frameHeaderSize+len(rec)) && n != int64(frameHeaderSizeV1+len(rec))) {
					t.Fatalf("accepted seq %d after %d, n %d", seq, prev, n)
				}
				re := appendFrame(nil, seq, ts, rec)
				if n == int64(frameHeaderSizeV1+len(rec)) {
					re = appendFrameV1(nil, seq, rec)
				}
				if !bytes.Equal(re, data[off:off+n]) {
					t.Fatalf("accepted frame does not re-encode")
				}
				prev, off = seq, off+n
				continue
			}
			nx, _, found, err := r.resync(off+1, prev)
			if err != nil || nx <= off || (found && nx >= r.end) {
				t.Fatalf("resync(%d) = %d, %v, %v", off+1, nx, found, err)
			}
			off = nx
		}
	})
}

// FuzzOpenDir builds a whole directory from the input: up to five files,
// each a segment (with a base taken from the input), the cursor, a stale
// cursor.tmp or a file in corrupt/ (with a name from the input), holding
// arbitrary bytes. Open, Scan, Append, Close, a second Open and Inspect must
// neither panic nor fail, seqs must increase, and what was appended must
// read back.
func FuzzOpenDir(f *testing.F) {
	seg := validSegment(1, 4)
	var cur [cursorSizeV1]byte // version 1
	copy(cur[:], cursorMagicV1)
	cur[8] = 3
	binary.LittleEndian.PutUint32(cur[16:], crc32.Checksum(cur[:16], castagnoli))
	// Encoding: a sequence of entries: kind byte, name/base byte, 2-byte
	// length, then the bytes.
	entry := func(kind, name byte, b []byte) []byte {
		return append([]byte{kind, name, byte(len(b)), byte(len(b) >> 8)}, b...)
	}
	f.Add(entry(0, 1, seg))
	f.Add(append(entry(0, 1, seg), entry(1, 0, cur[:])...))
	cur2 := make([]byte, cursorFile) // version 2, two slots, skipped seqs
	copy(cur2, encodeCursor(cursorState{acked: 2, next: 9}))
	copy(cur2[cursorStride:], encodeCursor(cursorState{acked: 3, next: 9}))
	f.Add(append(entry(0, 1, seg), entry(1, 0, cur2)...))
	f.Add(append(append(entry(0, 1, seg[:50]), entry(0, 9, validSegment(9, 2))...), entry(3, 7, []byte("x"))...))
	f.Add(append(entry(0, 5, seg), entry(2, 0, []byte("junk"))...))
	f.Fuzz(fuzzOpenDir)
}

func fuzzOpenDir(t *testing.T, in []byte) {
	{
		dir, err := os.MkdirTemp("", "fuzzopendir")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		for files := 0; len(in) >= 4 && files < 5; files++ {
			kind, name, n := in[0]%4, in[1], int(binary.LittleEndian.Uint16(in[2:4]))
			in = in[4:]
			n = min(n, len(in))
			data := in[:n]
			in = in[n:]
			var path string
			switch kind {
			case 0:
				path = filepath.Join(dir, segmentName(uint64(name)+1))
			case 1:
				path = filepath.Join(dir, cursorName)
			case 2:
				path = filepath.Join(dir, cursorTmpName)
			case 3:
				os.MkdirAll(filepath.Join(dir, corruptDir), 0o755)
				path = filepath.Join(dir, corruptDir, fmt.Sprintf("%s.%d.%d.bin", segmentName(uint64(name)+1), name, name%5))
			}
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := Inspect(dir, nil); err != nil {
			t.Fatalf("Inspect before Open: %v", err)
		}
		var appended uint64
		for round := range 2 {
			l, err := Open(dir, Options{Sync: SyncNone})
			if err != nil {
				t.Fatalf("Open %d: %v", round, err)
			}
			prev := uint64(0)
			if _, err := l.Scan(0, 0, func(seq uint64, _ []byte) error {
				if seq <= prev {
					t.Fatalf("seq %d after %d", seq, prev)
				}
				prev = seq
				return nil
			}); err != nil {
				t.Fatalf("Scan: %v", err)
			}
			if appended != 0 && prev < appended {
				t.Fatalf("record %d appended before the restart is gone (last %d)", appended, prev)
			}
			want := l.NextSeq()
			if round == 1 && want <= appended {
				t.Fatalf("NextSeq %d after reopen, %d was appended", want, appended)
			}
			// NextSeq does not count seqs skipped (cursor file) and not
			// yet consumed: the Append may start higher.
			first, err := l.Append([]byte("after"))
			if err != nil || first < want {
				t.Fatalf("Append = %d, %v; want %d", first, err, want)
			}
			appended = first
			if err := l.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
		}
		if _, err := Inspect(dir, nil); err != nil {
			t.Fatalf("Inspect: %v", err)
		}
	}
}

// TestOpenDirRandom runs FuzzOpenDir's body on random directories, so CI
// covers it without -fuzz.
func TestOpenDirRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		in := make([]byte, r.IntN(600))
		for j := range in {
			in[j] = byte(r.IntN(256))
		}
		// Mostly short lengths so that several files are made, and some
		// valid segments and cursors among the noise.
		for k := 0; k+4 <= len(in); k += 4 + int(in[k+2]) {
			in[k+2], in[k+3] = byte(r.IntN(120)), 0
		}
		if r.IntN(3) == 0 {
			in = append([]byte{0, byte(r.IntN(8)), 0, 0}, in...)
			seg := validSegment(uint64(in[1])+1, 1+r.IntN(5))
			in[2], in[3] = byte(len(seg)), byte(len(seg)>>8)
			in = append(in[:4], append(seg, in[4:]...)...)
		}
		fuzzOpenDir(t, in)
	}
}
