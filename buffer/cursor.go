package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
)

const (
	cursorName    = "cursor"
	cursorTmpName = "cursor.tmp"
	cursorMagic   = "FRYCUR01"
	cursorSize    = 20
)

var errBadCursor = errors.New("bad cursor file")

// readCursor returns the cursor stored in dir. It returns os.ErrNotExist
// (wrapped) when there is none and errBadCursor when it is damaged.
func readCursor(dir string) (uint64, error) {
	path := filepath.Join(dir, cursorName)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	if len(b) != cursorSize || string(b[:8]) != cursorMagic ||
		crc32.Checksum(b[:16], castagnoli) != binary.LittleEndian.Uint32(b[16:20]) {
		return 0, fmt.Errorf("%s: %w", path, errBadCursor)
	}
	return binary.LittleEndian.Uint64(b[8:16]), nil
}

// writeCursor atomically replaces the cursor file: write a temporary file,
// fsync it, rename it over the old one, fsync the directory.
func writeCursor(dir string, c uint64) error {
	var b [cursorSize]byte
	copy(b[:8], cursorMagic)
	binary.LittleEndian.PutUint64(b[8:16], c)
	binary.LittleEndian.PutUint32(b[16:20], crc32.Checksum(b[:16], castagnoli))

	tmp := filepath.Join(dir, cursorTmpName)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write cursor: %w", err)
	}
	_, err = f.Write(b[:])
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write cursor %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, cursorName)); err != nil {
		return fmt.Errorf("write cursor: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("write cursor: sync dir %s: %w", dir, err)
	}
	return nil
}
