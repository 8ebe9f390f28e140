package buffer

import (
	"io"
	"os"
)

// File is the storage of one segment file or of the cursor file, as
// Options.OpenFile returns it.
// Its main purpose is letting tests inject faults (short writes, ENOSPC,
// failing fsync): see package buffertest.
type File interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	Sync() error // makes written data durable (fdatasync where available)
	Close() error
}

// segmentFile is the package's old name of File.
type segmentFile = File

// openFunc opens a segment file; flag is passed to os.OpenFile.
type openFunc = func(path string, flag int) (File, error)

// OpenOSFile is the default Options.OpenFile: os.OpenFile with mode 0640,
// and Sync is fdatasync on Linux.
func OpenOSFile(path string, flag int) (File, error) { return openOSFile(path, flag) }

func openOSFile(path string, flag int) (File, error) {
	f, err := os.OpenFile(path, flag, 0o640)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

type osFile struct{ *os.File }

func (f osFile) Sync() error { return fdatasync(f.File) }

// syncDir fsyncs a directory so that created, renamed and deleted entries
// are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
