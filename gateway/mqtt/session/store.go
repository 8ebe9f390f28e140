package session

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
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

// NewMemory returns a store without a file.
func NewMemory() *Store {
	return &Store{
		live: map[uint16]*storedPacket{}, failing: map[uint16]bool{},
		loaded: map[uint64]bool{}, logger: slog.New(slog.DiscardHandler), now: time.Now,
	}
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
			return cmp.Compare(pa.seq, pb.seq)
		}
		return cmp.Compare(pa.order, pb.order)
	})
	return ids, nil
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
