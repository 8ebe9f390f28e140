package buffer

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
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
	DefaultSegmentBytes   = 64 << 20
	DefaultSyncInterval   = 10 * time.Millisecond
	DefaultCursorInterval = time.Second
)

// minSegmentBytes is the smallest segment size Open picks for a small disk
// (see Options.SegmentBytes).
const minSegmentBytes = 64 << 10

// maxGroupYields bounds the yields of a group commit leader (see syncTo).
const maxGroupYields = 8

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
	// lowered to MaxBytes/4 when larger, so the cap can drop in small steps,
	// and to an eighth of the disk space available to the buffer at Open
	// (at least 64 KiB), so acknowledged space comes back in small steps.
	SegmentBytes int64
	// MaxBytes caps the total size of the segment files. When an Append
	// makes them exceed it, the oldest whole segments are dropped, acked or
	// not (the newest never is). If zero, there is no cap.
	MaxBytes int64
	// Sync selects the durability mode; the zero value is SyncAlways.
	Sync SyncMode
	// SyncInterval is the minimum time between background fsyncs
	// (SyncBatch). If zero, DefaultSyncInterval.
	SyncInterval time.Duration
	// CursorInterval is the minimum time between background writes of the
	// commit cursor (each costs two fsyncs), in every mode; Sync and Close
	// write it at once. After a crash, up to CursorInterval of acks are
	// lost and those records are delivered again. If zero,
	// DefaultCursorInterval.
	CursorInterval time.Duration
	// MaxAge, if positive, drops whole segments whose newest record was
	// appended more than MaxAge ago, acked or not (see the package
	// documentation). Checked at most every MaxAge/20 (at least every
	// minute, at most every 10ms).
	MaxAge time.Duration
	// Logger receives warnings about corruption, dropped records and I/O
	// errors. If nil, nothing is logged.
	Logger *slog.Logger

	// OpenFile opens segment files and the cursor file. If nil,
	// OpenOSFile. Tests replace it
	// to inject faults (see package buffertest).
	OpenFile func(path string, flag int) (File, error)

	// now is the clock of append times; tests replace it.
	now func() time.Time
}

// Stats is a snapshot of the log's counters and gauges, cheap enough to
// take at every metrics scrape (no I/O). Counters marked "since Open" start
// at zero with every Open.
type Stats struct {
	// Gauges.
	Records uint64 // depth: appended but not yet committed (NextSeq - AckedSeq less skipped seqs)
	Bytes   int64  // size of the retained segment files (acked records included until their segment is deleted)
	// PendingBytes is the size of the frames of the uncommitted records,
	// to within one sparse index step (16 KiB; never less than the truth).
	PendingBytes int64
	Segments     int // number of retained segment files
	// OldestTime is the append time of the oldest uncommitted record, zero
	// when everything is committed or the time is unknown (records written
	// by format version 1). It is exact to within one sparse index step
	// (16 KiB of records; never later than the true time), so
	// time.Since(OldestTime) is the age of the backlog, rounded up.
	OldestTime time.Time
	// NewestTime is the append time of the newest record, zero if unknown.
	NewestTime time.Time
	OldestSeq  uint64 // first seq of the oldest retained segment
	AckedSeq   uint64 // the commit cursor, see Log.Acked
	NextSeq    uint64 // the seq the next record will get

	// Counters.
	Appended  uint64 // records appended since Open
	Committed uint64 // records committed by Ack since Open (the cursor moved over them)
	Dropped   uint64 // uncommitted records deleted by the size cap or MaxAge, since Open
	Expired   uint64 // the part of Dropped deleted by MaxAge
	// Corrupt counts records lost to corruption (bad checksums, torn
	// sealed segments, missing segments) over the life of the directory:
	// it starts at the sum recorded in corrupt/ and every corruption is
	// counted once, not again after a restart.
	Corrupt     uint64
	WriteErrors uint64 // failed writes, fsyncs, segment creations and cursor writes, since Open
	// CursorWrites counts cursor file writes since Open (at most one per
	// Options.CursorInterval in the background).
	CursorWrites uint64
	Fsync        FsyncStats
	// Skipped counts seqs given up by Skip since Open (readings that could
	// not be stored; consumers see them as gaps).
	Skipped uint64
	// WriteFailing is true from a failed segment write (or segment
	// creation) until the next successful one, since FailingSince;
	// DiskFull when the last failure was ENOSPC.
	WriteFailing bool
	DiskFull     bool
	FailingSince time.Time
}

// FsyncBuckets are the upper bounds of the fsync latency histogram.
var FsyncBuckets = [...]time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond,
}

// FsyncStats describes the latency of the data fsyncs (fdatasync) of
// segment files since Open, failed ones included. Buckets are cumulative like
// a Prometheus histogram: Buckets[i] counts the fsyncs that took at most
// FsyncBuckets[i]; Count includes the slower ones (the +Inf bucket).
type FsyncStats struct {
	Count   uint64
	Sum     time.Duration
	Max     time.Duration
	Buckets [len(FsyncBuckets)]uint64
}

// fsyncHist records fsync latencies without a lock.
type fsyncHist struct {
	count, sum, max atomic.Uint64
	buckets         [len(FsyncBuckets)]atomic.Uint64
}

func (h *fsyncHist) observe(d time.Duration) {
	h.count.Add(1)
	h.sum.Add(uint64(d))
	for {
		m := h.max.Load()
		if uint64(d) <= m || h.max.CompareAndSwap(m, uint64(d)) {
			break
		}
	}
	for i, b := range FsyncBuckets {
		if d <= b {
			h.buckets[i].Add(1)
			break
		}
	}
}

func (h *fsyncHist) snapshot() FsyncStats {
	st := FsyncStats{Count: h.count.Load(), Sum: time.Duration(h.sum.Load()), Max: time.Duration(h.max.Load())}
	var cum uint64
	for i := range h.buckets {
		cum += h.buckets[i].Load()
		st.Buckets[i] = cum
	}
	return st
}

// syncFile fsyncs f and records the latency.
func (l *Log) syncFile(f File) error {
	start := time.Now()
	err := f.Sync()
	l.fsyncs.observe(time.Since(start))
	return err
}

type indexEntry struct {
	seq uint64
	off int64
	ts  int64 // append time of the record, Unix nanoseconds (0: unknown)
}

// segment is one segment file. All fields are guarded by Log.mu.
type segment struct {
	base    uint64 // seq in the file name; no record in the file is below it
	name    string
	path    string
	f       File  // nil when not open
	size    int64 // bytes of valid data (readable by Scan)
	refs    int   // Scans and syncs using f
	deleted bool
	broken  bool // a failed write could not be truncated away: cut before the next append

	// Append times, Unix nanoseconds, 0 when unknown. newestTS is exact
	// for segments written or fully read by this process; for sealed
	// segments of an earlier run it is the file's mtime until Scan reads
	// them (never earlier than the true time, so MaxAge never drops early).
	firstTS, newestTS int64
	gapChecked        bool // Scan has checked the seqs between this segment's end and the next

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

	// Frames appended but not yet written (see flushLocked): always empty
	// outside Append except with SyncAlways, where the group commit leader
	// writes them. They go to the active segment at offset size.
	gbuf   []byte
	gidx   []indexEntry // index entries of gbuf
	gcount uint64       // records in gbuf: seqs [next-gcount, next)
	group  *flushGroup  // the Appends whose records are in gbuf

	pending []*segment // dropped segments, deleted after the next cursor write

	// Seqs without a record. gap is the number of seqs given up by Skip
	// and not yet consumed: the next Append consumes them before its
	// records. gholes are the ranges consumed by Appends whose frames are
	// in gbuf (ggap seqs in all); once written they move to holes, the
	// known ranges above the cursor, which the cursor steps over (Scan and
	// recovery add those they find in the files: skipped seqs of an
	// earlier run, corrupt records, lost segments).
	gap      uint64
	gholes   []span
	ggap     uint64
	holes    []span              // sorted, disjoint, above acked
	overflow map[uint64]struct{} // acks beyond AckWindow past a hole

	// scanned is the seq after the newest record Scan has handed out since
	// a Scan last started at or below the cursor: the consumer holds the
	// records in [acked, scanned), so dropping them loses nothing.
	scanned uint64

	// Write failures: failing is set by a failed segment write or creation
	// and cleared by the next successful write; diskFull when the last
	// failure was ENOSPC; failingSince is when the episode started.
	failing, diskFull bool
	failingSince      time.Time

	dropped, expired, corrupt, writeErrors, skipped atomic.Uint64
	appended, committed, cursorWrites               atomic.Uint64
	fsyncs                                          fsyncHist

	corruptMu   sync.Mutex
	corruptSeen map[string]bool // keys of corruptions already recorded in corrupt/

	scanMu sync.Mutex // serialises Scan; guards the fields below
	cache  scanPos
	rd     segReader // keeps its buffer across Scans of rdSeg
	rdSeg  *segment

	cursorMu      sync.Mutex    // serialises checkpoints; guards cur and curSlot
	persisted     atomic.Uint64 // cursor value last written (0: none); written under cursorMu
	persistedNext atomic.Uint64 // next-seq floor last written; written under cursorMu
	cur           File          // the cursor file, open for in-place writes (nil: not created yet)
	curSlot       int           // the slot of cur written last

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
	if opts.CursorInterval <= 0 {
		opts.CursorInterval = DefaultCursorInterval
	}
	if opts.OpenFile == nil {
		opts.OpenFile = openOSFile
	}
	if opts.now == nil {
		opts.now = time.Now
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
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
		if l.cur != nil {
			l.cur.Close()
		}
		lock.Close()
		return nil, fmt.Errorf("buffer: open %s: %w", dir, err)
	}
	if free, ok := freeBytes(dir); ok {
		room := free + l.total
		if opts.MaxBytes > 0 && room < opts.MaxBytes {
			logger.Warn("buffer: max_bytes is larger than the free disk space: when the disk fills up, appends fail (and readings are lost) before the size cap drops old records",
				"dir", dir, "max_bytes", opts.MaxBytes, "free_bytes", free, "buffer_bytes", l.total)
		}
		if limit := max(room/8, minSegmentBytes); limit < l.opts.SegmentBytes {
			// On a small disk, acknowledged space must come back in small
			// steps (whole segments), not only when the disk is full.
			l.opts.SegmentBytes = limit
			logger.Info("buffer: small disk: segments are cut at an eighth of the space available",
				"dir", dir, "segment_bytes", limit, "free_bytes", free, "buffer_bytes", l.total)
		}
	}
	go l.run()
	return l, nil
}

func (l *Log) active() *segment { return l.segs[len(l.segs)-1] }

// Append appends recs as consecutive records and returns the seq of the
// first. The batch is written with one write call (with SyncAlways, one
// shared with concurrent Appends) and is all-or-nothing: on error no seq is
// consumed (except after a failed fsync in SyncAlways mode, see the package
// documentation), the error is counted in Stats().WriteErrors and the log
// stays usable; on a full disk (ENOSPC) Append fails until there is room
// again and drops nothing. recs are not retained. With no records, Append
// returns NextSeq and does nothing. Safe for concurrent use.
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
			l.writeFailedLocked(err)
			l.mu.Unlock()
			return 0, fmt.Errorf("buffer: truncate %s: %w", s.path, err)
		}
	}
	if logical := s.size + int64(len(l.gbuf)); s.broken || (logical > 0 && logical+int64(size) > l.opts.SegmentBytes) {
		if err := l.cutLocked(); err != nil {
			l.writeErrors.Add(1)
			l.writeFailedLocked(err)
			l.mu.Unlock()
			return 0, err
		}
		s = l.active()
		first = l.next
	}
	if l.gap > 0 {
		// Seqs given to readings that could not be stored (Skip) come
		// before these records, in the same segment: consumers see the gap.
		l.gholes = append(l.gholes, span{l.next, l.next + l.gap})
		l.next += l.gap
		l.gcount += l.gap
		l.ggap += l.gap
		l.gap = 0
		first = l.next
	}

	// One append time for the batch; never behind the newest record, so
	// times are monotonic within the log even if the wall clock steps back.
	ts := max(l.opts.now().UnixNano(), s.newestTS)
	off := s.size + int64(len(l.gbuf))
	if off == 0 {
		s.firstTS = ts
	}
	s.newestTS = ts
	lastIdx := int64(-indexEvery)
	if n := len(l.gidx); n > 0 {
		lastIdx = l.gidx[n-1].off
	} else if n := len(s.idx); n > 0 {
		lastIdx = s.idx[n-1].off
	}
	if len(l.gbuf) == 0 && cap(l.gbuf) < size {
		l.gbuf = make([]byte, 0, size)
	}
	for i, r := range recs {
		seq := first + uint64(i)
		if off-lastIdx >= indexEvery {
			l.gidx = append(l.gidx, indexEntry{seq: seq, off: off, ts: ts})
			lastIdx = off
		}
		l.gbuf = appendFrame(l.gbuf, seq, ts, r)
		off += int64(frameHeaderSize + len(r))
	}
	n := uint64(len(recs))
	l.next += n
	l.gcount += n
	l.appended.Add(n)
	target := l.next

	if l.opts.Sync == SyncAlways {
		// Group commit: the records are written, together with those of
		// concurrent Appends, by the goroutine that leads the next fsync.
		grp := l.groupLocked()
		l.mu.Unlock()
		if err := l.commit(grp, target); err != nil {
			if errors.Is(err, errFlush) {
				return 0, err
			}
			return first, err
		}
		return first, nil
	}
	err = l.flushLocked()
	l.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if l.opts.Sync == SyncBatch {
		l.kickBackground()
	}
	return first, nil
}

// flushGroup is the outcome of one flushLocked for the Appends whose
// records it wrote. Guarded by Log.mu.
type flushGroup struct {
	flushed bool  // flushLocked ran (the write succeeded unless err is set)
	err     error // the write failed: the records are not in the log
}

// groupLocked returns the group of the records now pending.
func (l *Log) groupLocked() *flushGroup {
	if l.group == nil {
		l.group = new(flushGroup)
	}
	return l.group
}

// errFlush marks errors of writes (as opposed to fsyncs): the records were
// not appended and their seqs are not consumed.
var errFlush = errors.New("write failed")

type flushError struct{ err error }

func (e *flushError) Error() string   { return e.err.Error() }
func (e *flushError) Unwrap() []error { return []error{e.err, errFlush} }

// flushLocked writes the pending frames (l.gbuf) to the active segment with
// one write call and makes them visible to Scan. If the write fails, the
// pending records are discarded, their seqs given back, and the error is
// recorded for the Appends of this flush generation.
func (l *Log) flushLocked() error {
	grp := l.group
	l.group = nil
	if grp != nil {
		grp.flushed = true
	}
	if len(l.gbuf) == 0 {
		return nil
	}
	s := l.active()
	buf := l.gbuf
	n, err := s.f.WriteAt(buf, s.size)
	if err == nil && n < len(buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		if terr := s.f.Truncate(s.size); terr != nil {
			// The file may hold a partial batch past s.size. Readers never
			// look past s.size; start a new segment for the next batch.
			s.broken = true
			l.logger.Warn("buffer: cannot truncate after failed write", "segment", s.path, "err", terr)
		}
		l.writeErrors.Add(1)
		l.writeFailedLocked(err)
		l.next -= l.gcount
		l.appended.Add(-(l.gcount - l.ggap))
		l.gap += l.ggap // consumed again by the next Append
		l.resetPendingLocked()
		ferr := &flushError{fmt.Errorf("buffer: append to %s: %w", s.path, err)}
		if grp != nil {
			grp.err = ferr
		}
		return ferr
	}
	s.idx = append(s.idx, l.gidx...)
	s.size += int64(len(buf))
	s.scanOff = s.size
	s.scanPrev = l.next - 1
	l.total += int64(len(buf))
	if l.failing {
		l.failing, l.diskFull, l.failingSince = false, false, time.Time{}
		l.logger.Info("buffer: segment writes work again", "segment", s.path)
	}
	if len(l.gholes) > 0 {
		for _, h := range l.gholes {
			l.addHoleLocked(h)
		}
		l.settleLocked()
	}
	l.resetPendingLocked()
	if l.opts.MaxBytes > 0 && l.total > l.opts.MaxBytes {
		l.enforceCapLocked()
	}
	select {
	case l.notify <- struct{}{}:
	default:
	}
	return nil
}

func (l *Log) resetPendingLocked() {
	if cap(l.gbuf) > 4<<20 {
		l.gbuf = nil
	}
	l.gbuf = l.gbuf[:0]
	l.gidx = l.gidx[:0]
	l.gcount = 0
	l.gholes = l.gholes[:0]
	l.ggap = 0
}

// writeFailedLocked records a failed segment write or creation: appends
// fail until one succeeds. The background goroutine is woken so that it
// can reclaim fully acknowledged space (see checkpoint).
func (l *Log) writeFailedLocked(err error) {
	if !l.failing {
		l.failing, l.failingSince = true, time.Now()
	}
	l.diskFull = errors.Is(err, syscall.ENOSPC)
	l.kickBackground()
}

// cutLocked fsyncs and seals the active segment and starts a new one whose
// base is l.next.
func (l *Log) cutLocked() error {
	if err := l.flushLocked(); err != nil {
		return err
	}
	old := l.active()
	if err := l.syncFile(old.f); err != nil {
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
	f, err := l.opts.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return nil, fmt.Errorf("buffer: create segment: %w", err)
	}
	if err := syncDir(l.dir); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("buffer: create segment %s: sync dir: %w", path, err)
	}
	return &segment{base: base, name: name, path: path, f: f, scanPrev: base - 1, gapChecked: true}, nil
}

// dropOldestWhileLocked drops the oldest segment, never the newest, while
// more than one is left and cond holds for it. It returns how many
// segments went, how many unacknowledged records with them, and the first
// and last seq of those records.
func (l *Log) dropOldestWhileLocked(cond func(*segment) bool) (n int, dropped, lo, hi uint64) {
	for len(l.segs) > 1 && cond(l.segs[0]) {
		d, from, to := l.dropOldestLocked()
		if d > 0 {
			if dropped == 0 {
				lo = from
			}
			dropped += d
			hi = to
		}
		n++
	}
	return n, dropped, lo, hi
}

// enforceCapLocked drops the oldest segments until the log fits MaxBytes.
func (l *Log) enforceCapLocked() {
	n, dropped, lo, hi := l.dropOldestWhileLocked(func(*segment) bool { return l.total > l.opts.MaxBytes })
	if n == 0 {
		return
	}
	if dropped > 0 {
		l.dropped.Add(dropped)
		l.logger.Warn("buffer: size cap exceeded, dropped oldest unacknowledged records",
			"records", dropped, "first_seq", lo, "last_seq", hi, "segments", n, "max_bytes", l.opts.MaxBytes)
	}
	l.kickBackground()
}

// expire drops the segments whose newest record is older than MaxAge. The
// newest segment is cut first when it is old and not empty, so that it can
// go too.
func (l *Log) expire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.opts.MaxAge <= 0 {
		return
	}
	limit := l.opts.now().Add(-l.opts.MaxAge).UnixNano()
	old := func(s *segment) bool { return s.size > 0 && s.newestTS != 0 && s.newestTS < limit }
	if len(l.segs) == 0 || !old(l.segs[0]) {
		return
	}
	if a := l.active(); old(a) && !a.broken {
		// Everything is old: start an empty newest segment (it keeps the
		// next seq) so the old one can be dropped.
		if err := l.cutLocked(); err != nil {
			l.writeErrors.Add(1)
			l.logger.Warn("buffer: cannot start a new segment to expire the old one", "err", err)
		}
	}
	var newest int64
	n, dropped, lo, hi := l.dropOldestWhileLocked(func(s *segment) bool {
		if old(s) || s.size == 0 {
			newest = max(newest, s.newestTS)
			return true
		}
		return false
	})
	if n == 0 {
		return
	}
	if dropped > 0 {
		l.dropped.Add(dropped)
		l.expired.Add(dropped)
		l.logger.Warn("buffer: max_age exceeded, dropped oldest unacknowledged records",
			"records", dropped, "first_seq", lo, "last_seq", hi, "segments", n,
			"max_age", l.opts.MaxAge, "newest_dropped", time.Unix(0, newest).UTC())
	}
	l.kickBackground()
}

// dropOldestLocked drops the oldest segment (not the newest), moving the
// cursor past it. Its file is deleted by the next checkpoint, after the
// cursor is written, so a crash cannot leave the persisted cursor below the
// oldest segment file. It returns the number of records dropped that the
// consumer never got, and their range: records Scan has already handed out
// are in the consumer's hands (it delivers and acks them), and known holes
// are not records.
func (l *Log) dropOldestLocked() (dropped, lo, hi uint64) {
	s, nextBase := l.segs[0], l.segs[1].base
	if from := max(s.base, l.acked, l.scanned); nextBase > from {
		dropped, lo, hi = nextBase-from, from, nextBase-1
		for _, h := range l.holes {
			if h.lo < nextBase && h.hi > from {
				dropped -= min(h.hi, nextBase) - max(h.lo, from)
			}
		}
	}
	if nextBase > l.acked {
		l.advanceAckedLocked(nextBase)
	}
	l.segs[0] = nil
	l.segs = l.segs[1:]
	l.total -= s.size
	s.deleted = true
	l.pending = append(l.pending, s)
	l.releaseFileLocked(s)
	return dropped, lo, hi
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

// syncTo makes all records below target durable.
func (l *Log) syncTo(target uint64) error {
	l.mu.Lock()
	grp := l.groupLocked()
	l.mu.Unlock()
	return l.commit(grp, target)
}

// commit returns once the records of grp, up to target, are written and
// fsynced. Concurrent callers share the work: one
// leader writes everything pending with one write call and fsyncs, the
// others wait for it (group commit).
func (l *Log) commit(grp *flushGroup, target uint64) error {
	l.mu.Lock()
retry:
	for {
		if grp.err != nil {
			l.mu.Unlock()
			return grp.err
		}
		if grp.flushed && l.synced >= target {
			l.mu.Unlock()
			return nil
		}
		if !l.syncing {
			break
		}
		l.syncCond.Wait()
	}
	l.syncing = true
	// Goroutines woken by the previous fsync are usually about to append
	// again. Yield while appends keep arriving (a few times at most) so
	// they join this write and fsync instead of fsyncs alternating between
	// one record and all the others. A lone appender pays one Gosched.
	for range maxGroupYields {
		before := l.next
		l.mu.Unlock()
		runtime.Gosched()
		l.mu.Lock()
		if l.next == before {
			break
		}
	}
	if err := l.flushLocked(); err != nil {
		// The failed write may hold other Appends' records only (this
		// caller's may have been written by an earlier flush): the loop
		// above returns the error to the Appends it belongs to.
		l.syncing = false
		l.syncCond.Broadcast()
		goto retry
	}
	s := l.active()
	end := l.next
	f := s.f
	s.refs++
	l.mu.Unlock()

	err := l.syncFile(f)

	l.mu.Lock()
	s.refs--
	l.releaseFileLocked(s)
	l.syncing = false
	if err == nil && end > l.synced {
		l.synced = end
	}
	l.syncCond.Broadcast()
	if err == nil {
		// Check this caller's own records: while the leader yielded, a
		// segment cut may have written them, or failed to.
		goto retry
	}
	l.mu.Unlock()
	l.writeErrors.Add(1)
	return fmt.Errorf("buffer: sync %s: %w", s.path, err)
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
	l.mu.Lock()
	if from <= l.acked && l.scanned > from {
		// A consumer (re)starting at the cursor holds nothing read before.
		l.scanned = from
	}
	l.mu.Unlock()
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
		frontTS := s.newestTS
		oldFront := front
		gapChecked := s.gapChecked
		lastIdx := int64(-1)
		if len(s.idx) > 0 {
			lastIdx = s.idx[len(s.idx)-1].off
		}
		if s.f == nil {
			f, err := l.opts.OpenFile(s.path, os.O_RDONLY)
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
		var newHoles []span
		var handed uint64 // seq after the last record given to fn
		var ferr, ioErr error
		full, tailReported := false, false
		for off < end {
			seq, ts, data, n, bad, err := r.frameAt(off, prev)
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
						tailReported = true
					}
					l.reportCorrupt(s, off, nx, missing, bad)
				}
				off = nx
				continue
			}
			if off == front {
				if seq > frontPrev+1 {
					// Seqs without a record (skipped, or lost to
					// corruption): the cursor steps over them.
					newHoles = append(newHoles, span{frontPrev + 1, seq})
				}
				front, frontPrev = off+n, seq
				if ts != 0 {
					frontTS = ts
				}
				if lastIdx < 0 || off-lastIdx >= indexEvery {
					newIdx = append(newIdx, indexEntry{seq: seq, off: off, ts: ts})
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
				handed = from
			}
			prev = seq
			off += n
			if max > 0 && visited >= max {
				full = true
				break
			}
		}

		// The first time Scan gets through a sealed segment, seqs missing
		// between its last record and the next segment (a deleted or lost
		// segment) are counted, unless a corrupt tail already was.
		if sealed && ioErr == nil && front == end && !gapChecked && !tailReported && nextBase > frontPrev+1 {
			l.reportGap(s, end, nextBase-frontPrev-1)
		}

		l.mu.Lock()
		holes := false
		if front > oldFront && s.scanOff == oldFront {
			for _, h := range newHoles {
				l.addHoleLocked(h)
				holes = true
			}
			s.idx = append(s.idx, newIdx...)
			s.scanOff, s.scanPrev = front, frontPrev
			if front == end && sealed && frontTS != 0 {
				s.newestTS = frontTS // exact now; was the mtime
			}
		}
		if front == end && sealed && ioErr == nil {
			if !gapChecked && nextBase > frontPrev+1 {
				l.addHoleLocked(span{frontPrev + 1, nextBase})
				holes = true
			}
			s.gapChecked = true
		}
		if holes {
			l.settleLocked()
		}
		if handed > l.scanned {
			l.scanned = handed
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
	if l.holeAtLocked(seq) {
		return nil // no record: nothing to acknowledge
	}
	if seq-l.acked >= AckWindow {
		// Allowed only past holes (skipped seqs): the records in between
		// still fit the window. Kept aside until the cursor gets near.
		if seq-l.acked-l.holesBelowLocked(seq) >= AckWindow {
			return fmt.Errorf("ack %d (cursor is %d): %w", seq, l.acked, ErrAckWindow)
		}
		if l.overflow == nil {
			l.overflow = make(map[uint64]struct{})
		}
		l.overflow[seq] = struct{}{}
		return nil
	}
	l.acks.set(seq)
	if seq == l.acked {
		l.settleLocked()
	}
	return nil
}

// span is the seqs [lo, hi).
type span struct{ lo, hi uint64 }

// addHoleLocked records seqs that have no record, so that the cursor steps
// over them. Call settleLocked afterwards.
func (l *Log) addHoleLocked(h span) {
	h.lo = max(h.lo, l.acked)
	if h.lo >= h.hi {
		return
	}
	i := sort.Search(len(l.holes), func(i int) bool { return l.holes[i].hi >= h.lo })
	j := i
	for j < len(l.holes) && l.holes[j].lo <= h.hi {
		h.lo, h.hi = min(h.lo, l.holes[j].lo), max(h.hi, l.holes[j].hi)
		j++
	}
	l.holes = append(l.holes[:i], append([]span{h}, l.holes[j:]...)...)
}

// holeAtLocked reports whether seq is a known hole.
func (l *Log) holeAtLocked(seq uint64) bool {
	i := sort.Search(len(l.holes), func(i int) bool { return l.holes[i].hi > seq })
	return i < len(l.holes) && l.holes[i].lo <= seq
}

// holesBelowLocked returns the number of hole seqs between the cursor and seq.
func (l *Log) holesBelowLocked(seq uint64) uint64 {
	var n uint64
	for _, h := range l.holes {
		if h.lo >= seq {
			break
		}
		if h.hi <= l.acked {
			continue
		}
		n += min(h.hi, seq) - max(h.lo, l.acked)
	}
	return n
}

// settleLocked moves the cursor over acknowledged seqs and holes.
func (l *Log) settleLocked() {
	n := l.acked
	var committed uint64
	for {
		for len(l.holes) > 0 && l.holes[0].hi <= n {
			l.holes = l.holes[1:]
		}
		if n < l.next {
			if len(l.holes) > 0 && l.holes[0].lo <= n {
				n = l.holes[0].hi
				continue
			}
			if l.acks.test(n) {
				l.acks.clear(n)
				n++
				committed++
				continue
			}
		}
		// Acks kept aside past a hole enter the window once it covers them.
		moved := false
		for q := range l.overflow {
			switch {
			case q < n:
				delete(l.overflow, q)
			case q-n < AckWindow:
				l.acks.set(q)
				delete(l.overflow, q)
				moved = true
			}
		}
		if !moved {
			break
		}
	}
	if n != l.acked {
		l.committed.Add(committed)
		l.acked = n
		l.kickBackground()
	}
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
	l.acked = n
	l.settleLocked()
}

// Skip gives up n seqs for readings that could not be stored (a full disk,
// a record too large): the next appended record's seq is n higher, so a
// consumer sees a gap of n where the readings would have been. The skip is
// persisted with the next record, or by the next cursor write (background,
// Sync, Close) if none follows. Counted in Stats().Skipped.
func (l *Log) Skip(n uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if n == 0 {
		return nil
	}
	l.gap += n
	l.skipped.Add(n)
	l.kickBackground()
	return nil
}

// floorLocked returns the next-seq floor the cursor file must record: 0
// unless skipped seqs are not yet followed by a written record.
func (l *Log) floorLocked() uint64 {
	if l.gap+l.ggap == 0 {
		return 0
	}
	return l.next - l.gcount + l.ggap + l.gap
}

// Acked returns the commit cursor: the first seq not yet committed (equal to
// NextSeq when everything is acknowledged). After a restart, unacknowledged
// records are still there and Acked is where a consumer starts.
func (l *Log) Acked() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked
}

// NextSeq returns the seq the next appended record will get, unless seqs
// skipped by Skip are still pending (then it gets NextSeq plus those): the
// cursor reaches NextSeq when everything appended is acknowledged.
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
		Records:      l.next - l.acked - l.holesBelowLocked(l.next),
		Skipped:      l.skipped.Load(),
		WriteFailing: l.failing,
		DiskFull:     l.diskFull,
		FailingSince: l.failingSince,
		Bytes:        l.total,
		Segments:     len(l.segs),
		Appended:     l.appended.Load(),
		Committed:    l.committed.Load(),
		Dropped:      l.dropped.Load(),
		Expired:      l.expired.Load(),
		Corrupt:      l.corrupt.Load(),
		WriteErrors:  l.writeErrors.Load(),
		Fsync:        l.fsyncs.snapshot(),
		CursorWrites: l.cursorWrites.Load(),
		AckedSeq:     l.acked,
		NextSeq:      l.next,
	}
	if len(l.segs) > 0 {
		st.OldestSeq = l.segs[0].base
		if ts := l.active().newestTS; ts != 0 {
			st.NewestTime = time.Unix(0, ts)
		} else if len(l.segs) > 1 && l.segs[len(l.segs)-2].newestTS != 0 {
			st.NewestTime = time.Unix(0, l.segs[len(l.segs)-2].newestTS)
		}
		if l.acked < l.next {
			if ts := l.timeOfLocked(l.acked); ts != 0 {
				st.OldestTime = time.Unix(0, ts)
			}
			st.PendingBytes = l.pendingBytesLocked()
		}
	}
	return st
}

// pendingBytesLocked returns the bytes from the index entry at or before
// the cursor to the end of the log.
func (l *Log) pendingBytesLocked() int64 {
	i := max(sort.Search(len(l.segs), func(i int) bool { return l.segs[i].base > l.acked })-1, 0)
	n := int64(len(l.gbuf))
	for _, s := range l.segs[i:] {
		n += s.size
	}
	s := l.segs[i]
	if j := sort.Search(len(s.idx), func(j int) bool { return s.idx[j].seq > l.acked }) - 1; j >= 0 {
		n -= s.idx[j].off
	}
	return n
}

// timeOfLocked returns the append time of the last indexed record at or
// before seq (or of the first record of its segment), 0 if unknown.
func (l *Log) timeOfLocked(seq uint64) int64 {
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].base > seq }) - 1
	if i < 0 {
		i = 0
	}
	s := l.segs[i]
	if j := sort.Search(len(s.idx), func(j int) bool { return s.idx[j].seq > seq }) - 1; j >= 0 && s.idx[j].ts != 0 {
		return s.idx[j].ts
	}
	return s.firstTS
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
	l.cursorMu.Lock()
	if l.cur != nil {
		if cerr := l.cur.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("buffer: close cursor: %w", cerr))
		}
		l.cur = nil
	}
	l.cursorMu.Unlock()
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

// run is the background goroutine. It fsyncs at most every SyncInterval
// while there is unsynced data (SyncBatch), writes the cursor and deletes
// committed or dropped segments at most every CursorInterval while there is
// something to do, and enforces MaxAge. Failures are logged once and retried
// at the next interval.
func (l *Log) run() {
	defer close(l.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var ageC <-chan time.Time
	if l.opts.MaxAge > 0 {
		tick := time.NewTicker(min(max(l.opts.MaxAge/20, 10*time.Millisecond), time.Minute))
		defer tick.Stop()
		ageC = tick.C
	}
	var lastSync, lastCursor time.Time
	var syncFailing, cursorFailing bool
	for {
		select {
		case <-l.quit:
			return
		case <-l.kick:
		case <-ageC:
			l.expire()
		}
		for {
			l.mu.Lock()
			needSync := l.opts.Sync == SyncBatch && l.synced < l.next
			target := l.next
			needCursor := l.acked != l.persisted.Load() || len(l.pending) > 0 ||
				(len(l.segs) > 1 && l.segs[1].base <= l.persisted.Load()) ||
				l.floorLocked() != l.persistedNext.Load() || l.reclaimableLocked()
			l.mu.Unlock()
			if !needSync && !needCursor {
				break
			}
			now := time.Now()
			wait := time.Duration(-1)
			if needSync {
				if d := l.opts.SyncInterval - now.Sub(lastSync); d > 0 {
					wait = d
				} else {
					lastSync = now
					err := l.syncTo(target)
					syncFailing = l.logFailure("fsync", err, syncFailing)
					continue
				}
			}
			if needCursor {
				if d := l.opts.CursorInterval - now.Sub(lastCursor); d > 0 {
					if wait < 0 || d < wait {
						wait = d
					}
				} else {
					lastCursor = now
					err := l.checkpoint()
					cursorFailing = l.logFailure("cursor write", err, cursorFailing)
					continue
				}
			}
			timer.Reset(wait)
			select {
			case <-l.quit:
				timer.Stop()
				return
			case <-timer.C:
			case <-ageC:
				timer.Stop()
				l.expire()
			}
		}
	}
}

// logFailure logs the first of a series of background failures and the
// recovery; it returns whether the operation is failing now.
func (l *Log) logFailure(op string, err error, failing bool) bool {
	if err != nil && !failing {
		l.logger.Error("buffer: background "+op+" failed; will retry", "err", err)
	} else if err == nil && failing {
		l.logger.Info("buffer: background " + op + " recovered")
	}
	return err != nil
}

// checkpoint writes the cursor if it moved, then deletes the segments
// dropped by the size cap or MaxAge and those whose records are all below
// the persisted cursor. The newest segment is never deleted; but while
// segment writes fail (a full disk) and every record is acknowledged, it is
// sealed first (a new, empty segment keeps the next seq) so that its space
// comes back. The cursor is rewritten in place and needs no new space; if
// writing it fails anyway while segment writes fail, the acknowledged
// segments are deleted all the same (they were delivered; a crash before
// the cursor is written again would report them as missing, never send
// them twice) and the cursor write is retried in the space they left.
func (l *Log) checkpoint() error {
	l.cursorMu.Lock()
	defer l.cursorMu.Unlock()
	l.mu.Lock()
	c := cursorState{acked: l.acked, next: l.floorLocked()}
	pending := l.pending
	l.pending = nil
	l.mu.Unlock()
	werr := l.persist(c)
	if werr != nil {
		l.mu.Lock()
		force := l.failing
		if !force {
			l.pending = append(pending, l.pending...)
		}
		l.mu.Unlock()
		if !force {
			return werr
		}
	}
	for _, s := range pending {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			l.logger.Warn("buffer: remove segment", "segment", s.path, "err", err)
		}
	}
	n := len(pending)
	var rerr error
	l.mu.Lock()
	if l.reclaimableLocked() && c.acked == l.next {
		a := l.active()
		if err := l.cutLocked(); err != nil {
			l.writeErrors.Add(1)
			rerr = fmt.Errorf("buffer: seal acknowledged segment %s to free its space: %w", a.path, err)
		} else {
			l.logger.Warn("buffer: writes fail and every record is acknowledged: deleting the newest segment to free its space",
				"segment", a.path, "bytes", a.size, "disk_full", l.diskFull)
		}
	}
	for len(l.segs) > 1 && l.segs[1].base <= c.acked {
		l.removeOldestLocked()
		n++
	}
	l.mu.Unlock()
	if n > 0 {
		if err := syncDir(l.dir); err != nil {
			return errors.Join(werr, rerr, fmt.Errorf("buffer: sync dir %s: %w", l.dir, err))
		}
	}
	if werr != nil && n > 0 {
		werr = l.persist(c)
	}
	return errors.Join(werr, rerr)
}

// reclaimableLocked reports whether the newest segment should be sealed so
// that it can be deleted: segment writes fail, it holds records, and all of
// them are acknowledged and written.
func (l *Log) reclaimableLocked() bool {
	return l.failing && !l.closed && len(l.gbuf) == 0 && l.acked == l.next && l.active().size > 0
}

// persist writes c to the cursor file if it differs from what is there.
// cursorMu held.
func (l *Log) persist(c cursorState) error {
	if c.acked == l.persisted.Load() && c.next == l.persistedNext.Load() && l.cur != nil {
		return nil
	}
	if err := l.writeCursor(c); err != nil {
		l.writeErrors.Add(1)
		return fmt.Errorf("buffer: %w", err)
	}
	l.persisted.Store(c.acked)
	l.persistedNext.Store(c.next)
	l.cursorWrites.Add(1)
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
