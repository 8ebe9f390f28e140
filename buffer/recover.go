package buffer

import (
	"encoding/binary"
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

	if err := l.loadCorruptRecords(); err != nil {
		return err
	}
	cs, err := l.openCursor()
	cursor := cs.acked
	haveCursor := err == nil
	switch {
	case err == nil:
		l.persisted.Store(cursor)
		l.persistedNext.Store(cs.next)
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
			newestTS: info.ModTime().UnixNano(),
		})
	}
	sort.Slice(l.segs, func(i, j int) bool { return l.segs[i].base < l.segs[j].base })
	// The time of the first record of each older segment (one small read
	// each), for Stats().OldestTime before Scan has indexed them.
	for _, s := range l.segs[:max(len(l.segs)-1, 0)] {
		s.firstTS = firstTime(s.path)
	}

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
	if cs.next > l.next {
		// Seqs skipped (Skip) and not followed by a record before the
		// restart: the next Append consumes them.
		l.gap = cs.next - l.next
	}
	for _, s := range l.segs {
		l.total += s.size
	}
	l.synced = l.next
	l.acked = max(cursor, l.segs[0].base)
	if haveCursor && cursor < l.segs[0].base && l.segs[0].size > 0 {
		// The oldest segment(s) holding uncommitted records are gone (the
		// cursor is written before dropped segments are deleted, so this is
		// not the size cap). Count them once: the cursor is moved now.
		l.reportMissing(l.segs[0], l.segs[0].base-cursor)
		if err := l.writeCursor(cursorState{acked: l.acked, next: l.floorLocked()}); err != nil {
			return err
		}
		l.persisted.Store(l.acked)
		l.persistedNext.Store(l.floorLocked())
	}
	l.settleLocked() // over holes found in the newest segment
	if l.cur == nil {
		// Create the cursor file now, while there is likely room: later
		// writes rewrite it in place and need no new space.
		c := cursorState{acked: l.acked, next: l.floorLocked()}
		if err := l.writeCursor(c); err != nil {
			l.writeErrors.Add(1)
			l.logger.Warn("buffer: cannot create the cursor file; will retry", "err", err)
		} else {
			l.persisted.Store(c.acked)
			l.persistedNext.Store(c.next)
			l.cursorWrites.Add(1)
		}
	}
	for len(l.segs) > 1 && l.segs[1].base <= l.persisted.Load() {
		l.removeOldestLocked()
	}
	return nil
}

// firstTime returns the append time of the first frame of the segment at
// path, 0 if unknown.
func firstTime(path string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	var h [frameHeaderSize]byte
	if n, _ := f.ReadAt(h[:], 0); n < frameHeaderSize || string(h[:4]) != string(frameMagic) {
		return 0
	}
	return int64(binary.LittleEndian.Uint64(h[16:24]))
}

// recoverLast opens the newest segment, validates all of it, skips corrupt
// records and truncates a torn tail.
func (l *Log) recoverLast(s *segment) error {
	f, err := l.opts.OpenFile(s.path, os.O_RDWR)
	if err != nil {
		return err
	}
	s.f = f
	r := segReader{f: f, end: s.size}
	off, prev := int64(0), s.base-1
	s.newestTS = 0
	for off < s.size {
		seq, ts, _, n, bad, err := r.frameAt(off, prev)
		if err != nil {
			return fmt.Errorf("read %s: %w", s.path, err)
		}
		if bad == nil {
			if seq > prev+1 {
				l.holes = append(l.holes, span{prev + 1, seq})
			}
			if len(s.idx) == 0 || off-s.idx[len(s.idx)-1].off >= indexEvery {
				s.idx = append(s.idx, indexEntry{seq: seq, off: off, ts: ts})
			}
			if s.firstTS == 0 {
				s.firstTS = ts
			}
			if ts != 0 {
				s.newestTS = ts
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
	s.gapChecked = true
	if s.newestTS == 0 && s.size > 0 {
		// Version 1 frames only: the file's mtime is an upper bound.
		if fi, err := os.Stat(s.path); err == nil {
			s.newestTS = fi.ModTime().UnixNano()
		}
	}
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
		kept = l.setAside(s, fmt.Sprint(off), 0, tail)
	}
	l.logger.Warn("buffer: truncating torn tail of segment",
		"segment", s.path, "offset", off, "bytes", len(tail), "reason", why.Error(), "kept", kept)
	if err := s.f.Truncate(off); err != nil {
		return fmt.Errorf("truncate %s: %w", s.path, err)
	}
	if err := l.syncFile(s.f); err != nil {
		return fmt.Errorf("sync %s: %w", s.path, err)
	}
	s.size = off
	return nil
}

// Corruption records. Every loss is recorded once as a file in corrupt/:
//
//	<segment>.<offset>.<records>.bin   the bad bytes at offset (empty for a
//	                                   gap after the segment's last record)
//	<segment>.missing.<records>.bin    empty: records missing before the
//	                                   oldest segment (a deleted segment)
//
// records is how many seqs were lost there (0 for a torn tail, which is
// truncated, not counted). At Open, Stats().Corrupt starts at the sum over
// these names, and a corruption whose <segment>.<offset> is already recorded
// is skipped silently (logged at debug level): it is counted, logged and
// copied once in the life of the directory, not after every restart. Files
// named <segment>.<offset>.bin by earlier builds are honoured as records
// with an unknown count (0).

// loadCorruptRecords reads the names in corrupt/.
func (l *Log) loadCorruptRecords() error {
	l.corruptSeen = make(map[string]bool)
	entries, err := os.ReadDir(filepath.Join(l.dir, corruptDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var total uint64
	for _, e := range entries {
		key, n, ok := parseCorruptName(e.Name())
		if !ok {
			continue
		}
		l.corruptSeen[key] = true
		total += n
	}
	l.corrupt.Store(total)
	return nil
}

// parseCorruptName splits a corrupt/ file name into the key of the
// corruption (<segment>.<offset>) and the number of records it lost.
func parseCorruptName(name string) (key string, records uint64, ok bool) {
	rest, ok := strings.CutSuffix(name, ".bin")
	if !ok {
		return "", 0, false
	}
	seg, tail, ok := strings.Cut(rest, ".seg.")
	if !ok {
		return "", 0, false
	}
	where, count, found := strings.Cut(tail, ".")
	if found {
		n, err := strconv.ParseUint(count, 10, 64)
		if err != nil {
			return "", 0, false
		}
		records = n
	}
	return seg + ".seg." + where, records, true
}

// recordedLocked reports whether the corruption key was recorded before and
// marks it as recorded.
func (l *Log) recorded(key string) bool {
	l.corruptMu.Lock()
	defer l.corruptMu.Unlock()
	if l.corruptSeen[key] {
		return true
	}
	l.corruptSeen[key] = true
	return false
}

// reportCorrupt counts, logs and sets aside the bad bytes [off, end) of s;
// missing is the number of seqs skipped over. A corruption recorded by an
// earlier run is skipped silently.
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
	cerr := &CorruptionError{Segment: s.path, Offset: off, Err: why}
	if l.recorded(fmt.Sprintf("%s.%d", s.name, off)) {
		l.logger.Debug("buffer: skipping corrupt records (recorded before)", "err", cerr)
		return
	}
	count := max(missing, 1)
	kept := l.setAside(s, fmt.Sprint(off), count, b)
	l.corrupt.Add(count)
	l.logger.Warn("buffer: skipping corrupt records",
		"err", cerr, "records", count, "bytes", end-off, "kept", kept)
}

// reportGap counts and logs the seqs missing between the last record of the
// sealed segment s (ending at end) and the next segment.
func (l *Log) reportGap(s *segment, end int64, missing uint64) {
	if l.recorded(fmt.Sprintf("%s.%d", s.name, end)) {
		return
	}
	kept := l.setAside(s, fmt.Sprint(end), missing, nil)
	l.corrupt.Add(missing)
	l.logger.Warn("buffer: records missing between segments (a segment file was lost)",
		"err", &CorruptionError{Segment: s.path, Offset: end, Err: errMissing}, "records", missing, "kept", kept)
}

// reportMissing counts and logs the records missing before the oldest
// segment s.
func (l *Log) reportMissing(s *segment, missing uint64) {
	if l.recorded(s.name + ".missing") {
		return
	}
	kept := l.setAside(s, "missing", missing, nil)
	l.corrupt.Add(missing)
	l.logger.Warn("buffer: records missing before the oldest segment (a segment file was lost)",
		"segment", s.path, "records", missing, "kept", kept)
}

// setAside writes b to corrupt/<segment>.<where>.<records>.bin and returns
// that path ("" on failure, which is only logged). An existing file is not
// overwritten: a suffix is added.
func (l *Log) setAside(s *segment, where string, records uint64, b []byte) string {
	dir := filepath.Join(l.dir, corruptDir)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		l.logger.Warn("buffer: cannot set corrupt bytes aside", "dir", dir, "err", err)
		return ""
	}
	for i := 0; i < 100; i++ {
		w := where
		if i > 0 {
			w = fmt.Sprintf("%s-%d", where, i)
		}
		path := filepath.Join(dir, fmt.Sprintf("%s.%s.%d.bin", s.name, w, records))
		err := writeFileSync(path, b)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err == nil {
			err = syncDir(dir)
		}
		if err != nil {
			l.logger.Warn("buffer: cannot set corrupt bytes aside", "path", path, "err", err)
			return ""
		}
		return path
	}
	return ""
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
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
