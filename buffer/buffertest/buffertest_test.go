package buffertest_test

import (
	"errors"
	"syscall"
	"testing"

	"github.com/ferry-gateway/ferry/buffer"
	"github.com/ferry-gateway/ferry/buffer/buffertest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A disk that fills up: Append fails with ENOSPC, consumes no seq and is
// counted in WriteErrors; once the consumer has acked and old segments are
// deleted, appends succeed again.
func TestDiskFull(t *testing.T) {
	faults := buffertest.NewFaults()
	for _, mode := range []buffer.SyncMode{buffer.SyncAlways, buffer.SyncBatch} {
		t.Run(mode.String(), func(t *testing.T) {
			faults.Clear()
			l, err := buffer.Open(t.TempDir(), buffer.Options{Sync: mode, SegmentBytes: 4096, OpenFile: faults.OpenFile})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			faults.Set(func(f *buffertest.Faults) { f.Capacity = 3 * 4096 })
			rec := make([]byte, 200)
			var full error
			for range 1000 {
				if _, full = l.Append(rec); full != nil {
					break
				}
			}
			if !errors.Is(full, syscall.ENOSPC) {
				t.Fatalf("Append on a full disk = %v, want ENOSPC", full)
			}
			next := l.NextSeq()
			if _, err := l.Append(rec); !errors.Is(err, syscall.ENOSPC) || l.NextSeq() != next {
				t.Fatalf("second Append = %v, NextSeq %d -> %d", err, next, l.NextSeq())
			}
			if st := l.Stats(); st.WriteErrors < 2 {
				t.Fatalf("Stats = %+v", st)
			}
			// The consumer catches up: segments are deleted, space is free.
			for seq := l.Acked(); seq < next; seq++ {
				if err := l.Ack(seq); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.Sync(); err != nil {
				t.Fatal(err)
			}
			if first, err := l.Append(rec); err != nil || first != next {
				t.Fatalf("Append after freeing space = %d, %v; want %d", first, err, next)
			}
			if c := faults.Calls(); c.Injected == 0 || c.Writes == 0 {
				t.Fatalf("Calls = %+v", c)
			}
		})
	}
}

func TestSyncFault(t *testing.T) {
	faults := buffertest.NewFaults()
	l, err := buffer.Open(t.TempDir(), buffer.Options{Sync: buffer.SyncAlways, OpenFile: faults.OpenFile})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	faults.Set(func(f *buffertest.Faults) { f.Sync = syscall.EIO })
	if _, err := l.Append([]byte("x")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Append = %v", err)
	}
	faults.Clear()
	if _, err := l.Append([]byte("y")); err != nil {
		t.Fatal(err)
	}
}
