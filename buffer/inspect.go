package buffer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// Summary describes a buffer directory as Inspect found it.
type Summary struct {
	Dir string
	// Live is true when another process holds the directory's LOCK (ferry
	// is running): the figures are a snapshot of a log being written, and
	// a frame being written may show as a torn tail.
	Live     bool
	Segments int
	Bytes    int64 // size of the segment files
	// AckedSeq is the persisted commit cursor (the first seq not
	// committed), raised to OldestSeq; CursorErr says why it is unknown.
	AckedSeq  uint64
	CursorErr string
	OldestSeq uint64 // seq of the oldest valid record, 0 if none
	NextSeq   uint64 // seq after the newest valid record, or the cursor (or its next-seq floor) if larger
	Records   uint64 // valid records, acked or not
	Unacked   uint64 // valid records at or after AckedSeq: the depth
	// UnackedBytes is the size of the frames of the unacked records.
	UnackedBytes int64
	// OldestTime and NewestTime are the append times of the oldest unacked
	// record and of the newest record (zero if unknown: format version 1
	// or no such record).
	OldestTime, NewestTime time.Time
	// Corrupt counts the records that are unreadable in the segments now
	// (bad checksums, torn sealed segments, seqs missing between segments
	// or before the oldest segment); Open skips them. A running ferry
	// counts each once, in CorruptRecorded.
	Corrupt uint64
	// TornBytes is the size of the invalid tail of the newest segment (Open
	// truncates it).
	TornBytes int64
	// CorruptRecorded is the lifetime count recorded in corrupt/ (what
	// Stats().Corrupt starts at), CorruptFiles the number of files there.
	CorruptRecorded uint64
	CorruptFiles    int
}

// Record is one record as Inspect visits it. Data is only valid during the
// callback.
type Record struct {
	Seq     uint64
	Time    time.Time // append time; zero for format version 1
	Acked   bool      // below the persisted cursor: committed, kept until its segment is deleted
	Data    []byte
	Segment string // file name
	Offset  int64  // of the frame in the segment
}

// Inspect reads the buffer in dir without opening it as a Log: it takes no
// lock, creates, repairs, truncates and deletes nothing, and so works on a
// read-only file system and while ferry is running (Summary.Live). It reads
// every segment in full. fn, if not nil, is called for every valid record in
// seq order; an error from fn stops Inspect and is returned. Bad data is
// counted in the Summary, never an error; only I/O errors are (a segment
// deleted while Inspect runs is skipped).
func Inspect(dir string, fn func(Record) error) (Summary, error) {
	sum := Summary{Dir: dir}
	fi, err := os.Stat(dir)
	if err != nil {
		return sum, fmt.Errorf("buffer: %w", err)
	}
	if !fi.IsDir() {
		return sum, fmt.Errorf("buffer: %s is not a directory", dir)
	}
	if sum.Live, err = lockHeld(filepath.Join(dir, "LOCK")); err != nil {
		return sum, fmt.Errorf("buffer: %w", err)
	}
	cs, err := readCursor(dir)
	cursor := cs.acked
	haveCursor := err == nil
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			sum.CursorErr = "no cursor file"
		} else {
			sum.CursorErr = err.Error()
		}
	}
	if entries, err := os.ReadDir(filepath.Join(dir, corruptDir)); err == nil {
		for _, e := range entries {
			if _, n, ok := parseCorruptName(e.Name()); ok {
				sum.CorruptRecorded += n
				sum.CorruptFiles++
			}
		}
	}

	entries, err := os.ReadDir(dir)
	if err != nil {
		return sum, fmt.Errorf("buffer: %w", err)
	}
	type seg struct {
		base uint64
		name string
	}
	var segs []seg
	for _, e := range entries {
		if base, ok := parseSegmentName(e.Name()); ok && e.Type().IsRegular() {
			segs = append(segs, seg{base, e.Name()})
		}
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].base < segs[j].base })
	if len(segs) > 0 {
		sum.AckedSeq = max(cursor, segs[0].base)
		if haveCursor && cursor < segs[0].base {
			sum.Corrupt += segs[0].base - cursor
		}
	} else {
		sum.AckedSeq = max(cursor, 1)
	}

	var r segReader
	next := uint64(0) // seq after the last valid record
	for i, sg := range segs {
		f, err := os.Open(filepath.Join(dir, sg.name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return sum, fmt.Errorf("buffer: %w", err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return sum, fmt.Errorf("buffer: %w", err)
		}
		sum.Segments++
		sum.Bytes += st.Size()
		last := i == len(segs)-1
		var nextBase uint64
		if !last {
			nextBase = segs[i+1].base
		}
		r = segReader{f: f, end: st.Size(), store: r.store}
		off, prev := int64(0), sg.base-1
		for off < r.end {
			seq, ts, data, n, bad, err := r.frameAt(off, prev)
			if err != nil {
				f.Close()
				return sum, fmt.Errorf("buffer: read %s: %w", sg.name, err)
			}
			if bad != nil {
				nx, seq2, found, err := r.resync(off+1, prev)
				if err != nil {
					f.Close()
					return sum, fmt.Errorf("buffer: read %s: %w", sg.name, err)
				}
				switch {
				case found:
					if seq2 > prev+1 {
						sum.Corrupt += seq2 - prev - 1
					} else if !allZeroAt(&r, off, nx) {
						sum.Corrupt++
					}
				case last:
					sum.TornBytes = r.end - off
				case nextBase > prev+1:
					sum.Corrupt += nextBase - prev - 1
					prev = nextBase - 1
				}
				off = nx
				continue
			}
			if sum.Records == 0 {
				sum.OldestSeq = seq
			}
			sum.Records++
			acked := seq < sum.AckedSeq
			if !acked {
				if sum.Unacked == 0 && ts != 0 {
					sum.OldestTime = time.Unix(0, ts).UTC()
				}
				sum.Unacked++
				sum.UnackedBytes += n
			}
			if ts != 0 {
				sum.NewestTime = time.Unix(0, ts).UTC()
			}
			if fn != nil {
				if err := fn(Record{Seq: seq, Time: tsTime(ts), Acked: acked, Data: data, Segment: sg.name, Offset: off}); err != nil {
					f.Close()
					return sum, err
				}
			}
			prev, next = seq, seq+1
			off += n
		}
		f.Close()
		if !last && nextBase > prev+1 {
			sum.Corrupt += nextBase - prev - 1
		}
	}
	sum.NextSeq = max(next, sum.AckedSeq, cs.next)
	if len(segs) > 0 {
		sum.NextSeq = max(sum.NextSeq, segs[len(segs)-1].base)
	}
	return sum, nil
}

func tsTime(ts int64) time.Time {
	if ts == 0 {
		return time.Time{}
	}
	return time.Unix(0, ts).UTC()
}

func allZeroAt(r *segReader, off, end int64) bool {
	b := make([]byte, end-off)
	n, _ := r.f.ReadAt(b, off)
	return allZero(b[:n])
}
