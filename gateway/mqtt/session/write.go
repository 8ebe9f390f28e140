package session

import (
	"cmp"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
)

// write appends one record now (after those pending, in one write(2));
// the caller holds s.mu.
func (s *Store) write(body []byte) {
	if s.f == nil {
		return
	}
	s.pend = s.frame(s.pend, body)
	s.flushLocked()
}

// Flush writes the pending records (one write(2)). batchConn calls
// it before every socket write: a PUBLISH or PUBREL is never on the wire
// before its record is in the file (in the kernel: it survives a kill -9).
func (s *Store) Flush() {
	s.mu.Lock()
	s.flushLocked()
	s.mu.Unlock()
}

// flushLocked writes the pending records; the caller holds s.mu.
//
// A failed or short write (ENOSPC, EIO) leaves no partial record: the file
// is truncated back to its last good size, and the store is marked broken.
// While broken, the pending records are not appended (they would follow a
// hole); instead, at most every rewriteRetry, the whole file is rewritten
// from memory, which holds everything the records said (see rewriteLocked).
// Once that succeeds, appending resumes. The file thus always holds a
// prefix of the truth, never a record in the middle that cuts off what
// follows it at the next start. A kill -9 while broken can cost what the
// missing records said (at QoS 2, duplicates of what was in flight).
func (s *Store) flushLocked() {
	if s.f == nil {
		return
	}
	if s.broken {
		s.dropPending()
		now := s.now()
		if now.Before(s.retryAt) {
			return
		}
		if err := s.rewriteLocked(); err != nil {
			s.retryAt = now.Add(rewriteRetry)
			return
		}
		s.logger.Warn("mqtt session store: written again after a write failure", "dir", s.dir, "bytes", s.size)
		return
	}
	if len(s.pend) == 0 {
		return
	}
	n, err := s.f.Write(s.pend)
	if err == nil && n < len(s.pend) {
		err = io.ErrShortWrite
	}
	s.dropPending()
	if err == nil {
		s.size += int64(n)
		return
	}
	s.writeErrors++
	s.broken = true
	s.retryAt = s.now().Add(rewriteRetry)
	if n > 0 {
		if terr := s.f.Truncate(s.size); terr != nil {
			err = errors.Join(err, terr)
		}
	}
	if _, serr := s.f.Seek(s.size, io.SeekStart); serr != nil {
		err = errors.Join(err, serr)
	}
	s.logger.Error("mqtt session store: write failed; cut back to the last whole record, rewritten from memory once writes succeed",
		"file", filepath.Join(s.dir, storeFile), "at", s.size, "err", err)
}

// dropPending empties pend, keeping its buffer unless it grew large.
func (s *Store) dropPending() {
	if cap(s.pend) > 4*deferMax {
		s.pend = nil
	} else {
		s.pend = s.pend[:0]
	}
}

// compactMin is the session log size below which it is never compacted.
// A compaction rewrites every live packet and renames the file under the
// store's lock, on the goroutine that handles acknowledgements: at 1 MiB
// a backlog drain of 7 kB device messages compacted every 140 messages
// and lost about a tenth of its rate. At 8 MiB it is every 1,100; the file
// costs at most that much disk and start-up reading.
const compactMin = 8 << 20

// maybeCompact rewrites the log when it has grown; the caller holds s.mu.
func (s *Store) maybeCompact() {
	if s.f == nil || s.size < compactMin || s.size < 4*s.compact {
		return
	}
	if err := s.compactLocked(); err != nil && !s.broken {
		s.logger.Error("mqtt session store: compaction failed", "dir", s.dir, "err", err)
	}
}

// compactLocked writes what is pending, then rewrites the file.
func (s *Store) compactLocked() error {
	s.flushLocked()
	if s.broken {
		return errors.New("the last write failed")
	}
	return s.rewriteLocked()
}

// rewriteLocked writes the store's state (session flag, done marks of the
// last markRetention, live packets in their order) to session.log.tmp and
// renames it over session.log; the caller holds s.mu. On success the store
// appends to the new file and is no longer broken; on failure the old file
// is kept as it was.
func (s *Store) rewriteLocked() error {
	// Drop old marks.
	cut := s.now().Add(-markRetention)
	i := 0
	for i < len(s.marks) && s.marks[i].t.Before(cut) {
		i++
	}
	s.marks = slices.Delete(s.marks, 0, i)

	var out []byte
	if s.session {
		out = s.frame(out, []byte{recSession})
	}
	var all []uint64
	for _, b := range s.marks {
		all = append(all, b.seqs...)
	}
	slices.Sort(all)
	var mb [17]byte
	mb[0] = recMark
	for j := 0; j < len(all); {
		k := j
		for k+1 < len(all) && all[k+1] <= all[k]+1 {
			k++
		}
		binary.LittleEndian.PutUint64(mb[1:], all[j])
		binary.LittleEndian.PutUint64(mb[9:], all[k])
		out = s.frame(out, mb[:])
		j = k + 1
	}
	ids := make([]uint16, 0, len(s.live))
	for id := range s.live {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b uint16) int { return cmp.Compare(s.live[a].order, s.live[b].order) })
	var body []byte
	for _, id := range ids {
		body = putBody(body[:0], id, s.live[id])
		out = s.frame(out, body)
	}
	path := filepath.Join(s.dir, storeFile)
	tmp := path + ".tmp"
	of, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	f := s.wrapFile(of)
	n, err := f.Write(out)
	if err == nil && n < len(out) {
		err = io.ErrShortWrite
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		f.Close()
		_ = os.Remove(tmp)
		return err
	}
	if s.f != nil {
		s.f.Close()
	}
	s.f, s.size, s.compact = f, int64(len(out)), int64(len(out))
	s.broken = false
	return nil
}

// Close closes the file.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	s.flushLocked()
	err := s.f.Close()
	s.f = nil
	return err
}
