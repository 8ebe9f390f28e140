package buffer

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func validSegment(base uint64, n int) []byte {
	var b []byte
	for i := range n {
		b = appendFrame(b, base+uint64(i), rec(base+uint64(i), 10+i*7))
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
			seq, rec, n, bad, err := r.frameAt(off, prev)
			if err != nil {
				t.Fatalf("frameAt(%d): %v", off, err)
			}
			if bad == nil {
				if seq <= prev || n != int64(frameHeaderSize+len(rec)) {
					t.Fatalf("accepted seq %d after %d, n %d", seq, prev, n)
				}
				if re := appendFrame(nil, seq, rec); !bytes.Equal(re, data[off:off+n]) {
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
