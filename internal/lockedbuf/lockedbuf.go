// Package lockedbuf is a bytes.Buffer that many goroutines may write to at
// once: the target of a subprocess's output or a test's log handler, read
// back with String.
package lockedbuf

import (
	"bytes"
	"sync"
)

// Buffer collects what is written to it. With Max > 0, a write that finds
// more than Max bytes buffered first drops them, so a long-running
// process's output keeps only its recent part. The zero value is ready.
type Buffer struct {
	Max int

	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p. It never fails.
func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.Max > 0 && l.b.Len() > l.Max {
		l.b.Reset()
	}
	return l.b.Write(p)
}

// String returns what is buffered.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
