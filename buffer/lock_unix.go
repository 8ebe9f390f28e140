//go:build unix

package buffer

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// lockRetry is how long lockDir waits for a lock held by someone else. It
// covers `ferry buffer`'s momentary probe (see lockHeld); a running ferry
// holds the lock for good and still makes Open fail.
const lockRetry = 250 * time.Millisecond

// lockDir takes an exclusive flock on path so two processes (or two Logs in
// one process) cannot use the same directory.
func lockDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(lockRetry)
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s (is the buffer in use by another process?): %w", path, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// lockHeld reports whether another open file holds the flock on path,
// without creating the file. It takes a shared lock for an instant when the
// lock is free; lockDir's retry makes that harmless to a starting ferry.
func lockHeld(path string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false, nil
}
