package lockedbuf

import (
	"strings"
	"sync"
	"testing"
)

func TestConcurrentWrites(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				b.Write([]byte("ab\n"))
			}
		})
	}
	wg.Wait()
	if got := strings.Count(b.String(), "ab\n"); got != 800 {
		t.Fatalf("%d lines, want 800", got)
	}
}

func TestMaxKeepsRecentOutput(t *testing.T) {
	b := Buffer{Max: 10}
	for _, s := range []string{"0123456789", "x", "tail"} {
		b.Write([]byte(s))
	}
	// "0123456789x" passed Max, so the write of "tail" dropped it.
	if got := b.String(); got != "tail" {
		t.Fatalf("got %q", got)
	}
}
