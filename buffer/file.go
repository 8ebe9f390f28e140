package buffer

import (
	"io"
	"os"
)

// segmentFile is the storage of one segment. Its main purpose is letting
// tests inject faults (short writes, ENOSPC, failing fsync).
type segmentFile interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	Sync() error // makes written data durable (fdatasync where available)
	Close() error
}

// openFunc opens a segment file; flag is passed to os.OpenFile.
type openFunc func(path string, flag int) (segmentFile, error)

func openOSFile(path string, flag int) (segmentFile, error) {
	f, err := os.OpenFile(path, flag, 0o644)
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
