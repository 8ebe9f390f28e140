package buffer

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

const helperEnv = "FERRY_BUFFER_HELPER_DIR"

// helperMain runs in a child process (see TestMain): it appends to the log in
// the directory named by helperEnv with SyncBatch, acks records some way
// behind, and prints the last seq of every successful Append, until killed.
func helperMain() int {
	l, err := Open(os.Getenv(helperEnv), Options{Sync: SyncBatch, SegmentBytes: 64 << 10, SyncInterval: time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for i := 0; ; i++ {
		next := l.NextSeq()
		recs := make([][]byte, 1+i%5)
		for j := range recs {
			recs[j] = rec(next+uint64(j), 100)
		}
		first, err := l.Append(recs...)
		if err != nil || first != next {
			fmt.Fprintln(os.Stderr, first, err)
			return 1
		}
		last := first + uint64(len(recs)) - 1
		if last > 500 {
			for s := l.Acked(); s < last-500; s++ {
				l.Ack(s)
			}
		}
		fmt.Fprintln(os.Stdout, last) // unbuffered: one write per line
	}
}

func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	dir := t.TempDir()
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"="+dir)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		var last uint64
		for lines := 0; lines < 2000+round*1000 && sc.Scan(); lines++ {
			last, err = strconv.ParseUint(sc.Text(), 10, 64)
			if err != nil {
				t.Fatalf("helper printed %q", sc.Text())
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		for sc.Scan() { // the reported appends that raced with the kill
			if v, err := strconv.ParseUint(sc.Text(), 10, 64); err == nil {
				last = v
			}
		}
		cmd.Wait()
		if last == 0 {
			t.Fatal("helper appended nothing")
		}

		l, err := Open(dir, Options{Sync: SyncNone})
		if err != nil {
			t.Fatal(err)
		}
		st := l.Stats()
		if st.Corrupt != 0 || st.NextSeq <= last {
			l.Close()
			t.Fatalf("round %d: last reported seq %d, Stats %+v", round, last, st)
		}
		from := l.Acked()
		got := scanAll(t, l, from)
		if len(got) == 0 || got[0] != from || got[len(got)-1] < last || uint64(len(got)) != got[len(got)-1]-from+1 {
			l.Close()
			t.Fatalf("round %d: reported up to %d, found %d records from %d: first %v", round, last, len(got), from, got[:min(len(got), 5)])
		}
		t.Logf("round %d: %d appended, cursor %d, %d segments", round, last, from, st.Segments)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
