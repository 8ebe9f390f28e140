package mqtt

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// sessionStore is the client side of the MQTT session (the packets paho
// keeps until the broker has acknowledged them: outgoing PUBLISH, then
// PUBREL at QoS 2) plus what the publisher needs to hand records over between
// the disk buffer and the session exactly once:
//
//   - the buffer seq each stored packet carries (0 for packets that are not
//     buffer records, such as state messages), written in the same record as
//     the packet, so the two can never disagree;
//   - "done" marks: the seqs whose delivery completed (PUBACK / PUBCOMP with
//     a success code) or that were dead-lettered. The buffer persists its
//     commit cursor a little after Ack (sync_interval), so after a kill -9
//     the buffer may offer again a record the broker already has; the marks
//     say it is done. A mark is kept for markRetention, far longer than the
//     buffer takes to persist its cursor.
//
// It implements paho's session/state storer interface. With a directory it
// is an append-only log file (session.log) of CRC-32C framed records,
// written without fsync, each before the packet it describes can reach the
// socket (at QoS 1 and 2 the records of a batch of packets are written
// with one write(2) just before the batch goes out: see flushPending): it survives a kill -9 of
// ferry (the data is in the kernel), and a power failure can only cost its
// tail, which makes QoS 2 at-least-once for what was in flight, never loses
// a record (the buffer acks only completed deliveries). The log is compacted
// (rewritten, renamed) when it grows. Without a directory it lives in memory.
//
// paho's own store/file was not used: it fsyncs and renames a file per
// packet (two per QoS 2 message, about 3 k operations/s on this hardware,
// far below the broker), orders resends by file ModTime, pads List with 0
// ids when the directory holds other files, and has nowhere to keep the
// seq of a PUBREL.
type sessionStore struct {
	mu      sync.Mutex
	dir     string
	f       *os.File // nil: memory only
	size    int64    // bytes in f
	compact int64    // size after the last compaction
	pend    []byte   // framed records not yet written (see Put and Delete)
	aw      appendWriter
	// deferPuts: Put leaves its record in pend; the connection writes
	// pend (flushPending) before every socket write. Set when every
	// connection is a batchConn.
	deferPuts bool
	logger    *slog.Logger
	err       error // first write error (logged once)

	live      map[uint16]*storedPacket
	free      [][]byte        // data of deleted packets, for the next Puts
	freeBytes int             // their capacity
	order     uint64          // Put counter, for List
	expect    map[any]uint64  // packet (pointer) -> seq, set just before paho's Put
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

const storeFile = "session.log"

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// newMemoryStore returns a store without a file.
func newMemoryStore() *sessionStore {
	return &sessionStore{
		live: map[uint16]*storedPacket{}, expect: map[any]uint64{}, failing: map[uint16]bool{},
		loaded: map[uint64]bool{}, logger: slog.New(slog.DiscardHandler), now: time.Now,
	}
}

// openStore opens (creating it if needed) the store in dir, which should
// hold nothing else. A torn or corrupt tail is cut off and logged.
func openStore(dir string, logger *slog.Logger) (*sessionStore, error) {
	s := newMemoryStore()
	s.dir, s.logger = dir, logger
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("mqtt: session store: %w", err)
	}
	path := filepath.Join(dir, storeFile)
	_ = os.Remove(path + ".tmp") // an interrupted compaction
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("mqtt: session store: %w", err)
	}
	good, err := s.replay(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("mqtt: session store %s: %w", path, err)
	}
	if st, err := f.Stat(); err == nil && st.Size() > good {
		logger.Warn("mqtt session store: torn or corrupt tail cut off", "file", path, "at", good, "size", st.Size())
		if err := f.Truncate(good); err != nil {
			f.Close()
			return nil, fmt.Errorf("mqtt: session store %s: %w", path, err)
		}
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	s.f, s.size, s.compact = f, good, good
	for _, b := range s.marks {
		for _, q := range b.seqs {
			s.loaded[q] = true
		}
	}
	return s, nil
}

// replay reads the log and returns the offset after the last good record.
func (s *sessionStore) replay(f *os.File) (int64, error) {
	r := bufio.NewReaderSize(f, 64<<10)
	var off int64
	var hdr [8]byte
	now := s.now()
	var marks []uint64
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			break
		}
		n := binary.LittleEndian.Uint32(hdr[0:])
		sum := binary.LittleEndian.Uint32(hdr[4:])
		if n == 0 || n > 1<<28 {
			break
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			break
		}
		if crc32.Checksum(body, crcTable) != sum {
			break
		}
		if !s.apply(body, &marks) {
			break
		}
		off += 8 + int64(n)
	}
	if len(marks) > 0 {
		s.marks = []markBucket{{t: now, seqs: marks}}
	}
	return off, nil
}

// apply replays one record body; false if it is malformed.
func (s *sessionStore) apply(b []byte, marks *[]uint64) bool {
	switch b[0] {
	case recPut:
		if len(b) < 12 {
			return false
		}
		id := binary.LittleEndian.Uint16(b[1:])
		old := s.live[id]
		s.order++
		p := &storedPacket{ptype: b[3], seq: binary.LittleEndian.Uint64(b[4:]), order: s.order, data: bytes.Clone(b[12:])}
		if old != nil {
			p.order = old.order
		}
		s.live[id] = p
	case recDel:
		if len(b) != 4 {
			return false
		}
		id := binary.LittleEndian.Uint16(b[1:])
		if p := s.live[id]; p != nil && b[3] == 1 && p.seq != 0 {
			*marks = append(*marks, p.seq)
		}
		delete(s.live, id)
	case recMark:
		if len(b) != 17 {
			return false
		}
		from, to := binary.LittleEndian.Uint64(b[1:]), binary.LittleEndian.Uint64(b[9:])
		if to < from || to-from > 1<<24 {
			return false
		}
		for q := from; q <= to; q++ {
			*marks = append(*marks, q)
		}
	case recReset:
		clear(s.live)
	case recSession:
		s.session = true
	default:
		return false
	}
	return true
}

// write appends one record now (after those pending, in one write(2));
// the caller holds s.mu.
func (s *sessionStore) write(body []byte) {
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

func (s *sessionStore) frame(dst, body []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(body)))
	dst = binary.LittleEndian.AppendUint32(dst, crc32.Checksum(body, crcTable))
	return append(dst, body...)
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

// expectSeq tells the store that packet pk (about to be added to the
// session) carries the record seq.
func (s *sessionStore) expectSeq(pk any, seq uint64) {
	s.mu.Lock()
	s.expect[pk] = seq
	s.mu.Unlock()
}

func (s *sessionStore) forget(pk any) {
	s.mu.Lock()
	delete(s.expect, pk)
	s.mu.Unlock()
}

// seqOf returns the seq of the live packet id (0 if none or not a record).
func (s *sessionStore) seqOf(id uint16) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.live[id]; p != nil {
		return p.seq
	}
	return 0
}

// failNext makes the next Delete of id leave no done mark: the broker
// refused the packet and the record will be retried.
func (s *sessionStore) failNext(id uint16) {
	s.mu.Lock()
	s.failing[id] = true
	s.mu.Unlock()
}

// markDone records seq as done without a packet (dead-lettered).
func (s *sessionStore) markDone(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addMark(seq)
	var b [17]byte
	b[0] = recMark
	binary.LittleEndian.PutUint64(b[1:], seq)
	binary.LittleEndian.PutUint64(b[9:], seq)
	s.write(b[:])
}

func (s *sessionStore) addMark(seq uint64) {
	now := s.now()
	if n := len(s.marks); n == 0 || now.Sub(s.marks[n-1].t) > time.Second {
		s.marks = append(s.marks, markBucket{t: now})
	}
	b := &s.marks[len(s.marks)-1]
	b.seqs = append(b.seqs, seq)
}

// setSession records that the broker holds a session for us.
func (s *sessionStore) setSession() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.session {
		return
	}
	s.session = true
	s.write([]byte{recSession})
}

func (s *sessionStore) hasSession() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.session
}

// startState returns the seqs of the live record packets and the done
// marks read at open.
func (s *sessionStore) startState() (live []uint64, done map[uint64]bool) {
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

// Put implements paho's storer. The packet is encoded straight into the
// pending record. With deferPuts the record is written by the connection
// before the packet can leave (flushPending), in one write(2) with the
// other records of the batch; otherwise now.
func (s *sessionStore) Put(id uint16, ptype byte, w io.WriterTo) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := len(s.pend)
	s.aw.b = append(s.pend, make([]byte, 8+putHdr)...)
	_, err := w.WriteTo(&s.aw)
	s.pend, s.aw.b = s.aw.b, nil
	if err != nil {
		s.pend = s.pend[:start]
		return err
	}
	body := s.pend[start+8:]
	p := &storedPacket{ptype: ptype, data: append(s.reuse(len(body)-putHdr), body[putHdr:]...)}
	if old := s.live[id]; old != nil {
		p.seq, p.order = old.seq, old.order // PUBREL replacing its PUBLISH
	} else {
		p.seq = s.expect[w]
		delete(s.expect, w)
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
	binary.LittleEndian.PutUint32(s.pend[start:], uint32(len(body)))
	binary.LittleEndian.PutUint32(s.pend[start+4:], crc32.Checksum(body, crcTable))
	if !s.deferPuts || len(s.pend) >= deferMax {
		s.flushLocked()
	}
	return nil
}

// Get implements paho's storer.
func (s *sessionStore) Get(id uint16) (io.ReadCloser, error) {
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
func (s *sessionStore) reuse(n int) []byte {
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
func (s *sessionStore) release(b []byte) {
	if len(s.free) < maxFree && s.freeBytes+cap(b) <= maxFreeBytes {
		s.free = append(s.free, b)
		s.freeBytes += cap(b)
	}
}

// Delete implements paho's storer: the packet's exchange is over. Unless
// failNext was called for id, its seq is done.
func (s *sessionStore) Delete(id uint16) error {
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

// flushPending writes the pending records (one write(2)). batchConn calls
// it before every socket write: a PUBLISH or PUBREL is never on the wire
// before its record is in the file (in the kernel: it survives a kill -9).
func (s *sessionStore) flushPending() {
	s.mu.Lock()
	s.flushLocked()
	s.mu.Unlock()
}

// flushLocked writes the pending records; the caller holds s.mu.
func (s *sessionStore) flushLocked() {
	if len(s.pend) == 0 || s.f == nil {
		return
	}
	n, err := s.f.Write(s.pend)
	s.size += int64(n)
	if cap(s.pend) > 4*deferMax {
		s.pend = nil
	} else {
		s.pend = s.pend[:0]
	}
	if err != nil && s.err == nil {
		s.err = err
		s.logger.Error("mqtt session store: write failed; exactly-once across a restart is not assured", "dir", s.dir, "err", err)
	}
}

// Quarantine implements paho's storer (a packet that cannot be parsed).
func (s *sessionStore) Quarantine(id uint16) error {
	s.mu.Lock()
	p := s.live[id]
	s.mu.Unlock()
	if p != nil {
		s.logger.Error("mqtt session store: unreadable packet dropped", "id", id, "seq", p.seq)
		s.failNext(id)
	}
	return s.Delete(id)
}

// List implements paho's storer: ids in the order their first packet was
// stored (seq order for records, as the publisher stores them in order).
func (s *sessionStore) List() ([]uint16, error) {
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
func (s *sessionStore) Reset() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.live)
	clear(s.failing)
	s.write([]byte{recReset})
	return nil
}

// livePackets is the number of stored packets.
func (s *sessionStore) livePackets() int {
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
func (s *sessionStore) maybeCompact() {
	if s.f == nil || s.size < compactMin || s.size < 4*s.compact {
		return
	}
	if err := s.compactLocked(); err != nil && s.err == nil {
		s.err = err
		s.logger.Error("mqtt session store: compaction failed", "dir", s.dir, "err", err)
	}
}

func (s *sessionStore) compactLocked() error {
	s.flushLocked()
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
	if err := os.WriteFile(tmp, out, 0o640); err != nil {
		return err
	}
	f, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		f.Close()
		return err
	}
	s.f.Close()
	s.f, s.size, s.compact = f, int64(len(out)), int64(len(out))
	return nil
}

// Close closes the file.
func (s *sessionStore) Close() error {
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
