package buffer

import (
	"testing"
	"time"
)

// The publisher's pattern: Scan until nothing is left, then block on Notify
// with no timeout. It must never sleep through an Append: Append sends to a
// channel with room for one value after the record is visible to Scan, so
// either the Scan sees the record or the value is waiting. Producers append
// single records with pauses of varying length so that appends land in
// every phase of the consumer's loop.
func TestNotifyNeverMissed(t *testing.T) {
	for _, mode := range []SyncMode{SyncNone, SyncAlways} {
		t.Run(mode.String(), func(t *testing.T) {
			l := openLog(t, t.TempDir(), Options{Sync: mode})
			total := 3000
			if mode == SyncAlways {
				total = 600 // one fsync each
			}
			done := make(chan error, 1)
			go func() {
				next, seen := l.Acked(), 0
				for seen < total {
					nx, err := l.Scan(next, 16, func(seq uint64, data []byte) error {
						seen++
						return l.Ack(seq)
					})
					if err != nil {
						done <- err
						return
					}
					if nx != next {
						next = nx
						continue
					}
					<-l.Notify() // no timeout: a missed wake-up hangs here
				}
				done <- nil
			}()
			for i := range total {
				if _, err := l.Append(rec(uint64(i+1), 20)); err != nil {
					t.Fatal(err)
				}
				switch i % 7 {
				case 0:
					time.Sleep(time.Duration(i%50) * time.Microsecond)
				case 3:
					for range i % 200 { // spin a little
					}
				}
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("consumer stuck waiting on Notify with %d of %d records appended", l.NextSeq()-1, total)
			}
			if l.Acked() != uint64(total+1) {
				t.Fatalf("Acked = %d", l.Acked())
			}
		})
	}
}
