package session

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// faultyFile injects write failures: while failing is set, a Write writes
// half of its bytes (a short write, as a nearly full disk does) and
// returns ENOSPC.
type faultyFile struct {
	*os.File
	failing *atomic.Bool
	fails   *atomic.Int64
}

func (f faultyFile) Write(p []byte) (int, error) {
	if f.failing.Load() {
		f.fails.Add(1)
		n, _ := f.File.Write(p[:len(p)/2])
		return n, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
	}
	return f.File.Write(p)
}

// TestSessionStoreWriteFailure: writes fail (short, ENOSPC) for a while,
// both direct and deferred (the connection's Flush), then succeed.
// Reading the file back as a restart after kill -9 would (no Close) gives
// exactly the store's state: no torn record in the middle cuts off what
// follows, and nothing said during the episode is missing.
func TestSessionStoreWriteFailure(t *testing.T) {
	for _, deferred := range []bool{false, true} {
		t.Run(fmt.Sprintf("deferPuts=%v", deferred), func(t *testing.T) {
			dir := t.TempDir()
			var failing atomic.Bool
			var fails atomic.Int64
			s, err := openWith(dir, slog.New(slog.DiscardHandler), func(f *os.File) logFile {
				return faultyFile{File: f, failing: &failing, fails: &fails}
			})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			s.deferPuts = deferred
			clock := time.Unix(1700000000, 0)
			s.now = func() time.Time { return clock }
			seq := uint64(0)
			put := func(id uint16) {
				t.Helper()
				seq++
				w := bytes.NewBufferString(fmt.Sprintf("publish-%d", seq))
				if err := s.Put(id, 3, withSeq(w, seq)); err != nil {
					t.Fatal(err)
				}
				s.Flush()
			}
			// A window of 8 in flight, completed in order, each replaced.
			step := func() {
				id := uint16(seq%8) + 1
				if s.SeqOf(id) != 0 {
					s.Delete(id)
				}
				put(id)
			}
			for range 50 {
				step()
			}
			failing.Store(true)
			for range 50 {
				step()
				clock = clock.Add(30 * time.Millisecond) // rewrite attempts fail too
			}
			s.MarkDone(5000)
			failing.Store(false)
			if fails.Load() < 2 {
				t.Fatalf("%d failed writes", fails.Load())
			}
			clock = clock.Add(time.Second)
			for range 50 {
				step()
			}
			if s.writeErrors == 0 || s.broken {
				t.Fatalf("write errors %d, broken %v", s.writeErrors, s.broken)
			}
			wantLive, wantDone := s.StartState()
			s.mu.Lock()
			for _, b := range s.marks {
				for _, q := range b.seqs {
					wantDone[q] = true
				}
			}
			s.mu.Unlock()

			// As after kill -9: the file as it is, not closed.
			r := quietStore(t, dir)
			defer r.Close()
			live, done := r.StartState()
			if fmt.Sprint(live) != fmt.Sprint(wantLive) {
				t.Fatalf("live after restart %v, want %v", live, wantLive)
			}
			for q := range wantDone {
				if !done[q] {
					t.Fatalf("done mark %d lost (have %d marks)", q, len(done))
				}
			}
			if !done[5000] {
				t.Fatalf("the mark written during the failure is lost")
			}
			if r.corruptRegions != 0 {
				t.Fatalf("%d corrupt regions after a write failure", r.corruptRegions)
			}
		})
	}
}

// tmpfs mounts a small tmpfs of size bytes in a temporary directory, or
// skips the test when that is not permitted (not root, no CAP_SYS_ADMIN,
// not Linux).
func tmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (a real full disk)")
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v): the fault-injection tests cover the same path", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			_ = syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return dir
}

// fillDisk writes a file in dir until the file system is full and returns
// its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return path
		}
	}
}

// TestSessionStoreENOSPC is TestSessionStoreWriteFailure on a real full
// disk: the session log lives on a small tmpfs that is filled up for a
// while, then freed, and the log is read back as after a kill -9.
func TestSessionStoreENOSPC(t *testing.T) {
	dir := filepath.Join(tmpfs(t, 1<<20), "mqtt")
	s := quietStore(t, dir)
	defer s.Close()
	s.deferPuts = true
	seq := uint64(0)
	step := func() {
		t.Helper()
		id := uint16(seq%16) + 1
		if s.SeqOf(id) != 0 {
			s.Delete(id)
		}
		seq++
		w := bytes.NewBufferString(fmt.Sprintf("publish-%d-%s", seq, bytes.Repeat([]byte{'p'}, 150)))
		if err := s.Put(id, 3, withSeq(w, seq)); err != nil {
			t.Fatal(err)
		}
		s.Flush()
	}
	for range 200 {
		step()
	}
	filler := fillDisk(t, filepath.Dir(dir))
	for range 300 { // ~ 60 kB of records that do not fit
		step()
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * rewriteRetry) // the rewrite is tried at most every rewriteRetry
	for range 200 {
		step()
	}
	wantLive, _ := s.StartState()

	r := quietStore(t, dir) // as after kill -9: the file as it is
	defer r.Close()
	live, done := r.StartState()
	if fmt.Sprint(live) != fmt.Sprint(wantLive) {
		t.Fatalf("in flight after restart:\n got %v\nwant %v", live, wantLive)
	}
	// Every completed seq is marked done: none would be published again.
	for q := uint64(1); q <= seq; q++ {
		if !done[q] && !slices.Contains(live, q) {
			t.Fatalf("seq %d completed before the restart is neither done nor in flight (%d done marks)", q, len(done))
		}
	}
}

// TestSessionStoreMigrateFailing: an old-format file that cannot be
// rewritten at open (the disk is full) still opens with its state; nothing
// is appended to it until the rewrite succeeds, and then the file holds
// the old state and what came since, in the current format.
func TestSessionStoreMigrateFailing(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "session-v1.log"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, storeFile), data, 0o640); err != nil {
		t.Fatal(err)
	}
	var failing atomic.Bool
	var fails atomic.Int64
	failing.Store(true)
	s, err := openWith(dir, slog.New(slog.DiscardHandler), func(f *os.File) logFile {
		return faultyFile{File: f, failing: &failing, fails: &fails}
	})
	if err != nil {
		t.Fatalf("open with a failing disk: %v", err)
	}
	defer s.Close()
	checkGoldenState(t, s)
	w := bytes.NewBufferString("publish-15")
	if err := s.Put(6, 3, withSeq(w, 15)); err != nil {
		t.Fatal(err)
	}
	if now, _ := os.ReadFile(filepath.Join(dir, storeFile)); !bytes.Equal(now, data) {
		t.Fatal("the old file changed while it could not be rewritten")
	}
	failing.Store(false)
	s.mu.Lock()
	s.retryAt = time.Time{}
	s.mu.Unlock()
	s.Flush()

	r := quietStore(t, dir) // as after kill -9
	defer r.Close()
	if live, _ := r.StartState(); fmt.Sprint(live) != "[10 14 15]" {
		t.Fatalf("after the rewrite: live %v", live)
	}
}
