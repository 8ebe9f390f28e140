package modbus

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
)

// portLock is an exclusive advisory lock (flock(2)) on a serial device,
// held while a link to it is open. Two ferry processes on one RS-485 line
// (the service, and `ferry read` or `ferry probe` run beside it) would
// interleave their frames on the bus and both see garbage and timeouts;
// with the lock the second one is refused at once with a clear error.
// Programs that do not take the lock are not kept out.
type portLock struct{ fd int }

// serialPath returns the device path of an rtu:// url ("" for any other).
func serialPath(url string) string {
	path, ok := strings.CutPrefix(url, "rtu://")
	if !ok {
		return ""
	}
	return path
}

// lockPort takes the lock of the serial device at path. A device that
// cannot be opened is not an error here (nil lock): opening the port then
// fails with the library's own error.
func lockPort(path string) (*portLock, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NOCTTY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil
	}
	if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = syscall.Close(fd)
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("serial port %s is in use by another process (a running ferry? stop it, or read and write through it)", path)
		}
		return nil, fmt.Errorf("lock serial port %s: %w", path, err)
	}
	return &portLock{fd: fd}, nil
}

// release drops the lock; nil-safe.
func (p *portLock) release() {
	if p != nil {
		_ = syscall.Close(p.fd)
	}
}
