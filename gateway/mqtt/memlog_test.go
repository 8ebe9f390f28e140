package mqtt

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// memLog is an in-memory Log with the buffer's contract, plus test helpers.
type memLog struct {
	mu     sync.Mutex
	base   uint64 // seq of recs[0]
	recs   [][]byte
	acked  map[uint64]bool
	cursor uint64 // first unacked seq
	notify chan struct{}
	change chan struct{} // closed and replaced on every ack
}

func newMemLog(first uint64) *memLog {
	return &memLog{base: first, cursor: first, acked: map[uint64]bool{},
		notify: make(chan struct{}, 1), change: make(chan struct{})}
}

func (l *memLog) Append(recs ...[]byte) (uint64, error) {
	l.mu.Lock()
	first := l.base + uint64(len(l.recs))
	for _, r := range recs {
		l.recs = append(l.recs, append([]byte(nil), r...))
	}
	l.mu.Unlock()
	select {
	case l.notify <- struct{}{}:
	default:
	}
	return first, nil
}

func (l *memLog) Scan(from uint64, max int, fn func(uint64, []byte) error) (uint64, error) {
	l.mu.Lock()
	end := l.base + uint64(len(l.recs))
	if from < l.base {
		from = l.base
	}
	var batch [][]byte
	for s := from; s < end && len(batch) < max; s++ {
		batch = append(batch, l.recs[s-l.base])
	}
	l.mu.Unlock()
	for i, r := range batch {
		data := append([]byte(nil), r...)
		if err := fn(from+uint64(i), data); err != nil {
			return from + uint64(i), err
		}
		for j := range data { // data is only valid during fn
			data[j] = 0xAA
		}
	}
	return from + uint64(len(batch)), nil
}

func (l *memLog) Ack(seq uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if seq < l.base || seq >= l.base+uint64(len(l.recs)) {
		return fmt.Errorf("ack of unknown seq %d", seq)
	}
	if l.acked[seq] {
		panic(fmt.Sprintf("seq %d acked twice", seq))
	}
	l.acked[seq] = true
	for l.acked[l.cursor] {
		l.cursor++
	}
	close(l.change)
	l.change = make(chan struct{})
	return nil
}

func (l *memLog) Acked() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cursor
}

func (l *memLog) Notify() <-chan struct{} { return l.notify }

func (l *memLog) isAcked(seq uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked[seq]
}

func (l *memLog) ackedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// waitAcked waits until every seq for which want returns true is acked.
func (l *memLog) waitAcked(t testing.TB, timeout time.Duration, want func(seq uint64) bool) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		l.mu.Lock()
		missing := 0
		var example uint64
		for s := l.base; s < l.base+uint64(len(l.recs)); s++ {
			if want(s) && !l.acked[s] {
				if missing == 0 {
					example = s
				}
				missing++
			}
		}
		ch := l.change
		l.mu.Unlock()
		if missing == 0 {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%d records not acked within %v (first: seq %d)", missing, timeout, example)
		}
	}
}

// waitCount waits until at least n records are acked.
func (l *memLog) waitCount(t testing.TB, timeout time.Duration, n int) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		l.mu.Lock()
		got, ch := len(l.acked), l.change
		l.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%d of %d records acked within %v", got, n, timeout)
		}
	}
}

func (l *memLog) waitAllAcked(t testing.TB, timeout time.Duration) {
	t.Helper()
	l.waitAcked(t, timeout, func(uint64) bool { return true })
}

func TestMemLog(t *testing.T) {
	l := newMemLog(10)
	if first, _ := l.Append([]byte("a"), []byte("b"), []byte("c")); first != 10 {
		t.Fatalf("first = %d", first)
	}
	var got []string
	next, err := l.Scan(11, 5, func(seq uint64, d []byte) error { got = append(got, fmt.Sprint(seq, string(d))); return nil })
	if err != nil || next != 13 || fmt.Sprint(got) != "[11b 12c]" {
		t.Fatalf("Scan = %d %v %v", next, got, err)
	}
	_ = l.Ack(11)
	if l.Acked() != 10 {
		t.Fatal("cursor moved over a gap")
	}
	_ = l.Ack(10)
	if l.Acked() != 12 {
		t.Fatalf("Acked = %d", l.Acked())
	}
}
