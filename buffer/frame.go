package buffer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

const (
	// MaxRecordBytes is the largest record Append accepts.
	MaxRecordBytes = 16 << 20

	frameHeaderSize   = 28       // version 2, written by this package
	frameHeaderSizeV1 = 20       // version 1, still read
	readChunk         = 64 << 10 // bytes read at a time by readers
	indexEvery        = 16 << 10 // a sparse index entry at most every indexEvery bytes
)

var (
	// framePrefix starts every frame; the byte after it is the format
	// version (1 or 2).
	framePrefix  = []byte{0xF3, 'R', 'Y'}
	frameMagic   = []byte{0xF3, 'R', 'Y', 0x02}
	frameMagicV1 = []byte{0xF3, 'R', 'Y', 0x01}
	castagnoli   = crc32.MakeTable(crc32.Castagnoli)
)

// appendFrame appends the (version 2) frame for one record appended at ts
// (Unix nanoseconds) to dst.
func appendFrame(dst []byte, seq uint64, ts int64, data []byte) []byte {
	var h [frameHeaderSize]byte
	copy(h[0:4], frameMagic)
	binary.LittleEndian.PutUint32(h[4:8], uint32(len(data)))
	binary.LittleEndian.PutUint64(h[8:16], seq)
	binary.LittleEndian.PutUint64(h[16:24], uint64(ts))
	crc := crc32.Update(0, castagnoli, h[4:24])
	crc = crc32.Update(crc, castagnoli, data)
	binary.LittleEndian.PutUint32(h[24:28], crc)
	dst = append(dst, h[:]...)
	return append(dst, data...)
}

// appendFrameV1 appends a version 1 frame (no time). Only tests write them,
// to check that they are still read.
func appendFrameV1(dst []byte, seq uint64, data []byte) []byte {
	var h [frameHeaderSizeV1]byte
	copy(h[0:4], frameMagicV1)
	binary.LittleEndian.PutUint32(h[4:8], uint32(len(data)))
	binary.LittleEndian.PutUint64(h[8:16], seq)
	crc := crc32.Update(0, castagnoli, h[4:16])
	crc = crc32.Update(crc, castagnoli, data)
	binary.LittleEndian.PutUint32(h[16:20], crc)
	dst = append(dst, h[:]...)
	return append(dst, data...)
}

// Reasons a frame is rejected.
var (
	errBadMagic  = errors.New("bad magic")
	errBadLength = errors.New("record length out of range")
	errTorn      = errors.New("frame extends past end of segment")
	errChecksum  = errors.New("checksum mismatch")
	errBadSeq    = errors.New("sequence number not increasing")
	errMissing   = errors.New("records missing before the next segment")
)

// CorruptionError describes data in a segment that failed validation.
// Recovery logs it and skips the bad bytes (see the package documentation).
type CorruptionError struct {
	Segment string // path of the segment file
	Offset  int64  // offset of the first bad byte
	Err     error
}

func (e *CorruptionError) Error() string {
	return fmt.Sprintf("buffer: corruption in segment %s at offset %d: %v", e.Segment, e.Offset, e.Err)
}

func (e *CorruptionError) Unwrap() error { return e.Err }

// segReader reads frames from one segment file through a reusable buffer.
// Slices it returns are valid until the next call.
type segReader struct {
	f      io.ReaderAt
	end    int64 // readable size
	store  []byte
	buf    []byte // valid bytes, buf[0] is at file offset bufOff
	bufOff int64
}

// peek returns the n bytes at off; off+n must be <= r.end.
func (r *segReader) peek(off int64, n int) ([]byte, error) {
	if off >= r.bufOff && off+int64(n) <= r.bufOff+int64(len(r.buf)) {
		i := off - r.bufOff
		return r.buf[i : i+int64(n)], nil
	}
	sz := max(n, readChunk)
	if rem := r.end - off; int64(sz) > rem {
		sz = int(rem)
	}
	if sz < n {
		return nil, io.ErrUnexpectedEOF
	}
	if cap(r.store) < sz {
		r.store = make([]byte, sz)
	}
	b := r.store[:sz]
	m, err := r.f.ReadAt(b, off)
	if m < n {
		r.buf = nil
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	r.buf, r.bufOff = b[:m], off
	return r.buf[:n], nil
}

// frameAt decodes the frame at off. bad is non-nil when the bytes there are
// not a valid frame with a seq greater than prev; err is an I/O error. ts is
// the append time in Unix nanoseconds (0 for a version 1 frame).
func (r *segReader) frameAt(off int64, prev uint64) (seq uint64, ts int64, data []byte, n int64, bad, err error) {
	if r.end-off < frameHeaderSizeV1 {
		return 0, 0, nil, 0, errTorn, nil
	}
	h, err := r.peek(off, frameHeaderSizeV1)
	if err != nil {
		return 0, 0, nil, 0, nil, err
	}
	if !bytes.Equal(h[0:3], framePrefix) {
		return 0, 0, nil, 0, errBadMagic, nil
	}
	var hs int64
	switch h[3] {
	case 2:
		hs = frameHeaderSize
	case 1:
		hs = frameHeaderSizeV1
	default:
		return 0, 0, nil, 0, errBadMagic, nil
	}
	ln := int64(binary.LittleEndian.Uint32(h[4:8]))
	if ln > MaxRecordBytes {
		return 0, 0, nil, 0, errBadLength, nil
	}
	n = hs + ln
	if off+n > r.end {
		return 0, 0, nil, 0, errTorn, nil
	}
	b, err := r.peek(off, int(n))
	if err != nil {
		return 0, 0, nil, 0, nil, err
	}
	crc := crc32.Update(0, castagnoli, b[4:hs-4])
	crc = crc32.Update(crc, castagnoli, b[hs:])
	if crc != binary.LittleEndian.Uint32(b[hs-4:hs]) {
		return 0, 0, nil, 0, errChecksum, nil
	}
	seq = binary.LittleEndian.Uint64(b[8:16])
	if seq <= prev {
		return 0, 0, nil, 0, errBadSeq, nil
	}
	if hs == frameHeaderSize {
		ts = int64(binary.LittleEndian.Uint64(b[16:24]))
	}
	return seq, ts, b[hs:], n, nil, nil
}

// resync searches from off onwards for the next valid frame with a seq
// greater than prev. found is false when there is none before r.end.
func (r *segReader) resync(off int64, prev uint64) (next int64, seq uint64, found bool, err error) {
	pos := off
	for pos+frameHeaderSizeV1 <= r.end {
		n := int64(readChunk)
		if rem := r.end - pos; n > rem {
			n = rem
		}
		b, err := r.peek(pos, int(n))
		if err != nil {
			return 0, 0, false, err
		}
		i := bytes.Index(b, framePrefix)
		if i < 0 {
			pos += n - int64(len(framePrefix)-1)
			continue
		}
		cand := pos + int64(i)
		seq, _, _, _, bad, err := r.frameAt(cand, prev)
		if err != nil {
			return 0, 0, false, err
		}
		if bad == nil {
			return cand, seq, true, nil
		}
		pos = cand + 1
	}
	return r.end, 0, false, nil
}
