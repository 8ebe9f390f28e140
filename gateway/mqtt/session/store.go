package session

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
)

// Store is the client side of the MQTT session: the packets in flight
// with the buffer seq each carries, and the done marks (see the package
// documentation). It implements paho's session/state storer (Put, Get,
// Delete, Quarantine, List, Reset); its other methods are for the
// publisher. All methods may be called from any goroutine.
type Store struct {
	mu      sync.Mutex
	dir     string
	f       logFile                // nil: memory only
	wrap    func(*os.File) logFile // see openWith
	size    int64                  // bytes in f
	compact int64                  // size after the last compaction
	pend    []byte                 // framed records not yet written (see Put and Delete)
	aw      appendWriter
	// deferPuts: Put leaves its record in pend; the connection writes
	// pend (Flush) before every socket write. Set when every
	// connection is a batchConn.
	deferPuts bool
	logger    *slog.Logger
	// broken: a write failed; the file is a good prefix and is rewritten
	// from memory (at most every rewriteRetry, from retryAt on) before
	// anything is appended again. See flushLocked.
	broken         bool
	retryAt        time.Time
	writeErrors    uint64             // failed or short writes
	corruptRegions int                // bad regions skipped at open
	corruptBytes   int64              // their size
	damage         []*CorruptionError // every bad region found at open, the torn tail included

	live      map[uint16]*storedPacket
	free      [][]byte        // data of deleted packets, for the next Puts
	freeBytes int             // their capacity
	order     uint64          // Put counter, for List
	failing   map[uint16]bool // ids whose next Delete is a failure (no done mark)
	marks     []markBucket    // done seqs, oldest bucket first
	loaded    map[uint64]bool // done seqs read at open (for the publisher's start)
	session   bool            // a connection with this client id was established once
	now       func() time.Time
}

type storedPacket struct {
	ptype byte
	seq   uint64
	order uint64
	data  []byte
}

type markBucket struct {
	t    time.Time
	seqs []uint64
}

// markRetention is how long a done mark is kept.
const markRetention = 30 * time.Second

const (
	recPut     = 1 // id u16, type u8, seq u64, packet bytes
	recDel     = 2 // id u16, done u8
	recMark    = 3 // from u64, to u64 (inclusive range of done seqs)
	recReset   = 4 // the broker had no session: forget every live packet
	recSession = 5 // a session exists at the broker (Clean Start = 0 from now on)
)

const (
	storeFile  = "session.log"
	corruptDir = "corrupt"
	frameHdr   = 12      // magic, n, CRC
	maxBody    = 1 << 28 // larger than any MQTT packet
	// rewriteRetry is how often a broken store tries to rewrite its file.
	rewriteRetry = 100 * time.Millisecond
)

// frameMagic starts every frame of format version 2.
var frameMagic = [4]byte{0xF3, 'S', 'S', 2}

// logFile is the session log file as the store writes it: an *os.File,
// or in tests a wrapper that injects failed and short writes.
type logFile interface {
	Write(p []byte) (int, error)
	Truncate(size int64) error
	Seek(offset int64, whence int) (int64, error)
	Close() error
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// NewMemory returns a store without a file.
func NewMemory() *Store {
	return &Store{
		live: map[uint16]*storedPacket{}, failing: map[uint16]bool{},
		loaded: map[uint64]bool{}, logger: slog.New(slog.DiscardHandler), now: time.Now,
	}
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

// CorruptionError describes a region of session.log that failed
// validation at open. Open logs it and skips the bytes (see the package
// documentation); Damage returns them.
type CorruptionError struct {
	File   string // path of session.log
	Offset int64  // offset of the first bad byte
	Size   int64  // length of the bad region
	Tail   bool   // the region ran to the end of the file: cut off
	Err    error  // why the first frame of the region failed
}

func (e *CorruptionError) Error() string {
	return fmt.Sprintf("mqtt session store: corruption in %s at offset %d (%d bytes): %v", e.File, e.Offset, e.Size, e.Err)
}

func (e *CorruptionError) Unwrap() error { return e.Err }

// Reasons of a CorruptionError (its Err).
var (
	ErrTruncated = errors.New("frame runs past the end of the file")
	ErrMagic     = errors.New("no frame magic")
	ErrLength    = errors.New("frame length out of range")
	ErrChecksum  = errors.New("CRC mismatch")
	ErrRecord    = errors.New("malformed record body")
)

// frameError says why the frame at the start of b fails its checks (see
// parseFrame), for a file of frames of version want (either when 0).
func frameError(b []byte, want int) error {
	if want == 1 {
		if len(b) < 8 {
			return ErrTruncated
		}
		n := binary.LittleEndian.Uint32(b)
		switch {
		case n < 1 || n > maxBody:
			return ErrLength
		case int(n) > len(b)-8:
			return ErrTruncated
		case !validBody(b[8 : 8+int(n)]):
			return ErrRecord
		}
		return ErrChecksum
	}
	if m := min(len(b), len(frameMagic)); !bytes.Equal(b[:m], frameMagic[:m]) {
		return ErrMagic
	}
	if len(b) < frameHdr {
		return ErrTruncated
	}
	n := binary.LittleEndian.Uint32(b[4:])
	switch {
	case n < 1 || n > maxBody:
		return ErrLength
	case int(n) > len(b)-frameHdr:
		return ErrTruncated
	}
	body := b[frameHdr : frameHdr+int(n)]
	if crc32.Update(crc32.Checksum(b[4:8], crcTable), crcTable, body) != binary.LittleEndian.Uint32(b[8:]) {
		return ErrChecksum
	}
	return ErrRecord
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

// parseFrame checks the frame at the start of b: of version want (either
// when 0). It returns its body, its size and its version; size 0 when it
// is not a good frame.
func parseFrame(b []byte, want int) (body []byte, size, version int) {
	if want != 1 && len(b) >= frameHdr && [4]byte(b[:4]) == frameMagic {
		n := binary.LittleEndian.Uint32(b[4:])
		sum := binary.LittleEndian.Uint32(b[8:])
		if n >= 1 && n <= maxBody && int(n) <= len(b)-frameHdr {
			body = b[frameHdr : frameHdr+int(n)]
			c := crc32.Update(crc32.Checksum(b[4:8], crcTable), crcTable, body)
			if c == sum && validBody(body) {
				return body, frameHdr + int(n), 2
			}
		}
	}
	if want != 2 && len(b) >= 8 {
		n := binary.LittleEndian.Uint32(b[0:])
		sum := binary.LittleEndian.Uint32(b[4:])
		if n >= 1 && n <= maxBody && int(n) <= len(b)-8 {
			body = b[8 : 8+int(n)]
			if validBody(body) && crc32.Checksum(body, crcTable) == sum {
				return body, 8 + int(n), 1
			}
		}
	}
	return nil, 0, 0
}

// validBody reports whether b is a well-formed record body.
func validBody(b []byte) bool {
	switch b[0] {
	case recPut:
		return len(b) >= putHdr
	case recDel:
		return len(b) == 4 && b[3] <= 1
	case recMark:
		if len(b) != 17 {
			return false
		}
		from, to := binary.LittleEndian.Uint64(b[1:]), binary.LittleEndian.Uint64(b[9:])
		return to >= from && to-from <= 1<<24
	case recReset, recSession:
		return len(b) == 1
	}
	return false
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

// write appends one record now (after those pending, in one write(2));
// the caller holds s.mu.
func (s *Store) write(body []byte) {
	if s.f == nil {
		return
	}
	s.pend = s.frame(s.pend, body)
	s.flushLocked()
}

// appendWriter is an io.Writer appending to b.
type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// frame appends body as a frame of the current version to dst.
func (s *Store) frame(dst, body []byte) []byte {
	start := len(dst)
	dst = append(dst, frameMagic[:]...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(body)))
	dst = append(dst, 0, 0, 0, 0)
	dst = append(dst, body...)
	sealFrame(dst[start:])
	return dst
}

// sealFrame fills in the length and CRC of the frame f, whose magic and
// body are in place.
func sealFrame(f []byte) {
	binary.LittleEndian.PutUint32(f[4:], uint32(len(f)-frameHdr))
	c := crc32.Update(crc32.Checksum(f[4:8], crcTable), crcTable, f[frameHdr:])
	binary.LittleEndian.PutUint32(f[8:], c)
}

func putBody(dst []byte, id uint16, p *storedPacket) []byte {
	dst = append(dst, recPut)
	dst = binary.LittleEndian.AppendUint16(dst, id)
	dst = append(dst, p.ptype)
	dst = binary.LittleEndian.AppendUint64(dst, p.seq)
	return append(dst, p.data...)
}

const (
	putHdr  = 12 // recPut, id u16, type u8, seq u64
	lazyMax = 4 << 10
	// deferMax bounds pend with deferPuts (the connection usually writes
	// it far sooner).
	deferMax = 256 << 10
)

// Record is the PUBLISH of a buffer record on its way into the
// session (see sessionGate.addRecord): paho's session hands it to Put as
// it is, so the seq reaches the store with the packet, explicitly.
type Record struct {
	*packets.Publish
	Seq uint64
}

func (r Record) recordSeq() uint64 { return r.Seq }

// seqCarrier is a packet that carries the seq of a buffer record
// (Record; in tests, any packet).
type seqCarrier interface{ recordSeq() uint64 }

// SeqOf returns the seq of the live packet id (0 if none or not a record).
func (s *Store) SeqOf(id uint16) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.live[id]; p != nil {
		return p.seq
	}
	return 0
}

// IDOf returns the packet id of the live packet carrying seq.
func (s *Store) IDOf(seq uint64) (uint16, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, p := range s.live {
		if p.seq == seq {
			return id, true
		}
	}
	return 0, false
}

// FailNext makes the next Delete of id leave no done mark: the broker
// refused the packet and the record will be retried.
func (s *Store) FailNext(id uint16) {
	s.mu.Lock()
	s.failing[id] = true
	s.mu.Unlock()
}

// MarkDone records seqs as done without a packet (dead-lettered), in one
// write.
func (s *Store) MarkDone(seqs ...uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b [17]byte
	b[0] = recMark
	for _, seq := range seqs {
		s.addMark(seq)
		if s.f != nil {
			binary.LittleEndian.PutUint64(b[1:], seq)
			binary.LittleEndian.PutUint64(b[9:], seq)
			s.pend = s.frame(s.pend, b[:])
		}
	}
	s.flushLocked()
}

func (s *Store) addMark(seq uint64) {
	now := s.now()
	if n := len(s.marks); n == 0 || now.Sub(s.marks[n-1].t) > time.Second {
		s.marks = append(s.marks, markBucket{t: now})
	}
	b := &s.marks[len(s.marks)-1]
	b.seqs = append(b.seqs, seq)
}

// SetDeferPuts makes Put leave its record pending, to be written by Flush
// (which the connection calls before every socket write) in one write(2)
// with the other records of the batch. Set it when every connection
// writes through a batchConn.
func (s *Store) SetDeferPuts(on bool) {
	s.mu.Lock()
	s.deferPuts = on
	s.mu.Unlock()
}

// SetSession records that the broker holds a session for us.
func (s *Store) SetSession() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.session {
		return
	}
	s.session = true
	s.write([]byte{recSession})
}

func (s *Store) HasSession() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.session
}

// StartState returns the seqs of the live record packets and the done
// marks read at open.
func (s *Store) StartState() (live []uint64, done map[uint64]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.live {
		if p.seq != 0 {
			live = append(live, p.seq)
		}
	}
	slices.Sort(live)
	return live, s.loaded
}

// Put implements paho's storer. A Record carries the record's seq;
// any other packet has none (0). The packet is encoded straight into the
// pending record. With deferPuts the record is written by the connection
// before the packet can leave (Flush), in one write(2) with the
// other records of the batch; otherwise now.
func (s *Store) Put(id uint16, ptype byte, w io.WriterTo) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := len(s.pend)
	s.aw.b = append(s.pend, make([]byte, frameHdr+putHdr)...)
	_, err := w.WriteTo(&s.aw)
	s.pend, s.aw.b = s.aw.b, nil
	if err != nil {
		s.pend = s.pend[:start]
		return err
	}
	body := s.pend[start+frameHdr:]
	p := &storedPacket{ptype: ptype, data: append(s.reuse(len(body)-putHdr), body[putHdr:]...)}
	if old := s.live[id]; old != nil {
		p.seq, p.order = old.seq, old.order // PUBREL replacing its PUBLISH
	} else {
		if r, ok := w.(seqCarrier); ok {
			p.seq = r.recordSeq()
		}
		s.order++
		p.order = s.order
	}
	s.live[id] = p
	if s.f == nil {
		s.pend = s.pend[:start]
		return nil
	}
	body[0] = recPut
	binary.LittleEndian.PutUint16(body[1:], id)
	body[3] = ptype
	binary.LittleEndian.PutUint64(body[4:], p.seq)
	copy(s.pend[start:], frameMagic[:])
	sealFrame(s.pend[start:])
	if !s.deferPuts || len(s.pend) >= deferMax {
		s.flushLocked()
	}
	return nil
}

// Get implements paho's storer.
func (s *Store) Get(id uint16) (io.ReadCloser, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.live[id]
	if p == nil {
		return nil, fmt.Errorf("mqtt session store: no packet %d", id)
	}
	// A copy: the packet's buffer is reused once it is deleted.
	return io.NopCloser(bytes.NewReader(bytes.Clone(p.data))), nil
}

// maxFree and maxFreeBytes bound the buffers kept for reuse: a window of
// 7 kB backlog messages fits; of 35 kB device messages (which come a few
// dozen a second and need no recycling) only part of a window is kept.
const (
	maxFree      = 64
	maxFreeBytes = 512 << 10
)

// reuse returns an empty buffer for a packet of n bytes: one of a deleted
// packet when it is large enough. A backlog drain of 7 kB messages
// otherwise allocated (and the GC scanned) a copy of every packet.
func (s *Store) reuse(n int) []byte {
	for i := len(s.free) - 1; i >= 0; i-- {
		if b := s.free[i]; cap(b) >= n {
			last := len(s.free) - 1
			s.free[i], s.free[last] = s.free[last], nil
			s.free = s.free[:last]
			s.freeBytes -= cap(b)
			return b[:0]
		}
	}
	return make([]byte, 0, n)
}

// release keeps b (the data of a deleted packet) for reuse.
func (s *Store) release(b []byte) {
	if len(s.free) < maxFree && s.freeBytes+cap(b) <= maxFreeBytes {
		s.free = append(s.free, b)
		s.freeBytes += cap(b)
	}
}

// Delete implements paho's storer: the packet's exchange is over. Unless
// FailNext was called for id, its seq is done.
func (s *Store) Delete(id uint16) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.live[id]
	if p == nil {
		return nil
	}
	done := !s.failing[id]
	delete(s.failing, id)
	delete(s.live, id)
	s.release(p.data)
	if done && p.seq != 0 {
		s.addMark(p.seq)
	}
	var b [4]byte
	b[0] = recDel
	binary.LittleEndian.PutUint16(b[1:], id)
	if done {
		b[3] = 1
	}
	// A Delete is written with the next records (one write(2) for all) or
	// when enough are pending. Losing it in a crash is harmless: the packet
	// comes back from the store, paho re-sends it (a PUBREL at QoS 2, which
	// the broker answers without a new delivery; a PUBLISH at QoS 1, where
	// a duplicate is allowed) and its completion acks a record that is
	// acked already or still pending.
	if s.f != nil {
		s.pend = s.frame(s.pend, b[:])
		if len(s.pend) >= lazyMax && !s.deferPuts || len(s.pend) >= deferMax {
			s.flushLocked()
		}
	}
	s.maybeCompact()
	return nil
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

// Quarantine implements paho's storer (a packet that cannot be parsed).
func (s *Store) Quarantine(id uint16) error {
	s.mu.Lock()
	p := s.live[id]
	s.mu.Unlock()
	if p != nil {
		s.logger.Error("mqtt session store: unreadable packet dropped", "id", id, "seq", p.seq)
		s.FailNext(id)
	}
	return s.Delete(id)
}

// List implements paho's storer: ids in the order their first packet was
// stored (seq order for records, as the publisher stores them in order).
func (s *Store) List() ([]uint16, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]uint16, 0, len(s.live))
	for id := range s.live {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b uint16) int {
		pa, pb := s.live[a], s.live[b]
		if pa.seq != 0 && pb.seq != 0 && pa.seq != pb.seq {
			return cmpU64(pa.seq, pb.seq)
		}
		return cmpU64(pa.order, pb.order)
	})
	return ids, nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Reset implements paho's storer: the broker has no session. The done
// marks stay.
func (s *Store) Reset() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.live)
	clear(s.failing)
	s.write([]byte{recReset})
	return nil
}

// health returns the failed writes and the damaged regions skipped at open.
func (s *Store) Health() (writeErrors uint64, corrupt int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writeErrors, s.corruptRegions
}

// LivePackets is the number of stored packets.
func (s *Store) LivePackets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.live)
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
	slices.SortFunc(ids, func(a, b uint16) int { return cmpU64(s.live[a].order, s.live[b].order) })
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
