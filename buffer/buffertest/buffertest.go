// Package buffertest injects storage faults into a buffer.Log, for the
// tests of the buffer and of the packages that use it (a gateway's
// disk-full test, say):
//
//	faults := buffertest.NewFaults()
//	l, _ := buffer.Open(dir, buffer.Options{OpenFile: faults.OpenFile})
//	faults.Set(func(f *buffertest.Faults) { f.Write = syscall.ENOSPC })
//	_, err := l.Append(rec) // fails with ENOSPC, no seq consumed
//	faults.Clear()          // the disk has room again: appends succeed
//
// or simulate a small disk with Capacity.
package buffertest

import (
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/ferry-gateway/ferry/buffer"
)

// Faults decides which operations of the files it opens fail. Set its
// fields through Set; the zero value injects nothing.
type Faults struct {
	mu sync.Mutex

	// Write makes writes fail with this error; with Short, after writing
	// half of the data (a torn write).
	Write error
	Short bool
	// Truncate, Sync and Create make Truncate, Sync (fdatasync) and the
	// creation of new files fail with these errors.
	Truncate error
	Sync     error
	Create   error
	// Capacity, if positive, is the size of a simulated disk: a write that
	// would grow the files opened through OpenFile (those still existing)
	// beyond it, in total, fails with ENOSPC after writing what fits.
	Capacity int64
	// Only, if set, is a pattern (path/filepath.Match) on the base name
	// of files: Write, Truncate, Sync and Create apply only to the files
	// it matches ("cursor*" for the cursor file, "*.seg" for segments).
	// Capacity applies to every file.
	Only string

	used  map[string]int64 // size of each file, for Capacity
	calls Calls
}

// Calls counts the operations seen and the faults injected.
type Calls struct {
	Writes, Syncs, Truncates, Opens int
	Injected                        int
}

// NewFaults returns Faults that inject nothing yet.
func NewFaults() *Faults { return &Faults{} }

// Set changes the faults atomically.
func (f *Faults) Set(fn func(*Faults)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// Clear removes every fault (the capacity too).
func (f *Faults) Clear() {
	f.Set(func(f *Faults) {
		f.Write, f.Short, f.Truncate, f.Sync, f.Create, f.Capacity, f.Only = nil, false, nil, nil, nil, 0, ""
	})
}

// Calls returns the counts so far.
func (f *Faults) Calls() Calls {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// OpenFile is a buffer.Options.OpenFile that opens real files (with
// buffer.OpenOSFile) and wraps them.
func (f *Faults) OpenFile(path string, flag int) (buffer.File, error) {
	f.mu.Lock()
	f.calls.Opens++
	cerr := f.Create
	if cerr != nil && flag&os.O_CREATE != 0 && f.applies(path) {
		f.calls.Injected++
		f.mu.Unlock()
		return nil, &os.PathError{Op: "open", Path: path, Err: cerr}
	}
	f.mu.Unlock()
	file, err := buffer.OpenOSFile(path, flag)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(path); err == nil {
		f.mu.Lock()
		if f.used == nil {
			f.used = make(map[string]int64)
		}
		f.used[path] = fi.Size()
		f.mu.Unlock()
	}
	return &faultyFile{File: file, path: path, ctl: f}, nil
}

// applies reports whether faults apply to the file at path; f.mu held.
func (f *Faults) applies(path string) bool {
	if f.Only == "" {
		return true
	}
	ok, _ := filepath.Match(f.Only, filepath.Base(path))
	return ok
}

type faultyFile struct {
	buffer.File
	path string
	ctl  *Faults
}

func (ff *faultyFile) WriteAt(p []byte, off int64) (int, error) {
	f := ff.ctl
	f.mu.Lock()
	f.calls.Writes++
	werr, short := f.Write, f.Short
	if !f.applies(ff.path) {
		werr = nil
	}
	limit := len(p)
	if werr == nil && f.Capacity > 0 {
		var total int64
		for path := range f.used {
			if _, err := os.Stat(path); err != nil {
				delete(f.used, path) // deleted: its space is free again
				continue
			}
			total += f.used[path]
		}
		cur := f.used[ff.path]
		grow := max(off+int64(len(p))-cur, 0)
		if room := f.Capacity - total; grow > room {
			werr = syscall.ENOSPC
			limit = int(min(int64(len(p)), max(cur-off, 0)+max(room, 0)))
			short = limit > 0
		}
	} else if werr != nil && short {
		limit = len(p) / 2
	}
	if werr != nil {
		f.calls.Injected++
	}
	f.mu.Unlock()
	if werr == nil {
		n, err := ff.File.WriteAt(p, off)
		ff.grew(off + int64(n))
		return n, err
	}
	if !short {
		return 0, &os.PathError{Op: "write", Path: ff.path, Err: werr}
	}
	n, err := ff.File.WriteAt(p[:limit], off)
	ff.grew(off + int64(n))
	if err != nil {
		return n, err
	}
	return n, &os.PathError{Op: "write", Path: ff.path, Err: werr}
}

func (ff *faultyFile) grew(end int64) {
	ff.ctl.mu.Lock()
	if ff.ctl.used == nil {
		ff.ctl.used = make(map[string]int64)
	}
	if end > ff.ctl.used[ff.path] {
		ff.ctl.used[ff.path] = end
	}
	ff.ctl.mu.Unlock()
}

func (ff *faultyFile) Truncate(size int64) error {
	f := ff.ctl
	f.mu.Lock()
	f.calls.Truncates++
	err := f.Truncate
	if !f.applies(ff.path) {
		err = nil
	}
	if err != nil {
		f.calls.Injected++
	}
	f.mu.Unlock()
	if err != nil {
		return &os.PathError{Op: "truncate", Path: ff.path, Err: err}
	}
	if err := ff.File.Truncate(size); err != nil {
		return err
	}
	f.mu.Lock()
	if f.used != nil {
		f.used[ff.path] = size
	}
	f.mu.Unlock()
	return nil
}

func (ff *faultyFile) Sync() error {
	f := ff.ctl
	f.mu.Lock()
	f.calls.Syncs++
	err := f.Sync
	if !f.applies(ff.path) {
		err = nil
	}
	if err != nil {
		f.calls.Injected++
	}
	f.mu.Unlock()
	if err != nil {
		return &os.PathError{Op: "fdatasync", Path: ff.path, Err: err}
	}
	return ff.File.Sync()
}
