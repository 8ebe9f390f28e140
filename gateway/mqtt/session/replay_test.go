package session

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSessionStoreReplay(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	type pk struct{ bytes.Buffer }
	put := func(id uint16, typ byte, seq uint64, data string) {
		w := bytes.NewBufferString(data)
		if err := s.Put(id, typ, withSeq(w, seq)); err != nil {
			t.Fatal(err)
		}
	}
	put(1, 3, 10, "publish-10")
	put(2, 3, 11, "publish-11")
	put(3, 3, 0, "state")
	put(1, 6, 0, "pubrel-10") // keeps seq 10
	s.Delete(2)               // delivered: mark 11
	put(4, 3, 12, "publish-12")
	s.FailNext(4)
	s.Delete(4) // refused: no mark
	s.MarkDone(13)
	s.SetSession()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A torn tail is cut off.
	f, _ := os.OpenFile(filepath.Join(dir, storeFile), os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte{9, 0, 0, 0, 1, 2})
	f.Close()

	s, err = Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	live, done := s.StartState()
	if fmt.Sprint(live) != "[10]" || !done[11] || !done[13] || done[12] || !s.HasSession() {
		t.Fatalf("live %v done %v session %v", live, done, s.HasSession())
	}
	ids, _ := s.List()
	if fmt.Sprint(ids) != "[1 3]" {
		t.Fatalf("List = %v", ids)
	}
	r, _ := s.Get(1)
	var b bytes.Buffer
	b.ReadFrom(r)
	if b.String() != "pubrel-10" || s.SeqOf(1) != 10 {
		t.Fatalf("Get(1) = %q seq %d", b.String(), s.SeqOf(1))
	}
	// Compaction keeps live packets and marks.
	s.mu.Lock()
	if err := s.compactLocked(); err != nil {
		t.Fatal(err)
	}
	s.mu.Unlock()
	s.Close()
	s, err = Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	live, done = s.StartState()
	if fmt.Sprint(live) != "[10]" || !done[11] || !done[13] || !s.HasSession() || s.LivePackets() != 2 {
		t.Fatalf("after compaction: live %v done %v", live, done)
	}
	s.Reset()
	if live, _ := s.StartState(); len(live) != 0 {
		t.Fatalf("live after Reset: %v", live)
	}
}

// TestSessionStoreReuseAndCompaction: buffers of deleted packets are
// reused without touching live packets or a packet handed out by Get, and
// the log compacts itself once it passes compactMin, keeping what is live.
func TestSessionStoreReuseAndCompaction(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	body := func(seq uint64, n int) string {
		return fmt.Sprintf("%08d", seq) + strings.Repeat(string(rune('a'+seq%26)), n)
	}
	get := func(id uint16) string {
		t.Helper()
		r, err := s.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		b.ReadFrom(r)
		return b.String()
	}
	// A window of 20 packets in flight; each delivered one is replaced by
	// the next, of varying sizes, until the log has passed compactMin
	// several times.
	const window = 20
	live := map[uint16]uint64{}
	var seq uint64
	sizes := []int{7000, 50, 7300, 300}
	compactions := 0
	last := int64(0)
	var held io.Reader
	var heldWant string
	for seq < uint64(4*compactMin/7000) {
		seq++
		id := uint16(seq%window) + 1
		if old, ok := live[id]; ok {
			if got := get(id); got != body(old, sizes[old%4]) {
				t.Fatalf("seq %d: live packet %d reads %.20q…", seq, id, got)
			}
			if seq%97 == 0 {
				held, _ = s.Get(id) // read after its buffer is reused
				heldWant = body(old, sizes[old%4])
			}
			s.Delete(id)
		}
		w := bytes.NewBufferString(body(seq, sizes[seq%4]))
		if err := s.Put(id, 3, withSeq(w, seq)); err != nil {
			t.Fatal(err)
		}
		live[id] = seq
		if s.size < last {
			compactions++
		}
		last = s.size
		if s.size > compactMin+64<<10 {
			t.Fatalf("log is %d bytes, past compactMin %d", s.size, compactMin)
		}
	}
	if compactions < 2 {
		t.Fatalf("%d compactions", compactions)
	}
	if held != nil {
		var b bytes.Buffer
		b.ReadFrom(held)
		if b.String() != heldWant {
			t.Fatalf("a packet read after Delete changed: %.20q…", b.String())
		}
	}
	s.Close()
	s, err = Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	inFlight, _ := s.StartState()
	if len(inFlight) != window {
		t.Fatalf("after reopen: %d live, want %d", len(inFlight), window)
	}
	for id, sq := range live {
		if got := get(id); got != body(sq, sizes[sq%4]) || s.SeqOf(id) != sq {
			t.Fatalf("after reopen: packet %d reads %.20q… seq %d", id, got, s.SeqOf(id))
		}
	}
}
