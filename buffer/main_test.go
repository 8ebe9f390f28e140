package buffer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"testing"

	"go.uber.org/goleak"

	"github.com/ferry-gateway/ferry/internal/lockedbuf"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	goleak.VerifyTestMain(m)
}

// rec returns a record for seq: the seq, then size-8 filler bytes.
func rec(seq uint64, size int) []byte {
	b := make([]byte, max(size, 8))
	binary.LittleEndian.PutUint64(b, seq)
	for i := 8; i < len(b); i++ {
		b[i] = byte(seq) + byte(i)
	}
	return b
}

func checkRec(t testing.TB, seq uint64, data []byte) {
	t.Helper()
	if len(data) < 8 || !bytes.Equal(data, rec(binary.LittleEndian.Uint64(data), len(data))) {
		t.Fatalf("seq %d: malformed record %x", seq, data)
	}
	if got := binary.LittleEndian.Uint64(data); got != seq {
		t.Fatalf("record at seq %d holds seq %d", seq, got)
	}
}

func openLog(t testing.TB, dir string, opts Options) *Log {
	t.Helper()
	l, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// appendN appends n records of size bytes, one per Append.
func appendN(t testing.TB, l *Log, n, size int) {
	t.Helper()
	for range n {
		seq := l.NextSeq()
		got, err := l.Append(rec(seq, size))
		if err != nil {
			t.Fatalf("Append: %v", err)
		}
		if got != seq {
			t.Fatalf("Append returned seq %d, want %d", got, seq)
		}
	}
}

// scanAll returns the seqs of all records from from on, checking contents,
// using small Scan calls like a consumer.
func scanAll(t testing.TB, l *Log, from uint64) []uint64 {
	t.Helper()
	var seqs []uint64
	for {
		next, err := l.Scan(from, 7, func(seq uint64, data []byte) error {
			checkRec(t, seq, data)
			seqs = append(seqs, seq)
			return nil
		})
		if err != nil {
			t.Fatalf("Scan(%d): %v", from, err)
		}
		if next == from {
			return seqs
		}
		from = next
	}
}

func seqRange(lo, hi uint64) []uint64 {
	var s []uint64
	for i := lo; i <= hi; i++ {
		s = append(s, i)
	}
	return s
}

func segFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(m)
	return m
}

// logBuffer is a slog handler target safe for concurrent use.
type logBuffer struct{ lockedbuf.Buffer }

func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

func eqSeqs(a, b []uint64) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }

// frame100 is the size of the frame of a 100-byte record.
const frame100 = frameHeaderSize + 100

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
