package session

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

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

var crcTable = crc32.MakeTable(crc32.Castagnoli)

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
