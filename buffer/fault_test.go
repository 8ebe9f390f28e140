package buffer

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// faults controls the faultyFiles of a test.
type faults struct {
	mu        sync.Mutex
	write     error // next writes fail with this error
	short     bool  // ... after writing half of the data
	truncate  error // Truncate fails with this error
	sync      error // Sync fails with this error
	createErr error // creating files fails
}

func (fs *faults) set(f func(*faults)) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f(fs)
}

// faultyFile injects the faults of ctl, like prometheus's faultySegmentFile.
type faultyFile struct {
	segmentFile
	ctl *faults
}

func (f faultyFile) WriteAt(p []byte, off int64) (int, error) {
	f.ctl.mu.Lock()
	werr, short := f.ctl.write, f.ctl.short
	f.ctl.mu.Unlock()
	if werr == nil {
		return f.segmentFile.WriteAt(p, off)
	}
	if short {
		n, err := f.segmentFile.WriteAt(p[:len(p)/2], off)
		if err != nil {
			return n, err
		}
		return n, werr
	}
	return 0, werr
}

func (f faultyFile) Truncate(size int64) error {
	f.ctl.mu.Lock()
	err := f.ctl.truncate
	f.ctl.mu.Unlock()
	if err != nil {
		return err
	}
	return f.segmentFile.Truncate(size)
}

func (f faultyFile) Sync() error {
	f.ctl.mu.Lock()
	err := f.ctl.sync
	f.ctl.mu.Unlock()
	if err != nil {
		return err
	}
	return f.segmentFile.Sync()
}

func faultyOpener(ctl *faults) openFunc {
	return func(path string, flag int) (segmentFile, error) {
		ctl.mu.Lock()
		cerr := ctl.createErr
		ctl.mu.Unlock()
		if cerr != nil && flag&os.O_CREATE != 0 {
			return nil, &os.PathError{Op: "open", Path: path, Err: cerr}
		}
		f, err := openOSFile(path, flag)
		if err != nil {
			return nil, err
		}
		return faultyFile{f, ctl}, nil
	}
}

func TestWriteFaults(t *testing.T) {
	tests := []struct {
		name  string
		fault func(*faults)
		// wantNewSegment: the failed segment could not be repaired, so the
		// next append goes to a new segment.
		wantNewSegment bool
	}{
		{"enospc", func(f *faults) { f.write = syscall.ENOSPC }, false},
		{"short_write", func(f *faults) { f.write, f.short = syscall.ENOSPC, true }, false},
		{"short_write_truncate_fails", func(f *faults) { f.write, f.short, f.truncate = syscall.EIO, true, syscall.EIO }, true},
	}
	for _, mode := range []SyncMode{SyncAlways, SyncNone} {
		for _, tt := range tests {
			t.Run(mode.String()+"/"+tt.name, func(t *testing.T) {
				dir := t.TempDir()
				ctl := &faults{}
				opts := Options{Sync: mode, OpenFile: faultyOpener(ctl)}
				l := openLog(t, dir, opts)
				appendN(t, l, 3, 100)
				sizeBefore := l.Stats().Bytes

				ctl.set(tt.fault)
				for range 2 {
					_, err := l.Append(rec(4, 100), rec(5, 100))
					if err == nil {
						t.Fatal("Append succeeded during a write fault")
					}
					if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), ".seg") {
						t.Fatalf("error does not name the file: %v", err)
					}
				}
				ctl.set(func(f *faults) { f.write, f.short, f.truncate, f.sync, f.createErr = nil, false, nil, nil, nil })

				st := l.Stats()
				if st.WriteErrors != 2 || st.NextSeq != 4 || st.Bytes != sizeBefore {
					t.Fatalf("Stats after failed appends = %+v", st)
				}
				if got := scanAll(t, l, 1); !eqSeqs(got, seqRange(1, 3)) {
					t.Fatalf("scan after fault = %v", got)
				}
				if first, err := l.Append(rec(4, 100), rec(5, 100)); err != nil || first != 4 {
					t.Fatalf("Append after the fault cleared = %d, %v", first, err)
				}
				if got := len(segFiles(t, dir)); (got == 2) != tt.wantNewSegment {
					t.Fatalf("%d segment files", got)
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				if !tt.wantNewSegment {
					fi, err := os.Stat(segFiles(t, dir)[0])
					if err != nil || fi.Size() != 5*frame100 {
						t.Fatalf("segment size %d, %v; want %d", fi.Size(), err, 5*frame100)
					}
				}

				l = openLog(t, dir, Options{})
				if got := scanAll(t, l, 1); !eqSeqs(got, seqRange(1, 5)) {
					t.Fatalf("scan after reopen = %v", got)
				}
				// The garbage left in the old segment of the truncate-fails
				// case is past its last record: reading it reports it once.
				if st := l.Stats(); st.NextSeq != 6 || (!tt.wantNewSegment && st.Corrupt != 0) {
					t.Fatalf("Stats after reopen = %+v", st)
				}
			})
		}
	}
}

func TestSyncFault(t *testing.T) {
	ctl := &faults{}
	l := openLog(t, t.TempDir(), Options{Sync: SyncAlways, OpenFile: faultyOpener(ctl)})
	appendN(t, l, 2, 10)
	ctl.set(func(f *faults) { f.sync = syscall.EIO })
	if _, err := l.Append(rec(3, 10)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Append with failing fsync = %v", err)
	}
	if err := l.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Sync with failing fsync = %v", err)
	}
	ctl.set(func(f *faults) { f.sync = nil })
	if _, err := l.Append(rec(4, 10)); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.WriteErrors < 2 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestCreateSegmentFault(t *testing.T) {
	dir := t.TempDir()
	ctl := &faults{}
	l := openLog(t, dir, Options{Sync: SyncNone, SegmentBytes: 250, OpenFile: faultyOpener(ctl)})
	appendN(t, l, 2, 100)
	ctl.set(func(f *faults) { f.createErr = syscall.ENOSPC })
	if _, err := l.Append(rec(3, 100)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Append needing a new segment = %v", err)
	}
	ctl.set(func(f *faults) { f.createErr = nil })
	appendN(t, l, 3, 100)
	if got := scanAll(t, l, 1); !eqSeqs(got, seqRange(1, 5)) {
		t.Fatalf("scan = %v", got)
	}
}

// Concurrent appenders while writes fail now and then (SyncAlways: group
// writes; a failed group write fails every Append in it and gives the seqs
// back). Afterwards the log holds exactly the records of the Appends that
// returned nil, at the seqs they returned, with no holes.
func TestConcurrentWriteFaults(t *testing.T) {
	for _, mode := range []SyncMode{SyncAlways, SyncBatch} {
		t.Run(mode.String(), func(t *testing.T) {
			ctl := &faults{}
			dir := t.TempDir()
			l := openLog(t, dir, Options{Sync: mode, SegmentBytes: 8 << 10, OpenFile: faultyOpener(ctl)})
			type ok struct {
				first uint64
				recs  [][]byte
			}
			var mu sync.Mutex
			var oks []ok
			failures := 0
			var wg sync.WaitGroup
			stop := make(chan struct{})
			for g := range 8 {
				wg.Go(func() {
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						recs := make([][]byte, 1+i%3)
						for j := range recs {
							recs[j] = []byte(fmt.Sprintf("g%d-i%d-j%d", g, i, j))
						}
						first, err := l.Append(recs...)
						mu.Lock()
						if err == nil {
							oks = append(oks, ok{first, recs})
						} else {
							failures++
						}
						mu.Unlock()
					}
				})
			}
			count := func() (int, int) {
				mu.Lock()
				defer mu.Unlock()
				return len(oks), failures
			}
			deadline := time.Now().Add(10 * time.Second)
			for i := 0; ; i++ {
				if o, f := count(); (o > 200 && f > 50) || time.Now().After(deadline) {
					break
				}
				time.Sleep(2 * time.Millisecond)
				ctl.set(func(f *faults) { f.write, f.short = syscall.ENOSPC, i%2 == 0 })
				time.Sleep(time.Millisecond)
				ctl.set(func(f *faults) { f.write, f.short = nil, false })
			}
			close(stop)
			wg.Wait()
			if failures == 0 || len(oks) == 0 {
				t.Fatalf("%d failures, %d successes", failures, len(oks))
			}
			want := map[uint64]string{}
			for _, o := range oks {
				for j, r := range o.recs {
					seq := o.first + uint64(j)
					if prev, dup := want[seq]; dup {
						t.Fatalf("seq %d returned twice: %q and %q (batch of %d from %d)", seq, prev, r, len(o.recs), o.first)
					}
					want[seq] = string(r)
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l = openLog(t, dir, Options{})
			n := 0
			if _, err := l.Scan(1, 0, func(seq uint64, data []byte) error {
				n++
				if seq != uint64(n) {
					t.Fatalf("record %d has seq %d", n, seq)
				}
				if want[seq] != string(data) {
					t.Fatalf("seq %d = %q, want %q", seq, data, want[seq])
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if n != len(want) || l.NextSeq() != uint64(n+1) {
				t.Fatalf("read %d records, %d appended; NextSeq %d", n, len(want), l.NextSeq())
			}
			t.Logf("%d appends ok (%d records), %d failed", len(oks), n, failures)
		})
	}
}
