//go:build unix

package buffer

import (
	"fmt"
	"os"
	"syscall"
)

// lockDir takes an exclusive flock on path so two processes (or two Logs in
// one process) cannot use the same directory.
func lockDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s (is the buffer in use by another process?): %w", path, err)
	}
	return f, nil
}
