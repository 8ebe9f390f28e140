package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
)

// The cursor file holds two slots, at offsets 0 and cursorStride, each a
// complete cursor record; writes alternate between them and rewrite the
// slot in place (pwrite + fdatasync), so a cursor write needs no new disk
// space and no rename, and a torn write leaves the other slot intact. The
// valid slot with the highest cursor wins. A version 1 file (one 20-byte
// record, written by earlier builds) is read as slot 0.
const (
	cursorName    = "cursor"
	cursorTmpName = "cursor.tmp"
	cursorMagicV1 = "FRYCUR01"
	cursorSizeV1  = 20
	cursorMagic   = "FRYCUR02"
	cursorSize    = 28  // version 2 slot
	cursorStride  = 512 // offset of slot 1: another disk sector
	cursorFile    = 2 * cursorStride
)

var errBadCursor = errors.New("bad cursor file")

// cursorState is what the cursor file records.
type cursorState struct {
	acked uint64 // the commit cursor: the first seq not yet acknowledged
	// next is a floor for the next seq (0: none): seqs given to readings
	// that could not be stored (Log.Skip) and not yet followed by a record.
	next uint64
}

func (c cursorState) less(d cursorState) bool {
	return c.acked < d.acked || (c.acked == d.acked && c.next < d.next)
}

func encodeCursor(c cursorState) []byte {
	b := make([]byte, cursorSize)
	copy(b[:8], cursorMagic)
	binary.LittleEndian.PutUint64(b[8:16], c.acked)
	binary.LittleEndian.PutUint64(b[16:24], c.next)
	binary.LittleEndian.PutUint32(b[24:28], crc32.Checksum(b[:24], castagnoli))
	return b
}

// decodeSlot decodes the slot at the start of b (version 1 or 2).
func decodeSlot(b []byte) (cursorState, bool) {
	switch {
	case len(b) >= cursorSize && string(b[:8]) == cursorMagic:
		if crc32.Checksum(b[:24], castagnoli) != binary.LittleEndian.Uint32(b[24:28]) {
			return cursorState{}, false
		}
		return cursorState{acked: binary.LittleEndian.Uint64(b[8:16]), next: binary.LittleEndian.Uint64(b[16:24])}, true
	case len(b) >= cursorSizeV1 && string(b[:8]) == cursorMagicV1:
		if crc32.Checksum(b[:16], castagnoli) != binary.LittleEndian.Uint32(b[16:20]) {
			return cursorState{}, false
		}
		return cursorState{acked: binary.LittleEndian.Uint64(b[8:16])}, true
	}
	return cursorState{}, false
}

// parseCursor returns the newest valid slot of a cursor file's bytes and
// its index.
func parseCursor(b []byte) (c cursorState, slot int, ok bool) {
	for i := 0; i < 2; i++ {
		off := i * cursorStride
		if off >= len(b) {
			break
		}
		if s, valid := decodeSlot(b[off:]); valid && (!ok || c.less(s)) {
			c, slot, ok = s, i, true
		}
	}
	return c, slot, ok
}

// readCursor returns the cursor stored in dir. It returns os.ErrNotExist
// (wrapped) when there is none and errBadCursor when it is damaged.
func readCursor(dir string) (cursorState, error) {
	path := filepath.Join(dir, cursorName)
	b, err := os.ReadFile(path)
	if err != nil {
		return cursorState{}, err
	}
	c, _, ok := parseCursor(b)
	if !ok {
		return cursorState{}, fmt.Errorf("%s: %w", path, errBadCursor)
	}
	return c, nil
}

// openCursor opens the existing cursor file for in-place writes and returns
// what it holds. A missing file gives os.ErrNotExist (wrapped); a damaged
// one errBadCursor, with the file open so that it is rewritten in place.
// Guarded by cursorMu (or called before the log is shared).
func (l *Log) openCursor() (cursorState, error) {
	path := filepath.Join(l.dir, cursorName)
	if _, err := os.Stat(path); err != nil {
		return cursorState{}, err
	}
	f, err := l.opts.OpenFile(path, os.O_RDWR)
	if err != nil {
		return cursorState{}, err
	}
	b := make([]byte, cursorFile)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return cursorState{}, fmt.Errorf("read %s: %w", path, err)
	}
	l.cur, l.curSlot = f, 1
	c, slot, ok := parseCursor(b[:n])
	if !ok {
		return cursorState{}, fmt.Errorf("%s: %w", path, errBadCursor)
	}
	l.curSlot = slot
	return c, nil
}

// writeCursor makes c the persisted cursor. With the file open, it
// rewrites the older slot in place and fdatasyncs: no new space, no
// directory change, so it works on a full disk. Otherwise it creates the
// file (both slots) as cursor.tmp, fsyncs, renames it into place, fsyncs
// the directory and keeps it open. Guarded by cursorMu (or called before
// the log is shared).
func (l *Log) writeCursor(c cursorState) error {
	path := filepath.Join(l.dir, cursorName)
	rec := encodeCursor(c)
	if l.cur != nil {
		slot := 1 - l.curSlot
		if _, err := l.cur.WriteAt(rec, int64(slot*cursorStride)); err != nil {
			return fmt.Errorf("write cursor %s: %w", path, err)
		}
		if err := l.cur.Sync(); err != nil {
			return fmt.Errorf("write cursor %s: %w", path, err)
		}
		l.curSlot = slot
		return nil
	}
	tmp := filepath.Join(l.dir, cursorTmpName)
	f, err := l.opts.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("write cursor: %w", err)
	}
	b := make([]byte, cursorFile)
	copy(b, rec)
	copy(b[cursorStride:], rec)
	_, err = f.WriteAt(b, 0)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		if derr := syncDir(l.dir); derr != nil {
			err = fmt.Errorf("sync dir %s: %w", l.dir, derr)
		}
	}
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write cursor %s: %w", path, err)
	}
	l.cur, l.curSlot = f, 1
	return nil
}
