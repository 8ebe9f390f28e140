package session

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
)

// logFile is the session log file as the store writes it: an *os.File,
// or in tests a wrapper that injects failed and short writes.
type logFile interface {
	Write(p []byte) (int, error)
	Truncate(size int64) error
	Seek(offset int64, whence int) (int64, error)
	Close() error
}

// Open opens (creating it if needed) the store in dir, which should
// hold nothing else. Bad records are skipped (see the format in the type's
// doc): the bytes are kept in corrupt/, logged and counted, and the file
// is rewritten without them; a torn tail is cut off.
func Open(dir string, logger *slog.Logger) (*Store, error) {
	return openWith(dir, logger, nil)
}

// openWith is Open with a wrapper for every file the store
// writes (nil: the *os.File itself); tests inject write faults with it.
func openWith(dir string, logger *slog.Logger, wrap func(*os.File) logFile) (*Store, error) {
	s := NewMemory()
	s.dir, s.logger, s.wrap = dir, logger, wrap
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("mqtt: session store %s: %w", dir, err)
	}
	path := filepath.Join(dir, storeFile)
	_ = os.Remove(path + ".tmp") // an interrupted compaction
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("mqtt: session store: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("mqtt: session store %s: %w", path, err)
	}
	rep := s.replay(data)
	for _, r := range rep.bad {
		s.keepCorrupt(data, r)
		cerr := &CorruptionError{File: path, Offset: r[0], Size: r[1] - r[0],
			Tail: r[0] == rep.good && r[1] == int64(len(data)), Err: frameError(data[r[0]:], rep.version)}
		s.damage = append(s.damage, cerr)
		s.logger.Warn("mqtt session store: skipping a damaged region", "err", cerr, "tail", cerr.Tail)
	}
	switch {
	case len(rep.bad) > 0 && !rep.tornOnly(len(data)), rep.version == 1:
		// Damage in the middle, or the first format: rewrite the file from
		// what was read, in the current format.
		if len(rep.bad) > 0 {
			s.corruptRegions, s.corruptBytes = len(rep.bad), rep.badBytes()
			s.logger.Warn("mqtt session store: corrupt records skipped; the file is rewritten without them (bytes kept in corrupt/)",
				"file", path, "regions", len(rep.bad), "bytes", rep.badBytes(), "records_read", rep.records)
		} else {
			s.logger.Info("mqtt session store: migrating the file to format version 2", "file", path, "records", rep.records)
		}
		s.f = s.wrapFile(f)
		if err := s.rewriteLocked(); err != nil {
			// Start anyway (a full disk must not keep ferry down): the old
			// file stays as it is, nothing is appended to it, and the
			// rewrite is tried again before the next write (see
			// flushLocked).
			s.broken, s.writeErrors = true, 1
			s.logger.Error("mqtt session store: rewrite failed; retried before the next write", "file", path, "err", err)
		}
	default:
		// A torn tail, if any (logged above), is cut off.
		if err := f.Truncate(rep.good); err != nil {
			f.Close()
			return nil, fmt.Errorf("mqtt: session store %s: %w", path, err)
		}
		if _, err := f.Seek(rep.good, io.SeekStart); err != nil {
			f.Close()
			return nil, fmt.Errorf("mqtt: session store %s: %w", path, err)
		}
		s.f, s.size, s.compact = s.wrapFile(f), rep.good, rep.good
	}
	for _, b := range s.marks {
		for _, q := range b.seqs {
			s.loaded[q] = true
		}
	}
	return s, nil
}

func (s *Store) wrapFile(f *os.File) logFile {
	if s.wrap != nil {
		return s.wrap(f)
	}
	return f
}

// Damage returns the bad regions found at open (nil for a clean file).
func (s *Store) Damage() []*CorruptionError {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.damage)
}

// replayResult is what replay found in a session log.
type replayResult struct {
	good    int64      // offset after the last good frame
	version int        // format of the frames read (1 or 2; 0: none)
	records int        // good frames
	bad     [][2]int64 // [from, to) of each skipped region
}

// tornOnly reports whether the only bad region is the tail.
func (r replayResult) tornOnly(size int) bool {
	return len(r.bad) == 1 && r.bad[0][0] == r.good && r.bad[0][1] == int64(size)
}

func (r replayResult) badBytes() int64 {
	var n int64
	for _, b := range r.bad {
		n += b[1] - b[0]
	}
	return n
}

// replay applies the frames of data. A frame that fails its checks starts
// a search, byte by byte, for the next frame that passes them (of the
// version of the file's first good frame); the bytes in between are a bad
// region.
func (s *Store) replay(data []byte) replayResult {
	var res replayResult
	now := s.now()
	var marks []uint64
	off, badFrom := 0, -1
	for off < len(data) {
		body, n, v := parseFrame(data[off:], res.version)
		if n == 0 {
			if badFrom < 0 {
				badFrom = off
			}
			off++
			continue
		}
		if badFrom >= 0 {
			res.bad = append(res.bad, [2]int64{int64(badFrom), int64(off)})
			badFrom = -1
		}
		res.version = v
		s.apply(body, &marks)
		res.records++
		off += n
		res.good = int64(off)
	}
	if badFrom >= 0 {
		res.bad = append(res.bad, [2]int64{int64(badFrom), int64(len(data))})
	}
	if len(marks) > 0 {
		s.marks = []markBucket{{t: now, seqs: marks}}
	}
	return res
}

// keepCorrupt copies the bad region r of data to corrupt/ (zeros are not
// kept: a torn tail after a crash is often a run of them).
func (s *Store) keepCorrupt(data []byte, r [2]int64) {
	b := data[r[0]:r[1]]
	if len(bytes.Trim(b, "\x00")) == 0 {
		return
	}
	d := filepath.Join(s.dir, corruptDir)
	name := filepath.Join(d, fmt.Sprintf("%s.%d.%d.bin", storeFile, s.now().UnixNano(), r[0]))
	err := os.MkdirAll(d, 0o750)
	if err == nil {
		err = os.WriteFile(name, b, 0o640)
	}
	if err != nil {
		s.logger.Warn("mqtt session store: corrupt bytes not kept", "file", name, "err", err)
	}
}

// apply replays one valid record body.
func (s *Store) apply(b []byte, marks *[]uint64) {
	switch b[0] {
	case recPut:
		id := binary.LittleEndian.Uint16(b[1:])
		old := s.live[id]
		s.order++
		p := &storedPacket{ptype: b[3], seq: binary.LittleEndian.Uint64(b[4:]), order: s.order, data: bytes.Clone(b[12:])}
		if old != nil {
			p.order = old.order
		}
		s.live[id] = p
	case recDel:
		id := binary.LittleEndian.Uint16(b[1:])
		if p := s.live[id]; p != nil && b[3] == 1 && p.seq != 0 {
			*marks = append(*marks, p.seq)
		}
		delete(s.live, id)
	case recMark:
		from, to := binary.LittleEndian.Uint64(b[1:]), binary.LittleEndian.Uint64(b[9:])
		for q := from; q <= to; q++ {
			*marks = append(*marks, q)
		}
	case recReset:
		clear(s.live)
	case recSession:
		s.session = true
	}
}
