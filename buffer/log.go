package buffer

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// SyncMode says when appended data is fsynced.
type SyncMode int

const (
	// SyncAlways: Append returns after its records are fsynced; concurrent
	// Appends share fsyncs (group commit).
	SyncAlways SyncMode = iota
	// SyncBatch: a background goroutine fsyncs at most every SyncInterval.
	SyncBatch
	// SyncNone: only Sync, Close and segment cuts fsync.
	SyncNone
)

func (m SyncMode) String() string {
	switch m {
	case SyncAlways:
		return "always"
	case SyncBatch:
		return "batch"
	case SyncNone:
		return "none"
	}
	return fmt.Sprintf("SyncMode(%d)", int(m))
}

// Defaults for zero Options fields.
const (
	DefaultSegmentBytes = 64 << 20
	DefaultSyncInterval = 10 * time.Millisecond
)

// AckWindow bounds the out-of-order acknowledgements: Ack(seq) fails with
// ErrAckWindow when seq >= Acked()+AckWindow.
const AckWindow = 1 << 16

// Errors returned by Log methods (wrapped).
var (
	ErrClosed         = errors.New("buffer: log closed")
	ErrNotAppended    = errors.New("buffer: sequence number was never appended")
	ErrAckWindow      = errors.New("buffer: ack beyond the in-flight window")
	ErrRecordTooLarge = errors.New("buffer: record too large")
)

// Options configure a Log. The zero value is usable.
type Options struct {
	// SegmentBytes is the size at which a segment is cut: a new segment is
	// started when the next Append batch would make the current one larger.
	// If zero, DefaultSegmentBytes. If MaxBytes is set, SegmentBytes is
	// lowered to MaxBytes/4 when larger, so the cap can drop in small steps.
	SegmentBytes int64
	// MaxBytes caps the total size of the segment files. When an Append
	// makes them exceed it, the oldest whole segments are dropped, acked or
	// not (the newest never is). If zero, there is no cap.
	MaxBytes int64
	// Sync selects the durability mode; the zero value is SyncAlways.
	Sync SyncMode
	// SyncInterval is the minimum time between background fsyncs (SyncBatch)
	// and between cursor writes (all modes). If zero, DefaultSyncInterval.
	SyncInterval time.Duration
	// Logger receives warnings about corruption, dropped records and I/O
	// errors. If nil, nothing is logged.
	Logger *slog.Logger

	// openFile opens segment files; tests replace it to inject faults.
	openFile openFunc
}

// Stats is a snapshot of the log's counters.
type Stats struct {
	Records     uint64 // appended but not yet committed: NextSeq - AckedSeq
	Bytes       int64  // total size of the segment files
	Segments    int    // number of segment files
	Dropped     uint64 // unacked records deleted by the size cap
	Corrupt     uint64 // records skipped because their bytes were corrupt
	WriteErrors uint64 // failed writes, fsyncs and cursor writes
	OldestSeq   uint64 // first seq of the oldest retained segment
	AckedSeq    uint64 // the commit cursor, see Log.Acked
	NextSeq     uint64 // the seq the next record will get
}

type indexEntry struct {
	seq uint64
	off int64
}

// segment is one segment file. All fields are guarded by Log.mu.
type segment struct {
	base    uint64 // seq in the file name; no record in the file is below it
	name    string
	path    string
	f       segmentFile // nil when not open
	size    int64       // bytes of valid data (readable by Scan)
	refs    int         // Scans and syncs using f
	deleted bool
	broken  bool // a failed write could not be truncated away: cut before the next append

	// Sparse index of [0, scanOff): entries at most indexEvery bytes apart.
	// scanPrev is the seq of the last valid frame before scanOff (base-1 if
	// none). Segments of earlier runs start with scanOff 0 and are indexed
	// as Scan passes over them; all others are indexed up to size.
	idx      []indexEntry
	scanOff  int64
	scanPrev uint64
}

func segmentName(base uint64) string { return fmt.Sprintf("%020d.seg", base) }

// Log is a segmented append-only log. See the package documentation.
type Log struct {
	dir    string
	opts   Options
	logger *slog.Logger
	lock   *os.File

	mu       sync.Mutex
	syncCond *sync.Cond // signalled when a group fsync finishes
	segs     []*segment // ordered by base; the last one is appended to
	next     uint64     // next seq to assign
	acked    uint64     // commit cursor (in memory)
	acks     ackWindow  // acks above the cursor
	synced   uint64     // records below synced are fsynced
	syncing  bool       // a group fsync is in progress
	closed   bool
	total    int64 // sum of segment sizes
	wbuf     []byte

	dropped, corrupt, writeErrors atomic.Uint64

	scanMu sync.Mutex // serialises Scan; guards the fields below
	cache  scanPos
	rd     segReader // keeps its buffer across Scans of rdSeg
	rdSeg  *segment

	cursorMu  sync.Mutex // serialises checkpoints
	persisted uint64     // cursor value last written (0: none)

	notify chan struct{}
	kick   chan struct{}
	quit   chan struct{}
	done   chan struct{}
}

// scanPos remembers where the last Scan stopped: every frame of seg before
// off has a seq < seq.
type scanPos struct {
	seg *segment
	seq uint64
	off int64
}

// Open opens the log in dir, creating dir if needed, and recovers it (see
// the package documentation). Bad data is logged and skipped; only I/O
// errors make Open fail.
func Open(dir string, opts Options) (*Log, error) {
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = DefaultSegmentBytes
	}
	if opts.MaxBytes > 0 && opts.SegmentBytes > opts.MaxBytes/4 {
		opts.SegmentBytes = max(opts.MaxBytes/4, 1)
	}
	if opts.SyncInterval <= 0 {
		opts.SyncInterval = DefaultSyncInterval
	}
	if opts.openFile == nil {
		opts.openFile = openOSFile
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("buffer: %w", err)
	}
	lock, err := lockDir(filepath.Join(dir, "LOCK"))
	if err != nil {
		return nil, fmt.Errorf("buffer: %w", err)
	}
	l := &Log{
		dir:    dir,
		opts:   opts,
		logger: logger,
		lock:   lock,
		notify: make(chan struct{}, 1),
		kick:   make(chan struct{}, 1),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	l.syncCond = sync.NewCond(&l.mu)
	if err := l.recover(); err != nil {
		for _, s := range l.segs {
			if s.f != nil {
				s.f.Close()
			}
		}
		lock.Close()
		return nil, fmt.Errorf("buffer: open %s: %w", dir, err)
	}
	go l.run()
	return l, nil
}

func (l *Log) active() *segment { return l.segs[len(l.segs)-1] }

// Append appends recs as consecutive records and returns the seq of the
// first. The batch is written with one write call and is all-or-nothing: on
// error no seq is consumed (except after a failed fsync in SyncAlways mode,
// see the package documentation). recs are not retained. With no records,
// Append returns NextSeq and does nothing.
func (l *Log) Append(recs ...[]byte) (first uint64, err error) {
	size := 0
	for _, r := range recs {
		if len(r) > MaxRecordBytes {
			return 0, fmt.Errorf("%w: %d bytes (max %d)", ErrRecordTooLarge, len(r), MaxRecordBytes)
		}
		size += frameHeaderSize + len(r)
	}

	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return 0, ErrClosed
	}
	first = l.next
	if len(recs) == 0 {
		l.mu.Unlock()
		return first, nil
	}
	s := l.active()
	if s.broken {
		// A failed write left bytes past s.size that could not be
		// truncated. Try again; if that fails, move to a new segment.
		if err := s.f.Truncate(s.size); err == nil {
			s.broken = false
		} else if s.size == 0 {
			l.writeErrors.Add(1)
			l.mu.Unlock()
			return 0, fmt.Errorf("buffer: truncate %s: %w", s.path, err)
		}
	}
	if s.broken || (s.size > 0 && s.size+int64(size) > l.opts.SegmentBytes) {
		if err := l.cutLocked(); err != nil {
			l.writeErrors.Add(1)
			l.mu.Unlock()
			return 0, err
		}
		s = l.active()
	}

	buf := l.wbuf[:0]
	nidx := len(s.idx)
	off := s.size
	for i, r := range recs {
		seq := first + uint64(i)
		if len(s.idx) == 0 || off-s.idx[len(s.idx)-1].off >= indexEvery {
			s.idx = append(s.idx, indexEntry{seq: seq, off: off})
		}
		buf = appendFrame(buf, seq, r)
		off += int64(frameHeaderSize + len(r))
	}
	if cap(buf) <= 4<<20 {
		l.wbuf = buf
	} else {
		l.wbuf = nil
	}
	n, err := s.f.WriteAt(buf, s.size)
	if err == nil && n < len(buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		s.idx = s.idx[:nidx]
		if terr := s.f.Truncate(s.size); terr != nil {
			// The file may hold a partial batch past s.size. Readers never
			// look past s.size; start a new segment for the next batch.
			s.broken = true
			l.logger.Warn("buffer: cannot truncate after failed write", "segment", s.path, "err", terr)
		}
		l.writeErrors.Add(1)
		l.mu.Unlock()
		return 0, fmt.Errorf("buffer: append to %s: %w", s.path, err)
	}
	s.size = off
	s.scanOff = off
	s.scanPrev = first + uint64(len(recs)) - 1
	l.total += int64(size)
	l.next += uint64(len(recs))
	target := l.next
	if l.opts.MaxBytes > 0 && l.total > l.opts.MaxBytes {
		l.enforceCapLocked()
	}
	l.mu.Unlock()

	select {
	case l.notify <- struct{}{}:
	default:
	}
	switch l.opts.Sync {
	case SyncAlways:
		if err := l.syncTo(target); err != nil {
			return first, err
		}
	case SyncBatch:
		l.kickBackground()
	}
	return first, nil
}

// cutLocked fsyncs and seals the active segment and starts a new one whose
// base is l.next.
func (l *Log) cutLocked() error {
	old := l.active()
	if err := old.f.Sync(); err != nil {
		return fmt.Errorf("buffer: sync %s: %w", old.path, err)
	}
	if l.next > l.synced {
		l.synced = l.next
	}
	s, err := l.createSegmentLocked(l.next)
	if err != nil {
		return err
	}
	l.segs = append(l.segs, s)
	l.releaseFileLocked(old)
	return nil
}

// createSegmentLocked creates an empty segment file and fsyncs the directory.
func (l *Log) createSegmentLocked(base uint64) (*segment, error) {
	name := segmentName(base)
	path := filepath.Join(l.dir, name)
	f, err := l.opts.openFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return nil, fmt.Errorf("buffer: create segment: %w", err)
	}
	if err := syncDir(l.dir); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("buffer: create segment %s: sync dir: %w", path, err)
	}
	return &segment{base: base, name: name, path: path, f: f, scanPrev: base - 1}, nil
}

// enforceCapLocked drops the oldest segments until the log fits MaxBytes.
func (l *Log) enforceCapLocked() {
	var dropped, lo, hi uint64
	n := 0
	for l.total > l.opts.MaxBytes && len(l.segs) > 1 {
		s, nextBase := l.segs[0], l.segs[1].base
		if from := max(s.base, l.acked); nextBase > from {
			if dropped == 0 {
				lo = from
			}
			dropped += nextBase - from
			hi = nextBase - 1
		}
		if nextBase > l.acked {
			l.advanceAckedLocked(nextBase)
		}
		l.removeOldestLocked()
		n++
	}
	if n == 0 {
		return
	}
	if err := syncDir(l.dir); err != nil {
		l.logger.Warn("buffer: sync dir after dropping segments", "dir", l.dir, "err", err)
	}
	if dropped > 0 {
		l.dropped.Add(dropped)
		l.logger.Warn("buffer: size cap exceeded, dropped oldest unacknowledged records",
			"records", dropped, "first_seq", lo, "last_seq", hi, "segments", n, "max_bytes", l.opts.MaxBytes)
	}
	l.kickBackground()
}

// removeOldestLocked deletes the oldest segment file.
func (l *Log) removeOldestLocked() {
	s := l.segs[0]
	l.segs[0] = nil
	l.segs = l.segs[1:]
	l.total -= s.size
	s.deleted = true
	if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		l.logger.Warn("buffer: remove segment", "segment", s.path, "err", err)
	}
	l.releaseFileLocked(s)
}

// releaseFileLocked closes s's file if nothing uses it any more.
func (l *Log) releaseFileLocked(s *segment) {
	if s.f == nil || s.refs > 0 {
		return
	}
	if s.deleted || (l.cache.seg != s && (len(l.segs) == 0 || s != l.active())) {
		s.f.Close()
		s.f = nil
	}
}

// syncTo makes all records below target durable. Concurrent callers share
// fsyncs: one leader syncs everything written so far, the others wait.
func (l *Log) syncTo(target uint64) error {
	l.mu.Lock()
	for {
		if l.synced >= target {
			l.mu.Unlock()
			return nil
		}
		if !l.syncing {
			break
		}
		l.syncCond.Wait()
	}
	l.syncing = true
	s := l.active()
	end := l.next
	f := s.f
	s.refs++
	l.mu.Unlock()

	err := f.Sync()

	l.mu.Lock()
	s.refs--
	l.releaseFileLocked(s)
	l.syncing = false
	if err == nil && end > l.synced {
		l.synced = end
	}
	l.syncCond.Broadcast()
	l.mu.Unlock()
	if err != nil {
		l.writeErrors.Add(1)
		return fmt.Errorf("buffer: sync %s: %w", s.path, err)
	}
	return nil
}

// Scan calls fn for up to max records (no limit if max <= 0) with seq >=
// from, in order, and returns the seq after the last one visited, or, when
// none was, the first seq >= from that may still come. Seqs below the oldest
// retained record are skipped silently. data is only valid during fn. If fn
// returns an error, Scan stops and returns that error and the seq of the
// record fn failed on. Scan sees records as soon as Append wrote them, before
// they are fsynced. Scan is safe for concurrent use with the other methods;
// concurrent Scans are serialised. fn may call Ack, Append and Stats.
//
// Scan remembers where it stopped, so the usual loop, Scan(next, n, fn) with
// the returned next, reads each record once.
func (l *Log) Scan(from uint64, max int, fn func(seq uint64, data []byte) error) (next uint64, err error) {
	l.scanMu.Lock()
	defer l.scanMu.Unlock()
	visited := 0
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return from, ErrClosed
		}
		if from < l.segs[0].base {
			from = l.segs[0].base
		}
		if from >= l.next {
			l.mu.Unlock()
			return from, nil
		}
		i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].base > from }) - 1
		s := l.segs[i]
		sealed := i < len(l.segs)-1
		var nextBase uint64
		if sealed {
			nextBase = l.segs[i+1].base
		}
		off, prev := l.seekLocked(s, from)
		end := s.size
		front, frontPrev := s.scanOff, s.scanPrev
		oldFront := front
		lastIdx := int64(-1)
		if len(s.idx) > 0 {
			lastIdx = s.idx[len(s.idx)-1].off
		}
		if s.f == nil {
			f, err := l.opts.openFile(s.path, os.O_RDONLY)
			if err != nil {
				l.mu.Unlock()
				if errors.Is(err, os.ErrNotExist) && sealed {
					l.logger.Warn("buffer: segment file vanished, skipping it", "segment", s.path)
					from = nextBase
					continue
				}
				return from, fmt.Errorf("buffer: scan: %w", err)
			}
			s.f = f
		}
		s.refs++
		l.mu.Unlock()

		// Bytes below a segment's size never change, so the buffered
		// bytes of the previous Scan are still good.
		r := &l.rd
		if l.rdSeg != s {
			l.rdSeg = s
			r.buf = nil
		}
		r.f, r.end = s.f, end
		var newIdx []indexEntry
		var ferr, ioErr error
		full := false
		for off < end {
			seq, data, n, bad, err := r.frameAt(off, prev)
			if err != nil {
				ioErr = err
				break
			}
			if bad != nil {
				nx, seq2, found, err := r.resync(off+1, prev)
				if err != nil {
					ioErr = err
					break
				}
				if off == front {
					var missing uint64
					if found {
						missing = seq2 - frontPrev - 1
						front = nx
					} else {
						if nextBase > frontPrev+1 {
							missing = nextBase - frontPrev - 1
						}
						front = end
					}
					l.reportCorrupt(s, off, nx, missing, bad)
				}
				off = nx
				continue
			}
			if off == front {
				front, frontPrev = off+n, seq
				if lastIdx < 0 || off-lastIdx >= indexEvery {
					newIdx = append(newIdx, indexEntry{seq: seq, off: off})
					lastIdx = off
				}
			}
			if seq >= from {
				if err := fn(seq, data); err != nil {
					ferr = err
					from = seq
					break
				}
				visited++
				from = seq + 1
			}
			prev = seq
			off += n
			if max > 0 && visited >= max {
				full = true
				break
			}
		}

		l.mu.Lock()
		if front > oldFront && s.scanOff == oldFront {
			s.idx = append(s.idx, newIdx...)
			s.scanOff, s.scanPrev = front, frontPrev
		}
		old := l.cache.seg
		if ferr == nil && ioErr == nil {
			l.cache = scanPos{seg: s, seq: prev + 1, off: off}
		} else {
			l.cache = scanPos{}
		}
		s.refs--
		l.releaseFileLocked(s)
		if old != nil && old != s {
			l.releaseFileLocked(old)
		}
		l.mu.Unlock()

		switch {
		case ioErr != nil:
			return from, fmt.Errorf("buffer: read %s: %w", s.path, ioErr)
		case ferr != nil:
			return from, ferr
		case full:
			return from, nil
		case !sealed:
			return from, nil
		}
		// Reached the end of a sealed segment: whatever is missing up to the
		// next segment is gone (dropped or corrupt).
		if from < nextBase {
			from = nextBase
		}
	}
}

// seekLocked returns the best known offset to start reading s for seq from,
// and a seq lower than that of the frame there.
func (l *Log) seekLocked(s *segment, from uint64) (off int64, prev uint64) {
	off, prev = 0, s.base-1
	if i := sort.Search(len(s.idx), func(i int) bool { return s.idx[i].seq > from }) - 1; i >= 0 {
		off, prev = s.idx[i].off, s.idx[i].seq-1
	}
	if c := l.cache; c.seg == s && c.seq <= from && c.off > off {
		off, prev = c.off, c.seq-1
	}
	return off, prev
}

// Ack acknowledges the record seq. Acks may come in any order within
// AckWindow; the commit cursor (Acked) advances over the longest fully
// acknowledged prefix. Acking a committed seq is a no-op; acking a seq that
// was never appended is an error (ErrNotAppended).
func (l *Log) Ack(seq uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if seq < l.acked {
		return nil
	}
	if seq >= l.next {
		return fmt.Errorf("ack %d (next seq is %d): %w", seq, l.next, ErrNotAppended)
	}
	if seq-l.acked >= AckWindow {
		return fmt.Errorf("ack %d (cursor is %d): %w", seq, l.acked, ErrAckWindow)
	}
	if seq != l.acked {
		l.acks.set(seq)
		return nil
	}
	n := seq + 1
	for n < l.next && l.acks.test(n) {
		l.acks.clear(n)
		n++
	}
	l.acked = n
	l.kickBackground()
	return nil
}

// advanceAckedLocked moves the cursor to at least n, forgetting acks below it.
func (l *Log) advanceAckedLocked(n uint64) {
	if n-l.acked >= AckWindow {
		l.acks = ackWindow{}
	} else {
		for s := l.acked; s < n; s++ {
			l.acks.clear(s)
		}
	}
	for n < l.next && l.acks.test(n) {
		l.acks.clear(n)
		n++
	}
	l.acked = n
}

// Acked returns the commit cursor: the first seq not yet committed (equal to
// NextSeq when everything is acknowledged). After a restart, unacknowledged
// records are still there and Acked is where a consumer starts.
func (l *Log) Acked() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked
}

// NextSeq returns the seq the next appended record will get.
func (l *Log) NextSeq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.next
}

// Notify returns a channel that receives a value (without blocking the
// producer, so several Appends may give one value) after records are
// appended. It is meant for a single consumer.
func (l *Log) Notify() <-chan struct{} { return l.notify }

// Sync fsyncs all appended records, writes the commit cursor and deletes
// segments that are fully committed.
func (l *Log) Sync() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	target := l.next
	l.mu.Unlock()
	err := l.syncTo(target)
	return errors.Join(err, l.checkpoint())
}

// Stats returns a snapshot of the log's counters.
func (l *Log) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := Stats{
		Records:     l.next - l.acked,
		Bytes:       l.total,
		Segments:    len(l.segs),
		Dropped:     l.dropped.Load(),
		Corrupt:     l.corrupt.Load(),
		WriteErrors: l.writeErrors.Load(),
		AckedSeq:    l.acked,
		NextSeq:     l.next,
	}
	if len(l.segs) > 0 {
		st.OldestSeq = l.segs[0].base
	}
	return st
}

// Close fsyncs, writes the cursor, stops the background goroutine and closes
// the files. It waits for a Scan in progress. Close is idempotent.
func (l *Log) Close() error {
	l.scanMu.Lock()
	defer l.scanMu.Unlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	target := l.next
	l.mu.Unlock()

	close(l.quit)
	<-l.done
	err := errors.Join(l.syncTo(target), l.checkpoint())

	l.mu.Lock()
	for _, s := range l.segs {
		if s.f != nil {
			if cerr := s.f.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("buffer: close %s: %w", s.path, cerr))
			}
			s.f = nil
		}
	}
	l.cache = scanPos{}
	l.rd, l.rdSeg = segReader{}, nil
	l.mu.Unlock()
	if cerr := l.lock.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	return err
}

func (l *Log) kickBackground() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// run is the background goroutine: at most every SyncInterval it fsyncs
// (SyncBatch), writes the cursor and deletes committed segments.
func (l *Log) run() {
	defer close(l.done)
	t := time.NewTimer(time.Hour)
	t.Stop()
	var last time.Time
	failing := false
	for {
		select {
		case <-l.quit:
			return
		case <-l.kick:
		}
		if d := l.opts.SyncInterval - time.Since(last); d > 0 {
			t.Reset(d)
			select {
			case <-l.quit:
				t.Stop()
				return
			case <-t.C:
			}
		}
		last = time.Now()
		var err error
		if l.opts.Sync == SyncBatch {
			l.mu.Lock()
			target := l.next
			l.mu.Unlock()
			err = l.syncTo(target)
		}
		err = errors.Join(err, l.checkpoint())
		if err != nil && !failing {
			l.logger.Error("buffer: background sync failed; will retry", "err", err)
		} else if err == nil && failing {
			l.logger.Info("buffer: background sync recovered")
		}
		if err != nil {
			// Retry at the next interval even without new appends.
			l.kickBackground()
		}
		failing = err != nil
	}
}

// checkpoint writes the cursor if it moved and deletes the segments whose
// records are all below the persisted cursor (never the newest one).
func (l *Log) checkpoint() error {
	l.cursorMu.Lock()
	defer l.cursorMu.Unlock()
	l.mu.Lock()
	c := l.acked
	l.mu.Unlock()
	if c != l.persisted {
		if err := writeCursor(l.dir, c); err != nil {
			l.writeErrors.Add(1)
			return fmt.Errorf("buffer: %w", err)
		}
		l.persisted = c
	}
	l.mu.Lock()
	n := 0
	for len(l.segs) > 1 && l.segs[1].base <= l.persisted {
		l.removeOldestLocked()
		n++
	}
	l.mu.Unlock()
	if n > 0 {
		if err := syncDir(l.dir); err != nil {
			return fmt.Errorf("buffer: sync dir %s: %w", l.dir, err)
		}
	}
	return nil
}

// ackWindow is a ring bitmap of acknowledged seqs in [cursor, cursor+AckWindow).
type ackWindow struct{ bits [AckWindow / 64]uint64 }

func (w *ackWindow) set(seq uint64)   { i := seq % AckWindow; w.bits[i/64] |= 1 << (i % 64) }
func (w *ackWindow) clear(seq uint64) { i := seq % AckWindow; w.bits[i/64] &^= 1 << (i % 64) }
func (w *ackWindow) test(seq uint64) bool {
	i := seq % AckWindow
	return w.bits[i/64]&(1<<(i%64)) != 0
}
