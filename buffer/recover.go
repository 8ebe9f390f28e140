package buffer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

const corruptDir = "corrupt"

// parseSegmentName returns the base seq of a segment file name.
func parseSegmentName(name string) (uint64, bool) {
	num, ok := strings.CutSuffix(name, ".seg")
	if !ok || len(num) != 20 {
		return 0, false
	}
	base, err := strconv.ParseUint(num, 10, 64)
	if err != nil || base == 0 {
		return 0, false
	}
	return base, true
}

// recover loads the directory state. Only the newest segment is read.
func (l *Log) recover() error {
	os.Remove(filepath.Join(l.dir, cursorTmpName))

	cursor, err := readCursor(l.dir)
	switch {
	case err == nil:
		l.persisted = cursor
	case errors.Is(err, os.ErrNotExist):
	case errors.Is(err, errBadCursor):
		l.logger.Warn("buffer: cursor file is damaged; redelivering from the oldest record", "err", err)
	default:
		return err
	}

	entries, err := os.ReadDir(l.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		base, ok := parseSegmentName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		l.segs = append(l.segs, &segment{
			base:     base,
			name:     e.Name(),
			path:     filepath.Join(l.dir, e.Name()),
			size:     info.Size(),
			scanPrev: base - 1,
		})
	}
	sort.Slice(l.segs, func(i, j int) bool { return l.segs[i].base < l.segs[j].base })

	if len(l.segs) == 0 {
		s, err := l.createSegmentLocked(max(cursor, 1))
		if err != nil {
			return err
		}
		l.segs = append(l.segs, s)
	} else if err := l.recoverLast(l.active()); err != nil {
		return err
	}
	last := l.active()
	l.next = max(last.scanPrev+1, last.base, cursor)
	if l.next > last.scanPrev+1 && last.size > 0 {
		// The cursor is ahead of the records (they were lost in a power
		// failure): keep names equal to first seqs by starting a segment.
		if err := l.cutLocked(); err != nil {
			return err
		}
	} else if last.base < l.next {
		// Only possible for an empty newest segment behind the cursor.
		last.scanPrev = l.next - 1
	}
	for _, s := range l.segs {
		l.total += s.size
	}
	l.synced = l.next
	l.acked = max(cursor, l.segs[0].base)
	for len(l.segs) > 1 && l.segs[1].base <= l.persisted {
		l.removeOldestLocked()
	}
	return nil
}

// recoverLast opens the newest segment, validates all of it, skips corrupt
// records and truncates a torn tail.
func (l *Log) recoverLast(s *segment) error {
	f, err := l.opts.openFile(s.path, os.O_RDWR)
	if err != nil {
		return err
	}
	s.f = f
	r := segReader{f: f, end: s.size}
	off, prev := int64(0), s.base-1
	for off < s.size {
		seq, _, n, bad, err := r.frameAt(off, prev)
		if err != nil {
			return fmt.Errorf("read %s: %w", s.path, err)
		}
		if bad == nil {
			if len(s.idx) == 0 || off-s.idx[len(s.idx)-1].off >= indexEvery {
				s.idx = append(s.idx, indexEntry{seq: seq, off: off})
			}
			prev = seq
			off += n
			continue
		}
		nx, seq2, found, err := r.resync(off+1, prev)
		if err != nil {
			return fmt.Errorf("read %s: %w", s.path, err)
		}
		if found {
			l.reportCorrupt(s, off, nx, seq2-prev-1, bad)
			off = nx
			continue
		}
		if err := l.truncateTail(s, off, bad); err != nil {
			return err
		}
		break
	}
	s.scanOff, s.scanPrev = s.size, prev
	return nil
}

// truncateTail cuts s at off, setting non-zero bytes aside first.
func (l *Log) truncateTail(s *segment, off int64, why error) error {
	tail := make([]byte, s.size-off)
	if _, err := s.f.ReadAt(tail, off); err != nil {
		return fmt.Errorf("read %s: %w", s.path, err)
	}
	kept := ""
	if !allZero(tail) {
		kept = l.setAside(s, off, tail)
	}
	l.logger.Warn("buffer: truncating torn tail of segment",
		"segment", s.path, "offset", off, "bytes", len(tail), "reason", why.Error(), "kept", kept)
	if err := s.f.Truncate(off); err != nil {
		return fmt.Errorf("truncate %s: %w", s.path, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", s.path, err)
	}
	s.size = off
	return nil
}

// reportCorrupt counts, logs and sets aside the bad bytes [off, end) of s;
// missing is the number of seqs skipped over.
func (l *Log) reportCorrupt(s *segment, off, end int64, missing uint64, why error) {
	b := make([]byte, end-off)
	n, err := s.f.ReadAt(b, off)
	b = b[:n]
	if err != nil && n == 0 {
		l.logger.Warn("buffer: cannot read corrupt region", "segment", s.path, "offset", off, "err", err)
	}
	if allZero(b) && missing == 0 {
		return
	}
	kept := l.setAside(s, off, b)
	count := max(missing, 1)
	l.corrupt.Add(count)
	l.logger.Warn("buffer: skipping corrupt records",
		"err", &CorruptionError{Segment: s.path, Offset: off, Err: why},
		"records", count, "bytes", end-off, "kept", kept)
}

// setAside writes b to corrupt/<segment>.<off>.bin and returns that path
// ("" on failure, which is only logged).
func (l *Log) setAside(s *segment, off int64, b []byte) string {
	dir := filepath.Join(l.dir, corruptDir)
	path := filepath.Join(dir, fmt.Sprintf("%s.%d.bin", s.name, off))
	err := os.MkdirAll(dir, 0o755)
	if err == nil {
		err = writeFileSync(path, b)
	}
	if err != nil {
		l.logger.Warn("buffer: cannot set corrupt bytes aside", "path", path, "err", err)
		return ""
	}
	return path
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
